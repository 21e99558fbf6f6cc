"""Local backends: a transformers causal LM behind the batching engine, and sentence-transformers.

Weights load from a folder only (``HF_HUB_OFFLINE`` is forced on): a package folder shipping a GGUF
file (loaded with ``gguf_file=``, dequantized) or a normal checkpoint folder. CUDA is used when
present and ``device`` is ``auto``."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from traitlets import Unicode, default

from .. import constrained
from ..engine import BatchEngine, EngineEvent, QueueFull, SamplingParams
from ..errors import ContextLengthExceeded, InvalidRequest, Overloaded, UpstreamError
from ..protocol import ChatCompletionRequest
from ..sampling import SamplingDefaults, sampling_defaults
from .base import Backend, ChatStream


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


#: CPU flags of bfloat16 matrix products in hardware (/proc/cpuinfo): AVX512-BF16, AMX.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split()[2:] for line in f if line.startswith("flags")), [])
            return frozenset(flags)
    except OSError:
        return frozenset()


def _has_amx() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX)."""
    return "amx_bf16" in _cpu_flags()


def model_dtype(name: str, device: str, flags: frozenset[str] | None = None) -> Any:
    """``dtype`` of a chat model entry: ``auto`` is bfloat16 on a CPU that multiplies bf16 in
    hardware (AVX512-BF16 or AMX), else float32.

    Decoding a batch is matrix products against the weights; in bf16 they run 4x faster than in
    float32 at 16 rows on an AVX512-BF16 CPU (1.1x slower for a single row's small products, but
    the vocabulary projection, the largest, is 2.4x faster even then), and the weights take half
    the memory. Quality, measured on SmolLM2-135M: perplexity 12.94 against 12.93 in float32
    (3,069 tokens of code and prose); greedy replies are the same for their first 5-40 tokens
    and then may take another, equally fluent, path. On CUDA the weights stay float32 unless the
    entry says otherwise (not measured here)."""
    import torch

    if name != "auto":
        return _dtype(name)
    if device == "cpu" and BF16_CPU_FLAGS & (_cpu_flags() if flags is None else flags):
        return torch.bfloat16
    return torch.float32


def _prefill_dtype(name: str, model_dtype: Any, device: str) -> Any:
    """``prefill_dtype`` of a model entry: ``auto`` is bfloat16 for a float32 model on a CPU with
    AMX (prompt processing ~2.5x faster there, measured), else the model's own dtype."""
    import torch

    if name != "auto":
        return _dtype(name)
    if device == "cpu" and model_dtype == torch.float32 and _has_amx():
        return torch.bfloat16
    return model_dtype


def _dtype(name: str) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


