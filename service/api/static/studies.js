// nograd dashboard: studies (POST /v1/studies sweeps). The list of the tenant's studies, and a study's page: its
// jobs by status, a cancel button, the cells as a table (mean ± std of the dev and test metrics, the best test mean
// marked) and one curve per cell of its jobs' mean best-so-far dev metric over calls. While the study runs the
// page polls every 3 s: the study, its jobs' progress (GET /v1/jobs?study_id=), and the history records only of
// jobs that moved since the last poll, only the records after the last one it has (`after`). Uses
// esc/fmt/api/chart/bar/setShares/view/cleanup (app.js); every value from the API goes through esc().
"use strict";

const STUDY_POLL_MS = 3000;
const STUDY_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const CELL_COLORS = ["#1e88e5", "#43a047", "#e53935", "#8e24aa", "#fb8c00", "#00897b", "#6d4c41", "#3949ab"];

// A study's jobs by status in words, statuses with no job left out: "2 running · 1 succeeded".
function statusCounts(counts) {
  return STUDY_STATUSES.filter(s => counts?.[s]).map(s => `<span class="status-${s}">${counts[s]} ${s}</span>`)
    .join(" · ") || "no jobs";
}
function studyName(study) { return study.name == null ? `study ${study.id}` : study.name; }
function createdAt(seconds) { return new Date(seconds * 1000).toLocaleString(); }
// "0.512 ± 0.031 (n = 2)"; a metric over one job has no std: "0.512 (n = 1)".
function spread(metric) {
  if (!metric) return "–";
  return `${fmt(metric.mean)}${metric.std == null ? "" : ` ± ${fmt(metric.std)}`} (n = ${metric.n})`;
}

// ---------------------------------------------------------------- list
async function studiesPage() {
  view.innerHTML = `<h2>Studies</h2>
    <p class="hint">A study runs every combination of swept values once per seed (POST /v1/studies, or
    <code>nograd study</code>).</p>
    <table id="studies" class="results"><thead><tr><th>study</th><th>jobs</th><th>status</th><th>cells</th>
      <th>created</th></tr></thead><tbody></tbody></table>`;
  async function refresh() {
    const page = await api("/v1/studies?limit=200");
    document.querySelector("#studies tbody").innerHTML = page.data.map(study => `<tr data-id="${esc(study.id)}">
        <td><a href="#/study/${esc(encodeURIComponent(study.id))}">${esc(studyName(study))}</a></td>
        <td class="num">${study.n_jobs}</td><td>${statusCounts(study.counts)}</td><td class="num">${study.cells.length}</td>
        <td>${esc(createdAt(study.created_at))}</td></tr>`).join("")
      || `<tr><td colspan="5">No studies yet.</td></tr>`;
    return page.data.every(study => study.done);
  }
  await poll(refresh);
}

// Runs `refresh` now and then every STUDY_POLL_MS until it returns true or the page changes; one call at a time
// (the next is timed from the end of the last). The first call's error is the page's; later ones are logged.
async function poll(refresh) {
  let timer = null, alive = true;
  cleanup.push(() => { alive = false; clearTimeout(timer); });
  const tick = async () => {
    let finished = false;
    try { finished = await refresh(); } catch (error) { if (alive) console.warn("refresh failed:", error); }
    if (alive && !finished) timer = setTimeout(tick, STUDY_POLL_MS);
  };
  let finished;
  try { finished = await refresh(); } catch (error) { if (alive) throw error; return; }
  if (alive && !finished) timer = setTimeout(tick, STUDY_POLL_MS);
}

// ---------------------------------------------------------------- one study
// A job's best-so-far dev metric as [calls, value] steps, `steps` extended by its next history records: the
// initial prompt's dev metric at 0 calls, then each dev round's best (which never goes down; the running max
// guards methods whose records say otherwise).
function addBestDevSteps(steps, records) {
  for (const entry of records) {
    const value = entry.initial ? entry.initial.dev_metric : entry.dev?.best_metric;
    if (!Number.isFinite(value)) continue;
    const best = steps.length ? Math.max(steps[steps.length - 1][1], value) : value;
    steps.push([entry.initial ? 0 : entry.calls, best]);
  }
  return steps;
}

// A cell's curve on the shared calls axis `xs`: at each x, the mean over its jobs of their best dev metric so far.
// A job counts at x once it has a value there; a running job only up to the calls it has recorded (beyond that
// its value is not known yet), a finished one to the end (its best stays).
function cellCurve(jobs, xs) {
  return xs.map(x => {
    const values = [];
    for (const job of jobs) {
      if (!job.steps.length || (!job.finished && x > job.steps[job.steps.length - 1][0])) continue;
      let value = null;
      for (const [calls, best] of job.steps) { if (calls <= x) value = best; else break; }
      if (value != null) values.push(value);
    }
    return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
  });
}

