"""The Voice panel: talk to the assistant with the browser's microphone.

The page's script is a client of the server's public ``WS api/v1/voice`` (protocol in
:mod:`oraculo.extensions.voice.handlers`), opened from the browser on the page's own origin, so
the user's own Jupyter/JupyterHub credentials (the cookie) authorise it, like JupyterLab's kernel
websockets; nothing goes through the Panel process. The microphone is captured at 16 kHz mono
(``AudioContext({sampleRate: 16000})``, with the browser's echo cancellation, so that the reply
coming out of the speakers does not barge in on itself), sent as 16-bit PCM frames of 100 ms, and
the reply's sentences are played as they arrive with the Web Audio API. Every script is inline in
the page (no CDN).

Two modes: **hands-free** (the server's voice-activity detection decides when an utterance ends)
and **push-to-talk** (audio goes out only while the button is held; releasing it sends
``commit``).

Test hooks (``data-testid``): ``oraculo-voice`` (root; ``data-state`` idle, connecting,
listening, replying, error), ``voice-start``, ``voice-stop``, ``voice-talk`` (push-to-talk),
``voice-mode`` (a select), ``voice-partial``, ``voice-transcript`` (finals, one per line),
``voice-reply``, ``voice-played`` (``data-count``: sentences whose audio finished playing),
``voice-error``; without a microphone, ``voice-text-form`` and ``voice-text`` (a typed question,
answered as text through ``api/v1/chat``; ``data-state`` typed when the reply is in).
"""

from __future__ import annotations

import panel as pn
import param
from panel.custom import JSComponent

from oraculo.extensions.panels.workspace import static_url

TEST_ID = "oraculo-voice"

