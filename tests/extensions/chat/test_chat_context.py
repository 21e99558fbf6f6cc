"""The context budget policy, on the real ContextService and a real contents manager; which
memories go, judged by the real embedding model of the session hub's model service."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

from benchmarks.retrieval import make_embeddings
from oraculo.extensions.base.errors import BadRequest, NotFound
from oraculo.extensions.chat.context import ContextService, estimate_tokens, message_tokens
from oraculo.extensions.memory.service import MemoryService
from oraculo.kernels.namespace import render_variables, summarize_namespace
from tests.harness import HubClient, HubProcess, new_user


def turns(n: int, size: int = 200) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * size}
        for i in range(n)
    ]


async def test_history_is_cut_oldest_first_and_everything_fits() -> None:
    ctx = ContextService(fallback_context_length=1024, reply_tokens=200, system_prompt="Be brief.")
    history = turns(30)
    new = [{"role": "user", "content": "and now?"}]
    out = await ctx.assemble(history, new, context_length=None, max_tokens=None)
    assert out.messages[0] == {"role": "system", "content": "Be brief."}
    assert out.messages[-1] == new[0]
    kept = out.messages[1:-1]
    assert kept == history[-len(kept) :]  # the newest turns, contiguous
    assert 0 < len(kept) < 30 and out.history_dropped == 30 - len(kept)
    total = sum(message_tokens(m) for m in out.messages)
    assert total == out.prompt_tokens_estimate <= 1024 - 200 - ctx.safety_margin


async def test_a_new_turn_that_cannot_fit_is_a_400() -> None:
    ctx = ContextService(fallback_context_length=512)
    with pytest.raises(BadRequest):
        await ctx.assemble(
            [], [{"role": "user", "content": "y" * 3000}], context_length=None, max_tokens=100
        )


async def test_client_system_messages_join_the_system_prompt() -> None:
    ctx = ContextService(system_prompt="Base.")
    out = await ctx.assemble(
        [{"role": "system", "content": "Old rule."}],
        [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "hi"}],
        context_length=2048,
        max_tokens=16,
    )
    assert out.messages == [
        {"role": "system", "content": "Base.\n\nOld rule.\n\nAnswer in French."},
        {"role": "user", "content": "hi"},
    ]


async def test_notebook_cells_and_variables(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"step_{i} = {i}") for i in range(12)]
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="eleven\n")]
    nbformat.write(nb, tmp_path / "a.ipynb")
    ctx = ContextService(contents_manager=AsyncLargeFileManager(root_dir=str(tmp_path)))
    variables = summarize_namespace({"n": 3, "rows": [1, 2], "_hidden": 1, "Path": Path})
    out = await ctx.assemble(
        [],
        [{"role": "user", "content": "what now?"}],
        context_length=2048,
        max_tokens=64,
        notebook="a.ipynb",
        variables=variables,
    )
    system = out.messages[0]["content"]
    assert out.context.pop("lookup_ms") >= 0
    # the context sections' part of the prompt, for the panel's "of the window" line
    assert 0 < out.context.pop("context_tokens") < out.prompt_tokens_estimate
    assert out.context == {"variables": 2, "notebook": {"path": "a.ipynb", "cells": 8}}
    assert "- n: int = 3" in system and "- rows: list of 2 items" in system
    assert "step_11 = 11" in system and "eleven" in system and "step_3 =" not in system
    with pytest.raises(NotFound):
        await ctx.assemble(
            [],
            [{"role": "user", "content": "x"}],
            context_length=2048,
            max_tokens=8,
            notebook="missing.ipynb",
        )


def test_summary_of_dataframes_and_arrays() -> None:
    import numpy as np
    import pandas as pd

    ns = {
        "df": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        "arr": np.zeros((2, 3), dtype="float32"),
        "pd": pd,
        "f": lambda: 1,
    }
    summary = summarize_namespace(ns)
    assert [v["name"] for v in summary] == ["df", "arr"]
    text = render_variables(summary)
    assert "df: DataFrame 2×2; columns: a (int64), b (" in text
    assert "arr: ndarray shape 2×3, dtype float32" in text


def test_estimate_is_at_least_the_model_tokenizers_count_on_real_text() -> None:
    """Prose, code, JSON, numbers, Spanish, CJK and our own sources: estimate >= real count."""
    import transformers  # the models extra, always installed by ./dev.sh

    from oraculo.models.registry import DEFAULT_MODELS, ModelSpec

    spec = ModelSpec.model_validate(DEFAULT_MODELS[0])
    tok = transformers.AutoTokenizer.from_pretrained(spec.local_path(), gguf_file=spec.gguf_file)
    repo = Path(__file__).resolve().parents[3]
    samples = [
        "The quick brown fox jumps over the lazy dog. " * 20,
        "def f(x):\n    return {k: v for k, v in x.items() if v is not None}\n" * 10,
        "sales.groupby('region')['revenue'].agg(['mean', 'sum']).sort_values('sum')\n" * 10,
        "El niño comió manzanas en la mañana; después, caminó al río. " * 10,
        "3.14159 2.71828 1.41421 0.57721 " * 10,
        '{"a": [1, 2, 3], "b": {"c": null}}\n' * 10,
        "数据分析和机器学习" * 10,
        (repo / "oraculo/models/engine.py").read_text(),
        (repo / "README.md").read_text(),
    ]
    for text in samples:
        real = len(tok(text)["input_ids"])
        assert real <= estimate_tokens(text) <= 2 * real, text[:40]


def test_refit_scale_reads_the_model_services_count() -> None:
    from oraculo.extensions.base.modelclient import ModelServiceError
    from oraculo.extensions.chat.service import refit_scale

    # the numbers come from the envelope's fields, never from the message's wording
    details = {"context_length": 8192, "tokens": 9000, "prompt_tokens": 8990}
    error = ModelServiceError(400, "worded any way", "context_length_exceeded", details=details)
    assert refit_scale(error, 4000) == pytest.approx(1.05 * 8990 / 4000)
    assert refit_scale(ModelServiceError(400, "other", "invalid_request_error"), 4000) is None
    assert refit_scale(ModelServiceError(400, "no count", "context_length_exceeded"), 10) == 2.1


# --- memories are sent only when relevant, judged by the real embedding model ----------------


@dataclass
class _MemoryFeature:
    memories: MemoryService
    index: None = None


MEMORIES = {
    "favourite_region": "north, by revenue",
    "units": "Use metres, never feet.",
    "sales_data": "The quarterly sales are in data/sales_q3.parquet, revenue in euros.",
    "expedition": "The user leads the Quilotoa expedition.",
}


async def test_only_relevant_memories_go_with_a_question(
    tmp_path: Path, models_hub: HubProcess
) -> None:
    client = HubClient(models_hub)
    user = await new_user(client, f"ctx-{uuid.uuid4().hex[:6]}")
    embeddings, http = make_embeddings(f"{models_hub.url}/services/models/", user.token)
    memories = MemoryService(embeddings, path=str(tmp_path / "memories"))
    try:
        for key, value in MEMORIES.items():
            await memories.upsert(key, value)
        ctx = ContextService(memory=lambda: _MemoryFeature(memories))

        async def sent(question: str) -> list[str]:
            new = [{"role": "user", "content": question}]
            out = await ctx.assemble([], new, context_length=2048, max_tokens=64)
            return [m["key"] for m in out.memories]

        for small_talk in ("Hello!", "Thanks, that helps.", "Who are you?"):
            assert await sent(small_talk) == [], small_talk
        assert "favourite_region" in await sent("Which region is my favourite?")
        assert "sales_data" in await sent("Where are the quarterly sales figures?")
        assert "units" in await sent("What units should distances be in?")
        # similarities here (all-MiniLM-L6-v2): small talk 0.20 at most, the related
        # memories 0.62-0.75; an unrelated one (units, 0.09) does not ride along with a lake
        assert "units" not in await sent("How deep is the Quilotoa crater lake?")
        await memories.upsert("lake_depths", "Give lake depths in metres, never feet.")
        assert "lake_depths" in await sent("How deep is the Quilotoa crater lake?")
        assert "expedition" in await sent("Describe the Quilotoa crater lake in three sentences.")
        # -1 sends whatever the search found, as before
        ctx.min_memory_similarity = -1
        assert await sent("Hello!") != []
    finally:
        await memories.close()
        await http.aclose()
        await user.client.aclose()
        await client.aclose()
