"""Iteration-level (continuous) batching over a transformers causal LM.

One engine thread owns the model. Each iteration it admits waiting sequences (prefilled together,
left-padded), merges their KV cache into the running batch, runs one decode forward pass for every
running sequence, samples one token per row and drops the rows that finished or were cancelled. A
new request therefore joins the batch at the next iteration and a finished one leaves it at once;
nobody waits for the batch to drain.

Why our own scheduler rather than transformers' ``generate_batch``/``init_continuous_batching``: on
this CPU the built-in paged manager gave 47-63 tok/s for 8 requests where a plain padded batch gave
100-117 (docs MEASURED.md), and its default KV cache reserves most of the RAM. The padded-batch
cache below keeps the model's fast SDPA path, needs no custom kernels, and runs unchanged on CUDA.

The engine is plain threading + torch: no asyncio, no tornado. Results leave through a per-sequence
``sink`` callable, called on the engine thread; callers must make it thread-safe.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry later."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # grammar state (oraculo.models.constrained.TokenConstraint): masks logits, follows tokens
    constraint: Any = None


@dataclasses.dataclass
class EngineEvent:
    """What the engine tells a sequence's sink: a text delta, or the end (``finish_reason`` set)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


Sink = Callable[[EngineEvent], None]


class GenSequence:
    """One request's state inside the engine."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Sink) -> None:
        self.id = next(self._ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.generated: list[int] = []
        self.sent_chars = 0
        self.cancelled = False
        self.done = False
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)

    def cancel(self) -> None:
        """Ask the engine to drop this sequence at its next iteration (thread-safe: a flag)."""
        self.cancelled = True


@dataclasses.dataclass
class EngineStats:
    """Counters for tests, /health and /metrics."""

    decode_steps: int = 0
    prefill_steps: int = 0
    tokens_generated: int = 0
    sequences_finished: int = 0
    sequences_cancelled: int = 0
    max_batch_seen: int = 0


class BatchEngine:
    """Continuous batching for one causal LM on one device.

    ``max_batch_size`` bounds the running batch (and so KV-cache memory: rows x context length);
    ``max_waiting`` bounds the queue in front of it; ``max_prefill_tokens`` bounds how many prompt
    tokens one iteration prefills, so a burst of long prompts cannot stall running streams for long.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        eos_token_ids: Sequence[int],
        context_length: int,
        max_batch_size: int = 32,
        max_waiting: int = 64,
        max_prefill_tokens: int = 4096,
        name: str = "model",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        # fast tokenizers are not safe to use from two threads at once; encoders share this lock
        self.tokenizer_lock = threading.Lock()
        self.device = next(model.parameters()).device
        self.eos_token_ids = frozenset(eos_token_ids)
        self.context_length = context_length
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self.name = name
        self.stats = EngineStats()
        self._waiting: collections.deque[GenSequence] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # running batch
        self._rows: list[GenSequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [B, T] 1 = real token, 0 = left padding
        self._positions: torch.Tensor | None = None  # [B] position of the next token to feed
        self._next_tokens: torch.Tensor | None = None  # [B] sampled, not yet fed

    # -- public, any thread -------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"engine-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Sink) -> GenSequence:
        """Queue a sequence; raises QueueFull past ``max_waiting``."""
        seq = GenSequence(prompt_ids, params, sink)
        with self._cond:
            # waiting beyond the free batch slots is what the bound limits
            if len(self._waiting) + len(self._rows) >= self.max_batch_size + self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests already waiting")
            self._waiting.append(seq)
            self._cond.notify()
        return seq

    # -- engine thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        # OpenMP thread counts are per thread: apply the process-wide setting to this one
        torch.set_num_threads(torch.get_num_threads())
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._stopping:
                    break
                admitted = self._take_admissible()
            try:
                if admitted:
                    self._prefill(admitted)
                self._drop_finished()
                if self._rows:
                    self._decode_step()
                    self._drop_finished()
            except Exception as e:
                log.exception("engine %s iteration failed", self.name)
                for seq in [*self._rows, *admitted]:
                    if not seq.done:
                        self._finish(seq, "error", error=f"{type(e).__name__} in model engine")
                self._reset_batch()
        for seq in [*self._rows, *self._waiting]:
            if not seq.done:
                self._finish(seq, "error", error="model service is shutting down")

    def _take_admissible(self) -> list[GenSequence]:
        free = self.max_batch_size - len(self._rows)
        taken: list[GenSequence] = []
        budget = self.max_prefill_tokens
        while self._waiting and len(taken) < free:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                self._finish(seq, "cancelled")
                continue
            # always admit at least one, however long its prompt
            if taken and len(seq.prompt_ids) > budget:
                break
            budget -= len(seq.prompt_ids)
            taken.append(self._waiting.popleft())
        return taken

    def _prefill(self, seqs: list[GenSequence]) -> None:
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            n = len(s.prompt_ids)
            ids[i, width - n :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.prefill_steps += 1
        logits = out.logits[:, -1, :].float()
        next_tokens = self._sample(logits, seqs)
        self._merge(seqs, cache, mask.to(self.device), next_tokens)
        for seq, tok in zip(seqs, next_tokens.tolist(), strict=True):
            self._accept(seq, tok)

    def _merge(
        self, seqs: list[GenSequence], cache: Any, mask: torch.Tensor, next_tokens: torch.Tensor
    ) -> None:
        """Append freshly prefilled rows to the running batch, left-padding the shorter side."""
        from transformers import DynamicCache

        new_pos = mask.sum(-1)
        if not self._rows or self._cache is None or self._mask is None:
            self._rows = list(seqs)
            self._cache, self._mask = cache, mask
            self._positions, self._next_tokens = new_pos, next_tokens.to(self.device)
            return
        assert self._positions is not None and self._next_tokens is not None
        old_t, new_t = self._mask.shape[1], mask.shape[1]
        width = max(old_t, new_t)
        layers = []
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            k = torch.cat([_left_pad(old_layer.keys, width), _left_pad(new_layer.keys, width)])
            v = torch.cat([_left_pad(old_layer.values, width), _left_pad(new_layer.values, width)])
            layers.append((k, v))
        self._cache = DynamicCache(ddp_cache_data=layers)
        self._mask = torch.cat([_left_pad_mask(self._mask, width), _left_pad_mask(mask, width)])
        self._positions = torch.cat([self._positions, new_pos])
        self._next_tokens = torch.cat([self._next_tokens, next_tokens.to(self.device)])
        self._rows.extend(seqs)

    def _decode_step(self) -> None:
        assert self._mask is not None and self._positions is not None
        assert self._next_tokens is not None
        batch = len(self._rows)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, batch)
        mask = torch.cat(
            [self._mask, torch.ones((batch, 1), dtype=self._mask.dtype, device=self.device)], 1
        )
        out = self.model(
            input_ids=self._next_tokens[:, None],
            attention_mask=mask,
            position_ids=self._positions[:, None],
            cache=self._cache,
            use_cache=True,
        )
        self.stats.decode_steps += 1
        self._mask = mask
        self._positions = self._positions + 1
        next_tokens = self._sample(out.logits[:, -1, :].float(), self._rows)
        self._next_tokens = next_tokens.to(self.device)
        for seq, tok in zip(self._rows, next_tokens.tolist(), strict=True):
            if not seq.done:
                self._accept(seq, tok)

    def _sample(self, logits: torch.Tensor, seqs: Sequence[GenSequence]) -> torch.Tensor:
        for i, seq in enumerate(seqs):
            if seq.params.constraint is not None and not seq.done:
                seq.params.constraint.mask(logits[i])
        tokens = logits.argmax(-1).cpu()
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.temperature <= 0:
                continue
            row = logits[i] / p.temperature
            if p.top_p < 1.0:
                sorted_logits, order = torch.sort(row, descending=True)
                cum = torch.softmax(sorted_logits, -1).cumsum(-1)
                drop = cum - torch.softmax(sorted_logits, -1) > p.top_p
                sorted_logits[drop] = float("-inf")
                row = torch.full_like(row, float("-inf")).scatter(0, order, sorted_logits)
            probs = torch.softmax(row, -1).cpu()
            tokens[i] = torch.multinomial(probs, 1, generator=seq.generator).item()
        return tokens

    def _accept(self, seq: GenSequence, token: int) -> None:
        """Record one sampled token: stream its text, or finish the sequence."""
        self.stats.tokens_generated += 1
        if token in self.eos_token_ids:
            self._finish(seq, "stop")
            return
        if seq.params.constraint is not None and not seq.params.constraint.advance(token):
            self._finish(seq, "error", error="the grammar refused a sampled token")
            return
        seq.generated.append(token)
        with self.tokenizer_lock:
            text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        for stop in seq.params.stop:
            at = text.find(stop)
            if at >= 0:
                self._emit(seq, text[:at])
                self._finish(seq, "stop")
                return
        if len(seq.generated) >= seq.params.max_tokens:
            self._emit(seq, text)
            self._finish(seq, "length")
            return
        if len(seq.prompt_ids) + len(seq.generated) >= self.context_length:
            self._emit(seq, text)
            self._finish(seq, "length")
            return
        # hold back an incomplete UTF-8 character and what may be the start of a stop string
        hold = max((len(s) - 1 for s in seq.params.stop), default=0)
        end = len(text) - hold
        while end > seq.sent_chars and text[end - 1] == "\ufffd":
            end -= 1
        self._emit(seq, text[:end])

    def _emit(self, seq: GenSequence, text: str) -> None:
        if len(text) > seq.sent_chars:
            delta = text[seq.sent_chars :]
            seq.sent_chars = len(text)
            self._deliver(seq, EngineEvent(text=delta))

    def _finish(self, seq: GenSequence, reason: str, error: str | None = None) -> None:
        seq.done = True
        if reason == "cancelled":
            self.stats.sequences_cancelled += 1
        else:
            self.stats.sequences_finished += 1
        self._deliver(
            seq,
            EngineEvent(
                finish_reason=reason,
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=len(seq.generated),
                error=error,
            ),
        )

    def _deliver(self, seq: GenSequence, event: EngineEvent) -> None:
        try:
            seq.sink(event)
        except Exception:
            # a broken sink (closed event loop, say) must not take the batch down with it
            log.exception("sink of sequence %s failed; cancelling it", seq.id)
            seq.cancelled = True

    def _drop_finished(self) -> None:
        for seq in self._rows:
            if seq.cancelled and not seq.done:
                self._finish(seq, "cancelled")
        if all(not s.done for s in self._rows):
            return
        keep = [i for i, s in enumerate(self._rows) if not s.done]
        if not keep:
            self._reset_batch()
            return
        assert self._mask is not None and self._positions is not None
        assert self._next_tokens is not None
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._positions = self._positions[index]
        self._next_tokens = self._next_tokens[index]
        self._rows = [self._rows[i] for i in keep]
        # trim columns that are padding in every remaining row, so memory follows the live batch
        first = int(self._mask.any(0).nonzero()[0].item())
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]

    def _reset_batch(self) -> None:
        self._rows = []
        self._cache = self._mask = self._positions = self._next_tokens = None


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad a [B, H, T, D] cache tensor with zeros along T up to ``width``."""
    pad = width - t.shape[2]
    if pad == 0:
        return t
    zeros = torch.zeros((t.shape[0], t.shape[1], pad, t.shape[3]), dtype=t.dtype, device=t.device)
    return torch.cat([zeros, t], dim=2)


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    pad = width - mask.shape[1]
    if pad == 0:
        return mask
    return torch.cat(
        [torch.zeros((mask.shape[0], pad), dtype=mask.dtype, device=mask.device), mask], 1
    )
