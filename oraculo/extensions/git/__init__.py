"""The git feature: commit and push notebooks with the user's own credentials."""
