// nograd dashboard: the Submit form. Sections for data, method, budget and a remote endpoint; every label in
// words with the API's name as a hint. What the form offers comes from the service's own registries: methods and
// their options from GET /v1/methods, job and endpoint fields (types, defaults, help) from the OpenAPI schema.
// Empty fields take the default shown; only what a user fills in is sent. Uses esc/fmt/api/duration (app.js).
"use strict";

const LABELS = {
  task: "Bundled task", dataset_id: "Your dataset", k_shot: "Training examples per class", model: "Model",
  test_fraction: "Held-out test fraction", test_file: "Separate test file (optional)",
  method: "Method", budget: "Budget (model calls)", dev_every: "Check on dev every … calls", seed: "Random seed",
  popsize: "Population size", racing: "Race candidates (successive halving)", optimizer: "Optimizer",
  sigma0: "Initial step size", alpha: "Projection scale",
  bounds: "Bound on z", loss: "Loss to minimize", n_tokens: "Soft prompt tokens", dim: "Search dimension",
  distribution: "Projection distribution", init: "Initial prompt text", chat_template: "Use the chat template",
  mode: "Prompt injection", icl_shots: "Demonstrations per class", prompt_length: "Prompt length",
  lr: "Learning rate", vocab_size: "Candidate n-grams per position", ngram_max: "Longest n-gram",
  ngram_min_count: "Least n-gram count", min_pmi: "Least PMI to merge words", top_k: "Sampling cut-off (top-k)",
  mlp_hidden: "Policy MLP width", reward_correct: "Reward when right", reward_wrong: "Reward when wrong",
  kind: "Endpoint kind", base_url: "Base URL", api: "API style", api_key_secret: "API key (a stored secret's name)",
  top_logprobs: "Log-probabilities per request", concurrency: "Requests in flight", timeout: "Timeout (s)",
  max_retries: "Retries", backoff: "First retry backoff (s)", max_backoff: "Longest backoff (s)",
  floor_margin: "Floor margin", rescore_missing: "Rescore missing label words", embedder_model: "Embedder model",
  exact_label_ids: "Exact label-word scores",
};
LABELS["endpoint.model"] = "Remote model name";
// A label in words for an API path (options.popsize -> "Population size"); unknown names get their words.
const label = path => LABELS[path] || LABELS[path.split(".").pop()]
  || path.split(".").pop().replace(/_/g, " ").replace(/^./, c => c.toUpperCase());
// The endpoint fields a remote run needs; the rest fold away under "More endpoint settings".
const ENDPOINT_MAIN = ["kind", "base_url", "model", "api", "api_key_secret"];

// A field from a JSON schema property: {type, choices, default, description} (null and objects dropped).
function schemaField(name, property) {
  const value = (property.anyOf || [property]).find(v => v.type !== "null") || property;
  return {name, type: value.type || "string", choices: value.enum || null, default: property.default ?? null,
    description: property.description || ""};
}

// One labelled input: `path` is the API's name (options.popsize), shown as a hint with the default and help.
// `unset` names what an empty select means (default: the field's default).
function fieldRow(path, field, attrs = "", unset = null) {
  const id = "f-" + path, shown = field.default == null ? "" : String(field.default);
  let input;
  if (field.choices || field.type === "boolean") {
    const choices = field.choices || [true, false];
    const word = v => field.type === "boolean" ? (v ? "yes" : "no") : String(v);
    input = `<select id="${esc(id)}" name="${esc(path)}" ${attrs}><option value="">${esc(unset ?? `default${shown ? ` (${word(field.default)})` : ""}`)}</option>
      ${choices.map(v => `<option value="${esc(v)}">${esc(word(v))}</option>`).join("")}</select>`;
  } else {
    const number = field.type === "integer" || field.type === "number";
    input = `<input id="${esc(id)}" name="${esc(path)}" ${number ? `type="number" step="${field.type === "integer" ? 1 : "any"}"` : ""}
      placeholder="${esc(shown || "unset")}" ${attrs}>`;
  }
  return `<label for="${esc(id)}">${esc(label(path))}</label>${input}
    <span class="hint"><code>${esc(path)}</code>${shown ? ` · default ${esc(shown)}` : ""}${field.description ? ` · ${esc(field.description)}` : ""}
    <span class="error" data-field="${esc(path)}"></span></span>`;
}

