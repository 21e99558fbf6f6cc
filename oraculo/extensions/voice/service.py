"""Voice conversations: audio in; transcripts, a chat reply and its speech out.

One :class:`VoiceSession` per WebSocket. The protocol (see :mod:`oraculo.extensions.voice.handlers`
for the wire format) carries 16 kHz mono 16-bit PCM in; a session finds speech in it with Silero
VAD (bundled in faster-whisper, offline), and transcribes the *growing* utterance through the
model service's ``/v1/audio/transcriptions``: a partial now and then while the user speaks, the
final one when the VAD has heard ``endpoint_silence_ms`` of silence (or when the utterance
reaches ``max_utterance_s``, or on ``commit``). Fixed chunks transcribed apart lose words at their
borders; a growing buffer does not (MEASURED.md).

To save the transcription's time at the end of an utterance, a candidate final is started after
``speculate_silence_ms`` of silence; if the silence lasts, it *is* the final. And once the
candidate's text is there while the silence still runs, the reply to it starts too, held back
(:class:`HeldOutput`): when the utterance ends with that same text, what it has generated and
spoken so far goes out at once; when the user speaks again, it is dropped unseen and unstored.

The final goes to the chat service in-process (same context assembly, memories and stored
conversation as ``/api/v1/chat``). Its reply streams back as text and is cut into sentences; each
sentence is spoken by the model service's ``/v1/audio/speech`` while the next is generated, so
audio starts before the reply is complete. Speech heard while a reply is generated or played
(barge-in) cancels both and tells the client to stop playing.

Nothing here waits on a client: what a session sends goes to ``send``, which the handler backs with
a bounded queue (a client that does not read is disconnected, and holds up no other session).
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import uuid
import wave
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Float, Instance, Integer, Unicode
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import OraculoError
from oraculo.extensions.base.modelclient import ModelClient
from oraculo.extensions.chat.models import ChatRequest, Message

if TYPE_CHECKING:  # numpy loads with the first voice session, not at every server start
    import numpy as np

SAMPLE_RATE = 16_000
WINDOW = 512  # samples per Silero VAD window (32 ms at 16 kHz)

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")
_SPACE = re.compile(r"\s+")
_MARKUP = re.compile(r"```.*?(```|$)|[*_#`>|]+", re.S)

Send = Callable[[dict[str, Any] | bytes], bool]

#: Where the reply's first spoken chunk may end (see SentenceSplitter and VoiceService).
FIRST_CLAUSE_CHARS = 10
FIRST_WORDS_CHARS = 24


def pcm16_to_float(data: bytes) -> np.ndarray:
    import numpy as np

    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def wav16k(audio: np.ndarray) -> bytes:
    import numpy as np

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


def speakable(text: str) -> str:
    return " ".join(_MARKUP.sub(" ", text).split())


def phrased(chunk: str) -> str:
    """What the voice is given for ``chunk``: a chunk cut at a word boundary, mid-sentence, gets
    a comma, so the voice phrases it as a clause that goes on (a short rise and pause), not as
    the flat end it would give bare words."""
    return chunk + "," if chunk[-1:].isalnum() else chunk


class SentenceSplitter:
    """Cuts streamed text into sentences. The first may end early, so that speaking starts
    soon: at a clause (``,;:``) once it has ``first_clause_chars``, or at a word boundary once
    ``first_words_chars`` have come without any."""

    def __init__(
        self,
        first_clause_chars: int = FIRST_CLAUSE_CHARS,
        first_words_chars: int = FIRST_WORDS_CHARS,
    ) -> None:
        self.buf = ""
        self.first = True
        self.first_clause_chars = first_clause_chars
        self.first_words_chars = first_words_chars

    def feed(self, text: str) -> list[str]:
        self.buf += text
        out = []
        while True:
            m = _SENTENCE_END.search(self.buf)
            if m is None and self.first:
                m = _CLAUSE_END.search(self.buf, self.first_clause_chars)
            if m is None and self.first and len(self.buf) >= self.first_words_chars:
                # after the last whole word: a word still streaming stays for the next chunk
                ended = self.buf[-1:].isspace()
                cut = len(self.buf.rstrip()) if ended else self.buf.rfind(" ")
                if cut >= self.first_clause_chars:
                    m = _SPACE.search(self.buf, cut)
            if m is None:
                break
            sentence, self.buf = self.buf[: m.start()], self.buf[m.end() :]
            if sentence.strip():
                out.append(sentence.strip())
                self.first = False
        return out

    def flush(self) -> list[str]:
        rest, self.buf = self.buf.strip(), ""
        return [rest] if rest else []


class HeldOutput:
    """What a speculative reply sends, kept back until its transcript is confirmed."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.live = False
        self.items: list[dict[str, Any] | bytes] = []
        self.conversation_id: str | None = None

    def __call__(self, item: dict[str, Any] | bytes) -> bool:
        if self.live:
            return self.send(item)
        self.items.append(item)
        return True

    def release(self, timing: Callable[[], dict[str, int]]) -> None:
        """Send what was held (the first audio's ``timing_ms`` as of now), then pass through."""
        self.live = True
        for item in self.items:
            if isinstance(item, dict) and "timing_ms" in item:
                item = {**item, "timing_ms": {**timing(), "speculative": 1}}
            self.send(item)
        self.items = []