class TransformersChatBackend(Backend):
    """A chat model run by ``BatchEngine`` (continuous batching) on CPU or CUDA."""

    engine: BatchEngine | None = None
    defaults: SamplingDefaults = SamplingDefaults(temperature=0.0)

    cache_dir = Unicode(
        help="""Where a GGUF model, once dequantized, is saved as a normal checkpoint so that later
        starts load it in about a second instead of converting again (~20 s for SmolLM2 here, more
        on a busy machine). Keyed by the GGUF file's path, size, mtime and the transformers
        version. Empty: always convert. Default: $ORACULO_MODEL_CACHE, else
        $XDG_CACHE_HOME/oraculo/models, else ~/.cache/oraculo/models.""",
    ).tag(config=True)

    @default("cache_dir")
    def _default_cache_dir(self) -> str:
        if os.environ.get("ORACULO_MODEL_CACHE"):
            return os.environ["ORACULO_MODEL_CACHE"]
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(xdg, "oraculo", "models")

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # progress bars would flood the service log

        spec = self.spec
        path = spec.local_path()
        kwargs: dict[str, Any] = {"local_files_only": True}
        if spec.gguf_file:
            kwargs["gguf_file"] = spec.gguf_file
        if spec.gguf_file and self.cache_dir:
            try:
                path, kwargs = self._converted(path, spec.gguf_file), {"local_files_only": True}
            except OSError as e:
                self.log.warning("no checkpoint cache for %s (%s); loading the GGUF", spec.name, e)
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        device = _device(spec.device)
        dtype = model_dtype(spec.dtype, device.split(":")[0])
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        model.to(device)  # type: ignore[arg-type]
        model.eval()
        ctx = spec.context_length or int(getattr(model.config, "max_position_embeddings", 2048))
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self._ctx = ctx
        self.defaults = sampling_defaults(spec, getattr(model, "generation_config", None))
        self.grammars = constrained.Grammars(self.tokenizer, int(model.config.vocab_size))
        self.engine = BatchEngine(
            model,
            self.tokenizer,
            eos_token_ids=sorted(eos_ids),
            context_length=ctx,
            max_batch_size=spec.max_batch_size,
            max_waiting=spec.max_waiting,
            max_prefill_tokens=spec.max_prefill_tokens,
            prefill_chunk_tokens=spec.prefill_chunk_tokens,
            prefix_cache_tokens=spec.prefix_cache_tokens,
            prefill_dtype=_prefill_dtype(spec.prefill_dtype, model.dtype, model.device.type),
            name=spec.name,
        )
        self.engine.start()
        self.log.info(
            "loaded %s from %s on %s in %s (context %d, prefill in %s, sampling defaults %s)",
            spec.name,
            path,
            self.engine.device,
            self.engine.dtype,
            ctx,
            self.engine.prefill_dtype,
            self.defaults,
        )

    def _converted(self, folder: Path, gguf_file: str) -> Path:
        """The GGUF model as a normal fp32 checkpoint in ``cache_dir``, converted on first use."""
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = folder / gguf_file
        st = src.stat()
        ident = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
        key = hashlib.sha256(ident.encode()).hexdigest()[:16]
        target = Path(self.cache_dir) / f"{Path(gguf_file).stem}-{key}"
        if (target / "config.json").exists():
            return target
        self.log.info("converting %s into a checkpoint at %s (once)", src, target)
        kw: dict[str, Any] = {"gguf_file": gguf_file, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
        # a GGUF-loaded model refuses save_pretrained while it remembers its quantizer
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if not model.config.architectures:
            model.config.architectures = [type(model).__name__]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
        try:
            tokenizer.save_pretrained(tmp)
            model.save_pretrained(tmp)
            try:
                os.rename(tmp, target)  # atomic: readers see a whole checkpoint or none
            except OSError:
                pass  # another process finished first; its copy is as good
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    async def aclose(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)

    def context_length(self) -> int | None:
        return getattr(self, "_ctx", self.spec.context_length)

    def info(self) -> dict[str, Any]:
        info = super().info()
        if self.engine is not None:
            info.update(
                device=str(self.engine.device),
                context_length=self._ctx,
                running=self.engine.running,
                waiting=self.engine.queue_depth,
                max_batch_size=self.engine.max_batch_size,
                max_waiting=self.engine.max_waiting,
                dtype=str(self.engine.dtype).removeprefix("torch."),
                prefill_dtype=str(self.engine.prefill_dtype).removeprefix("torch."),
                sampling_defaults=self.defaults.to_json(),
                **vars(self.engine.stats),
            )
        return info

    def encode_prompt(self, request: ChatCompletionRequest) -> list[int]:
        messages = constrained.chat_messages(request)
        assert self.engine is not None
        try:
            with self.engine.tokenizer_lock:
                ids = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
        except Exception as e:  # the template itself rejects some role orders
            raise InvalidRequest(
                f"messages do not fit this model's chat template: {e}", param="messages"
            ) from None
        return list(ids)

    def sampling(self, request: ChatCompletionRequest, prompt_len: int) -> SamplingParams:
        ctx = self._ctx
        limit = self.spec.max_output_tokens or ctx
        wanted = request.requested_max_tokens
        if wanted is not None and wanted > limit:
            raise InvalidRequest(
                f"max_tokens is too large: {wanted}. "
                f"This model supports at most {limit} completion tokens.",
                param="max_tokens",
            )
        if prompt_len >= ctx or (wanted is not None and prompt_len + wanted > ctx):
            raise ContextLengthExceeded(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt_len + (wanted or 0)} tokens ({prompt_len} in the messages, "
                f"{wanted or 0} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="messages",
                context_length=ctx,
                tokens=prompt_len + (wanted or 0),
                prompt_tokens=prompt_len,
            )
        max_tokens = wanted or min(self.spec.default_max_tokens, ctx - prompt_len)
        # unset: the model's own recommended settings (oraculo.models.sampling); a request that
        # sets its temperature gets no top-k it did not ask for
        d = self.defaults
        unset = request.temperature is None
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=d.temperature if unset else float(request.temperature or 0.0),
            top_p=request.top_p if request.top_p is not None else d.top_p,
            top_k=d.top_k if unset else 0,
            seed=request.seed,
            stop=request.stop_list,
        )

    async def start_chat(self, request: ChatCompletionRequest) -> ChatStream:
        assert self.engine is not None, "backend not loaded"
        constrained.validate(request)
        # off the event loop: a long prompt takes a while to tokenize
        prompt = await asyncio.to_thread(self.encode_prompt, request)
        params = self.sampling(request, len(prompt))
        constraint = await asyncio.to_thread(self.grammars.constraint, request)
        if constraint is not None:
            params = dataclasses.replace(params, constraint=constraint)
        stream = ChatStream(prompt_tokens=len(prompt))

        def sink(ev: EngineEvent) -> None:
            if ev.text:
                stream.put(ev.text)
            if ev.finish_reason is not None:
                err = UpstreamError(ev.error, code="engine_error") if ev.error else None
                stream.finish(ev.finish_reason, ev.prompt_tokens, ev.completion_tokens, err)

        try:
            seq = self.engine.submit(prompt, params, sink)
        except QueueFull:
            raise Overloaded(
                f"The model {self.spec.name} is overloaded; please retry shortly.", retry_after=2
            ) from None
        stream.on_cancel(seq.cancel)
        return stream


class SentenceTransformersBackend(Backend):
    """An embedding model; calls run one at a time on a dedicated thread, so the queue is the
    limiter's.
    """

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = self.spec.local_path()
        self.model: Any = SentenceTransformer(
            str(path), device=_device(self.spec.device), local_files_only=True
        )
        self._ctx: int = self.spec.context_length or int(self.model.max_seq_length or 512)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"embed-{self.spec.name}")
        self._pending = 0
        self.log.info("loaded %s from %s (max %d tokens)", self.spec.name, path, self._ctx)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def context_length(self) -> int | None:
        return getattr(self, "_ctx", self.spec.context_length)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "context_length": self.context_length(), "waiting": self._pending}

    def _run(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        tok = self.model.tokenizer
        lengths = [len(ids) for ids in tok(inputs, add_special_tokens=True)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > self._ctx:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {self._ctx} tokens, "
                    f"but input {i} has {n} "
                    "tokens. Please reduce the length of the input.",
                    param="input",
                    context_length=self._ctx,
                    tokens=n,
                    index=i,
                )
        vectors = self.model.encode(
            inputs, batch_size=64, convert_to_numpy=True, normalize_embeddings=True
        )
        return vectors.tolist(), sum(lengths)

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        if self._pending >= max(self.spec.max_waiting, 1):
            raise Overloaded(
                f"The model {self.spec.name} is overloaded; please retry shortly.", retry_after=1
            )
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, inputs)
        finally:
            self._pending -= 1
