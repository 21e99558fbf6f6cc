"""Text → vectors through the shared model service's ``POST v1/embeddings``.

The user's server never loads an embedding model itself: every server sharing one set of
weights on the model service is the point of that service (a local sentence-transformers copy
would cost each server ~400 MB and a torch import). So where no model service is configured, or
it does not answer, :meth:`EmbeddingClient.embed` raises :class:`~oraculo.extensions.base.errors.
Unavailable` (503, with a ``retry_after`` hint) and nothing is stored without its vector.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from traitlets import Float, Instance, Integer, Unicode
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import NotFound, Unavailable
from oraculo.extensions.base.modelclient import ModelClient, ModelServiceError


class EmbeddingsUnavailable(Unavailable):
    """The model service is not configured, unreachable, or refused the request."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, reason="Embeddings unavailable")
        self.retry_after = retry_after


class EmbeddingClient(LoggingConfigurable):
    """Embeds texts with the model service's embedding model (all-MiniLM-L6-v2 by default)."""

    models = Instance(
        ModelClient,
        help="""The extension's one client of the model service (its URL and credential). Without
        a model service every call that needs a vector answers 503.""",
    )
    model = Unicode(
        "all-minilm-l6-v2",
        config=True,
        help="""Embedding model name in the model service's registry. Changing it makes stored
        vectors incomparable: the workspace index is rebuilt; memories must be re-added.""",
    )
    batch_size = Integer(
        64, config=True, help="Texts sent per embeddings request (the service accepts ≤ 2048)."
    )
    timeout = Float(60.0, config=True, help="Seconds to wait for one embeddings request.")
    max_input_chars = Integer(
        2000,
        config=True,
        help="""Texts are cut to this many characters before they are sent. The model reads
        only its context (256 tokens for MiniLM) anyway; the service refuses longer inputs, so
        once it has said its context length, inputs are cut to ~3 characters a token, and an
        input it still refuses is cut to fit.""",
    )

    query_cache_size = Integer(
        256,
        config=True,
        help="""Query vectors kept (least recently used out). A chat turn searches memories and
        the workspace with the same query: it is embedded once.""",
    )

    _queries: OrderedDict[str, asyncio.Future[list[float]]]
    #: The model's context in tokens, once the service has told us (context_length_exceeded).
    _context: int | None = None

    @property
    def configured(self) -> bool:
        return self.models is not None and self.models.configured

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order. Raises :class:`EmbeddingsUnavailable` (503)."""
        if not self.configured:
            raise EmbeddingsUnavailable(
                "No model service is configured (ORACULO_MODELS_URL), so memories and the "
                "workspace index cannot be embedded or searched.",
                retry_after=60,
            )
        vectors: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            vectors.extend(await self._request(texts[i : i + self.batch_size]))
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """The vector of one search query: concurrent and recent identical queries share one
        request. A failed request is not cached."""
        if not hasattr(self, "_queries"):
            self._queries = OrderedDict()
        key = f"{self.model}\0{text}"
        future = self._queries.get(key)
        if future is not None:
            self._queries.move_to_end(key)
            return list(await asyncio.shield(future))
        future = asyncio.ensure_future(self._embed_one(text))
        self._queries[key] = future
        while len(self._queries) > max(self.query_cache_size, 1):
            self._queries.popitem(last=False)
        try:
            return list(await asyncio.shield(future))
        except BaseException:
            if self._queries.get(key) is future:
                del self._queries[key]
            raise

    async def _embed_one(self, text: str) -> list[float]:
        (vector,) = await self.embed([text])
        return vector

    def _limit(self) -> int:
        return (
            min(self.max_input_chars, self._context * 3) if self._context else self.max_input_chars
        )

    async def _request(self, batch: list[str]) -> list[list[float]]:
        texts = [t[: self._limit()] or " " for t in batch]
        for _ in range(len(texts) + 3):
            try:
                return await self.models.embeddings(self.model, texts, timeout=self.timeout)
            except ModelServiceError as e:
                if e.type != "context_length_exceeded":
                    self.log.warning("embeddings request failed: HTTP %s %s", e.status, e.message)
                    raise EmbeddingsUnavailable(
                        f"The model service answered HTTP {e.status} to an embeddings request.",
                        retry_after=e.retry_after or 5,
                    ) from e
                # the service says, in fields, how long the model reads and which input was over
                context, index, tokens = (
                    e.details.get(k) for k in ("context_length", "index", "tokens")
                )
                if not isinstance(context, int) or context <= 0:
                    raise EmbeddingsUnavailable(
                        "The model service refused an input as too long without saying its limit."
                    ) from e
                self._context = context
                texts = [t[: self._limit()] for t in texts]
                if isinstance(index, int) and isinstance(tokens, int) and 0 <= index < len(texts):
                    if tokens > context:
                        cut = int(len(texts[index]) * context / tokens * 0.9)
                        texts[index] = texts[index][: max(cut, 1)]
            except (Unavailable, NotFound) as e:
                raise EmbeddingsUnavailable(e.message) from e
        raise EmbeddingsUnavailable("The model service kept refusing inputs as too long.")

    async def close(self) -> None:
        """Nothing of its own to close: the extension closes the shared model client."""
