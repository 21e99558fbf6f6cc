"""Iteration-level (continuous) batching over a transformers causal LM.

One engine thread owns the model. Each iteration it admits waiting sequences (prefilled together,
left-padded), merges their KV cache into the running batch, runs one decode forward pass for every
running sequence, samples one token per row and drops the rows that finished or were cancelled. A
new request therefore joins the batch at the next iteration and a finished one leaves it at once;
nobody waits for the batch to drain.

Prefill is what makes a burst of arrivals slow to answer: on CPU it costs ~3 ms per prompt token
here, so 16 chat prompts prefilled in one pass delay every first token by ~2 s while running streams
stall. Two things bound it (both off when set to 0, which is the engine's original behaviour):

- ``prefill_chunk_tokens``, a per-iteration budget of prompt tokens. Arrivals are prefilled in
  small groups that fit it, first come first served, each iteration followed by a decode step, so
  the first arrivals get their first token early and running streams keep streaming. A prompt longer
  than the budget is prefilled alone over several iterations (chunks of its KV cache); arrivals
  behind it may use up to half of each iteration's budget, so a long prompt cannot hold up the short
  ones behind it, nor can they starve it.
- ``prefix_cache_tokens``, the KV cache of recent prompts kept for reuse: a prompt that starts like
  one seen before (the chat template's system prompt, say) prefills only what differs. Causal
  attention makes a prefix's keys and values independent of what follows it, so reuse is exact up
  to float rounding. A group admitted together that shares a prefix prefills it once.

Per token, a sequence's text comes from an incremental detokenizer (``oraculo.models.detok``: a
few tokens decoded, not the whole reply again), and stop strings are searched only where the new
text can complete them. Prompts may be prefilled by a bf16 copy of the weights (``prefill_dtype``:
~2.5x faster prompt processing on a CPU with AMX), all but each prompt's last token, whose logits
the model itself computes, so the first token is sampled from full-precision logits.

Why our own scheduler rather than transformers' ``generate_batch``/``init_continuous_batching``: on
this CPU the built-in paged manager gave 47-63 tok/s for 8 requests where a plain padded batch gave
100-117 (docs MEASURED.md), and its default KV cache reserves most of the RAM. The padded-batch
cache below keeps the model's fast SDPA path, needs no custom kernels, and runs unchanged on CUDA.

The engine is plain threading + torch: no asyncio, no tornado. Results leave through a per-sequence
``sink`` callable, called on the engine thread; callers must make it thread-safe.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from .detok import IncrementalDetokenizer

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry later."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
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
        self.detok: IncrementalDetokenizer | None = None  # made by the engine at the first token
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
    prefill_tokens: int = 0  # prompt tokens computed (not those reused from the prefix cache)
    tokens_generated: int = 0
    sequences_finished: int = 0
    sequences_cancelled: int = 0
    max_batch_seen: int = 0


@dataclasses.dataclass
class _Prefix:
    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer keys, values: [1, H, len(ids), D]


class PrefixCache:
    """The KV cache of recent prompts, bounded in tokens, least recently used dropped first."""

    def __init__(self, max_tokens: int, min_match: int = 16) -> None:
        self.max_tokens = max_tokens
        self.min_match = min_match
        self._entries: list[_Prefix] = []  # oldest first
        self.tokens = 0

    def match(self, ids: Sequence[int]) -> tuple[int, _Prefix | None]:
        """The longest cached prefix of ``ids`` that leaves at least one token to prefill.

        A lookup only looks (the scheduler asks often, to size its groups): the entry counts as
        recently used when its KV cache is really reused, through ``touch``.
        """
        best, found = 0, None
        for entry in self._entries:
            n = _common_prefix(entry.ids, ids)
            if n > best:
                best, found = n, entry
        best = min(best, len(ids) - 1)
        if found is None or best < self.min_match:
            return 0, None
        return best, found

    def touch(self, entry: _Prefix) -> None:
        """Mark an entry as just used: the last to be dropped."""
        if entry in self._entries:
            self._entries.remove(entry)
            self._entries.append(entry)

    def add(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if not 0 < len(ids) <= self.max_tokens:
            return
        # an entry this one extends (or repeats) is redundant now
        for old in [e for e in self._entries if _common_prefix(e.ids, ids) == len(e.ids)]:
            self._remove(old)
        self._entries.append(_Prefix(ids, layers))
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            self._remove(self._entries[0])

    def _remove(self, entry: _Prefix) -> None:
        self._entries.remove(entry)
        self.tokens -= len(entry.ids)

    def clear(self) -> None:
        self._entries, self.tokens = [], 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class BatchEngine:
    """Continuous batching for one causal LM on one device.

    ``max_batch_size`` bounds the running batch (and so KV-cache memory: rows x context length);
    ``max_waiting`` bounds the queue in front of it. ``prefill_chunk_tokens`` is the per-iteration
    budget of prompt tokens (0: prefill whatever fits ``max_prefill_tokens`` at once, the original
    scheduling); ``prefix_cache_tokens`` bounds the KV cache kept of recent prompts for reuse (0:
    none). ``None`` takes the class defaults below.
    """

    #: prompt tokens prefilled per iteration; 0 = all admitted prompts at once (up to
    #: ``max_prefill_tokens``). On CPU, 128 (~5 short chat prompts once their system prompt is
    #: reused) measured best for time to first token at 16 streams without costing throughput
    #: (benchmarks/model_service.py --engines). A GPU prefills hundreds of tokens in about the time
    #: of one: 512 there is a guess, not a measurement.
    default_prefill_chunk_tokens = 128
    default_prefill_chunk_tokens_gpu = 512
    #: tokens of recent prompts' KV cache kept for reuse (~46 KiB a token for SmolLM2-135M in fp32)
    default_prefix_cache_tokens = 2048

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
        prefill_chunk_tokens: int | None = None,
        prefix_cache_tokens: int | None = None,
        prefill_dtype: torch.dtype | None = None,
        name: str = "model",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        # fast tokenizers are not safe to use from two threads at once; encoders share this lock
        self.tokenizer_lock = threading.Lock()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # prompts may be prefilled by a copy of the weights in another dtype (bf16 on a CPU with
        # AMX: ~2.5x faster prompt processing), their KV cache cast back for decoding
        self.prefill_dtype = prefill_dtype or self.dtype
        self._prefill_model = model
        if self.prefill_dtype != self.dtype:
            self._prefill_model = copy.deepcopy(model).to(self.prefill_dtype)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.context_length = context_length
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        if prefill_chunk_tokens is None:
            prefill_chunk_tokens = (
                self.default_prefill_chunk_tokens
                if self.device.type == "cpu"
                else self.default_prefill_chunk_tokens_gpu
            )
        if prefix_cache_tokens is None:
            prefix_cache_tokens = self.default_prefix_cache_tokens
        self.prefill_chunk_tokens = max(0, prefill_chunk_tokens)
        self._prefixes = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
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
        # a prompt longer than the per-iteration budget, prefilled over several iterations
        self._partial: GenSequence | None = None
        self._partial_cache: Any = None
        self._partial_done = 0  # prompt tokens in its cache

    # -- public, any thread -------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Sequences holding a batch slot: decoding, or half-way through a chunked prefill.

        A row whose finish has been delivered no longer counts, though the engine thread drops
        it from the batch a moment later: its client may already have sent its next request,
        which must not be refused as over the bound for a slot that is free."""
        return sum(not s.done for s in self._rows) + (self._partial is not None)

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
            if len(self._waiting) + self.running >= self.max_batch_size + self.max_waiting:
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
                while (
                    not self._stopping
                    and not self._waiting
                    and not self._rows
                    and self._partial is None
                ):
                    self._cond.wait()
                if self._stopping:
                    break
                if self.prefill_chunk_tokens:
                    admitted = self._take_group()
                else:
                    admitted = self._take_admissible()
            try:
                # what the group costs, counted before its prompts enter the prefix cache
                used = len(admitted) * max((self._suffix_len(s) for s in admitted), default=0)
                if admitted:
                    self._prefill(admitted)
                if self._partial is not None:
                    self._prefill_partial(max(1, self.prefill_chunk_tokens - used))
                self._drop_finished()
                if self._rows:
                    self._decode_step()
                    self._drop_finished()
            except Exception as e:
                log.exception("engine %s iteration failed", self.name)
                for seq in [*self._rows, *admitted, *self._partial_list()]:
                    if not seq.done:
                        self._finish(seq, "error", error=f"{type(e).__name__} in model engine")
                self._reset_batch()
                self._clear_partial()
                if self._prefixes is not None:
                    self._prefixes.clear()
        for seq in [*self._rows, *self._partial_list(), *self._waiting]:
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

    def _take_group(self) -> list[GenSequence]:
        """Waiting sequences, first come first served, whose prompts fit this iteration's budget.

        A prompt alone over the budget becomes the chunked ``_partial`` instead (when none is).
        """
        budget = self.prefill_chunk_tokens
        if self._partial is not None:
            # the chunked prompt keeps at least half of each iteration for itself
            left = len(self._partial.prompt_ids) - self._partial_done
            budget -= min(left, budget // 2)
        free = self.max_batch_size - self.running
        taken: list[GenSequence] = []
        width = 0
        while self._waiting and len(taken) < free:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                self._finish(seq, "cancelled")
                continue
            grown = max(width, self._suffix_len(seq))
            if (len(taken) + 1) * grown > budget:
                if not taken and self._partial is None:
                    self._partial = self._waiting.popleft()
                break
            taken.append(self._waiting.popleft())
            width = grown
        return taken

    def _suffix_len(self, seq: GenSequence) -> int:
        """Prompt tokens left to prefill once a cached prefix is reused."""
        if self._prefixes is None:
            return len(seq.prompt_ids)
        return len(seq.prompt_ids) - self._prefixes.match(seq.prompt_ids)[0]

    def _prefill(self, seqs: list[GenSequence]) -> None:
        """Prefill whole prompts in one pass, sample their first tokens, join the running batch."""
        if self._prefixes is not None and len(seqs) > 1:
            self._prefill_shared_prefix(seqs)
        cache, mask, logits = self._forward_prompts([s.prompt_ids for s in seqs])
        next_tokens = self._sample(logits, seqs)
        self._merge(seqs, cache, mask, next_tokens)
        for seq, tok in zip(seqs, next_tokens.tolist(), strict=True):
            self._accept(seq, tok)

    def _prefill_shared_prefix(self, seqs: list[GenSequence]) -> None:
        """Prefill the prefix a group's prompts share once, so that each row prefills the rest."""
        assert self._prefixes is not None
        first = seqs[0].prompt_ids
        shared = min(len(s.prompt_ids) for s in seqs) - 1
        for s in seqs[1:]:
            shared = min(shared, _common_prefix(first, s.prompt_ids))
        if shared >= self._prefixes.min_match and self._prefixes.match(first)[0] < shared:
            self._forward_prompts([first[:shared]])

    def _forward_prompts(self, prompts: list[list[int]]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One left-padded forward pass over prompts, each after its longest cached prefix.

        Returns the batch's KV cache, its attention mask and the last position's logits.
        """
        matches = [
            self._prefixes.match(ids) if self._prefixes is not None else (0, None)
            for ids in prompts
        ]
        past = max(n for n, _ in matches)
        width = max(len(ids) - n for ids, (n, _) in zip(prompts, matches, strict=True))
        # row i: [padding | its reused prefix | padding | the rest of its prompt]
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), past + width), dtype=torch.long)
        positions = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, (prompt, (n, _)) in enumerate(zip(prompts, matches, strict=True)):
            rest = len(prompt) - n
            ids[i, width - rest :] = torch.tensor(prompt[n:], dtype=torch.long)
            mask[i, past - n : past] = 1
            mask[i, past + width - rest :] = 1
            positions[i, width - rest :] = torch.arange(n, n + rest)
        cache: Any = DynamicCache()
        if past:
            layers = _past_layers(matches, past)
            cache = DynamicCache(ddp_cache_data=_cast(layers, self.prefill_dtype))
            assert self._prefixes is not None
            for _, entry in matches:
                if entry is not None:
                    self._prefixes.touch(entry)
        mask = mask.to(self.device)
        logits = self._prefill_forward(
            ids.to(self.device), mask, positions.to(self.device), cache, final=True
        )
        assert logits is not None
        self.stats.prefill_steps += 1
        self.stats.prefill_tokens += int(mask[:, past:].sum())
        if self._prefixes is not None:
            for i, prompt in enumerate(prompts):
                cols = mask[i].nonzero()[:, 0]
                kv = [
                    (layer.keys[i : i + 1, :, cols], layer.values[i : i + 1, :, cols])
                    for layer in cache.layers
                ]
                self._prefixes.add(prompt, kv)
        return cache, mask, logits

    def _prefill_forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        final: bool,
    ) -> torch.Tensor | None:
        """Run prompt tokens (right-aligned rows) into ``cache``; when ``final``, return the last
        position's logits and leave the cache in the model's dtype.

        With another ``prefill_dtype`` (bf16), every token but the last goes through the bf16 copy
        and the last through the model itself, attending over the cast cache: the first sampled
        token comes from full-precision logits. bf16 logits flipped near-tied first tokens here
        ("What is the capital of France?" answered in French once a bf16 prefix was reused).
        """
        if self.prefill_dtype == self.dtype:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            return out.logits[:, -1, :].float() if final else None
        n = ids.shape[1] - (1 if final else 0)
        if n > 0:
            self._prefill_model(
                input_ids=ids[:, :n],
                attention_mask=mask[:, : mask.shape[1] - ids.shape[1] + n],
                position_ids=positions[:, :n],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        if not final:
            return None
        _cast_cache(cache, self.dtype)
        out = self.model(
            input_ids=ids[:, n:],
            attention_mask=mask,
            position_ids=positions[:, n:],
            cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1, :].float()

    def _prefill_partial(self, budget: int) -> None:
        """Prefill the next ``budget`` tokens of the long prompt; sample once it is all in."""
        seq = self._partial
        assert seq is not None
        if seq.cancelled:
            self._finish(seq, "cancelled")
            self._clear_partial()
            return
        prompt = seq.prompt_ids
        if self._partial_cache is None:
            n, entry = self._prefixes.match(prompt) if self._prefixes is not None else (0, None)
            if entry is not None:
                assert self._prefixes is not None
                self._prefixes.touch(entry)
                layers = [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in entry.layers]
                self._partial_cache = DynamicCache(ddp_cache_data=_cast(layers, self.prefill_dtype))
            else:
                self._partial_cache = DynamicCache()
            self._partial_done = n
        start = self._partial_done
        end = min(len(prompt), start + budget)
        logits = self._prefill_forward(
            torch.tensor([prompt[start:end]], dtype=torch.long, device=self.device),
            torch.ones((1, end), dtype=torch.long, device=self.device),
            torch.arange(start, end, device=self.device)[None],
            self._partial_cache,
            final=end == len(prompt),
        )
        self.stats.prefill_steps += 1
        self.stats.prefill_tokens += end - start
        self._partial_done = end
        if end < len(prompt):
            return
        cache = self._partial_cache
        self._clear_partial()
        if self._prefixes is not None:
            kv = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
            self._prefixes.add(prompt, kv)
        assert logits is not None
        next_tokens = self._sample(logits, [seq])
        mask = torch.ones((1, end), dtype=torch.long, device=self.device)
        self._merge([seq], cache, mask, next_tokens)
        self._accept(seq, int(next_tokens[0]))

    def _partial_list(self) -> list[GenSequence]:
        return [self._partial] if self._partial is not None else []

    def _clear_partial(self) -> None:
        self._partial, self._partial_cache, self._partial_done = None, None, 0

    def _merge(
        self, seqs: list[GenSequence], cache: Any, mask: torch.Tensor, next_tokens: torch.Tensor
    ) -> None:
        """Append freshly prefilled rows to the running batch, left-padding the shorter side."""
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
            if 0 < p.top_k < row.shape[-1]:
                kth = torch.topk(row, p.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
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
        if seq.detok is None:
            seq.detok = IncrementalDetokenizer(self.tokenizer, seq.prompt_ids)
        with self.tokenizer_lock:
            delta = seq.detok.add(token)
        text = seq.detok.text
        for stop in seq.params.stop if delta else ():
            # only where the new text can complete it: what came before was searched already
            at = text.find(stop, max(0, len(text) - len(delta) - len(stop) + 1))
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


def _past_layers(
    matches: list[tuple[int, _Prefix | None]], past: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's reused prefix, left-padded to ``past`` columns, as one batch's cache layers."""
    ref = next(entry for _, entry in matches if entry is not None)
    layers = []
    for i, (ref_k, ref_v) in enumerate(ref.layers):
        ks, vs = [], []
        for n, entry in matches:
            if entry is None:
                ks.append(ref_k.new_zeros((1, ref_k.shape[1], past, ref_k.shape[3])))
                vs.append(ref_v.new_zeros((1, ref_v.shape[1], past, ref_v.shape[3])))
            else:
                ks.append(_left_pad(entry.layers[i][0][:, :, :n], past))
                vs.append(_left_pad(entry.layers[i][1][:, :, :n], past))
        layers.append((torch.cat(ks), torch.cat(vs)))
    return layers


def _cast(
    layers: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(k.to(dtype), v.to(dtype)) for k, v in layers]


def _cast_cache(cache: Any, dtype: torch.dtype) -> None:
    """Cast a DynamicCache's keys and values in place (no copy when they have the dtype)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.to(dtype), layer.values.to(dtype)


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