async function studyPage(id) {
  const path = `/v1/studies/${encodeURIComponent(id)}`;
  let study = await api(path);
  view.innerHTML = `<h2 id="study-title"></h2><p class="hint" id="study-meta"></p><div class="stats" id="study-stats"></div>
    <p><button id="study-cancel">Cancel study</button>
    <a id="study-compare" href="#/compare?study=${esc(encodeURIComponent(id))}">Compare its jobs</a></p>
    <table id="cells" class="results"><thead><tr><th>cell</th><th>jobs</th><th>done / total</th>
      <th>dev metric (mean ± std)</th><th>test metric (mean ± std)</th></tr></thead><tbody></tbody></table>
    <div class="charts"><div class="chart" id="c-study"></div></div>`;
  document.getElementById("study-title").textContent = studyName(study);
  const base = study.base || {};
  document.getElementById("study-meta").textContent = [`${study.id}`, `created ${createdAt(study.created_at)}`,
    ...["method", "task", "model"].filter(k => base[k] != null).map(k => `${k} ${base[k]}`),
    `sweep: ${Object.keys(study.sweep).join(", ")}`].join(" · ");
  const plot = chart(document.getElementById("c-study"), "best dev metric so far (mean over seeds)",
    study.cells.map((cell, i) => ({label: cell.key, stroke: CELL_COLORS[i % CELL_COLORS.length], spanGaps: true})),
    [[], ...study.cells.map(() => [])], {extra: {width: 720, height: 300}});
  // job id -> what the page last read of it: status, generation, the last history generation read (`after`), its
  // best dev steps, whether it finished
  const jobs = new Map();
  for (const cell of study.cells) for (const jobId of cell.job_ids) {
    jobs.set(jobId, {status: null, generation: null, after: -1, steps: [], finished: false});
  }

  const cancel = document.getElementById("study-cancel");
  cancel.onclick = async () => {
    cancel.disabled = true;
    try {
      study = await api(`${path}/cancel`, {method: "POST"});
      showStudy();
    } catch (error) {
      cancel.disabled = false;
      if (error.message !== "unauthorized") {
        cancel.insertAdjacentHTML("afterend", ` <span class="error">${esc(error.body?.detail || error.message)}</span>`);
      }
    }
  };

  function showStudy() {
    document.getElementById("study-stats").innerHTML = `<span>${study.n_jobs} jobs</span>
      <span>${statusCounts(study.counts)}</span><span>${study.done ? "done" : "running"}</span>`;
    cancel.hidden = study.done;
    document.getElementById("study-stats").dataset.done = study.done ? "1" : "0";
    const tested = study.cells.filter(cell => cell.test_metric);
    const best = tested.length ? Math.max(...tested.map(cell => cell.test_metric.mean)) : null;
    document.querySelector("#cells tbody").innerHTML = study.cells.map((cell, i) => {
      const links = cell.job_ids.map((jobId, j) => {
        const status = jobs.get(jobId)?.status;
        return `<a href="#/job/${esc(encodeURIComponent(jobId))}" class="${status ? `status-${esc(status)}` : ""}"
          title="${esc(jobId)}${status ? ` (${esc(status)})` : ""}">seed ${esc(cell.seeds[j])}</a>`;
      }).join(" ");
      const total = cell.job_ids.length, isBest = cell.test_metric && cell.test_metric.mean === best;
      return `<tr data-cell="${i}"><td><span class="swatch" data-color="${CELL_COLORS[i % CELL_COLORS.length]}"></span><span
          title="${esc(JSON.stringify(cell.params))}">${esc(cell.key)}</span></td><td>${links}</td>
        <td>${bar(total ? 100 * cell.n_done / total : 0)} ${cell.n_done} / ${total}</td>
        <td class="num dev">${spread(cell.dev_metric)}</td>
        <td class="num test${isBest ? " best" : ""}"${isBest ? ' title="best test mean"' : ""}>${spread(cell.test_metric)}</td></tr>`;
    }).join("");
    const body = document.querySelector("#cells tbody");
    setShares(body);
    body.querySelectorAll("[data-color]").forEach(swatch => { swatch.style.background = swatch.dataset.color; });
  }

  function showCurves() {
    const xs = [...new Set([...jobs.values()].flatMap(job => job.steps.map(([calls]) => calls)))].sort((a, b) => a - b);
    const curves = study.cells.map(cell => cellCurve(cell.job_ids.map(jobId => jobs.get(jobId)), xs));
    plot.setData([xs, ...curves]);
    // How many curves, points and where each curve ends, for whoever reads the page (its browser tests do).
    const chartBox = document.getElementById("c-study");
    chartBox.dataset.series = String(curves.length);
    chartBox.dataset.points = String(xs.length);
    chartBox.dataset.last = JSON.stringify(curves.map(curve => curve.length ? curve[curve.length - 1] : null));
  }

  // The study's jobs, every page of them (a study has at most max_study_jobs; one page of 500 usually holds all).
  async function studyJobs() {
    const out = [];
    for (let offset = 0; ; offset += 500) {
      const page = await api(`/v1/jobs?study_id=${encodeURIComponent(id)}&limit=500&offset=${offset}`);
      out.push(...page.data);
      if (!page.data.length || out.length >= page.count) return out;
    }
  }

  async function refresh() {
    const [fresh, list] = await Promise.all([api(path), studyJobs()]);
    study = fresh;
    const moved = list.filter(job => {
      const seen = jobs.get(job.id);
      return seen && (job.generation !== seen.generation || job.status !== seen.status);
    });
    await Promise.all(moved.map(async job => {
      const seen = jobs.get(job.id);
      const history = await api(`/v1/jobs/${encodeURIComponent(job.id)}/history?after=${seen.after}`);
      addBestDevSteps(seen.steps, history.data);
      if (history.data.length) seen.after = history.data[history.data.length - 1].generation;
      Object.assign(seen, {status: job.status, generation: job.generation, finished: FINISHED.has(job.status)});
    }));
    showStudy();
    showCurves();
    // Done once every job ended and their last records are read (a finished job's status change fetched them).
    const finished = study.done && [...jobs.values()].every(job => job.finished);
    view.dataset.ended = finished ? "1" : "0";
    return finished;
  }
  showStudy();
  await poll(refresh);
}
