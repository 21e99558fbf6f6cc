"""A model's own sampling defaults: what a request that leaves ``temperature``/``top_p`` unset gets.

In order, the first that says anything wins:

1. the model's declaration (``default_temperature``, ``default_top_p``, ``default_top_k``): the
   operator's choice;
2. the recommended settings a GGUF file carries (``general.sampling.temp``, ``.top_p``,
   ``.top_k``: llama.cpp's convention);
3. the model's ``generation_config.json``, read as ``generate()`` reads it: ``do_sample`` false
   (transformers' default when the file says nothing) means greedy, else its ``temperature``,
   ``top_p`` and ``top_k``.

Never a fixed 1.0: at temperature 1 a small model rambles (SmolLM2-135M answered "Say hello in three
words." with nonsense), and a model that recommends nothing is decoded as its authors' own
``generate()`` would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class SamplingDefaults:
    temperature: float
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    source: str = "generation_config"  # where they came from, for /health and the logs

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _gguf_sampling(path: Path) -> dict[str, float]:
    """``general.sampling.*`` of a GGUF file (empty when it has none or cannot be read)."""
    try:
        from gguf import GGUFReader

        fields = GGUFReader(path).fields
    except Exception:
        return {}
    found: dict[str, float] = {}
    for key, name in (("temp", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        field = fields.get(f"general.sampling.{key}")
        if field is not None:
            found[name] = float(field.contents())
    return found


def _generation_config(config: Any) -> SamplingDefaults:
    if config is None or not getattr(config, "do_sample", False):
        return SamplingDefaults(temperature=0.0)
    return SamplingDefaults(
        temperature=float(config.temperature if config.temperature is not None else 1.0),
        top_p=float(config.top_p if config.top_p is not None else 1.0),
        top_k=int(config.top_k or 0),
    )


def sampling_defaults(spec: ModelSpec, generation_config: Any) -> SamplingDefaults:
    """The defaults of one loaded model (``generation_config``: ``model.generation_config``)."""
    base = _generation_config(generation_config)
    if spec.gguf_file:
        gguf = _gguf_sampling(spec.local_path() / spec.gguf_file)
        if gguf:
            base = SamplingDefaults(
                temperature=gguf.get("temperature", 1.0),
                top_p=gguf.get("top_p", 1.0),
                top_k=int(gguf.get("top_k", 0)),
                source="gguf",
            )
    if (spec.default_temperature, spec.default_top_p, spec.default_top_k) != (None, None, None):
        base = SamplingDefaults(
            temperature=_first(spec.default_temperature, base.temperature),
            top_p=_first(spec.default_top_p, base.top_p),
            top_k=int(_first(spec.default_top_k, base.top_k)),
            source="model entry",
        )
    return base


def _first(declared: float | None, otherwise: float) -> float:
    return otherwise if declared is None else declared
