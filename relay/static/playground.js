// The playground's call: settings -> ephemeral key -> WebRTC call -> events, as OpenAI's
// WebRTC guide does it (https://platform.openai.com/docs/guides/realtime-webrtc).
// Drawing is in playground-ui.js.
"use strict";

const PTT_FLUSH_MS = 300;  // after release, let the last RTP packets arrive before the commit
const call = {
  pc: null, dc: null, mic: null, audio: null, timers: [],
  clocks: new Map(),        // response id -> TurnClock
  nextClock: null,          // the clock of the turn that has ended but has no response yet
  lastClock: null,          // the clock of the latest response (a late transcript marks it)
  playing: null,            // the response whose audio is due (for the "heard" mark)
  items: new Map(),         // response id -> its assistant message item id
  calls: [],                // function calls of the current response, answered at response.done
  responding: false,
  wantsResponse: false,     // a response.create waiting for the current response's end
  muted: false,
  session: null,            // the session as the server last described it
};

function status(text) { $("status").textContent = text; }

function settingsError(text) { $("settings-error").textContent = text; }

// ---- settings -> session configuration --------------------------------------------------

function turnDetection() {
  const type = $("turn-type").value;
  if (type === "server_vad") {
    return { type, silence_duration_ms: Number($("silence-ms").value),
             threshold: Number($("threshold").value) };
  }
  if (type === "semantic_vad") return { type, eagerness: $("eagerness").value };
  return null;  // push to talk: the page commits the buffer itself
}

function tools() {
  const text = $("tools").value.trim();
  if (!text) return [];
  const parsed = JSON.parse(text);  // a SyntaxError names the position
  if (!Array.isArray(parsed)) throw new Error("tools must be a JSON list");
  return parsed;
}

function sessionConfig() {
  const noise = $("noise").value;
  return {
    type: "realtime",
    model: "gpt-realtime",
    instructions: $("instructions").value,
    audio: {
      input: {
        transcription: { model: "whisper-1" },
        turn_detection: turnDetection(),
        noise_reduction: noise === "none" ? null : { type: noise },
      },
      output: { voice: $("voice").value },
    },
    tools: tools(),
    tool_choice: "auto",
  };
}

function showTurnFields() {
  const type = $("turn-type").value;
  for (const node of document.querySelectorAll(".for-semantic")) node.hidden = type !== "semantic_vad";
  for (const node of document.querySelectorAll(".for-server")) node.hidden = type !== "server_vad";
  const connected = Boolean(call.dc && call.dc.readyState === "open");
  $("ptt").disabled = !connected || type !== "none";
  if (call.mic) call.mic.enabled = type !== "none" && !call.muted;
}

// ---- sending ----------------------------------------------------------------------------

function send(event) {
  if (!call.dc || call.dc.readyState !== "open") return;
  call.dc.send(JSON.stringify(event));
  eventLog.add("client", event);
}

function applySettings() {
  try {
    send({ type: "session.update", session: sessionConfig() });
    settingsError("");
  } catch (error) {
    settingsError(String(error.message || error));
  }
}

function sendText(text) {
  call.nextClock = new TurnClock(performance.now(), "after sending");
  send({ type: "conversation.item.create",
         item: { type: "message", role: "user", content: [{ type: "input_text", text }] } });
  createResponse();
}

// One response at a time, as the API allows: asked for during one, it waits for its end.
function createResponse() {
  if (call.responding) call.wantsResponse = true;
  else send({ type: "response.create" });
}

// ---- push to talk and mute --------------------------------------------------------------

function talk(down) {
  if ($("ptt").disabled || !call.mic || $("ptt").classList.contains("talking") === down) return;
  $("ptt").classList.toggle("talking", down);
  if (down) {
    if (call.responding) send({ type: "response.cancel" });
    send({ type: "output_audio_buffer.clear" });
    send({ type: "input_audio_buffer.clear" });
    call.mic.enabled = true;
    return;
  }
  const released = performance.now();
  call.mic.enabled = false;
  call.timers.push(setTimeout(() => {
    call.nextClock = new TurnClock(released, "after release");
    send({ type: "input_audio_buffer.commit" });
    send({ type: "response.create" });
  }, PTT_FLUSH_MS));
}

