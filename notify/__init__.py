"""notify: breach notifications by email, localized, sent exactly once, with a verifiable audit trail."""

__version__ = "0.1.0"
