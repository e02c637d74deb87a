// nograd dashboard: jobs, submit, live job page, compare, workers. No build step; uPlot is vendored.
"use strict";

const KEY = "nograd.key";  // kept in sessionStorage: gone when the browser session ends
const view = document.getElementById("view");
let cleanup = [];  // timers, streams and charts of the current page

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function fmt(value, digits = 3) { return value == null ? "–" : Number(value).toFixed(digits); }
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
    <table id="jobs"><thead><tr><th>job</th><th>status</th><th>method</th><th>task</th><th>model</th>
      <th>calls / budget</th><th>best dev</th><th>test</th><th>age</th><th></th></tr></thead><tbody></tbody></table>
    <p><button id="compare-selected">Compare selected</button></p>`;
  const form = document.getElementById("filters");
  async function refresh() {
    const params = new URLSearchParams([...new FormData(form)].filter(([, v]) => v));
    const page = await api("/v1/jobs?limit=200&" + params);
    document.querySelector("#jobs tbody").innerHTML = page.data.map(job => {
      const share = job.budget ? Math.min(100, 100 * job.calls / job.budget) : (job.status === "succeeded" ? 100 : 0);
      return `<tr data-id="${esc(job.id)}"><td><a href="#/job/${esc(job.id)}">${esc(job.id)}</a></td>
        <td class="status-${esc(job.status)}">${esc(job.status)}</td><td>${esc(job.method)}</td><td>${esc(job.task)}</td>
        <td>${esc(job.model)}</td><td><span class="bar"><span data-share="${share}"></span></span>
        ${job.calls}/${job.budget}</td><td>${fmt(job.best_dev_metric)}</td><td>${fmt(job.test_metric)}</td>
        <td>${Math.round(Date.now() / 1000 - job.created_at)} s</td><td><input type="checkbox" value="${esc(job.id)}"></td></tr>`;
    }).join("");
    // Widths set from script: the page's Content-Security-Policy refuses style attributes in markup.
    document.querySelectorAll("#jobs [data-share]").forEach(bar => { bar.style.width = bar.dataset.share + "%"; });
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

// ---------------------------------------------------------------- submit
// The method registry (GET /v1/methods) says which options each method reads and their defaults: one input per
// option, shown for the methods it applies to; empty fields take the method's default.
function formOptions(methods) {
  const options = new Map();
  for (const method of methods) {
    for (const option of method.options) {
      const entry = options.get(option.name) || {...option, methods: [], defaults: []};
      entry.methods.push(method.name);
      if (option.default !== null) entry.defaults.push(`${method.name} ${option.default}`);
      options.set(option.name, entry);
    }
  }
  return [...options.values()].map(o => {
    const kind = o.choices || o.type === "boolean" ? "select" : (o.type === "integer" || o.type === "number" ? "number" : "text");
    const same = new Set(o.defaults.map(d => d.split(" ").slice(1).join(" "))).size === 1;
    const hint = o.choices ? o.choices.join(",") : o.type === "boolean" ? "true,false"
      : (o.defaults.length ? (same ? o.defaults[0].split(" ").slice(1).join(" ") : o.defaults.join(", ")) : o.description);
    return [o.name, kind, o.methods.join(" "), hint, o.type];
  });
}
// A remote endpoint instead of this service's workers (text-only APIs run bbpl, rlprompt, icl_search, manual, icl).
const endpointFields = kinds => [["kind", "select", "," + kinds.join(",")], ["base_url", "text", "https://api.openai.com/v1"],
  ["model", "text", "remote model name"], ["api", "select", ",completions,chat"],
  ["api_key_secret", "text", "a secret's name (below)"]];

async function submitPage() {
  const [tasks, models, datasets, methods] = await Promise.all([api("/v1/tasks"), api("/v1/models"), api("/v1/datasets"), api("/v1/methods")]);
  const OPTIONS = formOptions(methods);
  const ENDPOINT = endpointFields([...new Set(methods.flatMap(m => m.endpoint_kinds))].sort());
  const NUMBERS = new Set(["budget", "seed", "k_shot", "dev_every", ...OPTIONS.filter(o => o[1] === "number").map(o => "options." + o[0])]);
  const BOOLEANS = new Set(OPTIONS.filter(o => o[4] === "boolean").map(o => "options." + o[0]));
  const row = (name, input) => `<label for="f-${name}">${name}</label>${input}<span class="error" data-field="${name}"></span>`;
  view.innerHTML = `<h2>Submit a job</h2><form id="submit" class="grid">
    ${row("method", `<select id="f-method" name="method">${methods.map(m => `<option title="${esc(m.description)}">${esc(m.name)}</option>`).join("")}</select>`)}
    ${row("task", `<select id="f-task" name="task"><option value="">(dataset)</option>${tasks.map(t => `<option>${esc(t.name)}</option>`).join("")}</select>`)}
    ${row("dataset_id", `<select id="f-dataset_id" name="dataset_id"><option value="">(bundled task)</option>${datasets.data.map(d => `<option value="${esc(d.id)}">${esc(d.name)}</option>`).join("")}</select>`)}
    ${row("model", `<select id="f-model" name="model">${models.map(m => `<option>${esc(m.name)}</option>`).join("")}</select>`)}
    ${row("budget", `<input id="f-budget" name="budget" type="number" value="600">`)}
    ${row("seed", `<input id="f-seed" name="seed" type="number" value="0">`)}
    ${row("k_shot", `<input id="f-k_shot" name="k_shot" type="number" value="16">`)}
    ${row("dev_every", `<input id="f-dev_every" name="dev_every" type="number" value="100">`)}
    ${OPTIONS.map(([name, kind, methods, hint]) => `<div class="option" data-methods="${methods}">
      ${row("options." + name, kind === "select"
        ? `<select id="f-options.${name}" name="options.${name}"><option value="">method default</option>${hint.split(",").map(v => `<option>${v}</option>`).join("")}</select>`
        : `<input id="f-options.${name}" name="options.${name}" ${kind === "number" ? 'type="number" step="any"' : ""} placeholder="${esc(hint)}">`)}</div>`).join("")}
    ${ENDPOINT.map(([name, kind, hint]) => row("endpoint." + name, kind === "select"
        ? `<select id="f-endpoint.${name}" name="endpoint.${name}">${hint.split(",").map(v => `<option value="${v}">${v || "(this service)"}</option>`).join("")}</select>`
        : `<input id="f-endpoint.${name}" name="endpoint.${name}" placeholder="${esc(hint)}">`)).join("")}
    <span></span><button>Submit</button><span class="error" data-field="_"></span></form>
    <h3>Store a secret (a remote API key; write-only)</h3><form id="secret" class="grid">
    ${row("name", `<input id="s-name" name="name" placeholder="openai">`)}
    ${row("value", `<input id="s-value" name="value" type="password" autocomplete="off">`)}
    <span></span><button>Store</button><span class="error" data-field="_"></span></form>
    <h3>Upload a dataset</h3><form id="upload" class="grid">
    ${["file", "name", "template", "verbalizer", "text_field", "label_field"].map(name => `<label for="u-${name}">${name}</label>
      <input id="u-${name}" name="${name}" ${name === "file" ? 'type="file" accept=".jsonl,.json,.csv"' : ""}
        placeholder="${{template: "{text} It was {mask}.", verbalizer: "neg:bad,pos:great", text_field: "text", label_field: "label"}[name] || ""}">
      <span class="error" data-field="${name}"></span>`).join("")}
    <span></span><button>Upload</button><span class="error" data-field="_"></span></form>`;
  const upload = document.getElementById("upload");
  upload.onsubmit = async event => {
    event.preventDefault();
    upload.querySelectorAll(".error").forEach(e => e.textContent = "");
    const body = new FormData();
    for (const [name, value] of new FormData(upload)) if (value !== "" && !(value instanceof File && !value.name)) body.append(name, value);
    try {
      const dataset = await api("/v1/datasets", {method: "POST", body});
      const picker = document.getElementById("f-dataset_id");
      picker.insertAdjacentHTML("beforeend", `<option value="${esc(dataset.id)}">${esc(dataset.name)}</option>`);
      picker.value = dataset.id;
      document.getElementById("f-task").value = "";
      upload.querySelector('.error[data-field="_"]').textContent = `uploaded ${dataset.summary.rows} rows`;
    } catch (error) { showErrors(upload, error); }
  };
  const secret = document.getElementById("secret");
  secret.onsubmit = async event => {
    event.preventDefault();
    secret.querySelectorAll(".error").forEach(e => e.textContent = "");
    const body = Object.fromEntries(new FormData(secret));
    try {
      const stored = await api("/v1/secrets", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      secret.reset();
      secret.querySelector('.error[data-field="_"]').textContent = `stored ${stored.name}`;
    } catch (error) { showErrors(secret, error); }
  };
  const form = document.getElementById("submit");
  const method = document.getElementById("f-method");
  const showOptions = () => form.querySelectorAll(".option").forEach(option => {
    const applies = option.dataset.methods.split(" ").includes(method.value);
    option.style.display = applies ? "contents" : "none";
    option.querySelectorAll("input, select").forEach(input => { input.disabled = !applies; });
  });
  method.onchange = showOptions;
  showOptions();
  form.onsubmit = async event => {
    event.preventDefault();
    form.querySelectorAll(".error").forEach(e => e.textContent = "");
    const job = {options: {}};
    for (const [name, raw] of new FormData(form)) {
      if (raw === "") continue;
      const value = NUMBERS.has(name) ? Number(raw) : BOOLEANS.has(name) ? raw === "true" : raw;
      if (name.startsWith("options.")) job.options[name.slice(8)] = value;
      else if (name.startsWith("endpoint.")) (job.endpoint ||= {})[name.slice(9)] = value;
      else job[name] = value;
    }
    try {
      const created = await api("/v1/jobs", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(job)});
      location.hash = "#/job/" + created.id;
    } catch (error) { showErrors(form, error); }
  };
}

function showErrors(form, error) {
  // The API's 422 names the field: the message goes next to it (anything else next to the button).
  const detail = error.body?.detail;
  for (const item of Array.isArray(detail) ? detail : [{loc: ["body", "_"], msg: detail || error.message}]) {
    const field = item.loc.slice(1).join(".");
    const slot = form.querySelector(`.error[data-field="${CSS.escape(field)}"]`) || form.querySelector('.error[data-field="_"]');
    slot.textContent = item.msg;
  }
}

// ---------------------------------------------------------------- one job, live
async function readEvents(path, onEvent) {
  // EventSource cannot send the Authorization header, so the stream is read with fetch.
  const controller = new AbortController();
  cleanup.push(() => controller.abort());
  const response = await fetch(path, {headers: headers(), signal: controller.signal});
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
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
  view.innerHTML = `<h2>Job ${esc(id)}</h2><div class="stats" id="stats"></div>
    <p><button id="cancel">Cancel</button> <button id="download">Download prompt</button></p>
    <div class="charts"><div class="chart" id="c-loss"></div><div class="chart" id="c-dev"></div>
    <div class="chart" id="c-sigma"></div><div class="chart" id="c-pop"></div></div>`;
  const calls = [], best = [], mean = [], devCalls = [], dev = [], sigma = [], popX = [], popY = [];
  const lossChart = chart(document.getElementById("c-loss"), "train loss",
    [{label: "best", stroke: "#1e88e5"}, {label: "mean", stroke: "#90caf9"}], [[], [], []]);
  const devChart = chart(document.getElementById("c-dev"), "dev metric", [{label: "dev", stroke: "#43a047"}], [[], []]);
  const sigmaChart = chart(document.getElementById("c-sigma"), "CMA-ES step size", [{label: "sigma", stroke: "#fb8c00"}], [[], []]);
  const popChart = chart(document.getElementById("c-pop"), "population losses",
    [{label: "loss", stroke: "#8e24aa", paths: () => null, points: {show: true, size: 4}}], [[], []], {x: "generation"});
  let job = null;
  function showStats() {
    if (!job) return;
    document.getElementById("stats").innerHTML = `<span class="status-${esc(job.status)}">${esc(job.status)}</span>
      <span>${esc(job.method)} · ${esc(job.task)} · ${esc(job.model)}</span><span>calls ${job.calls} / ${job.budget}</span>
      <span>best train loss ${fmt(job.best_train_loss, 4)}</span><span>best dev ${fmt(job.best_dev_metric)}</span>
      <span>test ${fmt(job.test_metric)}</span><span>ETA ${job.eta_seconds == null ? "–" : Math.round(job.eta_seconds) + " s"}</span>
      ${job.error ? `<span class="error">${esc(job.error)}</span>` : ""}${job.message ? `<span>${esc(job.message)}</span>` : ""}
      ${job.result?.prompt_text ? `<span>prompt: <code>${esc(job.result.prompt_text)}</code></span>` : ""}
      ${job.result?.usage ? `<span>remote: ${job.result.usage.requests} requests, ${job.result.usage.prompt_tokens} prompt tokens, ${job.result.usage.rescored_label_words ?? 0} rescored and ${job.result.usage.missing_label_words}/${job.result.usage.label_scores} label scores at the floor</span>` : ""}`;
    const finished = ["succeeded", "failed", "cancelled"].includes(job.status);
    document.getElementById("cancel").disabled = finished || job.cancel_requested;
    document.getElementById("download").disabled = job.status !== "succeeded";
  }
  function onGeneration(entry) {
    if (entry.initial) { devCalls.push(0); dev.push(entry.initial.dev_metric); devChart.setData([devCalls, dev]); return; }
    calls.push(entry.calls); best.push(entry.best_loss); mean.push(entry.mean_loss); sigma.push(entry.sigma);
    for (const loss of entry.losses) { popX.push(entry.generation); popY.push(loss); }
    if (entry.dev) { devCalls.push(entry.calls); dev.push(entry.dev.best_metric); devChart.setData([devCalls, dev]); }
    lossChart.setData([calls, best, mean]); sigmaChart.setData([calls, sigma]);
    const order = popX.map((_, i) => i).sort((a, b) => popX[a] - popX[b]);
    popChart.setData([order.map(i => popX[i]), order.map(i => popY[i])]);
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
    else if (event === "end") view.dataset.ended = "1";
  });
}

// ---------------------------------------------------------------- compare
async function comparePage(ids) {
  view.innerHTML = `<h2>Compare</h2><p>Pick jobs on the Jobs page, or list them: <input id="ids" size="80" value="${esc(ids.join(","))}"></p>
    <div class="charts"><div class="chart" id="c-compare"></div></div><h3>Results (test metric)</h3><table id="summary"></table>`;
  document.getElementById("ids").onchange = event => { location.hash = "#/compare?ids=" + event.target.value; };
  if (!ids.length) { const page = await api("/v1/jobs?status=succeeded&limit=100"); ids = page.data.map(j => j.id); }
  const jobs = await Promise.all(ids.map(id => api(`/v1/jobs/${id}`)));
  const histories = await Promise.all(ids.map(id => api(`/v1/jobs/${id}/history`)));
  const xs = [...new Set(histories.flatMap(h => h.data.filter(e => !e.initial).map(e => e.calls)))].sort((a, b) => a - b);
  const series = jobs.map((job, i) => {
    const byCalls = new Map(histories[i].data.filter(e => !e.initial).map(e => [e.calls, e.best_loss]));
    return {label: `${job.method} ${job.task} s${job.config.seed}`, values: xs.map(x => byCalls.get(x) ?? null)};
  });
  const colors = ["#1e88e5", "#43a047", "#e53935", "#8e24aa", "#fb8c00", "#00897b", "#6d4c41", "#3949ab"];
  chart(document.getElementById("c-compare"), "best train loss",
    series.map((s, i) => ({label: s.label, stroke: colors[i % colors.length], spanGaps: true})), [xs, ...series.map(s => s.values)]);
  const groups = {};
  for (const job of jobs) (groups[`${job.task} / ${job.method}`] ||= []).push(job.test_metric);
  document.getElementById("summary").innerHTML = "<tr><th>task / method</th><th>jobs</th><th>test (mean ± std)</th></tr>" +
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
  const started = Date.now(), previous = {};
  async function refresh() {
    const [workers, health] = await Promise.all([api("/v1/workers"), api("/healthz")]);
    document.getElementById("workers").innerHTML = "<tr><th>worker</th><th>models</th><th>devices</th><th>batches</th><th>batches/s</th><th>current</th><th>heartbeat age</th></tr>" +
      workers.map(w => {
        const rate = previous[w.id] ? (w.batches_done - previous[w.id].n) / ((Date.now() - previous[w.id].t) / 1000) : 0;
        previous[w.id] = {n: w.batches_done, t: Date.now()};
        return `<tr><td>${esc(w.id)}</td><td>${esc(w.models.join(", "))}</td><td>${esc(w.devices.join(", "))}</td>
          <td>${w.batches_done}</td><td>${rate.toFixed(2)}</td><td>${esc(w.current || "")}</td><td>${w.heartbeat_age.toFixed(1)} s</td></tr>`;
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
    else if (path === "/compare") await comparePage((params.get("ids") || "").split(",").filter(Boolean));
    else if (path === "/workers") await workersPage();
    else await jobsPage();
  } catch (error) {
    if (error.message !== "unauthorized") view.insertAdjacentHTML("beforeend", `<p class="error">${esc(error.body?.detail || error.message)}</p>`);
  }
}
window.addEventListener("hashchange", route);
route();