function toggleMute() {
  call.muted = !call.muted;
  $("mute").setAttribute("aria-pressed", String(call.muted));
  $("mute").textContent = call.muted ? "Unmute" : "Mute";
  showTurnFields();
}

// ---- received events --------------------------------------------------------------------

function markTurn(event, name) {
  const id = event.response_id || (event.response && event.response.id);
  const clock = call.clocks.get(id);
  if (!clock) return;
  clock.mark(name);
  chat.latency(call.items.get(id), clock.describe());
}

function onResponseDone(response) {
  call.responding = false;
  if (response.status === "failed") {
    const error = (response.status_details || {}).error || {};
    chat.add("error", "Response failed", error.message || "failed");
  }
  const calls = call.calls.splice(0);
  for (const item of calls) {
    const output = $("tool-result").value;
    chat.add("tool", "Tool result", output);
    send({ type: "conversation.item.create",
           item: { type: "function_call_output", call_id: item.call_id, output } });
  }
  if (calls.length) call.nextClock = new TurnClock(performance.now(), "after the tool result");
  if (calls.length || call.wantsResponse) {
    call.wantsResponse = false;
    send({ type: "response.create" });
  }
}

function onOutputItem(item, responseId) {
  if (item.type === "message") {
    call.items.set(responseId, item.id);
    chat.assistant(item.id);
  }
}

function onUserItem(item) {
  if (item.type !== "message" || item.role !== "user") return;
  const text = (item.content || []).filter((part) => part.type === "input_text")
    .map((part) => part.text).join(" ");
  if (text) chat.user(item.id, text);
}

const handlers = {
  "session.created": (e) => { call.session = e.session; status(statusText()); },
  "session.updated": (e) => { call.session = e.session; settingsError(""); },
  "input_audio_buffer.speech_started": (e) => chat.user(e.item_id, "…", true),
  "input_audio_buffer.speech_stopped": () => { call.nextClock = new TurnClock(performance.now()); },
  "input_audio_buffer.committed": (e) => { if (!chat.turns.has(e.item_id)) chat.user(e.item_id, "…", true); },
  "conversation.item.input_audio_transcription.completed": (e) => {
    chat.user(e.item_id, e.transcript || "(nothing heard)");
    const clock = call.nextClock || call.lastClock;
    if (clock) clock.mark("transcript");
  },
  "conversation.item.input_audio_transcription.failed": (e) => chat.user(e.item_id, "(transcription failed)"),
  "conversation.item.added": (e) => onUserItem(e.item),
  "response.created": (e) => {
    call.responding = true;
    const clock = call.nextClock || new TurnClock(performance.now(), "after the response began");
    call.nextClock = null;
    call.clocks.set(e.response.id, clock);
    call.lastClock = clock;
    markTurn(e, "created");
  },
  "response.output_item.added": (e) => onOutputItem(e.item, e.response_id),
  "response.output_audio_transcript.delta": (e) => { chat.append(e.item_id, e.delta); markTurn(e, "words"); },
  "response.output_text.delta": (e) => { chat.append(e.item_id, e.delta); markTurn(e, "words"); },
  "output_audio_buffer.started": (e) => { call.playing = e.response_id; markTurn(e, "playout"); },
  "response.output_item.done": (e) => {
    if (e.item.type !== "function_call") return;
    call.calls.push(e.item);
    chat.add("tool", "Tool call", `${e.item.name}(${e.item.arguments})`);
  },
  "response.done": (e) => onResponseDone(e.response),
  "error": (e) => {
    const error = e.error || {};
    if (error.code === "conversation_already_has_active_response") {
      // A turn of the microphone's started one first: ask again once it is done.
      call.responding = call.wantsResponse = true;
      return;
    }
    chat.add("error", "Error", `${error.code || error.type}: ${error.message}`);
    if (error.param && error.param.startsWith("session")) settingsError(error.message);
  },
};

