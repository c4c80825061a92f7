"""One run of a send: its wiring, the loop, the outcome policy, the throttle, the breaker, the ledger writer."""