_ESM = r"""
const CSS = `
.ov { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933;
      max-width: 760px; }
.ov-bar { display: flex; gap: 8px; align-items: center; margin: 0 0 12px; flex-wrap: wrap; }
.ov button { font: 14px system-ui, sans-serif; padding: 6px 14px; border-radius: 8px;
             border: 1px solid #cbd2d9; background: #fff; cursor: pointer; }
.ov button.primary { background: #2f6fed; color: #fff; border-color: #2f6fed; }
.ov button:disabled { opacity: .5; cursor: default; }
.ov button.talking { background: #c92a2a; color: #fff; border-color: #c92a2a; }
.ov-status { font-size: 13px; color: #616e7c; }
.ov-card { background: #fff; border: 1px solid #e4e7eb; border-radius: 10px; padding: 10px 14px;
           margin: 0 0 10px; }
.ov h2 { font-size: 12px; font-weight: 600; letter-spacing: .06em; text-transform: uppercase;
         color: #616e7c; margin: 0 0 6px; }
.ov-partial { color: #7b8794; font-style: italic; min-height: 1.2em; }
.ov-line { margin: 2px 0; }
.ov-error { color: #c92a2a; font-size: 13px; }
.ov-error:empty { display: none; }
.ov-typed { display: flex; gap: 8px; margin: 8px 0; }
.ov-typed[hidden] { display: none; }
.ov-typed input { flex: 1; font: 14px system-ui, sans-serif; padding: 6px 8px; }
`;

export function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "ov";
  root.dataset.testid = "oraculo-voice";
  root.dataset.state = "idle";
  root.innerHTML = `
    <style>${CSS}</style>
    <div class="ov-bar">
      <select data-testid="voice-mode" aria-label="Mode">
        <option value="hands_free">Hands-free</option>
        <option value="push_to_talk">Push to talk</option>
      </select>
      <button class="primary" data-testid="voice-start">Start</button>
      <button data-testid="voice-talk" disabled>Hold to talk</button>
      <button data-testid="voice-stop" disabled>Stop</button>
      <span class="ov-status" data-testid="voice-status">Not connected</span>
    </div>
    <div class="ov-error" data-testid="voice-error"></div>
    <form class="ov-typed" data-testid="voice-text-form" hidden>
      <input data-testid="voice-text" aria-label="Type your question"
        placeholder="Type your question">
      <button class="primary" type="submit">Send</button>
    </form>
    <div class="ov-card"><h2>You</h2>
      <div data-testid="voice-transcript"></div>
      <div class="ov-partial" data-testid="voice-partial"></div></div>
    <div class="ov-card"><h2>Oráculo</h2><div data-testid="voice-reply"></div>
      <div class="ov-status" data-testid="voice-played" data-count="0"></div></div>`;
  el.appendChild(root);
  const $ = (id) => root.querySelector(`[data-testid=${id}]`);
  const modeSel = $("voice-mode"), startBtn = $("voice-start"), talkBtn = $("voice-talk"),
    stopBtn = $("voice-stop"), status = $("voice-status"), errorBox = $("voice-error"),
    transcript = $("voice-transcript"), partial = $("voice-partial"), reply = $("voice-reply"),
    played = $("voice-played");
  modeSel.value = model.mode;

  let ws = null, mic = null, micCtx = null, node = null, out = null, talking = false;
  let pending = null, nextTime = 0, sources = [], playedCount = 0, chunks = [];

  const setState = (state, text) => { root.dataset.state = state; status.textContent = text; };
  const voiceUrl = () => {
    const path = location.pathname;
    const i = path.indexOf("/oraculo-panels/");
    const base = i >= 0 ? path.slice(0, i + 1) : "/";
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + base + "api/v1/voice";
  };

  function stopPlayback() {
    for (const s of sources) { try { s.stop(); } catch (e) { /* already ended */ } }
    sources = []; nextTime = 0;
  }

  function play(header, data) {
    if (!out) out = new AudioContext();
    const pcm = new Int16Array(data);
    const buf = out.createBuffer(1, pcm.length, header.sample_rate);
    const ch = buf.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = out.createBufferSource();
    src.buffer = buf; src.connect(out.destination);
    const at = Math.max(out.currentTime + 0.02, nextTime);
    src.onended = () => {
      sources = sources.filter((s) => s !== src);
      if (src._stopped) return;
      playedCount += 1; played.dataset.count = String(playedCount);
      played.textContent = `${playedCount} sentence(s) played`;
    };
    src.start(at); nextTime = at + buf.duration; sources.push(src);
  }

  function onEvent(ev) {
    switch (ev.type) {
      case "ready": setState("listening", "Listening"); break;
      case "speech_start": partial.textContent = "…"; break;
      case "partial": partial.textContent = ev.text; break;
      case "final": {
        partial.textContent = "";
        if (ev.text) {
          const line = document.createElement("div");
          line.className = "ov-line"; line.textContent = ev.text; transcript.appendChild(line);
          reply.textContent = "";
        }
        break;
      }
      case "reply": setState("replying", "Replying"); reply.textContent += ev.delta; break;
      case "audio": pending = ev; break;
      case "reply_end": setState("listening", "Listening"); break;
      case "barge_in": case "cancelled":
        for (const s of sources) s._stopped = true;
        stopPlayback(); setState("listening", "Listening"); break;
      case "error": errorBox.textContent = (ev.error && ev.error.message) || "Error"; break;
    }
  }

  function send(frame) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(frame); }

  function onAudio(samples) {
    if (modeSel.value === "push_to_talk" && !talking) return;
    chunks.push(samples);
    let n = chunks.reduce((a, c) => a + c.length, 0);
    if (n < 1600) return;  // 100 ms at 16 kHz
    const pcm = new Int16Array(n);
    let o = 0;
    for (const c of chunks) {
      for (let i = 0; i < c.length; i++) pcm[o++] = Math.max(-1, Math.min(1, c[i])) * 32767;
    }
    chunks = [];
    send(pcm.buffer);
  }

  async function startMic() {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true,
      },
    });
    micCtx = new AudioContext({ sampleRate: 16000 });
    const source = micCtx.createMediaStreamSource(mic);
    const code = `class Tap extends AudioWorkletProcessor {
      process(inputs) {
        const c = inputs[0][0]; if (c) this.port.postMessage(c.slice(0)); return true;
      }
    }
    registerProcessor("oraculo-tap", Tap);`;
    const url = URL.createObjectURL(new Blob([code], { type: "application/javascript" }));
    await micCtx.audioWorklet.addModule(url);
    node = new AudioWorkletNode(micCtx, "oraculo-tap");
    node.port.onmessage = (e) => onAudio(e.data);
    source.connect(node);
  }

  async function start() {
    errorBox.textContent = "";
    startBtn.disabled = true; modeSel.disabled = true;
    setState("connecting", "Connecting");
    try {
      out = out || new AudioContext();
      await out.resume();
      await startMic();
    } catch (e) {
      setState("error", "Microphone unavailable"); errorBox.textContent = micMessage(e);
      typedForm.hidden = false; typedInput.focus();
      startBtn.disabled = false; modeSel.disabled = false; return;
    }
    ws = new WebSocket(voiceUrl());
    ws.binaryType = "arraybuffer";
    ws.onopen = () => send(JSON.stringify({ type: "start", mode: modeSel.value }));
    ws.onmessage = (m) => {
      if (typeof m.data === "string") onEvent(JSON.parse(m.data));
      else if (pending) { play(pending, m.data); pending = null; }
    };
    ws.onclose = (e) => {
      if (root.dataset.state !== "idle") {
        setState(e.code === 1000 ? "idle" : "error", `Disconnected (${e.code})`);
      }
      stop(false);
    };
    stopBtn.disabled = false;
    talkBtn.disabled = modeSel.value !== "push_to_talk";
  }

  function micMessage(e) {
    const name = (e && e.name) || "";
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      return "No microphone was found on this computer. Type your question below instead.";
    }
    if (name === "NotAllowedError" || name === "SecurityError") {
      return "The browser was not allowed to use the microphone. Allow it in the address " +
        "bar and press Start again, or type your question below.";
    }
    return "The microphone could not be started. Type your question below instead.";
  }

  // Without a microphone: the question goes to the chat API as text, the reply shows as text.
  const typedForm = $("voice-text-form"), typedInput = $("voice-text");
  let conversation = null;
  function apiBase() {
    const path = location.pathname, i = path.indexOf("/oraculo-panels/");
    return i >= 0 ? path.slice(0, i + 1) : "/";
  }
  async function ask(text) {
    const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || "";
    const body = { messages: [{ role: "user", content: text }], stream: true, store: true };
    if (conversation) body.conversation_id = conversation;
    const line = document.createElement("div");
    line.className = "ov-line"; line.textContent = text; transcript.appendChild(line);
    reply.textContent = ""; setState("replying", "Replying");
    const r = await fetch(apiBase() + "api/v1/chat", {
      method: "POST", credentials: "same-origin", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-XSRFToken": decodeURIComponent(xsrf) },
    });
    if (!r.ok) {
      let message = `HTTP ${r.status}`;
      try { message = (await r.json()).message || message; } catch (e) { /* not JSON */ }
      errorBox.textContent = message; setState("error", "Error"); return;
    }
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "", event = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const raw = buffer.slice(0, nl).trim(); buffer = buffer.slice(nl + 1);
        if (raw.startsWith("event:")) { event = raw.slice(6).trim(); continue; }
        if (!raw.startsWith("data:")) continue;
        const data = raw.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (event === "error" || chunk.error) {
          errorBox.textContent = (chunk.error && chunk.error.message) || "Error";
        }
        event = "";
        if (chunk.oraculo && chunk.oraculo.conversation_id) {
          conversation = chunk.oraculo.conversation_id;
        }
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) reply.textContent += c.delta.content;
        }
      }
    }
    setState("typed", "Replied (typed)");
  }
  typedForm.onsubmit = (e) => {
    e.preventDefault();
    const text = typedInput.value.trim();
    if (!text) return;
    typedInput.value = "";
    ask(text).catch((err) => { errorBox.textContent = String(err); setState("error", "Error"); });
  };

  function stop(closeSocket = true) {
    if (closeSocket && ws) { setState("idle", "Not connected"); ws.close(1000); }
    ws = null;
    stopPlayback();
    if (node) node.disconnect();
    if (mic) mic.getTracks().forEach((t) => t.stop());
    if (micCtx) micCtx.close();
    mic = micCtx = node = null;
    startBtn.disabled = false; modeSel.disabled = false; stopBtn.disabled = true;
    talkBtn.disabled = true;
  }

  function talk(on) {
    if (talkBtn.disabled || talking === on) return;
    talking = on;
    talkBtn.classList.toggle("talking", on);
    if (on) { send(JSON.stringify({ type: "cancel" })); }
    else { chunks = []; send(JSON.stringify({ type: "commit" })); }
  }

  modeSel.onchange = () => { model.mode = modeSel.value; };
  startBtn.onclick = start;
  stopBtn.onclick = () => stop(true);
  talkBtn.onpointerdown = () => talk(true);
  talkBtn.onpointerup = () => talk(false);
  talkBtn.onpointerleave = () => talk(false);
  talkBtn.onkeydown = (e) => { if (e.key === " " || e.key === "Enter") talk(true); };
  talkBtn.onkeyup = (e) => { if (e.key === " " || e.key === "Enter") talk(false); };
}
"""


class VoiceWidget(JSComponent):
    """Microphone, websocket and playback, all in the browser."""

    mode: param.Selector = param.Selector(
        default="hands_free",
        objects=["hands_free", "push_to_talk"],
        doc="hands_free: the server's VAD ends utterances; push_to_talk: a held button does.",
    )

    _esm = _ESM


def create_app() -> pn.viewable.Viewable:
    """The Voice page."""
    if pn.state.curdoc is not None:
        pn.state.curdoc.template_variables["app_favicon"] = static_url("workspace.svg")
    return pn.Column(pn.pane.Markdown("## Voice"), VoiceWidget(), sizing_mode="stretch_width")
