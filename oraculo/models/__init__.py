"""The shared model service: OpenAI-compatible API over local and upstream models."""
