"""Memory: /api/v1/memory (the user's memories) and the workspace index (RAG over the home)."""
