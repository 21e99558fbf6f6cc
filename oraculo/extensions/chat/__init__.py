"""Chat: /api/v1/chat (OpenAI-compatible, the workspace as context) and conversations."""
