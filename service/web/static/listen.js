// auscult page, Listen mode: the microphone → an AudioWorklet (listen-worklet.js) → the
// WebSocket WS v1/models/{name}/listen; each window's score on a live chart against the
// two thresholds, the level so far large in its colour, a scrolling spectrogram strip; Stop
// gives the summary and downloads of the recording (wav) and of the scores (csv).
// Plain JavaScript, no library; it shares only the model choice (#model) and the API key
// (sessionStorage) with app.js.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "auscult.apiKey";
  const LEVEL_TEXT = {
    normal: "Normal",
    needs_maintenance: "Needs maintenance",
    severe: "Severe anomaly",
  };
  const SILENCE = 1e-4; // below this a sample is the microphone's start-up silence
  const SETTLE_S = 0.5; // the microphone's first half second is not sent
  const CHART = { w: 640, h: 200, left: 44, right: 10, top: 10, bottom: 26 };

  const st = {
    detail: null, // GET v1/models/{name} of the chosen model
    ws: null,
    ctx: null,
    media: null,
    node: null,
    analyser: null,
    raf: 0,
    rate: 0,
    chunks: [], // Float32Array blocks of the recording (mono, st.rate)
    pending: [], // blocks captured before the socket opened
    windows: [], // window messages
    summary: null,
    heard: false, // a sample above SILENCE came: the stream has started
    settle: 0, // samples still to drop while the microphone settles
    urls: [],
  };

  const fmt = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : "–");

  const { s, wavBytes } = window.auscultPage;

  function setStatus(text) {
    $("listen-status").textContent = text;
  }

  function showError(text) {
    const box = $("listen-error");
    box.textContent = text;
    box.hidden = !text;
  }

  function canListen() {
    return !!(
      window.isSecureContext &&
      navigator.mediaDevices &&
      navigator.mediaDevices.getUserMedia &&
      window.AudioWorkletNode &&
      window.WebSocket
    );
  }

  // ---------------------------------------------------------------- the chosen model

  async function loadDetail(name) {
    if (st.ws) return; // a stream keeps its model; the next one takes the new choice
    st.detail = null;
    updateButton();
    if (!name) return;
    const headers = {};
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers["X-API-Key"] = key;
    try {
      const r = await fetch(`v1/models/${encodeURIComponent(name)}`, { headers });
      if (!r.ok) return;
      const d = await r.json();
      if ($("model").value === name) st.detail = d;
    } catch (_) {
      /* app.js shows what went wrong with the service */
    }
    updateButton();
  }

  function listenable() {
    const d = st.detail;
    return !!(d && d.kind === "anomaly" && d.status === "ready" && d.features && d.features.window_seconds);
  }

  function updateButton() {
    const button = $("listen-toggle");
    const on = !!st.ws;
    button.disabled = !on && (!listenable() || !canListen());
    let hint = "Scores every window as the microphone hears it.";
    if (!canListen()) hint = "This browser cannot listen live here (it needs a secure page, a microphone and AudioWorklet).";
    else if (st.detail && !listenable()) hint = "Live listening needs an anomaly model that scores windows.";
    if (!on) $("listen-hint").textContent = hint;
  }

  // ---------------------------------------------------------------- listening

  function socketUrl(name) {
    const url = new URL(`v1/models/${encodeURIComponent(name)}/listen`, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  async function start() {
    if (st.ws || !listenable()) return;
    const d = st.detail;
    showError("");
    reset();
    setStatus("Asking for the microphone…");
    try {
      st.media = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (e) {
      setStatus("");
      showError(`The microphone is not available: ${e.message}`);
      return;
    }
    st.ctx = new AudioContext();
    st.rate = st.ctx.sampleRate;
    st.settle = Math.round(SETTLE_S * st.rate);
    await st.ctx.audioWorklet.addModule("static/web/listen-worklet.js");
    const source = st.ctx.createMediaStreamSource(st.media);
    st.node = new AudioWorkletNode(st.ctx, "auscult-listen-tap");
    const silent = st.ctx.createGain();
    silent.gain.value = 0;
    source.connect(st.node).connect(silent).connect(st.ctx.destination);
    st.analyser = st.ctx.createAnalyser();
    st.analyser.fftSize = 1024;
    st.analyser.smoothingTimeConstant = 0;
    source.connect(st.analyser);
    st.node.port.onmessage = (e) => onBlock(e.data);

    const ws = new WebSocket(socketUrl(d.name), ["auscult"]);
    ws.binaryType = "arraybuffer";
    st.ws = ws;
    ws.onopen = () => {
      const startMsg = { type: "start", sample_rate: st.rate, channels: 1, format: "f32le" };
      const key = sessionStorage.getItem(KEY_STORE);
      if (key) startMsg.api_key = key; // in the message: never in the URL
      ws.send(JSON.stringify(startMsg));
      for (const block of st.pending) ws.send(block.buffer);
      st.pending = [];
      setStatus(`Listening at ${st.rate} Hz… press Stop to end.`);
    };
    ws.onmessage = (e) => onMessage(JSON.parse(e.data));
    ws.onclose = (e) => onClose(e);
    setToggle(true);
    drawSpectrogram();
    drawChart();
  }

  function onBlock(data) {
    if (data === "done") {
      if (st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(JSON.stringify({ type: "stop" }));
      return;
    }
    if (!st.heard) {
      // a microphone settles first (tens of ms of exact zeros, a gap, a click): not sound
      // the machine made, and a window of it reads far from normal. The stream starts at
      // the first sound after SETTLE_S.
      const skip = Math.min(data.length, st.settle);
      st.settle -= skip;
      data = data.subarray(skip);
      const first = data.findIndex((v) => Math.abs(v) > SILENCE);
      if (first < 0) return;
      st.heard = true;
      data = data.slice(first);
    }
    st.chunks.push(data);
    if (!st.ws) return;
    if (st.ws.readyState === WebSocket.OPEN) st.ws.send(data.buffer);
    else if (st.ws.readyState === WebSocket.CONNECTING) st.pending.push(data);
  }

  function stop() {
    if (!st.ws) return;
    setStatus("Scoring the last window…");
    $("listen-toggle").disabled = true;
    if (st.node) st.node.port.postMessage("stop"); // the worklet flushes, then "done" → stop
    releaseMicrophone();
  }

  function releaseMicrophone() {
    if (st.media) for (const t of st.media.getTracks()) t.stop();
    st.media = null;
  }

  function onMessage(m) {
    if (m.type === "window") {
      st.windows.push(m);
      showLevel(m.level, m);
      addRow(m);
      drawChart();
    } else if (m.type === "summary") {
      st.summary = m;
      showSummary(m);
    } else if (m.type === "error") {
      showError(`The service ended the stream: ${m.error.message} (${m.error.code})`);
    }
  }

  function onClose(e) {
    const hadSummary = !!st.summary;
    st.ws = null;
    releaseMicrophone();
    if (st.ctx) st.ctx.close();
    st.ctx = null;
    st.node = null;
    cancelAnimationFrame(st.raf);
    setToggle(false);
    if (!hadSummary && $("listen-error").hidden) {
      showError(`The connection closed (code ${e.code}${e.reason ? `: ${e.reason}` : ""}).`);
    }
    setStatus(hadSummary ? "Stopped." : "");
    offerDownloads();
    // a model chosen while listening applies now
    if (!st.detail || st.detail.name !== $("model").value) loadDetail($("model").value);
    else updateButton();
  }

  function reset() {
    for (const u of st.urls) URL.revokeObjectURL(u);
    Object.assign(st, { chunks: [], pending: [], windows: [], summary: null, urls: [], heard: false });
    $("listen-rows").replaceChildren();
    $("listen-summary").replaceChildren();
    $("listen-summary").hidden = true;
    $("listen-downloads").hidden = true;
    const level = $("listen-level");
    level.textContent = "Listening…";
    level.removeAttribute("data-level");
    $("listen-level-note").textContent = "";
    const canvas = $("listen-spectrogram");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }

  function setToggle(on) {
    const button = $("listen-toggle");
    button.setAttribute("aria-pressed", on ? "true" : "false");
    $("listen-label").textContent = on ? "Stop" : "Listen";
    button.disabled = false;
  }

  // ---------------------------------------------------------------- what it shows

  function showLevel(level, m) {
    const el = $("listen-level");
    el.textContent = LEVEL_TEXT[level] || level;
    el.dataset.level = level;
    const w = m.worst;
    $("listen-level-note").textContent = w
      ? `so far: score ${fmt(m.clip_score)}, worst stretch ${fmt(w.start_s, 1)}–${fmt(w.end_s, 1)} s`
      : "";
  }

  function windowLevel(score) {
    const t = st.detail.thresholds;
    if (score >= t.severe) return "severe";
    return score >= t.needs_maintenance ? "needs_maintenance" : "normal";
  }

  function addRow(m) {
    const tr = document.createElement("tr");
    tr.dataset.start = m.start_s;
    tr.dataset.level = m.level;
    for (const text of [`${fmt(m.start_s, 1)}–${fmt(m.end_s, 1)} s`, fmt(m.score), LEVEL_TEXT[m.level]]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    $("listen-rows").prepend(tr);
  }

  function drawChart() {
    const svg = $("listen-chart");
    const { w, h, left, right, top, bottom } = CHART;
    const t = st.detail.thresholds;
    const end = Math.max(10, ...st.windows.map((m) => m.end_s));
    const begin = Math.max(0, end - 60); // the last minute
    const shown = st.windows.filter((m) => m.end_s >= begin);
    const high = Math.max(t.severe * 1.3, ...shown.map((m) => m.score));
    const x = (sec) => left + ((sec - begin) / (end - begin)) * (w - left - right);
    const y = (v) => top + (1 - Math.min(v, high) / high) * (h - top - bottom);
    const parts = [s("rect", { x: left, y: top, width: w - left - right, height: h - top - bottom, class: "plot" })];
    for (const [name, value] of [["needs_maintenance", t.needs_maintenance], ["severe", t.severe]]) {
      parts.push(s("line", { x1: left, x2: w - right, y1: y(value), y2: y(value), class: `threshold ${name}` }));
      parts.push(s("text", { x: left - 4, y: y(value) + 4, "text-anchor": "end" }, fmt(value, 1)));
    }
    if (shown.length) {
      const mid = (m) => (m.start_s + m.end_s) / 2;
      const d = shown.map((m, i) => `${i ? "L" : "M"}${x(mid(m)).toFixed(1)},${y(m.score).toFixed(1)}`);
      parts.push(s("path", { d: d.join(" "), class: "scores" }));
      for (const m of shown) {
        parts.push(s("circle", { cx: x(mid(m)), cy: y(m.score), r: 4, class: `point ${windowLevel(m.score)}` }));
      }
    }
    parts.push(s("text", { x: left, y: h - 6 }, `${fmt(begin, 0)} s`));
    parts.push(s("text", { x: w - right, y: h - 6, "text-anchor": "end" }, `${fmt(end, 0)} s`));
    svg.replaceChildren(...parts);
  }

  function drawSpectrogram() {
    const canvas = $("listen-spectrogram");
    const g = canvas.getContext("2d");
    const bins = new Uint8Array(st.analyser.frequencyBinCount);
    // the bins up to 8 kHz (or the whole band of a slower context), lowest at the bottom
    const top = Math.min(bins.length, Math.round((8000 / (st.rate / 2)) * bins.length));
    const column = g.createImageData(2, canvas.height);
    const step = () => {
      if (!st.analyser || !st.ws) return;
      st.analyser.getByteFrequencyData(bins);
      g.drawImage(canvas, -2, 0); // scroll left
      for (let row = 0; row < canvas.height; row++) {
        const v = bins[Math.floor(((canvas.height - 1 - row) / canvas.height) * top)];
        for (let c = 0; c < 2; c++) {
          const i = (row * 2 + c) * 4;
          column.data[i] = v;
          column.data[i + 1] = Math.round(v * 0.6);
          column.data[i + 2] = 255 - v;
          column.data[i + 3] = 255;
        }
      }
      g.putImageData(column, canvas.width - 2, 0);
      st.raf = requestAnimationFrame(step);
    };
    st.raf = requestAnimationFrame(step);
  }

  function showSummary(m) {
    const box = $("listen-summary");
    const heard = m.input ? m.input.duration_s : 0;
    const parts = [];
    if (m.score === null) {
      parts.push(`Heard ${fmt(heard, 1)} s: too short for a window.`);
    } else {
      showLevel(m.level, { clip_score: m.score, worst: m.worst });
      parts.push(
        `${LEVEL_TEXT[m.level]}: score ${fmt(m.score)} over ${m.windows.length} windows (${fmt(heard, 1)} s).`,
      );
      if (m.worst) parts.push(`Worst stretch ${fmt(m.worst.start_s, 1)}–${fmt(m.worst.end_s, 1)} s.`);
      if (m.condition) parts.push(`Condition: ${m.condition.name} (${m.condition.chosen}).`);
      for (const w of m.warnings || []) parts.push(w.message);
    }
    box.textContent = parts.join(" ");
    box.dataset.level = m.level || "";
    box.hidden = false;
  }

  // ---------------------------------------------------------------- downloads

  function wavBlob(chunks, rate) {
    return new Blob([wavBytes(chunks, rate)], { type: "audio/wav" });
  }

  function csvBlob(windows) {
    const rows = [["index", "start_s", "end_s", "score", "level_so_far", "condition"]];
    for (const m of windows) rows.push([m.index, m.start_s, m.end_s, m.score, m.level, m.condition]);
    return new Blob([rows.map((r) => r.join(",")).join("\n") + "\n"], { type: "text/csv" });
  }

  function offerDownloads() {
    if (!st.chunks.length) return;
    const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
    const name = st.detail ? st.detail.name : "model";
    for (const [id, blob, file] of [
      ["listen-wav", wavBlob(st.chunks, st.rate), `auscult-listen-${name}-${stamp}.wav`],
      ["listen-csv", csvBlob(st.windows), `auscult-listen-${name}-${stamp}.csv`],
    ]) {
      const url = URL.createObjectURL(blob);
      st.urls.push(url);
      const a = $(id);
      a.href = url;
      a.download = file;
    }
    $("listen-downloads").hidden = false;
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    $("listen-toggle").addEventListener("click", () => (st.ws ? stop() : start()));
    $("model").addEventListener("change", (e) => loadDetail(e.target.value));
    // app.js marks the model information once it has loaded a model (and its key)
    new MutationObserver(() => {
      const name = $("model-info").dataset.model;
      if (name && (!st.detail || st.detail.name !== name)) loadDetail(name);
    }).observe($("model-info"), { attributes: true, attributeFilter: ["data-model"] });
    updateButton();
  }

  init();
})();
