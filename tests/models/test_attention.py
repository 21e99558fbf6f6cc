"""The decode-step attention (``oraculo.models.attention``) computes what transformers' ``sdpa``
computes: the same numbers for one-token queries under every kind of mask, the very same call for
anything else, and, in the bundled model, the same greedy tokens through the engine."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from oraculo.models.attention import ATTENTION, decode_attention, register
from oraculo.models.engine import SamplingParams
from tests.models.test_engine_scheduling import Run, chat, lm  # noqa: F401 (the fixture)


class Attn(torch.nn.Module):
    """What the attention functions read of the calling module."""

    def __init__(self, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.num_key_value_groups = heads // kv_heads
        self.is_causal = True


def _inputs(batch: int, heads: int, kv_heads: int, q_len: int, t: int) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(batch * 100 + heads * 10 + q_len)
    q = torch.randn(batch, heads, q_len, 64, generator=g)
    # keys and values as a cache holds them: a transpose of the projection, not contiguous
    k = torch.randn(batch, t, kv_heads, 64, generator=g).transpose(1, 2)
    v = torch.randn(batch, t, kv_heads, 64, generator=g).transpose(1, 2)
    return q, k, v


def _masks(batch: int, heads: int, q_len: int, t: int) -> dict[str, torch.Tensor | None]:
    keep = torch.ones(batch, 1, q_len, t, dtype=torch.bool)
    keep[: batch // 2 + 1, :, :, : t // 3] = False  # left padding on some rows
    if q_len > 1:
        keep &= torch.ones(q_len, t, dtype=torch.bool).tril(t - q_len)
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    per_head = keep.expand(batch, heads, q_len, t).clone()
    per_head[:, 0, :, t // 3 : t // 2] = False  # one head sees less
    return {"none": None, "bool": keep, "additive": additive, "per-head": per_head}


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4), (8, 1)], ids=["gqa", "mha", "mqa"])
@pytest.mark.parametrize("mask", ["none", "bool", "additive", "per-head"])
def test_a_one_token_query_gets_sdpas_numbers(heads: int, kv_heads: int, mask: str) -> None:
    batch, t = 5, 37
    q, k, v = _inputs(batch, heads, kv_heads, 1, t)
    m = _masks(batch, heads, 1, t)[mask]
    module = Attn(heads, kv_heads)
    ours, _ = decode_attention(module, q, k, v, m, scaling=0.125)
    theirs, _ = sdpa_attention_forward(module, q, k, v, m, scaling=0.125)
    assert ours.shape == theirs.shape == (batch, 1, heads, 64)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # bfloat16, the service's dtype on this CPU: within bf16 rounding of the float32 result
    low, _ = decode_attention(
        module,
        q.bfloat16(),
        k.bfloat16(),
        v.bfloat16(),
        m if m is None or m.dtype == torch.bool else m.bfloat16(),
        scaling=0.125,
    )
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), theirs, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_anything_but_a_one_token_query_is_sdpas_own_call(mask: str) -> None:
    q, k, v = _inputs(3, 9, 3, 6, 20)
    m = _masks(3, 9, 6, 20)[mask]
    module = Attn(9, 3)
    ours, _ = decode_attention(module, q, k, v, m, scaling=0.125)
    theirs, _ = sdpa_attention_forward(module, q, k, v, m, scaling=0.125)
    assert torch.equal(ours, theirs)


def test_the_service_loads_its_cpu_model_with_it_and_the_tokens_stay(lm: Any) -> None:  # noqa: F811
    """Greedy replies through the engine (float32), with rows of different lengths (a padded
    batch) and one alone (no mask at all), are token for token what ``sdpa`` gives."""
    model, tokenizer, _ = lm
    assert model.config._attn_implementation == ATTENTION == register()
    prompts = [
        chat(tokenizer, "What is the capital of France?"),
        chat(tokenizer, "Describe a cat in two sentences, please, with some detail."),
        chat(tokenizer, "Name three colours."),
    ]
    greedy = SamplingParams(max_tokens=24, temperature=0)
    answers: dict[str, list[str]] = {}
    try:
        for impl in ("sdpa", ATTENTION):
            model.set_attn_implementation(impl)
            batch = Run(lm, prefix_cache_tokens=0)
            for p in prompts:
                batch.submit(p, greedy)
            alone = Run(lm, prefix_cache_tokens=0)
            alone.submit(prompts[1], greedy)
            answers[impl] = [*batch.finish(), *alone.finish()]
    finally:
        model.set_attn_implementation(ATTENTION)
    assert all(answers["sdpa"]) and "Paris" in answers["sdpa"][0]
    assert answers[ATTENTION] == answers["sdpa"]
