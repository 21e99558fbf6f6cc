"""Services behind the extension's handlers: plain Python, no tornado."""
