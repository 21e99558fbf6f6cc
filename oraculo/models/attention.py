"""Decode-step attention for grouped-query models on CPU, as a transformers attention function.

A decode step asks one query token per row to attend over its cache. transformers' ``sdpa`` path
hands that to ``scaled_dot_product_attention``, whose CPU kernel is slow there in bfloat16: with
no padding mask (one stream, or rows of equal length) it runs with ``enable_gqa`` at about 5.9 ms
a layer for 16 rows of SmolLM2-135M over 276 cached tokens, where two grouped matrix products
and a softmax take 0.5 ms (2 cores, AVX512-BF16, one thread). A whole decode step of 16 unpadded
rows went from 225 ms to 98 ms, and one stream's from 61 ms to 57 ms; rows with padding took
about the same either way.

``decode_attention`` therefore computes a one-token query as ``softmax(q·Kᵀ·scale + mask)·V`` with
the query heads grouped by the key/value head they share (no copy of the cache per query head),
the softmax in float32. Everything else (prompts, position biases, soft caps, other devices) goes
to transformers' own ``sdpa_attention_forward`` unchanged, and masks are made as for ``sdpa``.
"""

from __future__ import annotations

from typing import Any

import torch

#: the name models are loaded with (``attn_implementation=``) once ``register`` has run
ATTENTION = "oraculo_sdpa"


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` [B, H, Q, D], ``key``/``value``
    [B, KVH, T, D]; returns [B, Q, H, D]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if (
        q_len != 1
        or query.device.type != "cpu"
        or dropout
        or heads % kv_heads
        or value.shape[-1] != dim
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or kwargs.get("output_attentions")
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    group = heads // kv_heads
    # query heads h*group .. h*group+group-1 share key/value head h (transformers' repeat_kv order)
    q = query.reshape(batch, kv_heads, group, dim)
    scores = torch.matmul(q, key.transpose(-1, -2))  # [B, KVH, group, T]
    scores.mul_(scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:
        mask = attention_mask
        if mask.shape[1] != 1:  # per head: [B, H, 1, T] -> [B, KVH, group, T]
            mask = mask.reshape(mask.shape[0], kv_heads, group, mask.shape[-1])
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask)
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, KVH, group, D]
    return out.reshape(batch, 1, heads, dim), None


def register() -> str:
    """Make ``ATTENTION`` a name transformers accepts (attention function and mask maker);
    returns it. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, decode_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION
