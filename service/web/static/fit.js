// auscult page, "New model": name a machine, add healthy recordings, press Fit, watch the
// job, then choose the new model above and read its report. Calls the public API only:
// GET v1/fits (limits), POST v1/fits, GET and DELETE v1/fits/{id}.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "auscult.adminKey"; // sessionStorage: gone when the tab closes
  const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
  const ARCHIVE = /\.(zip|tar|tgz|tar\.gz)$/i;
  const POLL_MS = 1000;

  const fit = {
    files: [], // [{file, seconds (null: an archive, counted by the service)}]
    limits: { min_seconds: 30, recommended_seconds: 120 },
    job: null, // the job being watched (its id)
    timer: null,
    recorder: null,
    recordings: 0,
  };

  const { h, s, dropZone, recordMicrophone, toWav } = window.auscultPage;

  const secs = (x) => (x >= 90 ? `${(x / 60).toFixed(1)} min` : `${Math.round(x)} s`);

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = $("fit-key").value.trim() || sessionStorage.getItem("auscult.apiKey") || "";
    if (key) headers.set("X-API-Key", key);
    const response = await fetch(path, { ...options, headers });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      let code = `http_${response.status}`;
      try {
        const body = await response.json();
        if (body && body.error) ({ code, message } = body.error);
      } catch (_) {
        /* not JSON */
      }
      const err = new Error(message);
      err.code = code;
      err.status = response.status;
      throw err;
    }
    return response.json();
  }

  function showError(err) {
    const box = $("fit-error");
    box.replaceChildren(h("p", {}, h("strong", {}, "The fit could not go on: "), err.message));
    if (err.code) box.append(h("p", { class: "hint" }, "Error ", h("code", {}, err.code)));
    if (err.status === 401) box.append(h("p", { class: "hint" }, "Type the admin key above and press Fit again."));
    box.hidden = false;
  }

  // ------------------------------------------------------------------ the clips

  async function duration(file) {
    if (ARCHIVE.test(file.name)) return null;
    try {
      const ctx = new OfflineAudioContext(1, 1, 16000);
      const audio = await ctx.decodeAudioData(await file.arrayBuffer());
      return audio.duration;
    } catch (_) {
      return 0; // the browser cannot read it: the service will say why
    }
  }

  async function addFiles(files) {
    for (const file of files) fit.files.push({ file, seconds: await duration(file) });
    render();
  }

  function total() {
    return fit.files.reduce((sum, f) => sum + (f.seconds || 0), 0);
  }

  function render() {
    const have = total();
    const { min_seconds: need, recommended_seconds: good } = fit.limits;
    const archives = fit.files.some((f) => f.seconds === null);
    const meter = $("fit-meter");
    meter.max = good;
    meter.low = need;
    meter.optimum = good;
    meter.value = Math.min(have, good);
    let text;
    if (!fit.files.length) text = `No healthy audio yet: a fit needs at least ${secs(need)}, ${secs(good)} is better.`;
    else if (have >= good) text = `${secs(have)} of healthy audio: enough (${secs(good)} recommended).`;
    else if (have >= need) text = `${secs(have)} of healthy audio: enough to fit; ${secs(good)} gives a better model.`;
    else text = `${secs(have)} of healthy audio: a fit needs at least ${secs(need)} (${secs(need - have)} more).`;
    if (archives) text += " Archives are counted by the service when they arrive.";
    $("fit-amount").textContent = text;
    const list = $("fit-list");
    list.replaceChildren(
      ...fit.files.map((f, i) =>
        h(
          "li",
          {},
          h("span", {}, f.file.name),
          h("span", { class: "hint" }, f.seconds === null ? "archive" : f.seconds ? secs(f.seconds) : "not readable here"),
          h("button", { type: "button", "data-index": i, "aria-label": `Remove ${f.file.name}` }, "Remove"),
        ),
      ),
    );
    const name = $("fit-name").value.trim();
    $("fit-start").disabled = !!fit.timer || !NAME.test(name) || !fit.files.length || (!archives && have < need);
  }

  // ------------------------------------------------------------------ the microphone

  const MAX_RECORD_S = 180;

  function setRecording(on) {
    $("fit-record").setAttribute("aria-pressed", on ? "true" : "false");
    $("fit-record-label").textContent = on ? "Stop recording" : "Record healthy sound";
  }

  async function toggleRecording() {
    if (fit.recorder) {
      fit.recorder.stop();
      return;
    }
    const tick = (t) => {
      $("fit-record-status").textContent = `Recording the machine… ${t.toFixed(0)} s (press again to stop)`;
    };
    const done = async (blob) => {
      fit.recorder = null;
      setRecording(false);
      try {
        const wav = await toWav(blob);
        fit.recordings += 1;
        await addFiles([new File([wav], `recording-${fit.recordings}.wav`, { type: "audio/wav" })]);
        $("fit-record-status").textContent = "";
      } catch (e) {
        showError(new Error(`The recording could not be read (${e.message}).`));
      }
    };
    try {
      fit.recorder = await recordMicrophone(MAX_RECORD_S, tick, done);
    } catch (e) {
      showError(new Error(`The microphone could not be opened (${e.name}: ${e.message}).`));
      return;
    }
    setRecording(true);
  }

  // ------------------------------------------------------------------ the job

  async function start() {
    $("fit-error").hidden = true;
    $("fit-report").hidden = true;
    const form = new FormData();
    form.append("name", $("fit-name").value.trim());
    form.append("preset", $("fit-preset").value);
    form.append("replace", $("fit-replace").checked ? "true" : "false");
    for (const f of fit.files) form.append("files", f.file, f.file.name);
    sessionStorage.setItem(KEY_STORE, $("fit-key").value.trim());
    $("fit-start").disabled = true;
    $("fit-stage").textContent = "Uploading…";
    $("fit-job").hidden = false;
    $("fit-bar").value = 0;
    $("fit-log").textContent = "";
    try {
      const accepted = await api("v1/fits", { method: "POST", body: form });
      fit.job = accepted.id;
      poll();
    } catch (e) {
      $("fit-job").hidden = true;
      showError(e);
      render();
    }
  }

  async function poll() {
    let job;
    try {
      job = await api(`v1/fits/${fit.job}`);
    } catch (e) {
      fit.timer = null;
      showError(e);
      render();
      return;
    }
    show(job);
    if (job.state === "queued" || job.state === "running") {
      fit.timer = setTimeout(poll, POLL_MS);
      render();
      return;
    }
    fit.timer = null;
    $("fit-cancel").hidden = true;
    if (job.state === "succeeded") {
      fit.files = [];
      render();
      report(job);
      if (window.auscultPage) await window.auscultPage.reloadModels(job.model.name);
    } else if (job.state === "failed") {
      showError(Object.assign(new Error(job.error || "the fit failed"), { code: "fit_failed" }));
      render();
    } else render();
  }

  function show(job) {
    const p = job.progress || {};
    $("fit-bar").value = p.percent || 0;
    $("fit-job").dataset.state = job.state;
    let text = {
      queued: "Waiting for the trainer…",
      running: `Fitting: ${job.stage || ""}`,
      succeeded: `Done: model ${job.model && job.model.name} is ready (version ${job.model && job.model.version}).`,
      failed: "The fit failed.",
      cancelled: "Cancelled.",
    }[job.state];
    if (job.state === "running" && p.epochs) text += ` (${Math.round(p.percent)}%)`;
    if (job.trainer && job.trainer.message) text += ` ${job.trainer.message}`;
    if (job.skipped && job.skipped.length) text += ` ${job.skipped.length} file(s) skipped: ${job.skipped.map((x) => `${x.filename} (${x.reason})`).join("; ")}.`;
    $("fit-stage").textContent = text;
    $("fit-log").textContent = (job.log || []).join("\n");
    $("fit-cancel").hidden = !(job.state === "queued" || job.state === "running");
    $("fit-cancel").disabled = !!job.cancel_requested;
  }

  async function cancel() {
    if (!fit.job) return;
    $("fit-cancel").disabled = true;
    try {
      show(await api(`v1/fits/${fit.job}`, { method: "DELETE" }));
    } catch (e) {
      showError(e);
    }
  }

  // ------------------------------------------------------------------ the report

  function report(job) {
    const r = job.report;
    const box = $("fit-report");
    box.replaceChildren();
    if (!r) return;
    const th = r.thresholds;
    box.append(
      h("h3", {}, `Model ${r.model}`),
      h(
        "p",
        {},
        `Fitted on ${r.clips} pieces of healthy audio (${r.epochs} epochs). A healthy recording it never heard reaches ` +
          `"needs maintenance" (score ≥ ${th.needs_maintenance.toFixed(2)}) about ${(100 * r.false_alarm_rate).toFixed(1)}% of the time, ` +
          `"severe" (score ≥ ${th.severe.toFixed(2)}) about ${(100 * r.severe_rate).toFixed(2)}%.`,
      ),
      histogram(r.scores.histogram, th),
      h("p", { class: "hint" }, `Bars: ${r.scores.what}. Lines: the two thresholds.`),
    );
    box.hidden = false;
  }

  function histogram(hist, th) {
    const W = 480;
    const H = 140;
    const pad = 24;
    const { edges, counts } = hist;
    const lo = edges[0];
    const hi = edges[edges.length - 1];
    const x = (v) => pad + ((v - lo) / (hi - lo)) * (W - 2 * pad);
    const top = Math.max(...counts, 1);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "fit-hist", "aria-label": "Score distribution of the healthy clips with the thresholds" });
    counts.forEach((c, i) => {
      const bh = ((H - 2 * pad) * c) / top;
      svg.append(s("rect", { x: x(edges[i]) + 1, y: H - pad - bh, width: Math.max(1, x(edges[i + 1]) - x(edges[i]) - 2), height: bh, class: "bar" }));
    });
    for (const [v, cls, label] of [[th.needs_maintenance, "maint", "needs maintenance"], [th.severe, "severe", "severe"]]) {
      svg.append(s("line", { x1: x(v), x2: x(v), y1: pad / 2, y2: H - pad, class: cls }), s("text", { x: x(v) + 3, y: pad, class: "label" }, label));
    }
    svg.append(s("line", { x1: pad, x2: W - pad, y1: H - pad, y2: H - pad, class: "axis" }));
    svg.append(s("text", { x: pad, y: H - 6, class: "label" }, lo.toFixed(1)), s("text", { x: W - pad, y: H - 6, class: "label", "text-anchor": "end" }, `score ${hi.toFixed(1)}`));
    return svg;
  }

  // ------------------------------------------------------------------ wiring

  async function loadLimits() {
    try {
      fit.limits = (await api("v1/fits")).limits;
    } catch (_) {
      /* admin key needed or fits off: the defaults stand until Fit says why */
    }
    render();
  }

  function init() {
    $("fit-key").value = sessionStorage.getItem(KEY_STORE) || "";
    $("fit-choose").addEventListener("click", () => $("fit-files").click());
    $("fit-files").addEventListener("change", (e) => {
      const files = [...e.target.files];
      e.target.value = "";
      addFiles(files);
    });
    dropZone($("fit-drop"), addFiles);
    $("fit-list").addEventListener("click", (e) => {
      const i = e.target.getAttribute && e.target.getAttribute("data-index");
      if (i !== null && i !== undefined) {
        fit.files.splice(Number(i), 1);
        render();
      }
    });
    $("fit-name").addEventListener("input", render);
    $("fit-key").addEventListener("change", loadLimits);
    $("fit-start").addEventListener("click", start);
    const canRecord = window.isSecureContext && navigator.mediaDevices && window.MediaRecorder;
    if (canRecord) $("fit-record").addEventListener("click", toggleRecording);
    else {
      $("fit-record").disabled = true;
      $("fit-record-status").textContent = "Recording needs the page over https, or opened on this computer.";
    }
    $("fit-cancel").addEventListener("click", cancel);
    loadLimits();
  }

  init();
})();
