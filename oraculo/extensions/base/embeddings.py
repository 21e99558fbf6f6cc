"""Text → vectors through the shared model service's ``POST v1/embeddings``.

The user's server never loads an embedding model itself: every server sharing one set of
weights on the model service is the point of that service (a local sentence-transformers copy
would cost each server ~400 MB and a torch import). So where no model service is configured, or
it does not answer, :meth:`EmbeddingClient.embed` raises :class:`~oraculo.extensions.base.errors.
Unavailable` (503, with a ``retry_after`` hint) and nothing is stored without its vector.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import OrderedDict

import httpx
from traitlets import Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import Unavailable


class EmbeddingsUnavailable(Unavailable):
    """The model service is not configured, unreachable, or refused the request."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, reason="Embeddings unavailable")
        self.retry_after = retry_after


class EmbeddingClient(LoggingConfigurable):
    """Embeds texts with the model service's embedding model (all-MiniLM-L6-v2 by default)."""

    models_url = Unicode(
        "",
        config=True,
        help="""Base URL of the model service, ending in /. Empty: no model service, and every
        call that needs a vector answers 503. The memory feature passes the extension's
        ``models_url`` (ORACULO_MODELS_URL).""",
    )
    token = Unicode(
        config=True,
        help="""Bearer token for the model service. Default ORACULO_MODELS_TOKEN, else the
        server's own JUPYTERHUB_API_TOKEN (its server role may reach the model service).""",
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

    @default("token")
    def _default_token(self) -> str:
        return os.environ.get("ORACULO_MODELS_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")

    query_cache_size = Integer(
        256,
        config=True,
        help="""Query vectors kept (least recently used out). A chat turn searches memories and
        the workspace with the same query: it is embedded once.""",
    )

    _client: httpx.AsyncClient | None = None
    _queries: OrderedDict[str, asyncio.Future[list[float]]]
    #: The model's context in tokens, once the service has told us (context_length_exceeded).
    _context: int | None = None

    @property
    def configured(self) -> bool:
        return bool(self.models_url)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._client = httpx.AsyncClient(timeout=self.timeout, headers=headers, trust_env=False)
        return self._client

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order. Raises :class:`EmbeddingsUnavailable` (503)."""
        if not self.models_url:
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
        url = self.models_url.rstrip("/") + "/v1/embeddings"
        texts = [t[: self._limit()] or " " for t in batch]
        for _ in range(len(texts) + 3):
            try:
                r = await self._http().post(url, json={"model": self.model, "input": texts})
            except httpx.HTTPError as e:
                raise EmbeddingsUnavailable(
                    f"The model service did not answer ({type(e).__name__})."
                ) from e
            too_long = _too_long(r)
            if too_long is None:
                break
            context, index, tokens = too_long
            self._context = context
            texts = [t[: self._limit()] for t in texts]
            if 0 <= index < len(texts) and tokens > context:
                cut = int(len(texts[index]) * context / tokens * 0.9)
                texts[index] = texts[index][: max(cut, 1)]
        if r.status_code != 200:
            self.log.warning("embeddings request answered HTTP %s: %s", r.status_code, r.text[:300])
            retry = r.headers.get("Retry-After", "")
            raise EmbeddingsUnavailable(
                f"The model service answered HTTP {r.status_code} to an embeddings request.",
                retry_after=int(retry) if retry.isdigit() else 5,
            )
        try:
            data = sorted(r.json()["data"], key=lambda d: d["index"])
            out = [[float(x) for x in d["embedding"]] for d in data]
        except (ValueError, KeyError, TypeError) as e:
            raise EmbeddingsUnavailable(
                "The model service sent a malformed embeddings answer."
            ) from e
        if len(out) != len(batch):
            raise EmbeddingsUnavailable("The model service sent the wrong number of embeddings.")
        return out

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


_TOO_LONG = re.compile(r"maximum context length is (\d+) tokens, but input (\d+) has (\d+)")


def _too_long(r: httpx.Response) -> tuple[int, int, int] | None:
    """``(context, input index, tokens)`` when the service refused an input as too long."""
    if r.status_code != 400:
        return None
    try:
        error = r.json()["error"]
        if error.get("code") != "context_length_exceeded":
            return None
        match = _TOO_LONG.search(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not match:
        return None
    context, index, tokens = (int(g) for g in match.groups())
    return context, index, tokens
