// nograd dashboard: the "what was learned" panel of a succeeded job, from GET /v1/jobs/{id}/analysis.
// window.renderExplanation(element, job) fills `element` with the prompt itself (its text, its demonstrations, or a
// soft prompt's nearest vocabulary tokens per position), the test confusion matrices of the tuned and the manual
// prompt side by side, and the test examples the tuned prompt fixed and broke. It uses app.js's `api()` (same
// Authorization header, same 401 handling) when the page has it. No inline styles in markup (the page's CSP):
// classes from explain.css, which this script links itself (a same-origin stylesheet is allowed; a <style>
// element would not be), and cell shades set through the CSSOM.
"use strict";

(() => {
  function linkStylesheet() {
    if (document.querySelector('link[href="/static/explain.css"]')) return;
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = "/static/explain.css";
    document.head.appendChild(link);
  }
  const esc = value => String(value ?? "").replace(/[&<>"']/g,
    c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const num = (value, digits = 3) => value == null ? "–" : Number(value).toFixed(digits);
  // A token as the model has it: quoted, so leading spaces and newlines show.
  const token = text => esc(JSON.stringify(text));

  async function fetchAnalysis(id) {
    const path = `/v1/jobs/${encodeURIComponent(id)}/analysis`;
    if (typeof api === "function") return api(path);  // app.js: auth header, 401 -> asks for the key
    const key = sessionStorage.getItem("nograd.key");
    const response = await fetch(path, {headers: key ? {"Authorization": "Bearer " + key} : {}});
    const body = await response.json().catch(() => null);
    if (!response.ok) { const error = new Error(response.statusText); error.status = response.status; error.body = body; throw error; }
    return body;
  }

  function promptHtml(prompt) {
    const words = Object.entries(prompt.verbalizer || {}).map(([label, word]) => `${esc(label)} → <code>${esc(word)}</code>`);
    const head = `<p>Template <code class="explain-template">${esc(prompt.template)}</code>${prompt.chat ? " (chat template)" : ""};
      label words ${words.join(", ")}.</p>`;
    if (prompt.kind === "manual") return head + `<p>The manual prompt: the template alone (the search kept its starting point).</p>`;
    if (prompt.kind === "text") return head + `<p>Prompt text, put before the template:</p><pre class="explain-text">${esc(prompt.text)}</pre>`;
    if (prompt.kind === "demos") {
      const shown = prompt.demonstrations || [];
      const items = shown.map(d => `<li><span class="explain-label">${esc(d.label)}</span> ${esc(d.text)}${d.text2 ? ` <span class="explain-text2">/ ${esc(d.text2)}</span>` : ""} <span class="hint">train #${d.index}</span></li>`);
      return head + `<p>${shown.length} demonstration${shown.length === 1 ? "" : "s"}, shown before each input in this order:</p>
        <ol class="explain-demos">${items.join("")}</ol>`;
    }
    if (prompt.kind === "deep") return head + `<p>A deep prompt (BBTv2): ${prompt.n_tokens} positions in every layer, projected from d = ${prompt.dim}; it has no readable form.</p>`;
    const shape = `A soft prompt (${esc(prompt.mode)}): ${prompt.n_tokens} positions projected from d = ${prompt.dim}${prompt.init ? `, starting at <code>${esc(prompt.init)}</code>` : ""}.`;
    if (!prompt.nearest_tokens) return head + `<p>${shape} Nearest tokens are not available: the model's embeddings stay with the workers or the remote endpoint that ran the job.</p>`;
    const k = Math.max(0, ...prompt.nearest_tokens.map(row => row.length));
    const header = Array.from({length: k}, (_, i) => `<th>${i + 1}</th>`).join("");
    const rows = prompt.nearest_tokens.map((row, position) => `<tr><th>${position + 1}</th>${row.length
      ? row.map(n => `<td title="token ${n.id}, cosine ${num(n.similarity)}"><code>${token(n.token)}</code> <span class="hint">${num(n.similarity, 2)}</span></td>`).join("")
      : `<td colspan="${k || 1}" class="hint">zero vector: no direction</td>`}</tr>`);
    return head + `<p>${shape} As a hint of what it resembles, the vocabulary tokens whose embeddings are nearest to each
      position (cosine similarity; soft positions are rarely close to any token):</p>
      <table class="explain-nearest"><thead><tr><th>position</th>${header}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
  }

  function matrixHtml(title, scored, labels, metricName) {
    if (!scored) return "";
    const cells = scored.confusion.map((row, gold) => {
      const total = row.reduce((a, b) => a + b, 0) || 1;
      return `<tr><th>${esc(labels[gold])}</th>${row.map((count, predicted) =>
        `<td class="num${gold === predicted ? " explain-diagonal" : ""}" data-shade="${count / total}">${count}</td>`).join("")}</tr>`;
    });
    return `<figure class="explain-matrix" data-side="${esc(title)}"><figcaption>${esc(title)} prompt: ${esc(metricName)} ${num(scored.metric)}</figcaption>
      <table><thead><tr><th>gold \\ predicted</th>${labels.map(l => `<th>${esc(l)}</th>`).join("")}</tr></thead>
      <tbody>${cells.join("")}</tbody></table></figure>`;
  }

  function changedHtml(kind, examples, total, limit, text) {
    const items = examples.map(e => `<li data-index="${e.index}"><q>${esc(e.text)}</q>${e.text2 ? ` <q>${esc(e.text2)}</q>` : ""}
      <span class="hint">test #${e.index} · gold <b>${esc(e.gold)}</b> · manual ${esc(e.manual)} → tuned ${esc(e.tuned)}</span></li>`);
    const more = total > examples.length ? ` (the first ${limit} shown)` : "";
    return `<div class="explain-changes" data-kind="${kind}"><h4>${total} ${text}${more}</h4>
      ${items.length ? `<ul>${items.join("")}</ul>` : `<p class="hint">none</p>`}</div>`;
  }

  function render(element, analysis) {
    const labels = analysis.labels;
    const tested = analysis.tuned != null;
    const changed = analysis.changed;
    element.innerHTML = `<h3>What was learned</h3>
      <div class="explain-prompt" data-kind="${esc(analysis.prompt.kind)}">${promptHtml(analysis.prompt)}</div>
      ${tested ? `<h4>Test set (${analysis.n_test} examples): tuned vs manual prompt</h4>
        <div class="explain-matrices">${matrixHtml("tuned", analysis.tuned, labels, analysis.metric_name)}
        ${analysis.prompt.kind === "manual" ? `<p class="hint">The tuned prompt is the manual prompt: nothing changed.</p>`
          : matrixHtml("manual", analysis.manual, labels, analysis.metric_name)}</div>
        <div class="explain-changed">${changedHtml("fixed", changed.fixed, changed.n_fixed, changed.limit, "fixed (manual wrong, tuned right)")}
        ${changedHtml("broken", changed.broken, changed.n_broken, changed.limit, "broken (manual right, tuned wrong)")}</div>`
        : `<p class="hint">This job's data has no test split: no confusion matrices or changed examples.</p>`}`;
    // Shade each cell by its share of the gold label's row (CSSOM: allowed by the CSP, unlike style attributes).
    element.querySelectorAll("[data-shade]").forEach(cell => {
      const share = Number(cell.dataset.shade);
      cell.style.backgroundColor = `rgba(30, 136, 229, ${(0.08 + 0.6 * share).toFixed(3)})`;
    });
    element.dataset.explained = "1";
  }

  window.renderExplanation = async function renderExplanation(element, job) {
    linkStylesheet();
    element.innerHTML = `<h3>What was learned</h3><p class="hint">Loading the analysis…</p>`;
    let analysis;
    try {
      analysis = await fetchAnalysis(job.id);
    } catch (error) {
      if (error.status !== 404) throw error;
      element.innerHTML = `<h3>What was learned</h3><p class="hint">${esc(error.body?.detail || "No analysis for this job.")}</p>`;
      element.dataset.explained = "0";
      return;
    }
    render(element, analysis);
  };
})();
