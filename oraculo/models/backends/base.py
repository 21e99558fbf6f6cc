"""What every backend is: ``Backend`` (serves one ``ModelSpec``) and ``ChatStream`` (one
completion's text deltas, fed from any thread)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from traitlets import Instance
from traitlets.config import LoggingConfigurable

from ..errors import ModelServiceError
from ..protocol import ChatCompletionRequest
from ..spec import ModelSpec


class ChatStream:
    """Text deltas of one completion, fed from any thread through ``put``/``finish``."""

    def __init__(self, prompt_tokens: int = 0) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: ModelServiceError | None = None
        #: Tool calls a backend received whole (an upstream's), OpenAI's message shape; set
        #: before ``finish``. Local models write theirs as text that the handler parses.
        self.tool_calls: list[dict[str, Any]] | None = None
        self._cancel_cb: Any = None

    # producer side (thread-safe)
    def put(self, text: str) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, text)

    def finish(
        self,
        reason: str,
        prompt_tokens: int | None = None,
        completion_tokens: int = 0,
        error: ModelServiceError | None = None,
    ) -> None:
        def _done() -> None:
            self.finish_reason = reason
            if prompt_tokens is not None:
                self.prompt_tokens = prompt_tokens
            self.completion_tokens = completion_tokens
            self.error = error
            self._queue.put_nowait(None)

        self._loop.call_soon_threadsafe(_done)

    # consumer side (event loop)
    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def on_cancel(self, cb: Any) -> None:
        self._cancel_cb = cb

    def cancel(self) -> None:
        """Stop generating (client went away); idempotent."""
        if self._cancel_cb is not None and self.finish_reason is None:
            self._cancel_cb()


class Backend(LoggingConfigurable):
    """Serves one ``ModelSpec``. ``load`` may block (it runs in a thread at startup)."""

    spec = Instance(ModelSpec)

    def load(self) -> None:
        """Load weights / open connections."""

    async def aclose(self) -> None:
        """Release resources."""

    def info(self) -> dict[str, Any]:
        """Non-secret state for /health."""
        return {"name": self.spec.name, "kind": self.spec.kind, "backend": self.spec.backend}

    def context_length(self) -> int | None:
        return self.spec.context_length

    async def start_chat(self, request: ChatCompletionRequest) -> ChatStream:
        raise NotImplementedError

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        """Return one vector per input and the number of input tokens."""
        raise NotImplementedError
