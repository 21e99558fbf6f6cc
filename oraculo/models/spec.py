"""A declared model (``ModelSpec``): what the configuration says, validated.

Its own module because both the registry (which loads backends) and every backend (which serves
one spec) need it; neither imports the other for it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelSpec(BaseModel):
    """One declared model."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["chat", "embedding", "transcription", "speech"]
    source: str
    backend: str = ""
    gguf_file: str | None = None
    device: str = "auto"
    dtype: str = Field(
        "auto",
        description="weights' dtype (float32, bfloat16, float16). auto, for a chat model: "
        "bfloat16 on a CPU with AVX512-BF16 or AMX, else float32; for speech to text: int8 on "
        "a CPU, float16 on CUDA (CTranslate2 compute types)",
    )
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
    default_temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="temperature of a request that sets none (None: the model's own recommended "
        "settings, see oraculo.models.sampling)",
    )
    default_top_p: float | None = Field(None, gt=0, le=1)
    default_top_k: int | None = Field(None, ge=0)
    prefill_dtype: str = Field(
        "auto",
        description="dtype that prompts are prefilled in (a copy of the weights; decoding keeps "
        "dtype). auto: bfloat16 for a float32 model on a CPU with AMX, else dtype",
    )
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