async function submitPage() {
  const [tasks, models, datasets, methods, workers, openapi] = await Promise.all([api("/v1/tasks"), api("/v1/models"),
    api("/v1/datasets"), api("/v1/methods"), api("/v1/workers"), api("/openapi.json").catch(() => null)]);
  const schemas = openapi?.components?.schemas || {};
  const jobField = name => schemaField(name, schemas.JobCreate?.properties?.[name] || {});
  const endpointFields = Object.entries(schemas.EndpointSpec?.properties || {}).map(([n, p]) => schemaField(n, p))
    .filter(f => f.type !== "object" && f.type !== "array");
  const byName = Object.fromEntries(methods.map(m => [m.name, m]));
  const types = {};  // API path -> JSON type, for turning the form's strings into the job's values
  for (const name of ["budget", "k_shot", "dev_every", "seed"]) types[name] = jobField(name).type;
  for (const m of methods) for (const o of m.options) types["options." + o.name] = o.type;
  for (const f of endpointFields) types["endpoint." + f.name] = f.type;

  view.innerHTML = `<h2>Submit a job</h2>
    <form id="upload" hidden></form><form id="secret" hidden></form>
    <form id="submit" class="sections">
    <fieldset id="sec-data"><legend>1. Data</legend>
      <p class="choice"><label><input type="radio" name="source" value="task" checked> a bundled task</label>
        <label><input type="radio" name="source" value="dataset"> your own dataset</label></p>
      <div class="grid" data-source="task">
        <label for="f-task">${label("task")}</label><select id="f-task" name="task">${tasks.map(t => `<option value="${esc(t.name)}">${esc(t.name)}</option>`).join("")}</select>
        <span class="hint"><span id="task-hint"></span> <span class="error" data-field="task"></span></span></div>
      <div class="grid" data-source="dataset" hidden>
        <label for="f-dataset_id">${label("dataset_id")}</label><select id="f-dataset_id" name="dataset_id">${datasets.data.map(d => `<option value="${esc(d.id)}">${esc(d.name)}</option>`).join("")}</select>
        <span class="hint"><span id="dataset-hint"></span> <span class="error" data-field="dataset_id"></span></span>
        <details id="upload-box" class="span"><summary>Upload a dataset (JSONL or CSV)</summary><div class="grid">
          ${["file", "name", "template", "verbalizer", "text_field", "label_field", "test_fraction", "test_file"].map(name => `<label for="u-${name}">${esc(label(name))}</label>
            <input id="u-${name}" name="${name}" form="upload" ${name.endsWith("file") ? 'type="file" accept=".jsonl,.json,.csv"' : ""}
              placeholder="${esc({template: "{text} It was {mask}.", verbalizer: "neg:bad,pos:great", text_field: "text", label_field: "label",
                                   test_fraction: "auto: 20% of each label when every label has 9 rows or more; 0: none"}[name] || "")}">
            <span class="hint"><span class="error" data-field="${name}"></span></span>`).join("")}
          <span></span><button form="upload">Upload</button><span class="hint"><span class="error" data-field="_"></span></span></div></details></div>
      <div class="grid">${fieldRow("k_shot", jobField("k_shot"))}</div></fieldset>
    <fieldset id="sec-method"><legend>2. Method and model</legend><div class="grid">
      <label for="f-method">${label("method")}</label><select id="f-method" name="method">${methods.map(m => `<option value="${esc(m.name)}">${esc(m.name)}</option>`).join("")}</select>
      <span class="hint"><span id="method-help"></span> <span class="error" data-field="method"></span></span>
      <label for="f-model">${label("model")}</label><select id="f-model" name="model">${models.map(m => `<option value="${esc(m.name)}">${esc(m.name)}</option>`).join("")}</select>
      <span class="hint"><span id="model-hint"></span> <span class="error" data-field="model"></span></span></div></fieldset>
    <fieldset id="sec-budget"><legend>3. Budget</legend><div class="grid">
      ${fieldRow("budget", jobField("budget"), 'value="' + esc(jobField("budget").default ?? "") + '"')}
      ${fieldRow("dev_every", jobField("dev_every"))}</div>
      <p id="estimate"></p></fieldset>
    <details id="sec-advanced"><summary>Advanced options for <span id="advanced-method"></span> (empty: the default shown)</summary>
      <div class="grid">${fieldRow("seed", jobField("seed"))}</div><div class="grid" id="advanced-options"></div></details>
    <details id="sec-endpoint"><summary>Remote endpoint (score on an API instead of this service's workers)</summary>
      <p class="hint" id="endpoint-note"></p>
      <div class="grid">${endpointFields.filter(f => ENDPOINT_MAIN.includes(f.name)).map(f => fieldRow("endpoint." + f.name, f, "", f.name === "kind" ? "none: this service's workers" : null)).join("")}</div>
      <details><summary>More endpoint settings</summary><div class="grid">
        ${endpointFields.filter(f => !ENDPOINT_MAIN.includes(f.name)).map(f => fieldRow("endpoint." + f.name, f)).join("")}</div></details>
      <h4>Store a secret (a remote API key; write-only)</h4><div class="grid" id="secret-box">
        <label for="s-name">Secret name</label><input id="s-name" name="name" form="secret" placeholder="openai"><span class="hint"><span class="error" data-field="name"></span></span>
        <label for="s-value">Value</label><input id="s-value" name="value" form="secret" type="password" autocomplete="off"><span class="hint"><span class="error" data-field="value"></span></span>
        <span></span><button form="secret">Store</button><span class="hint"><span class="error" data-field="_"></span></span></div></details>
    <p><button id="submit-button">Submit</button> <span class="error" id="submit-error"></span></p></form>`;

  const form = document.getElementById("submit");
  const $ = id => document.getElementById(id);
  const entered = {};  // advanced values typed so far, kept when the method changes and back

  function showSource() {
    const source = form.querySelector('input[name="source"]:checked').value;
    form.querySelectorAll("[data-source]").forEach(part => {
      part.hidden = part.dataset.source !== source;
      // A hidden picker is disabled, so FormData leaves it out: a job names a task or a dataset, never both.
      part.querySelectorAll("select").forEach(select => { select.disabled = part.hidden; });
    });
    if (source === "dataset" && !datasets.data.length) $("dataset-hint").textContent = "none uploaded yet: upload one below";
    estimate();
  }
  function showTask() {
    const task = tasks.find(t => t.name === $("f-task").value);
    $("task-hint").textContent = task ? `${task.labels.length} labels (${task.labels.join(", ")}) · ${task.metric} · ${task.test} test examples` : "";
  }
  function showMethod() {
    const method = byName[$("f-method").value];
    $("method-help").innerHTML = `${esc(method.description)}.<br><b>Pick it</b> ${esc(method.when || "")}`;
    $("advanced-method").textContent = method.name;
    $("advanced-options").querySelectorAll("input, select").forEach(input => { entered[input.name] = input.value; });
    $("advanced-options").innerHTML = method.options.map(o => fieldRow("options." + o.name, o)).join("") || "<p>No options.</p>";
    $("advanced-options").querySelectorAll("input, select").forEach(input => { input.value = entered[input.name] ?? ""; });
    $("f-budget").disabled = !method.search;
    $("f-dev_every").disabled = !method.search;
    const kinds = method.endpoint_kinds;
    $("endpoint-note").textContent = kinds.length ? `${method.name} runs on: ${kinds.join(", ")}.`
      : `${method.name} runs only on this service's workers (it needs the model's embeddings).`;
    const kind = $("f-endpoint.kind");
    if (kind) {
      kind.querySelectorAll("option").forEach(option => { option.disabled = option.value !== "" && !kinds.includes(option.value); });
      if (kind.selectedOptions[0]?.disabled) kind.value = "";
    }
    estimate();
  }
  function showModel() {
    const model = models.find(m => m.name === $("f-model").value);
    $("model-hint").textContent = model ? `${model.workers === 1 ? "1 worker serves" : `${model.workers} workers serve`} it${model.info ? ` · ${model.info.kind} on ${model.info.device}` : ""}` : "";
    estimate();
  }
  // The search time from the budget and the speed workers serving the model measured on the batches they ran
  // (GET /v1/workers: candidates scored per busy second). A rough guide: the task's size changes a call's cost.
  function estimate() {
    const method = byName[$("f-method").value], model = $("f-model").value, out = $("estimate");
    const remote = $("f-endpoint.kind")?.value;
    if (!method.search) { out.textContent = `${method.name} is a baseline: no search, so no budget; it takes the time of scoring the test set once.`; return; }
    if (remote) { out.textContent = "Scored on a remote endpoint: its speed is not measured here."; return; }
    const rates = workers.filter(w => w.models.includes(model) && w.candidates_per_second).map(w => w.candidates_per_second);
    if (!rates.length) { out.textContent = `Estimated time: no worker measured yet for ${model} (an estimate appears once a worker has scored a batch).`; return; }
    const rate = rates.reduce((a, b) => a + b, 0) / rates.length, budget = Number($("f-budget").value || jobField("budget").default);
    out.textContent = `Estimated search time: about ${duration(budget / rate)} (${budget} calls at ${rate.toFixed(1)} calls/s, as measured by ${rates.length} worker${rates.length === 1 ? "" : "s"} for ${model}); loading the model and the final test scoring come on top.`;
  }
  form.querySelectorAll('input[name="source"]').forEach(radio => { radio.onchange = showSource; });
  $("f-task").onchange = showTask;
  $("f-method").onchange = showMethod;
  $("f-model").onchange = showModel;
  $("f-budget").oninput = estimate;
  if ($("f-endpoint.kind")) $("f-endpoint.kind").onchange = estimate;
  showTask(); showModel(); showMethod(); showSource();

  form.onsubmit = async event => {
    event.preventDefault();
    form.querySelectorAll(".error").forEach(e => { e.textContent = ""; });
    try {
      const created = await api("/v1/jobs", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(jobBody(form, types))});
      location.hash = "#/job/" + created.id;
    } catch (error) { showErrors(form, error, $("submit-error")); }
  };
  wireUpload(datasets, showSource);
  wireSecret();
}

