"""``/v1/audio/transcriptions`` and ``/v1/audio/speech`` in OpenAI's shapes.

Transcriptions take ``multipart/form-data``: ``file`` (WebM/Opus, Ogg or WAV: what browsers
record), ``model``, ``language``, ``prompt``, ``temperature`` and ``response_format`` (``json``,
``text``, ``verbose_json`` with segments, ``srt``, ``vtt``). Speech takes JSON ``{model, input,
voice, response_format: wav|pcm, speed}``; ``pcm`` is raw 16-bit little-endian mono at the
voice's rate (``X-Sample-Rate``; 22,050 Hz for the bundled voice), streamed sentence by sentence.

Both are rate limited like chat (the same per-user and per-group limits, checked before any
work) and metered in audio seconds (``usage_events.audio_seconds``) besides tokens: the
transcript's tokens for a transcription, the input's estimated tokens (4 characters each) for
speech.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal

from pydantic import Field
from tornado.iostream import StreamClosedError

from oraculo.openapi import operation

from .backends.piper import PiperBackend, wav_bytes
from .backends.whisper import Transcription, WhisperBackend
from .basehandler import BaseHandler
from .errors import InvalidRequest
from .protocol import _Strict, parse_body

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


class SpeechRequest(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    input: Annotated[str, Field(min_length=1, max_length=4096)]
    voice: Annotated[str, Field(min_length=1, max_length=100)] = "alloy"
    response_format: str = "wav"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    instructions: str | None = None  # OpenAI's; a Piper voice has no way to follow it


class TranscriptionForm(_Strict):
    """The multipart form of ``POST /v1/audio/transcriptions`` (OpenAI's)."""

    file: bytes = Field(description="The audio: WAV, MP3, OGG, WebM ... (anything ffmpeg reads)")
    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "verbose_json", "srt", "vtt"] = "json"
    temperature: float = 0.0


class TranscriptionsHandler(BaseHandler):
    endpoint = "audio.transcriptions"

    def _field(self, name: str) -> str | None:
        values = self.request.body_arguments.get(name)
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"'{name}' is not valid UTF-8.", param=name) from None

    @operation(
        summary="Transcribe speech (OpenAI's API)",
        request=TranscriptionForm,
        request_type="multipart/form-data",
    )
    async def post(self) -> None:
        assert self.identity is not None
        if not self.request.headers.get("Content-Type", "").startswith("multipart/form-data"):
            raise InvalidRequest("The request must be multipart/form-data with a 'file' part.")
        files = self.request.files.get("file")
        if not files:
            raise InvalidRequest("'file' is required.", param="file")
        fmt = self._field("response_format") or "json"
        if fmt not in TRANSCRIPTION_FORMATS:
            raise InvalidRequest(
                f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}.",
                param="response_format",
            )
        try:
            temperature = float(self._field("temperature") or 0)
            beam_size = int(self._field("beam_size") or 5)  # not OpenAI's: lower for partials
        except ValueError:
            raise InvalidRequest("'temperature' must be a number.", param="temperature") from None
        if not (0 <= temperature <= 1) or not (1 <= beam_size <= 10):
            raise InvalidRequest("'temperature' must be within [0, 1].", param="temperature")
        name = self._field("model")
        if not name:  # OpenAI requires it; here the default transcription model answers
            default = self.service.registry.default("transcription")
            name = default.spec.name if default is not None else "whisper-1"
        backend: WhisperBackend = self.service.backend(name, "transcription")  # type: ignore[assignment]
        self.model_name = backend.spec.name
        await self.service.limiter.check(self.identity)
        result = await backend.transcribe(
            files[0]["body"],
            language=self._field("language") or None,
            prompt=self._field("prompt"),
            temperature=temperature,
            beam_size=beam_size,
        )
        self.audio_seconds = result.duration
        self.completion_tokens = result.tokens
        self._write(result, fmt)

    def _write(self, t: Transcription, fmt: str) -> None:
        if fmt == "json":
            self.finish({"text": t.text, "usage": self._usage(t)})
        elif fmt == "verbose_json":
            self.finish(
                {
                    "task": "transcribe",
                    "language": {"en": "english"}.get(t.language, t.language),
                    "duration": round(t.duration, 3),
                    "text": t.text,
                    "segments": [s.to_json() for s in t.segments],
                    "usage": self._usage(t),
                }
            )
        else:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            if fmt == "text":
                self.finish(t.text + "\n")
            else:
                self.finish(_subtitles(t, vtt=fmt == "vtt"))

    @staticmethod
    def _usage(t: Transcription) -> dict[str, object]:
        return {"type": "duration", "seconds": math.ceil(t.duration)}


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _subtitles(t: Transcription, vtt: bool) -> str:
    lines = ["WEBVTT", ""] if vtt else []
    for i, seg in enumerate(t.segments, 1):
        sep = "." if vtt else ","
        if not vtt:
            lines.append(str(i))
        lines.append(f"{_stamp(seg.start, sep)} --> {_stamp(seg.end, sep)}")
        lines += [seg.text.strip(), ""]
    return "\n".join(lines)


class SpeechHandler(BaseHandler):
    endpoint = "audio.speech"

    @operation(
        summary="Speak text (OpenAI's API): WAV or raw PCM",
        request=SpeechRequest,
        responses={200: bytes},
        content_type="audio/wav",
    )
    async def post(self) -> None:
        assert self.identity is not None
        req = parse_body(self.request.body, SpeechRequest)
        fmt = req.response_format
        if fmt not in ("wav", "pcm"):
            raise InvalidRequest(
                f"response_format '{fmt}' is not available here; use 'wav' or 'pcm'.",
                param="response_format",
            )
        backend: PiperBackend = self.service.backend(req.model, "speech")  # type: ignore[assignment]
        self.model_name = backend.spec.name
        backend.check_voice(req.voice)
        await self.service.limiter.check(self.identity)
        self.prompt_tokens = max(1, math.ceil(len(req.input) / 4))
        speech = await backend.speak(req.input, speed=req.speed)
        self.set_header("X-Sample-Rate", str(speech.sample_rate))
        try:
            if fmt == "wav":
                pcm = b"".join([chunk async for chunk in speech])
                self._check(speech)
                self.audio_seconds = speech.seconds
                self.set_header("Content-Type", "audio/wav")
                self.finish(wav_bytes(pcm, speech.sample_rate))
                return
            self.set_header("Content-Type", "audio/pcm")
            started = False
            async for chunk in speech:
                if not started:
                    self.ttft_ms = (time.monotonic() - self.started) * 1000
                    started = True
                self.write(chunk)
                await self.flush()
            if not started:
                self._check(speech)
            self.audio_seconds = speech.seconds  # before finish(): on_finish meters it
            self.finish()
        except StreamClosedError:
            speech.cancel()
            self.error_type = "client_disconnected"
        finally:
            self.audio_seconds = speech.seconds

    @staticmethod
    def _check(speech: object) -> None:
        if getattr(speech, "error", None) is not None:
            raise InvalidRequest("The text could not be spoken.", param="input")


def audio_routes(prefix: str, kw: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (rf"{prefix}v1/audio/transcriptions", TranscriptionsHandler, kw),
        (rf"{prefix}v1/audio/speech", SpeechHandler, kw),
    ]
