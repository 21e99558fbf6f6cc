"""The hub's store service: every user's memories and workspace index (see :mod:`.app`)."""
