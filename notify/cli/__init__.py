"""The command line: parse, call the core, print; the one error boundary."""