class VoiceService(LoggingConfigurable):
    """Settings, the VAD model and the model service connection shared by all voice sessions."""

    models = Instance(ModelClient, help="The extension's one client of the model service.")
    stt_model = Unicode("whisper-1", config=True, help="Transcription model (name or alias).")
    tts_model = Unicode("tts-1", config=True, help="Speech model (name or alias).")
    tts_voice = Unicode("alloy", config=True, help="Voice of the speech model.")
    endpoint_silence_ms = Integer(
        500, config=True, help="Silence after speech that ends an utterance (a final transcript)."
    )
    speculate_silence_ms = Integer(
        160,
        config=True,
        help="Silence after which the final transcription starts, in case the silence lasts.",
    )
    speculate_reply = Bool(
        True,
        config=True,
        help="""Start the reply to the candidate transcript while the endpoint silence still
        runs, held back until the utterance ends with that text (dropped, unstored, if the
        speaker goes on). Saves up to endpoint - speculate silence of every turn; costs a
        wasted chat request at each pause that is not the end.""",
    )
    min_speech_ms = Integer(
        128, config=True, help="Speech shorter than this does not start an utterance."
    )
    preroll_ms = Integer(300, config=True, help="Audio kept from before the detected onset.")
    max_utterance_s = Float(
        12.0, config=True, help="An utterance this long is finalised even if the speaker goes on."
    )
    partial_interval_s = Float(
        1.0, config=True, help="Seconds of new audio between two partial transcripts."
    )
    vad_threshold = Float(0.5, config=True, help="Silero speech probability that means speech.")
    max_reply_tokens = Integer(96, config=True, help="max_tokens of a spoken reply.")
    first_clause_chars = Integer(
        FIRST_CLAUSE_CHARS,
        config=True,
        help="""The reply's first spoken chunk ends at a clause (,;:) once it has this many
        characters, so that speaking starts before the first sentence is complete (each
        character the model must write first is about 20 ms on a 2-core CPU).""",
    )
    first_words_chars = Integer(
        FIRST_WORDS_CHARS,
        config=True,
        help="""Without a clause, the first spoken chunk ends at a word boundary once this many
        characters have come; it is spoken as a clause (with a comma's phrasing), not as a
        sentence's end.""",
    )
    max_buffered_s = Float(
        30.0,
        config=True,
        help="Audio a session may have received but not yet processed; more closes it.",
    )

    def __init__(self, chat: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: The chat feature's ChatService (looked up when needed: features load in turn).
        self.chat = chat
        self._vad: Any = None
        self._stt_inflight = 0

    def vad(self) -> Any:
        if self._vad is None:
            from faster_whisper.vad import get_vad_model

            self._vad = get_vad_model()
        return self._vad

    async def aclose(self) -> None:
        """Nothing of its own to close: the extension closes the shared model client."""

    async def transcribe(
        self, audio: np.ndarray, beam_size: int, partial: bool = False
    ) -> str | None:
        """The text of ``audio``; a partial is skipped (None) while this server has another
        transcription in flight, so that partials never queue ahead of someone's final."""
        if partial and self._stt_inflight:
            return None
        self._stt_inflight += 1
        try:
            return await self._transcribe(audio, beam_size)
        finally:
            self._stt_inflight -= 1

    async def _transcribe(self, audio: np.ndarray, beam_size: int) -> str:
        return await self.models.transcribe(
            wav16k(audio), self.stt_model, language="en", beam_size=str(beam_size)
        )

    async def speak(self, text: str) -> tuple[int, bytes]:
        return await self.models.speech(text, self.tts_model, self.tts_voice)

    def session(self, send: Send) -> VoiceSession:
        return VoiceSession(self, send)


class VoiceSession:
    """One conversation: VAD, utterances, transcripts, replies, barge-in."""

    def __init__(self, service: VoiceService, send: Send) -> None:
        import numpy as np

        self.svc = service
        self.send = send
        self.id = uuid.uuid4().hex
        self.conversation_id: str | None = None
        self.mode = "hands_free"
        self._inbox: asyncio.Queue[np.ndarray | str | None] = asyncio.Queue()
        self._buffered = 0
        self._tail = np.zeros(0, np.float32)  # samples not yet a whole VAD window
        self._history = np.zeros(0, np.float32)  # recent audio, for the VAD's context
        self._preroll: list[np.ndarray] = []
        self._utt: list[np.ndarray] = []
        self._utt_len = 0
        self._utt_id = 0
        self._in_speech = False
        self._onset = 0
        self._silence = 0
        self._last_partial = 0
        self._partial: asyncio.Task[None] | None = None
        self._candidate: tuple[int, asyncio.Task[str]] | None = None
        #: a reply started from the candidate's text: (utterance, text, task, its held output)
        self._spec: tuple[int, str, asyncio.Task[None], HeldOutput] | None = None
        self._turn: asyncio.Task[None] | None = None
        self._replying_task: asyncio.Task[None] | None = None
        self._playing_until = 0.0
        self._timing: dict[str, float] = {}
        self._last_final: asyncio.Future[None] | None = None
        self._worker = asyncio.ensure_future(self._run())
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- input --------------------------------------------------------------------------------

    def audio(self, data: bytes) -> None:
        """A binary frame: 16 kHz mono s16le PCM. Raises ValueError for a malformed one."""
        if len(data) % 2:
            raise ValueError("audio frames are 16-bit PCM: an even number of bytes")
        samples = len(data) // 2
        if self._buffered + samples > self.svc.max_buffered_s * SAMPLE_RATE:
            raise OverflowError("too much audio waiting to be processed")
        self._buffered += samples
        self._inbox.put_nowait(pcm16_to_float(data))

    def command(self, kind: str) -> None:
        """``commit`` (end the utterance now) or ``cancel`` (stop the reply), in audio order."""
        self._inbox.put_nowait(kind)

    async def close(self) -> None:
        self._inbox.put_nowait(None)
        for task in [self._worker, self._partial, self._turn, self._replying_task, *self._tasks]:
            if task is not None and not task.done():
                task.cancel()
        if self._candidate is not None:
            self._candidate[1].cancel()
        self._drop_speculation()
        await asyncio.gather(self._worker, *self._tasks, return_exceptions=True)

    # --- processing ---------------------------------------------------------------------------

    async def _run(self) -> None:
        import numpy as np

        while True:
            item = await self._inbox.get()
            if item is None:
                return
            if isinstance(item, str):
                if item == "commit":
                    self._finalise(forced=True, commit=True)
                elif item == "cancel":
                    self._stop_reply("cancelled")
                continue
            self._buffered -= len(item)
            audio = np.concatenate([self._tail, item])
            whole = len(audio) - len(audio) % WINDOW
            self._tail = audio[whole:]
            if whole:
                await self._windows(audio[:whole])

    async def _windows(self, audio: np.ndarray) -> None:
        import numpy as np

        ctx = self._history[-WINDOW * 16 :]
        probs = await asyncio.to_thread(self._speech_probs, np.concatenate([ctx, audio]))
        probs = probs[len(ctx) // WINDOW :]
        self._history = np.concatenate([ctx, audio])[-WINDOW * 32 :]
        min_speech = max(1, self.svc.min_speech_ms * SAMPLE_RATE // 1000 // WINDOW)
        for i, p in enumerate(probs):
            win = audio[i * WINDOW : (i + 1) * WINDOW]
            if not self._in_speech:
                self._preroll.append(win)
                keep = max(1, self.svc.preroll_ms * SAMPLE_RATE // 1000 // WINDOW)
                self._preroll = self._preroll[-keep:]
                self._onset = self._onset + 1 if p >= self.svc.vad_threshold else 0
                # push-to-talk: the held button, not the VAD, says the user is speaking
                if self._onset >= min_speech or self.mode == "push_to_talk":
                    self._start_utterance()
                continue
            self._utt.append(win)
            self._utt_len += WINDOW
            if p >= self.svc.vad_threshold - 0.15:
                self._silence = 0
                if self._candidate is not None:
                    self._candidate[1].cancel()
                    self._candidate = None
                    self._drop_speculation()  # the user goes on: that was not the end
            else:
                self._silence += WINDOW
            ms = self._silence * 1000 // SAMPLE_RATE
            if self.mode == "push_to_talk":
                ms = 0  # the utterance ends at `commit` (or the cap), not at a pause
            if ms >= self.svc.endpoint_silence_ms:
                self._finalise(forced=False)
            elif self._utt_len >= self.svc.max_utterance_s * SAMPLE_RATE:
                self._finalise(forced=True)
            elif self._candidate is None and ms >= self.svc.speculate_silence_ms:
                candidate = self._spawn(self._stt(self._utterance(), 5))
                self._candidate = (self._utt_id, candidate)
                candidate.add_done_callback(self._speculate)
            elif (
                self._silence == 0
                and self._utt_len - self._last_partial >= self.svc.partial_interval_s * SAMPLE_RATE
                and (self._partial is None or self._partial.done())
            ):
                self._last_partial = self._utt_len
                self._partial = self._spawn(self._send_partial(self._utt_id, self._utterance()))

    def _speech_probs(self, audio: np.ndarray) -> np.ndarray:
        import numpy as np

        out = self.svc.vad()(audio)
        return np.asarray(out).reshape(-1)

    def _utterance(self) -> np.ndarray:
        import numpy as np

        return np.concatenate(self._utt) if self._utt else np.zeros(0, np.float32)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, OraculoError):
                self.svc.log.error("voice session task failed", exc_info=exc)

    def _start_utterance(self) -> None:
        self._utt_id += 1
        self._in_speech = True
        self._utt = list(self._preroll)
        self._utt_len = sum(len(w) for w in self._utt)
        self._preroll, self._onset, self._silence, self._last_partial = [], 0, 0, 0
        if self._replying():
            self._stop_reply("barge_in")
        self.send({"type": "speech_start", "utterance": self._utt_id})

    def _replying(self) -> bool:
        busy = self._replying_task is not None and not self._replying_task.done()
        return busy or time.monotonic() < self._playing_until

    def _stop_reply(self, why: str) -> None:
        was = self._replying()
        if self._replying_task is not None and not self._replying_task.done():
            self._replying_task.cancel()
        self._playing_until = 0.0
        if was:
            self.send({"type": why, "utterance": self._utt_id})

    def _speculate(self, candidate: asyncio.Task[str]) -> None:
        """The candidate transcript is there and the silence still runs: start its reply."""
        if not self.svc.speculate_reply:
            return
        if self._candidate is None or self._candidate[1] is not candidate or not self._in_speech:
            return  # superseded, or the utterance has ended (the turn uses it as the final)
        if candidate.cancelled() or candidate.exception() is not None:
            return
        text = candidate.result()
        if not any(c.isalnum() for c in text) or self._replying():
            return  # nothing said, or a reply still playing (this speech may be a barge-in)
        held = HeldOutput(self.send)
        task = asyncio.ensure_future(self._reply(self._utt_id, text, held))
        task.add_done_callback(self._done)
        self._spec = (self._utt_id, text, task, held)

    def _drop_speculation(self) -> None:
        if self._spec is not None:
            self._spec[2].cancel()
            self._spec = None

    def _finalise(self, forced: bool, commit: bool = False) -> None:
        if not self._in_speech and commit:
            # push-to-talk released: whatever was said counts, even if the VAD heard little
            self._utt, self._utt_len = list(self._preroll), sum(len(w) for w in self._preroll)
            if self._utt_len < WINDOW * 4:
                return
            self._utt_id += 1
        elif not self._in_speech:
            return
        audio = self._utterance()
        candidate = self._candidate if self._candidate and not forced else None
        self._candidate = None
        spec, self._spec = (self._spec if candidate else None), None
        if spec is None:
            self._drop_speculation()
        self._in_speech, self._utt, self._utt_len, self._silence = False, [], 0, 0
        self._preroll = []
        if self._partial is not None:
            self._partial.cancel()
        self._stop_reply("barge_in")
        stt = candidate[1] if candidate else self._spawn(self._stt(audio, 5))
        self._timing = {"endpoint": time.monotonic()}
        self._turn = self._spawn(self._take_turn(self._utt_id, stt, forced, spec))

    async def _stt(self, audio: np.ndarray, beam: int) -> str:
        return await self.svc.transcribe(audio, beam) or ""

    async def _send_partial(self, utt: int, audio: np.ndarray) -> None:
        try:
            text = await self.svc.transcribe(audio, 1, partial=True)
        except OraculoError as e:
            self.send({"type": "error", "error": e.to_json()})
            return
        if text and utt == self._utt_id and self._in_speech:
            self.send({"type": "partial", "utterance": utt, "text": text})

    # --- the reply ----------------------------------------------------------------------------

    async def _take_turn(
        self,
        utt: int,
        stt: asyncio.Task[str],
        forced: bool,
        spec: tuple[int, str, asyncio.Task[None], HeldOutput] | None = None,
    ) -> None:
        # finals go out in utterance order, though a short utterance's transcription may
        # finish before a long one's that started earlier
        before, mine = self._last_final, asyncio.get_running_loop().create_future()
        self._last_final = mine
        try:
            try:
                text = await stt
            except OraculoError as e:
                if spec is not None:
                    spec[2].cancel()
                self.send({"type": "error", "utterance": utt, "error": e.to_json()})
                return
            self._timing["final"] = time.monotonic()
            if before is not None:
                await before
            self.send({"type": "final", "utterance": utt, "text": text, "forced": forced})
        finally:
            mine.set_result(None)
        confirmed = spec is not None and spec[0] == utt and spec[1] == text and not spec[2].done()
        if spec is not None and not confirmed:
            spec[2].cancel()
        if not any(c.isalnum() for c in text) or utt != self._utt_id or self._in_speech:
            if confirmed and spec is not None:
                spec[2].cancel()
            return  # nothing said, or the user has gone on speaking: no reply to this one
        if confirmed and spec is not None:
            # the reply started during the silence: what it has so far goes out now
            held = spec[3]
            if held.conversation_id:
                self.conversation_id = held.conversation_id
            held.release(self._timings)
            self._replying_task = spec[2]
        else:
            self._replying_task = asyncio.ensure_future(self._reply(utt, text))
        try:
            await self._replying_task
        except OraculoError as e:
            self.send({"type": "error", "utterance": utt, "error": e.to_json()})
        except asyncio.CancelledError:
            raise
        except Exception:
            self.svc.log.exception("voice reply failed")
            err = OraculoError("Unhandled error").to_json()
            self.send({"type": "error", "utterance": utt, "error": err})

    async def _reply(self, utt: int, text: str, out: HeldOutput | None = None) -> None:
        """Generate and speak the reply to ``text``; with ``out`` (a speculative reply) all it
        sends is held there until released, and if it never is, nothing of it is stored."""
        send: Send = out if out is not None else self.send
        req = ChatRequest(
            messages=[Message(role="user", content=text)],
            stream=True,
            conversation_id=self.conversation_id,
            max_tokens=self.svc.max_reply_tokens,
            store=True,
        )
        parts: list[str] = []
        cancelled, reply, tts = True, None, None
        speaker: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            reply = await self.svc.chat().open_stream(req)
            tts = asyncio.ensure_future(self._speak_all(utt, speaker, send))
            splitter = SentenceSplitter(self.svc.first_clause_chars, self.svc.first_words_chars)
            async for chunk in reply:
                held = out is not None and not out.live
                extra = chunk.get("oraculo") or {}
                if extra.get("conversation_id"):
                    # a held reply's new conversation exists only once the reply is confirmed
                    if out is not None and held:
                        out.conversation_id = extra["conversation_id"]
                    else:
                        self.conversation_id = extra["conversation_id"]
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        if not held:
                            self._timing.setdefault("first_token", time.monotonic())
                        parts.append(delta)
                        send({"type": "reply", "utterance": utt, "delta": delta})
                        for sentence in splitter.feed(delta):
                            speaker.put_nowait(sentence)
            for sentence in splitter.flush():
                speaker.put_nowait(sentence)
            speaker.put_nowait(None)
            await tts
            cancelled = False
        finally:
            # nothing awaited here: this may run in a cancelled task
            if tts is not None and not tts.done():
                tts.cancel()
            send(
                {
                    "type": "reply_end",
                    "utterance": utt,
                    "text": "".join(parts),
                    "conversation_id": self.conversation_id,
                    "cancelled": cancelled,
                }
            )
            if reply is not None and out is not None and not out.live:
                reply.cancel()  # a speculation dropped: stop it, and store nothing of it
            elif reply is not None:
                if cancelled:
                    reply.cancel()
                self._spawn(reply.close())  # stores the turn (what was said, if cut short)

    def _timings(self) -> dict[str, int]:
        """Where the time went from the end of the utterance to this first audio (ms)."""
        t, now = self._timing, time.monotonic()
        out, last = {}, t.get("endpoint", now)
        for name in ("final", "first_token"):
            if name in t:
                out[f"to_{name}"] = round((t[name] - last) * 1000)
                last = t[name]
        out["to_first_audio"] = round((now - last) * 1000)
        return out

    async def _speak_all(
        self, utt: int, sentences: asyncio.Queue[str | None], send: Send | None = None
    ) -> None:
        send = send if send is not None else self.send
        n = 0
        while (sentence := await sentences.get()) is not None:
            said = speakable(sentence)
            if not any(c.isalnum() for c in said):
                continue
            rate, pcm = await self.svc.speak(phrased(said))
            if not pcm:
                continue
            header = {
                "type": "audio",
                "utterance": utt,
                "sentence": n,
                "text": said,
                "format": "pcm_s16le",
                "sample_rate": rate,
                "bytes": len(pcm),
            }
            if n == 0:
                header["timing_ms"] = self._timings()
            send(header)
            send(pcm)
            n += 1
            if isinstance(send, HeldOutput) and not send.live:
                continue  # not playing: it may never be
            seconds = len(pcm) / 2 / rate
            self._playing_until = max(self._playing_until, time.monotonic()) + seconds