function onEvent(event) {
  eventLog.add("server", event);
  const handler = handlers[event.type];
  if (handler) handler(event);
}

function heardAudio() {
  const id = call.playing;
  const clock = id && call.clocks.get(id);
  $("audio-level").textContent = Number($("audio-level").textContent) + 1;
  if (!clock || "heard" in clock.marks) return;
  clock.mark("heard");
  chat.latency(call.items.get(id), clock.describe());
}

// ---- the call -----------------------------------------------------------------------------

function statusText() {
  return $("turn-type").value === "none" ? "connected: hold to talk" : "connected: speak";
}

async function clientSecret() {
  const headers = { "Content-Type": "application/json" };
  if ($("key").value) headers.Authorization = "Bearer " + $("key").value;
  // In a real app your backend mints this key, and the browser never sees the API key.
  const response = await fetch("/v1/realtime/client_secrets", {
    method: "POST", headers, body: JSON.stringify({ session: sessionConfig() }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body.value;
}

async function start() {
  $("start").disabled = true;
  settingsError("");
  status("connecting");
  const key = await clientSecret();
  const pc = (call.pc = new RTCPeerConnection());
  call.audio = new AudioContext();
  const player = document.createElement("audio");
  player.autoplay = true;
  document.body.append(player);
  pc.ontrack = (e) => {
    player.srcObject = e.streams[0];
    call.timers.push(levelMeter(call.audio, e.streams[0], "out-level", heardAudio));
  };
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  call.mic = stream.getAudioTracks()[0];
  pc.addTrack(call.mic, stream);
  call.timers.push(levelMeter(call.audio, stream, "in-level"));
  call.dc = pc.createDataChannel("oai-events");
  call.dc.addEventListener("message", (e) => onEvent(JSON.parse(e.data)));
  call.dc.addEventListener("open", connected);
  call.dc.addEventListener("close", () => { if (call.pc === pc) stop("the server ended the call"); });
  await pc.setLocalDescription(await pc.createOffer());
  const answer = await fetch("/v1/realtime/calls", {
    method: "POST", body: pc.localDescription.sdp,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/sdp" },
  });
  if (!answer.ok) throw new Error((await answer.json()).error.message);
  await pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });
}

function connected() {
  status(statusText());
  for (const id of ["stop", "mute", "apply", "text", "send"]) $(id).disabled = false;
  showTurnFields();
}

function stop(reason) {
  for (const timer of call.timers.splice(0)) { clearInterval(timer); clearTimeout(timer); }
  if (call.pc) call.pc.close();
  if (call.audio) call.audio.close();
  if (call.mic) call.mic.stop();
  Object.assign(call, { pc: null, dc: null, mic: null, audio: null, responding: false });
  status(typeof reason === "string" ? reason : "hung up");
  for (const id of ["stop", "mute", "apply", "text", "send", "ptt"]) $(id).disabled = true;
  $("start").disabled = false;
  $("in-level").value = $("out-level").value = 0;
}

$("start").addEventListener("click", () => start().catch((error) => {
  stop("error: " + (error.message || error));
}));
$("stop").addEventListener("click", () => stop());
$("mute").addEventListener("click", toggleMute);
$("apply").addEventListener("click", applySettings);
$("turn-type").addEventListener("input", showTurnFields);
$("ptt").addEventListener("pointerdown", () => talk(true));
$("ptt").addEventListener("pointerup", () => talk(false));
$("ptt").addEventListener("pointerleave", () => talk(false));
document.addEventListener("keydown", (e) => {
  if (e.code === "Space" && !e.repeat && e.target === document.body) { e.preventDefault(); talk(true); }
});
document.addEventListener("keyup", (e) => { if (e.code === "Space") talk(false); });
$("text-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (text) sendText(text);
  $("text").value = "";
});
showTurnFields();
if (new URLSearchParams(location.search).has("autostart")) $("start").click();
