"""Backends: what serves one declared model (local transformers, sentence-transformers, upstream).

A chat backend turns a validated ``ChatCompletionRequest`` into a ``ChatStream`` — an async iterator
of text deltas that knows its token counts and finish reason when it ends — or raises a
``ModelServiceError`` *before* anything is streamed (bad length, full queue, upstream refusal). The
HTTP layer formats the stream as OpenAI JSON or SSE; backends know nothing of HTTP.

The base classes live in ``base``; the registry (``oraculo.models.registry``) finds a backend class
by name and imports its module only when a model needs it."""

from __future__ import annotations

from .base import Backend, ChatStream

__all__ = ["Backend", "ChatStream"]
