// The playground's view: chat turns, the event log, level meters and per-turn latency.
// playground.js owns the call; this file only draws. Standard browser APIs, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const LOG_LIMIT = 500;  // entries kept in the event log (older ones are dropped)
const DELTA = /\.delta$|^input_audio_buffer\.append$/;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- chat -------------------------------------------------------------------------------

const chat = {
  turns: new Map(),  // item id -> {node, text}

  add(kind, who, text, id) {
    const node = element("div", "turn " + kind);
    node.append(element("span", "who", who), element("span", "text", text));
    if (id) node.dataset.item = id;
    $("chat").append(node);
    $("chat").scrollTop = $("chat").scrollHeight;
    const turn = { node, text: node.querySelector(".text") };
    if (id) this.turns.set(id, turn);
    return turn;
  },

  // A user turn appears when speech starts and gets its transcript when STT is done.
  user(id, text, pending) {
    const turn = this.turns.get(id) || this.add("user", "You", text, id);
    turn.text.textContent = text;
    turn.node.classList.toggle("pending", Boolean(pending));
    return turn;
  },

  assistant(id) {
    return this.turns.get(id) || this.add("assistant", "Assistant", "", id);
  },

  append(id, delta) {
    const turn = this.assistant(id);
    turn.text.textContent += delta;
    $("chat").scrollTop = $("chat").scrollHeight;
  },

  latency(id, text) {
    const turn = this.turns.get(id);
    if (!turn) return;
    let line = turn.node.querySelector(".latency");
    if (!line) turn.node.append((line = element("span", "latency")));
    line.textContent = text;
  },

  clear() { $("chat").replaceChildren(); this.turns.clear(); },
};

// ---- per-turn latency -------------------------------------------------------------------

// Times (performance.now()) of what the page saw for one turn, from the end of speech: the
// server's speech_stopped (or the push-to-talk release), the transcript, response.created,
// the first words, the server starting playout, and the first reply audio the page heard.
class TurnClock {
  constructor(end, from = "after end of speech") { this.end = end; this.from = from; this.marks = {}; }
  mark(name) { if (!(name in this.marks)) this.marks[name] = performance.now(); }
  since(name) { return Math.round(this.marks[name] - this.end); }
  describe() {
    const parts = [];
    if ("heard" in this.marks) parts.unshift(`first audio ${this.since("heard")} ms ${this.from}`);
    const stages = [["transcript", "transcript"], ["created", "response"], ["words", "first words"],
                    ["playout", "server playout"]];
    for (const [name, label] of stages) {
      if (name in this.marks) parts.push(`${label} ${this.since(name)}`);
    }
    return parts.join(" · ") + (parts.length > 1 ? " ms" : "");
  }
}

// ---- event log --------------------------------------------------------------------------

const eventLog = {
  add(direction, event) {
    const item = element("li", direction);
    item.dataset.type = event.type || "?";
    const details = element("details");
    const summary = element("summary");
    const time = new Date().toISOString().slice(11, 23);
    summary.append(element("span", "dir", direction === "client" ? "→ " : "← "),
                   `${time} ${event.type || "?"}`);
    details.append(summary);
    details.addEventListener("toggle", () => {
      if (details.open && details.childElementCount === 1) {
        details.append(element("pre", "", JSON.stringify(event, shorten, 2)));
      }
    }, { once: true });
    item.append(details);
    this.show(item);
    const log = $("log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(item);
    while (log.childElementCount > LOG_LIMIT) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  },

  show(item) {
    const text = $("log-filter").value.trim().toLowerCase();
    const visible = $(item.classList.contains("client") ? "log-client" : "log-server").checked
      && ($("log-deltas").checked || !DELTA.test(item.dataset.type))
      && (!text || item.dataset.type.toLowerCase().includes(text));
    item.classList.toggle("hidden", !visible);
  },

  refilter() { for (const item of $("log").children) this.show(item); },
};

function shorten(key, value) {
  // Audio payloads are long base64 strings: show their size instead.
  if (typeof value === "string" && value.length > 200 && /^(audio|delta)$/.test(key)) {
    return `<${value.length} base64 characters>`;
  }
  return value;
}

for (const id of ["log-filter", "log-client", "log-server", "log-deltas"]) {
  $(id).addEventListener("input", () => eventLog.refilter());
}
$("log-clear").addEventListener("click", () => $("log").replaceChildren());

// ---- level meters -----------------------------------------------------------------------

// Peak level of a stream, 20 times a second, into a <meter>; onSound(level) on each
// non-silent reading, which the meter also counts in its data-sounds attribute.
function levelMeter(context, stream, meterId, onSound) {
  const analyser = context.createAnalyser();
  context.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  return setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let peak = 0;
    for (const v of samples) peak = Math.max(peak, Math.abs(v));
    const meter = $(meterId);
    meter.value = Math.min(1, peak);
    if (peak <= 0.01) return;
    meter.dataset.sounds = Number(meter.dataset.sounds || 0) + 1;  // readings with sound
    if (onSound) onSound(peak);
  }, 50);
}
