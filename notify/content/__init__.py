"""Content: templates over an immutable snapshot, the sandbox, render plans, MIME, the Message."""
