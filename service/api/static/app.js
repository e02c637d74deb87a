// nograd dashboard: jobs, submit, live job page, studies (studies.js), compare, workers. No build step; uPlot is vendored.
"use strict";

const KEY = "nograd.key";  // kept in sessionStorage: gone when the browser session ends
const view = document.getElementById("view");
let cleanup = [];  // timers, streams and charts of the current page

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function fmt(value, digits = 3) { return value == null ? "–" : Number(value).toFixed(digits); }
function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, "0")} min`;
}
// Bar widths are set from script: the page's Content-Security-Policy refuses style attributes in markup.
function setShares(root) { root.querySelectorAll("[data-share]").forEach(bar => { bar.style.width = bar.dataset.share + "%"; }); }
function bar(share) { return `<span class="bar"><span data-share="${Math.max(0, Math.min(100, share))}"></span></span>`; }
// What a job is doing now (its `phase`: null, or absent from an older service, shows nothing): the phase's label,
// and a bar when it says how far along it is.
function phaseHtml(phase) {
  if (!phase || typeof phase !== "object" || !phase.label) return "";
  const counted = Number.isFinite(phase.done) && Number.isFinite(phase.total) && phase.total > 0;
  return `<span class="phase" data-phase="${esc(phase.name)}">${esc(phase.label)}${counted
    ? ` ${bar(100 * phase.done / phase.total)} ${phase.done} / ${phase.total}${phase.unit ? " " + esc(phase.unit) : ""}` : ""}</span>`;
}
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? {"Authorization": "Bearer " + key} : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, {...options, headers: {...headers(), ...(options.headers || {})}});
  if (response.status === 401) { askKey(); throw new Error("unauthorized"); }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) { const error = new Error(response.statusText); error.status = response.status; error.body = body; throw error; }
  return body;
}

function askKey(message = "") {
  view.innerHTML = `<h2>API key</h2><p>${esc(message)}</p>
    <form id="key"><input id="key-input" type="password" size="60" placeholder="ng_..." autocomplete="off">
    <button>Use key</button></form>`;
  document.getElementById("key").onsubmit = event => {
    event.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("key-input").value.trim());
    route();
  };
}

function chart(element, title, series, data, options = {}) {
  const plot = new uPlot({
    title, width: 460, height: 240, scales: {x: {time: false}},
    series: [{label: options.x || "calls"}, ...series],
    axes: [{label: options.x || "calls"}, {}], ...options.extra,
  }, data, element);
  cleanup.push(() => plot.destroy());
  return plot;
}

// ---------------------------------------------------------------- jobs list
async function jobsPage() {
  const methods = await api("/v1/methods");
  view.innerHTML = `<h2>Jobs</h2>
    <form id="filters">status <select name="status"><option value="">any</option>
      ${["queued", "running", "succeeded", "failed", "cancelled"].map(s => `<option>${s}</option>`).join("")}</select>
      method <select name="method"><option value="">any</option>
      ${methods.map(m => `<option>${esc(m.name)}</option>`).join("")}</select>
      task <input name="task" size="8"></form>
    <table id="jobs" class="results"><thead><tr><th>job</th><th>method</th><th>task</th><th>status</th><th>calls / budget</th>
      <th>best dev</th><th>test metric</th><th>elapsed</th><th>phase</th><th></th></tr></thead><tbody></tbody></table>
    <p><button id="compare-selected">Compare selected</button></p>`;
  const form = document.getElementById("filters");
  async function refresh() {
    const params = new URLSearchParams([...new FormData(form)].filter(([, v]) => v));
    const page = await api("/v1/jobs?limit=200&" + params);
    const body = document.querySelector("#jobs tbody");
    const checked = new Set([...body.querySelectorAll("input:checked")].map(box => box.value));
    body.innerHTML = page.data.map(job => {
      const share = job.budget ? 100 * job.calls / job.budget : (job.status === "succeeded" ? 100 : 0);
      return `<tr data-id="${esc(job.id)}"><td><a href="#/job/${esc(job.id)}">${esc(job.id)}</a></td>
        <td title="${esc(job.model)}">${esc(job.method)}</td><td>${esc(job.task)}</td>
        <td class="status-${esc(job.status)}">${esc(job.status)}</td><td>${bar(share)} ${job.calls}/${job.budget}</td>
        <td class="num">${fmt(job.best_dev_metric)}</td><td class="num">${fmt(job.test_metric)}</td>
        <td class="num">${duration(job.elapsed_seconds)}</td><td>${FINISHED.has(job.status) ? "" : phaseHtml(job.phase)}</td>
        <td><input type="checkbox" value="${esc(job.id)}" ${checked.has(job.id) ? "checked" : ""}></td></tr>`;
    }).join("") || `<tr><td colspan="10">No jobs yet: <a href="#/submit">submit one</a>.</td></tr>`;
    setShares(body);
  }
  form.onchange = refresh;
  document.getElementById("compare-selected").onclick = () => {
    const ids = [...document.querySelectorAll("#jobs input:checked")].map(box => box.value);
    location.hash = "#/compare?ids=" + ids.join(",");
  };
  await refresh();
  const timer = setInterval(refresh, 2000);
  cleanup.push(() => clearInterval(timer));
}

// ---------------------------------------------------------------- one job, live
async function readEvents(path, onEvent) {
  // EventSource cannot send the Authorization header, so the stream is read with fetch.
  const controller = new AbortController();
  cleanup.push(() => controller.abort());
  let buffer = "";
  try {  // leaving the page aborts the stream, also while fetch still waits for the response
    const response = await fetch(path, {headers: headers(), signal: controller.signal});
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (data) onEvent(event, JSON.parse(data));
      }
    }
  } catch (error) { if (error.name !== "AbortError") throw error; }
}

async function jobPage(id) {
  view.innerHTML = `<h2>Job ${esc(id)}</h2><p id="notice" hidden></p><div class="stats" id="stats"></div>
    <p id="phase"></p>
    <p><button id="cancel">Cancel</button> <button id="download">Download prompt</button></p>
    <div class="charts"><div class="chart" id="c-loss" hidden></div><div class="chart" id="c-dev" hidden></div>
    <div class="chart" id="c-sigma" hidden></div><div class="chart" id="c-pop" hidden></div></div>`;
  const calls = [], best = [], mean = [], devCalls = [], dev = [], sigmaCalls = [], sigma = [];
  const generations = [], popMin = [], popMedian = [], popMax = [];
  const lossChart = chart(document.getElementById("c-loss"), "train loss",
    [{label: "best", stroke: "#1e88e5"}, {label: "mean", stroke: "#90caf9"}], [[], [], []]);
  const devChart = chart(document.getElementById("c-dev"), "dev metric", [{label: "dev", stroke: "#43a047"}], [[], []]);
  const sigmaChart = chart(document.getElementById("c-sigma"), "CMA-ES step size", [{label: "sigma", stroke: "#fb8c00"}], [[], []]);
  // Each generation's population as a band: its worst and best candidates' losses around the median.
  const popChart = chart(document.getElementById("c-pop"), "population losses per generation",
    [{label: "max", stroke: "#ce93d8"}, {label: "median", stroke: "#8e24aa", width: 2}, {label: "min", stroke: "#ce93d8"}],
    [[], [], [], []], {x: "generation", extra: {bands: [{series: [1, 3], fill: "rgba(142, 36, 170, 0.15)"}]}});
  // A chart shows once it has data (a job cancelled before its search shows none); data-points says how many.
  const show = (plot, data) => {
    Object.assign(plot.root.parentElement, {hidden: false}).dataset.points = String(data[0].length);
    plot.setData(data);
  };
  let job = null, explained = false;
  function showStats() {
    if (!job) return;
    const finished = FINISHED.has(job.status);
    document.getElementById("stats").innerHTML = `<span class="status-${esc(job.status)}">${esc(job.status)}</span>
      <span>${esc(job.method)} · ${esc(job.task)} · ${esc(job.model)}</span><span>calls ${job.calls} / ${job.budget}</span>
      <span>best train loss ${fmt(job.best_train_loss, 4)}</span><span>best dev ${fmt(job.best_dev_metric)}</span>
      <span>test ${fmt(job.test_metric)}</span><span>elapsed ${duration(job.elapsed_seconds)}</span>
      ${finished ? "" : `<span>ETA ${job.eta_seconds == null ? "–" : duration(job.eta_seconds)}</span>`}
      ${job.result?.prompt_text ? `<span>prompt: <code>${esc(job.result.prompt_text)}</code></span>` : ""}
      ${job.result?.usage ? `<span>remote: ${job.result.usage.requests} requests, ${job.result.usage.prompt_tokens} prompt tokens, ${job.result.usage.rescored_label_words ?? 0} rescored and ${job.result.usage.missing_label_words}/${job.result.usage.label_scores} label scores at the floor</span>` : ""}`;
    const phase = document.getElementById("phase");
    phase.innerHTML = finished ? "" : phaseHtml(job.phase);
    setShares(phase);
    showNotice();
    document.getElementById("cancel").disabled = finished || job.cancel_requested;
    document.getElementById("download").disabled = job.status !== "succeeded";
    if (job.status === "succeeded") explain();
  }
  // A finished job that did not succeed says why, in words, above whatever it recorded.
  function showNotice() {
    const notice = document.getElementById("notice");
    const nothing = calls.length === 0 ? " No generations were recorded." : "";
    const text = job.status === "cancelled" ? (job.started_at == null || !job.calls
        ? "Cancelled before its search began." : `Cancelled after ${job.calls} of ${job.budget} calls (${duration(job.elapsed_seconds)}).`) + nothing
      : job.status === "failed" ? `Failed: ${job.error || "no error recorded"}.${nothing}`
      : job.cancel_requested && !FINISHED.has(job.status) ? "Cancelling: the job stops after its current batch." : "";
    const message = job.message ? ` ${job.message}` : "";
    notice.hidden = !(text || message);
    notice.className = `notice status-${job.status}`;
    notice.textContent = (text + message).trim();
  }
  // The "what was learned" panel (explain.js, when the page has it): given its section once the job succeeded.
  function explain() {
    if (explained || typeof window.renderExplanation !== "function") return;
    explained = true;
    view.insertAdjacentHTML("beforeend", `<section id="explain"></section>`);
    const section = document.getElementById("explain");
    Promise.resolve().then(() => window.renderExplanation(section, job)).catch(error => {
      section.insertAdjacentHTML("beforeend", `<p class="error">The explanation could not be shown: ${esc(error.message)}</p>`);
      console.error(error);
    });
  }
  function onGeneration(entry) {
    if (entry.initial) { devCalls.push(0); dev.push(entry.initial.dev_metric); show(devChart, [devCalls, dev]); return; }
    calls.push(entry.calls); best.push(entry.best_loss); mean.push(entry.mean_loss);
    show(lossChart, [calls, best, mean]);
    if (entry.sigma != null) { sigmaCalls.push(entry.calls); sigma.push(entry.sigma); show(sigmaChart, [sigmaCalls, sigma]); }
    if (entry.losses?.length) {
      const sorted = [...entry.losses].sort((a, b) => a - b), mid = sorted.length >> 1;
      generations.push(entry.generation); popMin.push(sorted[0]); popMax.push(sorted[sorted.length - 1]);
      popMedian.push(sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2);
      show(popChart, [generations, popMax, popMedian, popMin]);
    }
    if (entry.dev) { devCalls.push(entry.calls); dev.push(entry.dev.best_metric); show(devChart, [devCalls, dev]); }
    view.dataset.generations = String(calls.length);
  }
  document.getElementById("cancel").onclick = async () => { job = await api(`/v1/jobs/${id}/cancel`, {method: "POST"}); showStats(); };
  document.getElementById("download").onclick = async () => {
    const response = await fetch(`/v1/jobs/${id}/prompt`, {headers: headers()});
    if (!response.ok) { alert((await response.json()).detail); return; }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob()); link.download = id + ".safetensors"; link.click();
  };
  readEvents(`/v1/jobs/${id}/events`, (event, data) => {
    if (event === "job") { job = data; showStats(); }
    else if (event === "generation") onGeneration(data);
    else if (event === "end") { view.dataset.ended = "1"; if (job) showNotice(); }
  });
}

// ---------------------------------------------------------------- compare
// `studyId`: all the jobs of that study (#/compare?study=ID), each labelled and grouped by its cell.
async function comparePage(ids, studyId = null) {
  view.innerHTML = `<h2>Compare</h2><p>Pick jobs on the Jobs page, or list them: <input id="ids" size="80" value="${esc(ids.join(","))}">
    or pick a study: <select id="study"><option value="">–</option></select></p>
    <div class="charts"><div class="chart" id="c-compare"></div></div><h3>Results (test metric)</h3><table id="summary"></table>`;
  document.getElementById("ids").onchange = event => { location.hash = "#/compare?ids=" + event.target.value; };
  const picker = document.getElementById("study"), studies = await api("/v1/studies?limit=200");
  picker.insertAdjacentHTML("beforeend", studies.data.map(s => `<option value="${esc(s.id)}" ${s.id === studyId ? "selected" : ""}>${
    esc(s.name ?? s.id)} (${s.n_jobs} jobs)</option>`).join(""));
  picker.onchange = () => { location.hash = picker.value ? "#/compare?study=" + encodeURIComponent(picker.value) : "#/compare"; };
  const cellOf = new Map();  // job id -> its study cell's key
  if (studyId) {
    const study = await api(`/v1/studies/${encodeURIComponent(studyId)}`);
    for (const cell of study.cells) for (const id of cell.job_ids) cellOf.set(id, cell.key);
    ids = [...cellOf.keys()];
    document.getElementById("ids").value = ids.join(",");
  } else if (!ids.length) { const page = await api("/v1/jobs?status=succeeded&limit=100"); ids = page.data.map(j => j.id); }
  const jobs = await Promise.all(ids.map(id => api(`/v1/jobs/${id}`)));
  const histories = await Promise.all(ids.map(id => api(`/v1/jobs/${id}/history`)));
  const xs = [...new Set(histories.flatMap(h => h.data.filter(e => !e.initial).map(e => e.calls)))].sort((a, b) => a - b);
  const series = jobs.map((job, i) => {
    const byCalls = new Map(histories[i].data.filter(e => !e.initial).map(e => [e.calls, e.best_loss]));
    return {label: `${cellOf.get(job.id) ?? `${job.method} ${job.task}`} s${job.config.seed}`, values: xs.map(x => byCalls.get(x) ?? null)};
  });
  const colors = ["#1e88e5", "#43a047", "#e53935", "#8e24aa", "#fb8c00", "#00897b", "#6d4c41", "#3949ab"];
  chart(document.getElementById("c-compare"), "best train loss",
    series.map((s, i) => ({label: s.label, stroke: colors[i % colors.length], spanGaps: true})), [xs, ...series.map(s => s.values)]);
  const groups = {};
  for (const job of jobs) (groups[cellOf.get(job.id) ?? `${job.task} / ${job.method}`] ||= []).push(job.test_metric);
  document.getElementById("summary").innerHTML = `<tr><th>${cellOf.size ? "cell" : "task / method"}</th>`
    + "<th>jobs</th><th>test (mean ± std)</th></tr>" +
    Object.entries(groups).map(([name, values]) => {
      const done = values.filter(v => v != null), m = done.reduce((a, b) => a + b, 0) / (done.length || 1);
      const sd = Math.sqrt(done.reduce((a, b) => a + (b - m) ** 2, 0) / (done.length || 1));
      return `<tr><td>${esc(name)}</td><td>${values.length}</td><td>${done.length ? `${(100 * m).toFixed(1)} ± ${(100 * sd).toFixed(1)}` : "–"}</td></tr>`;
    }).join("");
}

// ---------------------------------------------------------------- workers and queue
async function workersPage() {
  view.innerHTML = `<h2>Workers</h2><table id="workers"></table><h3>Queue</h3><div class="chart" id="c-queue"></div>`;
  const times = [], depths = [];
  const queueChart = chart(document.getElementById("c-queue"), "queue depth (batches)",
    [{label: "depth", stroke: "#e53935"}], [[], []], {x: "seconds", extra: {scales: {x: {time: false}}}});
  const started = Date.now();
  // Rates come from the worker's own counters over its busy time (GET /v1/workers): differencing batches_done
  // between two polls read 0.00 whenever no batch finished between two of its heartbeats.
  async function refresh() {
    const [workers, health] = await Promise.all([api("/v1/workers"), api("/healthz")]);
    document.getElementById("workers").innerHTML = `<tr><th>worker</th><th>models</th><th>devices</th><th>batches</th>
      <th>calls scored</th><th title="per second spent evaluating">batches/s</th><th title="per second spent evaluating">calls/s</th>
      <th title="share of its uptime spent evaluating">busy</th><th>current</th><th>heartbeat age</th></tr>` +
      workers.map(w => {
        const uptime = w.last_heartbeat - w.started_at;
        return `<tr><td>${esc(w.id)}</td><td>${esc(w.models.join(", "))}</td><td>${esc(w.devices.join(", "))}</td>
          <td class="num">${w.batches_done}</td><td class="num">${w.candidates_done ?? "–"}</td>
          <td class="num">${fmt(w.batches_per_second, 2)}</td><td class="num">${fmt(w.candidates_per_second, 1)}</td>
          <td class="num">${uptime > 0 ? Math.round(100 * Math.min(1, w.busy_seconds / uptime)) + " %" : "–"}</td>
          <td>${esc(w.current || "idle")}</td><td class="num">${w.heartbeat_age.toFixed(1)} s</td></tr>`;
      }).join("");
    times.push((Date.now() - started) / 1000); depths.push(health.queue_depth);
    queueChart.setData([times, depths]);
  }
  await refresh();
  const timer = setInterval(refresh, 2000);
  cleanup.push(() => clearInterval(timer));
}

// ---------------------------------------------------------------- router
async function route() {
  cleanup.forEach(fn => fn()); cleanup = [];
  delete view.dataset.generations; delete view.dataset.ended;
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  try {
    if (path.startsWith("/job/")) await jobPage(path.slice(5));
    else if (path === "/submit") await submitPage();
    else if (path === "/compare") await comparePage((params.get("ids") || "").split(",").filter(Boolean), params.get("study"));
    else if (path === "/studies") await studiesPage();
    else if (path.startsWith("/study/")) await studyPage(decodeURIComponent(path.slice(7)));
    else if (path === "/workers") await workersPage();
    else await jobsPage();
  } catch (error) {
    if (error.message !== "unauthorized") view.insertAdjacentHTML("beforeend", `<p class="error">${esc(error.body?.detail || error.message)}</p>`);
  }
}
window.addEventListener("hashchange", route);
route();
