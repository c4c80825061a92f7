"""What `check` proves before a send: preflight, the content lint, DNS."""