// The job the form describes: filled-in fields only, typed as the API declares them; no endpoint without a kind.
function jobBody(form, types) {
  const job = {options: {}}, endpoint = {};
  for (const [name, raw] of new FormData(form)) {
    if (raw === "" || name === "source") continue;
    const type = types[name];
    const value = type === "integer" || type === "number" ? Number(raw) : type === "boolean" ? raw === "true" : raw;
    if (name.startsWith("options.")) job.options[name.slice(8)] = value;
    else if (name.startsWith("endpoint.")) endpoint[name.slice(9)] = value;
    else job[name] = value;
  }
  if (endpoint.kind) job.endpoint = endpoint;
  return job;
}

function wireUpload(datasets, showSource) {
  const upload = document.getElementById("upload"), box = document.getElementById("upload-box");
  upload.onsubmit = async event => {
    event.preventDefault();
    box.querySelectorAll(".error").forEach(e => { e.textContent = ""; });
    const body = new FormData();
    for (const [name, value] of new FormData(upload)) if (value !== "" && !(value instanceof File && !value.name)) body.append(name, value);
    try {
      const dataset = await api("/v1/datasets", {method: "POST", body});
      datasets.data.push(dataset);
      const picker = document.getElementById("f-dataset_id");
      picker.insertAdjacentHTML("beforeend", `<option value="${esc(dataset.id)}">${esc(dataset.name)}</option>`);
      picker.value = dataset.id;
      const held = dataset.summary.test ? `, ${dataset.summary.test} held out for test` : ", no test split";
      document.getElementById("dataset-hint").textContent = `uploaded ${dataset.summary.rows} rows${held}`;
      box.querySelector('.error[data-field="_"]').textContent = `uploaded ${dataset.summary.rows} rows${held}`;
      showSource();
    } catch (error) { showErrors(box, error); }
  };
}

function wireSecret() {
  const secret = document.getElementById("secret"), box = document.getElementById("secret-box");
  secret.onsubmit = async event => {
    event.preventDefault();
    box.querySelectorAll(".error").forEach(e => { e.textContent = ""; });
    try {
      const stored = await api("/v1/secrets", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(Object.fromEntries(new FormData(secret)))});
      secret.reset();
      box.querySelector('.error[data-field="_"]').textContent = `stored ${stored.name}`;
    } catch (error) { showErrors(box, error); }
  };
}

function showErrors(container, error, fallback = container.querySelector('.error[data-field="_"]')) {
  // The API's 422 names the field: the message goes next to it (anything else next to the button: `fallback`).
  const detail = error.body?.detail;
  for (const item of Array.isArray(detail) ? detail : [{loc: ["body", "_"], msg: detail || error.message}]) {
    const field = item.loc.slice(1).join(".");
    const slot = container.querySelector(`.error[data-field="${CSS.escape(field)}"]`) || fallback;
    slot.textContent = item.msg;
  }
}
