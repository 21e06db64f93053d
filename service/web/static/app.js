// auscult page: plain JavaScript, no build step, no library. It only calls the public API:
// GET v1/models, v1/models/{name}; POST .../score, .../classify (and /batch), .../spectrogram.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "auscult.apiKey"; // sessionStorage: gone when the tab closes
  const MAX_RECORD_S = 120;
  const LEVEL_TEXT = {
    normal: "Normal",
    needs_maintenance: "Needs maintenance",
    severe: "Severe anomaly",
  };
  const COLOURS = { normal: "#1d6b35", needs_maintenance: "#8a6a00", severe: "#b3261e" };
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    key: sessionStorage.getItem(KEY_STORE) || "",
    keysOn: false,
    models: [],
    model: null, // the chosen ModelInfo
    choice: 0, // counts model choices
    detail: null, // its GET v1/models/{name}
    busy: false,
    recorder: null,
    rows: [], // the last submission: [{file, result}]
    urls: [], // object URLs to revoke on the next submission
  };

  // ---------------------------------------------------------------- helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  const fmt = (x, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : "–");
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const seconds = (x) => (x === null || x === undefined ? "–" : `${fmt(x, x < 10 ? 2 : 1)} s`);

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (state.key) headers.set("X-API-Key", state.key);
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (e) {
      throw new ApiError(0, "network", `Could not reach the service (${e.message}).`);
    }
    if (!response.ok) {
      let code = `http_${response.status}`;
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.error) ({ code, message } = body.error);
      } catch (_) {
        /* not JSON: keep the status line */
      }
      throw new ApiError(response.status, code, message);
    }
    return response;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(err) {
    const box = $("error");
    box.replaceChildren();
    if (err instanceof ApiError && err.status > 0) {
      box.append(h("p", {}, h("strong", {}, "The service answered: "), err.message));
      box.append(h("p", { class: "hint" }, "Error ", h("code", {}, err.code), ` (HTTP ${err.status})`));
    } else {
      box.append(h("p", {}, err.message || String(err)));
    }
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  function setBusy(busy) {
    state.busy = busy;
    const ready = !!state.model;
    $("choose").disabled = busy || !ready;
    $("model").disabled = busy || state.models.length === 0;
    $("record").disabled = !state.recorder && (busy || !ready || !canRecord());
    document.body.setAttribute("aria-busy", busy ? "true" : "false");
  }

  // ---------------------------------------------------------------- models and key

  async function loadModels() {
    setStatus("Loading the models…");
    let data;
    try {
      data = await (await api("v1/models")).json();
    } catch (e) {
      setStatus("");
      if (e.status === 401) askForKey(e);
      else showError(e);
      return;
    }
    clearError();
    setStatus("");
    state.models = data.models;
    const select = $("model");
    select.replaceChildren();
    // a generator makes audio (POST …/generate) and scores nothing: listed, not selectable
    const scores = (m) => m.status === "ready" && m.kind !== "generator";
    for (const m of data.models) {
      const what = { classifier: "classifier", generator: "generator (not for scoring)" }[m.kind];
      const text =
        m.status === "ready"
          ? `${m.name} — ${what || "anomaly detector"}`
          : `${m.name} — ${m.status}: ${m.reason || ""}`;
      select.append(h("option", { value: m.name, disabled: !scores(m) }, text));
    }
    const ready = data.models.filter(scores);
    if (ready.length === 0) {
      select.append(h("option", { value: "" }, "No model is loaded"));
      state.model = null;
      setBusy(false);
      return;
    }
    const wanted = [
      new URLSearchParams(location.search).get("model"),
      sessionStorage.getItem("auscult.model"),
      data.default_model,
    ].find((n) => n && ready.some((m) => m.name === n));
    select.value = wanted || ready[0].name;
    await chooseModel(select.value);
  }

  async function chooseModel(name) {
    const choice = ++state.choice; // a slower answer for an earlier choice is dropped
    state.model = state.models.find((m) => m.name === name) || null;
    state.detail = null;
    sessionStorage.setItem("auscult.model", name);
    setBusy(false);
    const info = $("model-info");
    info.textContent = "";
    delete info.dataset.model;
    if (!state.model) return;
    let d;
    try {
      d = await (await api(`v1/models/${encodeURIComponent(name)}`)).json();
    } catch (e) {
      if (choice === state.choice) showError(e);
      return;
    }
    if (choice !== state.choice) return;
    state.detail = d;
    const parts = [];
    if (d.kind === "classifier") {
      parts.push(`Classifier: names what it hears (${(d.labels || []).join(", ")}).`);
    } else {
      parts.push("Anomaly detector: how far a clip is from the healthy recordings it learned.");
      if (d.thresholds) {
        parts.push(
          `Needs maintenance from ${fmt(d.thresholds.needs_maintenance)}, ` +
            `severe from ${fmt(d.thresholds.severe)}.`,
        );
      }
      const cal = d.calibration;
      if (cal) {
        parts.push(
          `A healthy recording it never heard reaches "needs maintenance" about ` +
            `${rateText(cal.false_alarm_rate)} of the time and "severe" about ${rateText(cal.severe_rate)} ` +
            `(estimated on ${cal.estimate.recordings} recordings). ` +
            `Levels follow a clip's worst ${fmt(cal.estimate.stretch_seconds, 1)} s.`,
        );
      }
      if (d.features && d.features.window_seconds) {
        parts.push(`Scored in windows of ${d.features.window_seconds} s.`);
      }
    }
    if (d.version) parts.push(`Version ${d.version}.`);
    info.textContent = parts.join(" ");
    info.dataset.model = name;
  }

  function askForKey(err) {
    state.keysOn = true;
    $("key-row").hidden = false;
    $("key-hint").textContent = state.key
      ? `That key was refused: ${err.message}. Type another one.`
      : "This service asks for an API key. It is kept in this tab only.";
    $("api-key").focus();
    const select = $("model");
    select.replaceChildren(h("option", {}, "Enter the API key first"));
    state.models = [];
    state.model = null;
    setBusy(false);
  }

  function useKey() {
    state.key = $("api-key").value.trim();
    if (state.key) sessionStorage.setItem(KEY_STORE, state.key);
    else sessionStorage.removeItem(KEY_STORE);
    loadModels();
  }

  // ---------------------------------------------------------------- scoring

  // `recorded`: the clip came from the microphone through the browser's (lossy) opus
  // encoder, so an anomaly model judges it by its lossy-codec calibration
  async function submit(files, recorded = false) {
    if (!files.length || !state.model || state.busy) return;
    const name = state.model.name;
    const kind = state.model.kind;
    const verb = kind === "classifier" ? "classify" : "score";
    const base = `v1/models/${encodeURIComponent(name)}/${verb}`;
    clearError();
    setBusy(true);
    setStatus(`Sending ${files.length === 1 ? files[0].name : `${files.length} clips`} to ${name}…`);
    let results;
    try {
      const form = new FormData();
      if (recorded && kind === "anomaly") form.append("codec", "lossy");
      if (files.length === 1) {
        form.append("file", files[0], files[0].name);
        results = [await (await api(base, { method: "POST", body: form })).json()];
      } else {
        for (const f of files) form.append("files", f, f.name);
        results = (await (await api(`${base}/batch`, { method: "POST", body: form })).json()).results;
      }
    } catch (e) {
      setStatus("");
      showError(e);
      setBusy(false);
      if (e.status === 401) askForKey(e);
      return;
    }
    state.rows = files.map((file, i) => ({ file, result: results[i], kind }));
    render();
    setStatus(summary(state.rows));
    setBusy(false);
    await loadSpectrograms(name);
  }

  function summary(rows) {
    const counts = {};
    for (const { result } of rows) {
      const key = result.error ? "not scored" : result.level || `heard “${result.label}”`;
      counts[key] = (counts[key] || 0) + 1;
    }
    const text = Object.entries(counts)
      .map(([k, n]) => `${n} ${LEVEL_TEXT[k] ? LEVEL_TEXT[k].toLowerCase() : k}`)
      .join(", ");
    return `${rows.length === 1 ? "1 clip" : `${rows.length} clips`} done: ${text}.`;
  }

  function render() {
    for (const url of state.urls) URL.revokeObjectURL(url);
    state.urls = [];
    const results = $("results");
    results.replaceChildren();
    state.rows.forEach((row, i) => results.append(card(row, i)));
    renderTable();
  }

  function card(row, i) {
    const { file, result: r, kind } = row;
    const id = `clip-${i}`;
    const title = h("h3", { id }, r.filename || file.name);
    if (r.error) {
      return h(
        "article",
        { class: "card failed", "aria-labelledby": id },
        h("header", {}, title, h("span", { class: "badge failed" }, "Not scored")),
        h("p", { class: "error-text" }, r.error.message),
        h("p", { class: "hint" }, "Error ", h("code", {}, r.error.code)),
      );
    }
    if (kind === "classifier") return classifierCard(r, id, title);
    return anomalyCard(r, id, title);
  }

  function anomalyCard(r, id, title) {
    const t = r.thresholds;
    return h(
      "article",
      { class: `card level-${r.level}`, "aria-labelledby": id, "data-level": r.level },
      h("header", {}, title, h("span", { class: `badge ${r.level}` }, LEVEL_TEXT[r.level])),
      h("p", { class: "score-line" }, "Score ", h("strong", { class: "score" }, fmt(r.score)), " — ", relation(r.score, t)),
      scale(r.score, t),
      inputWarnings(r),
      decidedBy(r),
      r.windows && r.windows.length ? timeChart(r.windows, t, r.input.duration_s, r.worst) : null,
      spectrogramFigure(r),
      facts(r),
    );
  }

  function rateText(rate) {
    return `${+(100 * rate).toPrecision(2)} %`;
  }

  function inputWarnings(r) {
    if (!r.warnings || !r.warnings.length) return null;
    return h(
      "p",
      { class: "hint input-warnings", role: "note" },
      r.warnings.map((w) => `Warning (${w.code}): ${w.message}.`).join(" "),
    );
  }

  function decidedBy(r) {
    if (!r.worst && !r.condition) return null;
    const parts = [];
    if (r.worst) {
      parts.push(
        `Decided by its worst stretch, ${fmt(r.worst.start_s, 1)}–${fmt(r.worst.end_s, 1)} s ` +
          `(window scores averaging ${fmt(r.worst.score)}).`,
      );
    }
    if (r.condition) {
      const how = { request: "as asked", nearest: "the nearest it knows", only: "the only one it knows" };
      parts.push(`Judged as condition ${r.condition.name} (${how[r.condition.chosen]}).`);
    }
    return h(
      "p",
      { class: "decided", "data-worst-start": r.worst ? r.worst.start_s : "", "data-worst-end": r.worst ? r.worst.end_s : "" },
      parts.join(" "),
    );
  }

  function relation(score, t) {
    if (score < t.needs_maintenance) return `below the "needs maintenance" threshold (${fmt(t.needs_maintenance)})`;
    if (score < t.severe)
      return `at or above "needs maintenance" (${fmt(t.needs_maintenance)}), below "severe" (${fmt(t.severe)})`;
    return `at or above the "severe" threshold (${fmt(t.severe)})`;
  }

  function scale(score, t) {
    const top = Math.max(t.severe * 1.25, score * 1.08);
    const at = (x) => `${Math.min(100, (100 * Math.max(0, x)) / top)}%`;
    const zone = (level, from, to) => {
      const el = h("div", { class: `zone ${level}` });
      el.style.width = `${(100 * (to - from)) / top}%`;
      return el;
    };
    const marker = h("div", { class: "marker" });
    marker.style.left = at(score);
    // two thresholds close together on a long scale: the second label goes a line lower
    const crowded = (100 * (t.severe - t.needs_maintenance)) / top < 22;
    const tick = (x, text, below = false) => {
      const el = h("span", { class: below ? "tick below" : "tick" }, text);
      el.style.left = at(x);
      return el;
    };
    return h(
      "div",
      {
        class: crowded ? "scale crowded" : "scale",
        role: "img",
        "aria-label":
          `Score ${fmt(score)} on a scale from 0: needs maintenance from ` +
          `${fmt(t.needs_maintenance)}, severe from ${fmt(t.severe)}`,
      },
      zone("normal", 0, t.needs_maintenance),
      zone("needs_maintenance", t.needs_maintenance, t.severe),
      zone("severe", t.severe, top),
      marker,
      tick(t.needs_maintenance, `needs maintenance ${fmt(t.needs_maintenance)}`),
      tick(t.severe, `severe ${fmt(t.severe)}`, crowded),
    );
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw || 1));
    return [1, 2, 5, 10].map((m) => m * mag).find((step) => step >= raw) || mag * 10;
  }

  function timeChart(windows, t, duration, worst) {
    const W = 640, H = 190, L = 44, R = 12, T = 10, B = 30;
    const end = duration || windows[windows.length - 1].end_s || 1;
    const peak = windows.reduce((a, w) => (w.score > a.score ? w : a), windows[0]);
    const top = Math.max(t.severe * 1.15, peak.score * 1.1);
    const x = (sec) => L + ((W - L - R) * sec) / end;
    const y = (v) => T + (H - T - B) * (1 - Math.min(v, top) / top);
    const label =
      `Score over time: ${windows.length} window${windows.length === 1 ? "" : "s"}, ` +
      `highest ${fmt(peak.score)} at ${fmt(peak.start_s, 1)}–${fmt(peak.end_s, 1)} s`;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
    svg.append(s("title", {}, label));
    // the three zones as faint bands
    svg.append(s("rect", { x: L, y: y(top), width: W - L - R, height: y(t.severe) - y(top), fill: "#f9dedc" }));
    svg.append(s("rect", { x: L, y: y(t.severe), width: W - L - R, height: y(t.needs_maintenance) - y(t.severe), fill: "#fdf1c7" }));
    svg.append(s("rect", { x: L, y: y(t.needs_maintenance), width: W - L - R, height: y(0) - y(t.needs_maintenance), fill: "#dcefe2" }));
    if (worst) {
      // the stretch that decided the level, outlined across the chart's height
      const band = s("rect", {
        x: x(worst.start_s), y: T, width: Math.max(2, x(worst.end_s) - x(worst.start_s)), height: y(0) - T,
        fill: "none", stroke: "#102a43", "stroke-width": 2, "stroke-dasharray": "2 3", class: "worst-stretch",
      });
      band.append(s("title", {}, `worst stretch ${fmt(worst.start_s, 1)}–${fmt(worst.end_s, 1)} s`));
      svg.append(band);
    }
    for (const [v, colour, text] of [
      [t.needs_maintenance, COLOURS.needs_maintenance, "needs maintenance"],
      [t.severe, COLOURS.severe, "severe"],
    ]) {
      svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: colour, "stroke-dasharray": "6 4", "stroke-width": 1.5 }));
      svg.append(s("text", { x: W - R - 4, y: y(v) - 4, "text-anchor": "end" }, `${text} ${fmt(v)}`));
    }
    // axes
    svg.append(s("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: "#4a5360" }));
    svg.append(s("line", { x1: L, x2: L, y1: T, y2: y(0), stroke: "#4a5360" }));
    const step = niceStep(end, 8);
    for (let sec = 0; sec <= end + 1e-9; sec += step) {
      svg.append(s("line", { x1: x(sec), x2: x(sec), y1: y(0), y2: y(0) + 4, stroke: "#4a5360" }));
      svg.append(s("text", { x: x(sec), y: H - 10, "text-anchor": "middle" }, `${+sec.toFixed(2)} s`));
    }
    const ystep = niceStep(top, 4);
    for (let v = 0; v <= top + 1e-9; v += ystep) {
      svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, +v.toFixed(2)));
    }
    // each window: a bar over its span at its score, joined through the window centres
    const points = windows.map((w) => `${x((w.start_s + w.end_s) / 2)},${y(w.score)}`).join(" ");
    svg.append(s("polyline", { points, fill: "none", stroke: "#102a43", "stroke-width": 2 }));
    for (const w of windows) {
      const level = w.score >= t.severe ? "severe" : w.score >= t.needs_maintenance ? "needs_maintenance" : "normal";
      const dot = s("circle", { cx: x((w.start_s + w.end_s) / 2), cy: y(w.score), r: 4, fill: COLOURS[level], class: "window" });
      dot.append(s("title", {}, `${fmt(w.start_s, 2)}–${fmt(w.end_s, 2)} s: ${fmt(w.score)}`));
      svg.append(dot);
    }
    return h("figure", { class: "chart" }, h("figcaption", {}, "Score over time (one point per window)"), svg);
  }

  function spectrogramFigure(r) {
    const f = state.detail && state.detail.features;
    const img = h("img", {
      alt: `Log-mel spectrogram of ${r.filename || "the clip"}: time from left to right, low frequencies at the bottom, louder is lighter`,
      class: "pending",
    });
    const windowed = f && f.window_seconds && r.input.kind === "audio";
    const caption = windowed
      ? `Log-mel spectrogram the model saw (0 Hz at the bottom, ${Math.round(f.fmax || f.sample_rate / 2)} Hz at the top)`
      : r.input.kind === "image"
        ? "The spectrogram picture as the model read it"
        : "Log-mel spectrogram as the model's input (the whole clip, resized to it)";
    return h(
      "figure",
      { class: "spectrogram" },
      h("figcaption", {}, caption),
      img,
      windowed ? h("div", { class: "axis", "aria-hidden": "true" }, h("span", {}, "0 s"), h("span", {}, seconds(r.input.duration_s))) : null,
    );
  }

  function facts(r) {
    const i = r.input;
    const rows = [
      ["Input", `${i.kind} (${i.format})`],
      ["Duration", seconds(i.duration_s)],
      ["Sample rate", i.sample_rate ? `${i.sample_rate} Hz` : "–"],
      ["Channels", i.channels ?? "–"],
      ["Model", `${r.model} ${r.model_version}`],
    ];
    return h(
      "details",
      {},
      h("summary", {}, "Details"),
      h("dl", { class: "facts" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    );
  }

  function classifierCard(r, id, title) {
    const entries = Object.entries(r.probabilities);
    const bars = h("ul", { class: "bars", "aria-label": "Probability of each label" });
    for (const [label, p] of entries) {
      const fill = h("span", { class: "fill" });
      fill.style.width = `${Math.max(0, Math.min(100, 100 * p))}%`;
      bars.append(
        h(
          "li",
          { class: label === r.label ? "top" : null, "data-label": label },
          h("span", { class: "lab" }, label),
          h("span", { class: "track", "aria-hidden": "true" }, fill),
          h("span", { class: "val" }, pct(p)),
        ),
      );
    }
    return h(
      "article",
      { class: "card", "aria-labelledby": id, "data-label": r.label },
      h("header", {}, title, h("span", { class: "badge label" }, `Heard: ${r.label}`)),
      h("p", { class: "score-line" }, "Confidence ", h("strong", { class: "score" }, pct(r.confidence))),
      bars,
      spectrogramFigure(r),
      facts(r),
    );
  }

  async function loadSpectrograms(name) {
    const imgs = [...document.querySelectorAll("#results .spectrogram img")];
    const ok = state.rows.filter((row) => !row.result.error);
    for (let i = 0; i < ok.length; i++) {
      const form = new FormData();
      form.append("file", ok[i].file, ok[i].file.name);
      try {
        const res = await api(`v1/models/${encodeURIComponent(name)}/spectrogram`, { method: "POST", body: form });
        const url = URL.createObjectURL(await res.blob());
        state.urls.push(url);
        imgs[i].src = url;
        imgs[i].classList.remove("pending");
      } catch (e) {
        imgs[i].replaceWith(h("p", { class: "hint" }, `No spectrogram: ${e.message}`));
      }
    }
  }

  // ---------------------------------------------------------------- batch table and CSV

  function tableRows() {
    return state.rows.map(({ file, result: r, kind }) => {
      const base = { file: r.filename || file.name, model: r.model || state.model.name, model_version: r.model_version || "" };
      if (r.error) return { ...base, error_code: r.error.code, error_message: r.error.message };
      const duration = r.input.duration_s;
      if (kind === "classifier") return { ...base, label: r.label, confidence: r.confidence, duration_s: duration };
      const peak = r.windows && r.windows.length ? Math.max(...r.windows.map((w) => w.score)) : null;
      return {
        ...base,
        level: r.level,
        score: r.score,
        peak_window_score: peak,
        worst_start_s: r.worst ? r.worst.start_s : "",
        worst_end_s: r.worst ? r.worst.end_s : "",
        condition: r.condition ? r.condition.name : "",
        needs_maintenance: r.thresholds.needs_maintenance,
        severe: r.thresholds.severe,
        duration_s: duration,
      };
    });
  }

  function columns(kind) {
    return kind === "classifier"
      ? ["file", "label", "confidence", "duration_s", "model", "model_version", "error_code", "error_message"]
      : ["file", "level", "score", "peak_window_score", "worst_start_s", "worst_end_s", "condition", "needs_maintenance", "severe", "duration_s", "model", "model_version", "error_code", "error_message"];
  }

  function renderTable() {
    const section = $("batch");
    section.hidden = state.rows.length < 2;
    if (section.hidden) return;
    const kind = state.rows[0].kind;
    const head = kind === "classifier"
      ? ["File", "Label", "Confidence", "Duration", "Problem"]
      : ["File", "Level", "Score", "Highest window", "Duration", "Problem"];
    const table = $("batch-table");
    table.tHead.replaceChildren(h("tr", {}, head.map((c) => h("th", { scope: "col" }, c))));
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const row of tableRows()) {
      const problem = row.error_message ? `${row.error_message} (${row.error_code})` : "";
      const cells =
        kind === "classifier"
          ? [h("th", { scope: "row" }, row.file), h("td", {}, row.label ?? "–"), h("td", { class: "num" }, row.confidence === undefined ? "–" : pct(row.confidence)), h("td", { class: "num" }, seconds(row.duration_s)), h("td", {}, problem)]
          : [
              h("th", { scope: "row" }, row.file),
              h("td", {}, row.level ? h("span", { class: `badge ${row.level}` }, LEVEL_TEXT[row.level]) : h("span", { class: "badge failed" }, "Not scored")),
              h("td", { class: "num" }, row.score === undefined ? "–" : fmt(row.score)),
              h("td", { class: "num" }, row.peak_window_score == null ? "–" : fmt(row.peak_window_score)),
              h("td", { class: "num" }, seconds(row.duration_s)),
              h("td", {}, problem),
            ];
      body.append(h("tr", {}, cells));
    }
  }

  function csvCell(v) {
    if (v === null || v === undefined) return "";
    let text = String(v);
    // a spreadsheet must not run a file name as a formula
    if (typeof v === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function downloadCsv() {
    if (!state.rows.length) return;
    const cols = columns(state.rows[0].kind);
    const lines = [cols.join(",")].concat(tableRows().map((row) => cols.map((c) => csvCell(row[c])).join(",")));
    const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
    const url = URL.createObjectURL(blob);
    const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
    const a = h("a", { href: url, download: `auscult-${state.rows[0].result.model || "results"}-${stamp}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---------------------------------------------------------------- recording

  function canRecord() {
    return !!(window.isSecureContext && navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder);
  }

  function setRecording(on) {
    $("record").setAttribute("aria-pressed", on ? "true" : "false");
    $("record-label").textContent = on ? "Stop and score" : "Record";
  }

  // Records the microphone until the recorder is stopped or maxSeconds pass: onTick(seconds)
  // every 250 ms, then onDone(blob, seconds) with what MediaRecorder gave. Resolves to the
  // recorder; rejects when the microphone cannot be opened.
  async function recordMicrophone(maxSeconds, onTick, onDone) {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const chunks = [];
    const recorder = new MediaRecorder(stream);
    const started = performance.now();
    const elapsed = () => (performance.now() - started) / 1000;
    const timer = setInterval(() => {
      onTick(elapsed());
      if (elapsed() >= maxSeconds) recorder.stop();
    }, 250);
    recorder.ondataavailable = (e) => {
      if (e.data && e.data.size) chunks.push(e.data);
    };
    recorder.onstop = () => {
      clearInterval(timer);
      for (const track of stream.getTracks()) track.stop();
      onDone(new Blob(chunks, { type: recorder.mimeType }), elapsed());
    };
    recorder.start(250);
    return recorder;
  }

  async function toggleRecording() {
    if (state.recorder) {
      state.recorder.stop();
      return;
    }
    clearError();
    const tick = (t) => {
      $("record-status").textContent = `Recording… ${t.toFixed(0)} s (press again to stop and score)`;
    };
    const done = async (blob, secs) => {
      state.recorder = null;
      setRecording(false);
      $("record-status").textContent = `Recorded ${secs.toFixed(1)} s.`;
      try {
        const wav = await toWav(blob);
        const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
        await submit([new File([wav], `recording-${stamp}.wav`, { type: "audio/wav" })], true);
      } catch (e) {
        showError(new Error(`The recording could not be read (${e.message}).`));
        setBusy(false);
      }
    };
    try {
      state.recorder = await recordMicrophone(MAX_RECORD_S, tick, done);
    } catch (e) {
      showError(new Error(`The microphone could not be opened (${e.name}: ${e.message}).`));
      return;
    }
    setRecording(true);
    setBusy(false);
    $("record-status").textContent = "Recording… (press again to stop and score)";
  }

  // MediaRecorder gives webm/ogg opus, which the service does not read: decode it here and
  // send 16-bit PCM wav (mono), which every model reads.
  async function toWav(blob) {
    const ctx = new OfflineAudioContext(1, 1, 48000);
    const audio = await ctx.decodeAudioData(await blob.arrayBuffer());
    const mono = new Float32Array(audio.length);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const data = audio.getChannelData(c);
      for (let i = 0; i < mono.length; i++) mono[i] += data[i] / audio.numberOfChannels;
    }
    return wavBytes([mono], audio.sampleRate);
  }

  // Blocks of mono float samples in [-1, 1] (Float32Arrays, in order) → a 16-bit PCM wav.
  function wavBytes(blocks, rate) {
    const n = blocks.reduce((sum, b) => sum + b.length, 0);
    const view = new DataView(new ArrayBuffer(44 + 2 * n));
    const text = (at, str) => [...str].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
    text(0, "RIFF");
    view.setUint32(4, 36 + 2 * n, true);
    text(8, "WAVE");
    text(12, "fmt ");
    view.setUint32(16, 16, true);
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2, true);
    view.setUint16(32, 2, true);
    view.setUint16(34, 16, true);
    text(36, "data");
    view.setUint32(40, 2 * n, true);
    let at = 44;
    for (const block of blocks) {
      for (let i = 0; i < block.length; i++, at += 2) {
        const v = Math.max(-1, Math.min(1, block[i]));
        view.setInt16(at, v < 0 ? v * 0x8000 : v * 0x7fff, true);
      }
    }
    return view.buffer;
  }

  // ---------------------------------------------------------------- wiring

  // Files dropped on `zone` go to onFiles(files); the zone is marked while they hover.
  function dropZone(zone, onFiles) {
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.add("over");
      });
    }
    for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      onFiles([...e.dataTransfer.files]);
    });
  }

  function init() {
    $("model").addEventListener("change", (e) => chooseModel(e.target.value));
    $("choose").addEventListener("click", () => $("files").click());
    $("files").addEventListener("change", (e) => {
      const files = [...e.target.files];
      e.target.value = ""; // the same file can be chosen again
      submit(files);
    });
    dropZone($("drop"), submit);
    // a file dropped beside the zone must not make the browser leave the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("record").addEventListener("click", toggleRecording);
    if (!canRecord()) {
      $("record-status").textContent = window.isSecureContext
        ? "This browser cannot record audio."
        : "Recording needs the page over https, or opened on this computer (localhost).";
    }
    $("key-use").addEventListener("click", useKey);
    $("api-key").addEventListener("keydown", (e) => {
      if (e.key === "Enter") useKey();
    });
    $("api-key").value = state.key;
    $("csv").addEventListener("click", downloadCsv);
    loadModels();
  }

  // for fit.js and listen.js (loaded after this file): list the models again (a new one is
  // chosen by naming it first), the DOM helpers, the microphone and wav writing
  window.auscultPage = {
    reloadModels(name) {
      if (name) sessionStorage.setItem("auscult.model", name);
      return loadModels();
    },
    h,
    s,
    dropZone,
    recordMicrophone,
    toWav,
    wavBytes,
  };

  init();
})();
