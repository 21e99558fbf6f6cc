"""One decode step of the bundled chat model: transformers' ``sdpa`` attention against ours.

The model service loads its CPU chat model with ``oraculo.models.attention`` (one-token queries by
grouped matrix products). This measures what that buys where it runs: a decode step (one new
token for every row, over a cache of ``--context`` tokens) of SmolLM2-135M, loaded twice in this
process, once with each attention, in the service's dtype (``--dtype``, bfloat16 by default),
at one torch thread (``--threads``). Rows are either all the same length (no padding mask: what
one stream, or a batch of equal prompts, decodes with) or half of them left-padded by a third
(a mask, as mixed prompts give). The two run in alternation, ``--reps`` blocks of ``--steps``
steps each, and each cell is the median block's milliseconds per step; the greedy tokens of both
are compared (the same in float32; bfloat16 may round a near tie another way).

Usage::

    .venv/bin/python -m benchmarks.decode_attention
    .venv/bin/python -m benchmarks.decode_attention --rows 1,16 --dtype float32

Writes a markdown table to stdout and JSON to ``benchmarks/results/decode_attention-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def load(dtype: str, attention: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.model_service import checkpoint
    from oraculo.models.attention import register

    register()
    return AutoModelForCausalLM.from_pretrained(
        checkpoint(),
        dtype=getattr(torch, dtype),
        local_files_only=True,
        attn_implementation=attention,
    ).eval()


def block(model: Any, rows: int, context: int, padded: bool, steps: int) -> tuple[float, list]:
    """Prefill ``rows`` prompts of ``context`` tokens, then time ``steps`` greedy decode steps."""
    import torch
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(rows * 1000 + context)
    ids = torch.randint(100, 10000, (rows, context), generator=g)
    mask = torch.ones(rows, context, dtype=torch.long)
    if padded:
        mask[: max(1, rows // 2), : context // 3] = 0
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
    tokens = out.logits[:, -1].float().argmax(-1)[:, None]
    positions = mask.sum(-1, keepdim=True)
    seen = []
    start = time.perf_counter()
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype)], 1)
        out = model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        positions = positions + 1
        tokens = out.logits[:, -1].float().argmax(-1)[:, None]
        seen.append(tokens[:, 0].tolist())
    return (time.perf_counter() - start) / steps * 1000, seen


def main() -> None:
    import torch

    from oraculo.models.attention import ATTENTION

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1,4,16", help="batch sizes, comma separated")
    p.add_argument("--context", type=int, default=256, help="cached tokens per row")
    p.add_argument("--steps", type=int, default=16, help="decode steps per block")
    p.add_argument("--reps", type=int, default=5, help="blocks per cell, alternating")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    models = {"sdpa": load(args.dtype, "sdpa"), "ours": load(args.dtype, ATTENTION)}
    rows_out = []
    for rows in [int(r) for r in args.rows.split(",")]:
        for padded in (False, True):
            times: dict[str, list[float]] = {name: [] for name in models}
            same = True
            for _ in range(args.reps):
                seen = {}
                for name, model in models.items():
                    ms, seen[name] = block(model, rows, args.context, padded, args.steps)
                    times[name].append(ms)
                same = same and seen["sdpa"] == seen["ours"]
            sdpa, ours = (statistics.median(times[n]) for n in ("sdpa", "ours"))
            rows_out.append(
                {
                    "rows": rows,
                    "mask": "padded" if padded else "none",
                    "sdpa_ms": round(sdpa, 1),
                    "ours_ms": round(ours, 1),
                    "speedup": round(sdpa / ours, 2),
                    "same_tokens": same,
                    "sdpa_blocks": [round(t, 1) for t in times["sdpa"]],
                    "ours_blocks": [round(t, 1) for t in times["ours"]],
                }
            )
            r = rows_out[-1]
            print(
                f"| {rows} | {r['mask']} | {r['sdpa_ms']} | {r['ours_ms']} | {r['speedup']}x "
                f"| {'yes' if same else 'no'} |",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"decode_attention-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows_out}, indent=2))
    print(
        "\n| rows | mask | transformers sdpa ms/step | ours ms/step | speedup | same tokens |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    for r in rows_out:
        print(
            f"| {r['rows']} | {r['mask']} | {r['sdpa_ms']} | {r['ours_ms']} | {r['speedup']}x "
            f"| {'yes' if r['same_tokens'] else 'no'} |"
        )
    print(f"\n{args.dtype}, {args.threads} thread(s), {args.context} cached tokens; wrote {out}")


if __name__ == "__main__":
    main()
