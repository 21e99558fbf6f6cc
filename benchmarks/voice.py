"""Voice: speech-to-text and text-to-speech real-time factors, and end of speech → first reply
audio byte over ``WS /api/v1/voice`` at 1 and 4 concurrent sessions.

One run starts a real hub with the model service (``tests.harness.HubProcess``: Whisper tiny.en,
Piper, SmolLM2 on this machine's CPU), signs up a user and spawns their server. Then:

- **RTF**: ``/v1/audio/transcriptions`` (WAV, beam 5) and ``/v1/audio/speech`` (WAV) through the
  proxy, one request at a time; RTF = request time / seconds of audio (lower is faster).
- **Latency**: each session sends Piper-spoken questions as 16 kHz PCM in 100 ms frames paced in
  real time (as a microphone would), followed by silence, and measures from the moment the last
  frame holding speech was sent (the end of speech) to the first binary audio frame of the reply.
  That includes the VAD's end-of-utterance silence (``endpoint_silence_ms``, 500 ms), the final
  transcription, context assembly, the chat model's first sentence and its speech. After the first
  audio byte the session sends ``cancel`` (nobody listens to the rest) and goes on with the next
  question.

Usage::

    .venv/bin/python benchmarks/voice.py                 # 8 rounds per session
    .venv/bin/python benchmarks/voice.py --rounds 4 --sessions 1 4

Writes a markdown table to stdout and JSON to ``benchmarks/results/voice-<time>.json``. On a
shared machine the numbers move with the neighbours' load: read ratios, rerun before comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness import HubClient, HubProcess, User, new_user  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name a prime number larger than ten.",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
]
FRAME = 1600  # samples: 100 ms at 16 kHz
#: The server's own split of each turn (``timing_ms`` of the first audio event).
BREAKDOWN: list[dict[str, Any]] = []


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def speech_wav(http: httpx.AsyncClient, auth: dict[str, str], text: str) -> bytes:
    r = await http.post(
        "/services/models/v1/audio/speech",
        headers=auth,
        json={"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"},
    )
    r.raise_for_status()
    return r.content


def to16k(wav: bytes) -> np.ndarray:
    from faster_whisper import decode_audio

    audio = decode_audio(io.BytesIO(wav), sampling_rate=16000)
    assert isinstance(audio, np.ndarray)
    return audio


async def rtf(http: httpx.AsyncClient, auth: dict[str, str], rounds: int) -> dict[str, Any]:
    stt, tts = [], []
    for i in range(rounds):
        text = QUESTIONS[i % len(QUESTIONS)]
        start = time.perf_counter()
        wav = await speech_wav(http, auth, text)
        took = time.perf_counter() - start
        seconds = len(to16k(wav)) / 16000
        tts.append(took / seconds)
        start = time.perf_counter()
        r = await http.post(
            "/services/models/v1/audio/transcriptions",
            headers=auth,
            files={"file": ("q.wav", wav, "audio/wav")},
            data={"model": "whisper-1"},
        )
        r.raise_for_status()
        stt.append((time.perf_counter() - start) / seconds)
    return {"stt_rtf": stt, "tts_rtf": tts}


async def session(user: User, questions: list[np.ndarray], rounds: int, offset: int) -> list[float]:
    from websockets.asyncio.client import connect

    url = user.server_url.replace("http://", "ws://") + "api/v1/voice"
    out: list[float] = []
    breakdown: list[dict[str, Any]] = []
    async with connect(url, additional_headers=user.auth, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        for i in range(rounds):
            audio = questions[(i + offset) % len(questions)]
            loud = np.nonzero(np.abs(audio) > 0.02)[0]
            speech_end = int(loud[-1]) if len(loud) else len(audio)
            padded = np.concatenate([audio, np.zeros(16000 * 4, np.float32)])
            pcm = (np.clip(padded, -1, 1) * 32767).astype("<i2").tobytes()
            ended: float | None = None
            got: asyncio.Future[float] = asyncio.get_running_loop().create_future()

            async def read(got: asyncio.Future[float]) -> None:
                while True:
                    msg = await ws.recv()
                    if isinstance(msg, str) and '"timing_ms"' in msg:
                        event = json.loads(msg)
                        breakdown.append({**event["timing_ms"], "first_chunk": event["text"]})
                    if isinstance(msg, bytes) and not got.done():
                        got.set_result(time.perf_counter())
                        await ws.send(json.dumps({"type": "cancel"}))
                    elif isinstance(msg, str) and got.done():
                        if json.loads(msg)["type"] in ("reply_end", "cancelled"):
                            return

            reader = asyncio.ensure_future(read(got))
            start = time.perf_counter()
            for k in range(0, len(padded), FRAME):
                if got.done():
                    break
                await ws.send(pcm[2 * k : 2 * (k + FRAME)])
                if ended is None and k + FRAME > speech_end:
                    ended = time.perf_counter()
                due = start + (k + FRAME) / 16000
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            first = await asyncio.wait_for(got, 120)
            await asyncio.wait_for(reader, 120)
            assert ended is not None
            out.append(first - ended)
    BREAKDOWN.extend(breakdown)
    return out


async def main(rounds: int, sessions: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-voice-") as tmp:
        hub = await HubProcess(Path(tmp), models=True).start()
        try:
            await hub.models_loaded(300, 0.25)
            client = HubClient(hub)
            user = await new_user(client, "voicebench")
            await user.spawn()
            async with httpx.AsyncClient(base_url=hub.url, timeout=120) as http:
                questions = [to16k(await speech_wav(http, user.auth, q)) for q in QUESTIONS]
                factors = await rtf(http, user.auth, rounds)
            # warm-up: the first turn loads the chat path and the VAD
            await session(user, questions, 1, 0)
            latency: dict[int, list[float]] = {}
            for n in sessions:
                runs = await asyncio.gather(
                    *(session(user, questions, rounds, i) for i in range(n))
                )
                latency[n] = [x for run in runs for x in run]
            await user.client.aclose()
            await client.aclose()
        finally:
            hub.stop()
    return {
        "rounds": rounds,
        **factors,
        "latency": {str(k): v for k, v in latency.items()},
        "server_breakdown_ms": BREAKDOWN,
    }


def report(result: dict[str, Any]) -> str:
    lines = ["| measure | p50 | p95 | n |", "| --- | --- | --- | --- |"]
    for key, label in (("stt_rtf", "STT real-time factor"), ("tts_rtf", "TTS real-time factor")):
        v = result[key]
        lines.append(f"| {label} | {statistics.median(v):.3f} | {pct(v, 0.95):.3f} | {len(v)} |")
    for n, v in result["latency"].items():
        lines.append(
            f"| end of speech → first reply audio byte, {n} session(s) | "
            f"{statistics.median(v):.2f} s | {pct(v, 0.95):.2f} s | {len(v)} |"
        )
    parts = result.get("server_breakdown_ms") or []
    for key in ("to_final", "to_first_token", "to_first_audio"):
        v = [p[key] for p in parts if key in p]
        if v:
            lines.append(
                f"| server: {key.replace('_', ' ')} (ms, after the previous step) | "
                f"{statistics.median(v):.0f} | {pct(v, 0.95):.0f} | {len(v)} |"
            )
    if parts:
        held = sum(1 for p in parts if p.get("speculative"))
        lines.append(
            f"| replies started during the endpoint silence | {held} of {len(parts)} | | |"
        )
        chunks = sorted({p["first_chunk"] for p in parts if p.get("first_chunk")})
        lines += ["", "First spoken chunks:", *(f"- {c!r}" for c in chunks)]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="questions per session")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    result = asyncio.run(main(args.rounds, args.sessions))
    print(report(result))
    out = REPO / "benchmarks" / "results" / f"voice-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out.relative_to(REPO)}")
