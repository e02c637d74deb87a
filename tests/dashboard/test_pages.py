"""The dashboard's pages, each behaviour in real headless Chromium against a real service (fake model): the Submit
form's sections, labels, method help and time estimate; a finished job's page (per-generation population band,
elapsed time, the explanation panel's hook); a cancelled job's notice without empty charts; the jobs list's results
table; workers' rates; the job's phase and progress bar. Any console error fails a test (conftest.py). The README's
screenshots (docs/dashboard-submit.png, docs/dashboard-job.png) are saved from these runs with
NOGRAD_UPDATE_SCREENSHOTS=1 (else to a temp folder)."""

from __future__ import annotations

import json
import re

import pytest
from dashpages import STATIC, sign_in
from procs import wait_until

SMALL_BBT = {"method": "bbt", "task": "trec", "model": "fake:0.1", "budget": 200, "dev_every": 50}
SMALL_OPTIONS = {"popsize": 10, "dim": 20}


def finished_job(rest) -> dict:
    """A succeeded 200-call bbt job of this module's service (run once, then reused)."""
    jobs = rest.get("/v1/jobs", params={"status": "succeeded", "method": "bbt"}).json()["data"]
    jobs = [job for job in jobs if job["budget"] == SMALL_BBT["budget"]]
    if jobs:
        return jobs[0]
    job = rest.post("/v1/jobs", json={**SMALL_BBT, "options": SMALL_OPTIONS}).json()
    return wait_until(lambda: _succeeded(rest, job["id"]), 120, "the bbt job to finish", interval=0.5)


def _succeeded(rest, job_id: str) -> dict | None:
    job = rest.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] in ("queued", "running", "succeeded"), job
    return job if job["status"] == "succeeded" else None


def test_submit_form_has_sections_words_and_an_estimate(page, service, rest, tmp_path, shots):
    sign_in(page, service, "#/submit")
    page.wait_for_selector("#submit")
    assert page.inner_text("#estimate").lower().startswith("estimated time: no worker measured yet")
    for section in ("#sec-data", "#sec-method", "#sec-budget"):
        assert page.is_visible(section)
    # advanced options and the endpoint are folded away until asked for
    assert page.is_hidden("#f-options\\.popsize") and page.is_hidden("#f-endpoint\\.api_key_secret")
    # a bundled task by default, and no placeholder in either picker: the dataset picker is hidden and disabled
    assert page.input_value("#f-task") == page.eval_on_selector("#f-task option", "o => o.value") != ""
    assert page.is_hidden("#f-dataset_id") and page.is_disabled("#f-dataset_id")
    assert "(dataset)" not in page.inner_text("#f-task") and "(bundled task)" not in page.content()
    # each method explained in one line, with when to pick it, from /v1/methods
    methods = {m["name"]: m for m in rest.get("/v1/methods").json()}
    assert all(m["when"] for m in methods.values())
    page.select_option("#f-method", "bbpl")
    help_text = page.inner_text("#method-help")
    assert methods["bbpl"]["description"] in help_text and methods["bbpl"]["when"] in help_text
    # labels in words, the API's name and the method's default as hints
    page.select_option("#f-method", "bbt")
    page.click("#sec-advanced summary")
    assert page.inner_text('label[for="f-options.popsize"]') == "Population size"
    hint = page.inner_text('label[for="f-options.popsize"] + input + .hint')
    assert "options.popsize" in hint and "default 20" in hint
    page.select_option("#f-method", "bbtv2")  # the default shown is the chosen method's
    assert "default 10" in page.inner_text('label[for="f-options.popsize"] + input + .hint')
    page.select_option("#f-method", "bbt")
    page.click("#sec-endpoint summary")
    key_label = page.locator('label[for="f-endpoint.api_key_secret"]')
    assert key_label.inner_text() == "API key (a stored secret's name)"
    assert key_label.evaluate("l => l.scrollWidth <= l.clientWidth")  # not cut off
    assert page.get_attribute("#f-endpoint\\.api_key_secret", "placeholder") == "unset"
    assert page.inner_text("#f-endpoint\\.kind option") == "none: this service's workers"

    # once a worker has scored batches, the estimate uses its measured speed
    finished_job(rest)
    page.reload()
    page.wait_for_selector("#submit")
    page.select_option("#f-model", "fake:0.1")
    page.fill("#f-budget", "300")
    text = page.inner_text("#estimate")
    assert re.search(r"Estimated search time: about \d+ (s|min)", text) and "300 calls at" in text, text
    page.click("#sec-advanced summary")
    page.screenshot(path=str(shots / "dashboard-submit.png"), full_page=True)
    page.select_option("#f-method", "manual")  # a baseline has no budget to estimate
    assert "baseline" in page.inner_text("#estimate") and page.is_disabled("#f-budget")


def test_a_form_job_carries_only_what_was_filled_in(page, service, rest):
    sign_in(page, service, "#/submit")
    page.wait_for_selector("#submit")
    page.select_option("#f-task", "trec")
    page.select_option("#f-model", "fake:0.1")
    page.fill("#f-budget", "40")
    page.click("#sec-advanced summary")
    page.fill("#f-options\\.popsize", "10")
    page.fill("#f-options\\.dim", "20")
    page.select_option("#f-options\\.chat_template", "false")
    page.click("#submit-button")
    page.wait_for_url("**/#/job/*")
    job = rest.get("/v1/jobs/" + page.url.rsplit("/", 1)[1]).json()
    assert (job["task"], job["dataset_id"], job["budget"]) == ("trec", None, 40)
    assert (job["config"]["popsize"], job["config"]["dim"], job["config"]["chat_template"]) == (10, 20, False)
    assert job["config"]["seed"] == 0 and job["config"]["sigma0"] == 1.0  # left empty: the API's defaults


def test_finished_job_page_population_band_elapsed_and_lists(page, service, rest, tmp_path, shots):
    job = finished_job(rest)
    sign_in(page, service, f"#/job/{job['id']}")
    page.wait_for_function("() => document.getElementById('view').dataset.ended === '1'")
    # one band point per generation (min / median / max of its population), not one point for the newest
    assert page.get_attribute("#c-pop", "data-points") == str(job["generation"]) == "20"
    assert page.is_visible("#c-pop") and page.is_hidden("#notice")
    assert re.search(r"elapsed \d+ s", page.inner_text("#stats"))
    assert "ETA" not in page.inner_text("#stats") and page.inner_text("#phase") == ""
    if (STATIC / "explain.js").exists():  # the real panel, when it has landed: its section is there
        page.wait_for_selector("#explain")
    page.screenshot(
        path=str(shots / "dashboard-job.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": 1700}
    )

    page.click("text=Jobs")
    page.wait_for_selector(f'#jobs tr[data-id="{job["id"]}"]')
    headers = page.locator("#jobs thead th").all_inner_texts()
    assert headers[1:9] == ["method", "task", "status", "calls / budget", "best dev", "test metric", "elapsed", "phase"]
    page.screenshot(path=str(tmp_path / "jobs.png"))
    cells = [c.strip() for c in page.locator(f'#jobs tr[data-id="{job["id"]}"] td').all_inner_texts()]
    assert cells[1:5] == ["bbt", "trec", "succeeded", "200/200"]
    assert cells[6] == f"{job['test_metric']:.3f}" and re.fullmatch(r"\d+ s", cells[7]), cells

    page.click("text=Workers")
    page.wait_for_selector("#workers td")
    row = page.locator("#workers tr").nth(1).locator("td").all_inner_texts()
    batches_per_second, calls_per_second = float(row[5]), float(row[6])
    assert batches_per_second > 0 and calls_per_second > 0  # from the worker's own counters, never 0.00


def test_workers_api_rates_come_from_busy_time(rest):
    finished_job(rest)
    (worker,) = rest.get("/v1/workers").json()
    assert worker["candidates_done"] >= 200 and worker["busy_seconds"] > 0
    assert worker["candidates_per_second"] == pytest.approx(worker["candidates_done"] / worker["busy_seconds"])
    assert worker["batches_per_second"] == pytest.approx(worker["batches_done"] / worker["busy_seconds"])


def test_cancelled_job_says_so_and_hides_empty_charts(page, service, rest, tmp_path):
    job = rest.post("/v1/jobs", json={**SMALL_BBT, "budget": 20_000, "options": SMALL_OPTIONS}).json()
    rest.post(f"/v1/jobs/{job['id']}/cancel")
    job = wait_until(lambda: _terminal(rest, job["id"]), 60, "the job to be cancelled", interval=0.2)
    assert job["status"] == "cancelled"
    sign_in(page, service, f"#/job/{job['id']}")
    page.wait_for_function("() => document.getElementById('view').dataset.ended === '1'")
    page.screenshot(path=str(tmp_path / "cancelled.png"))
    notice = page.inner_text("#notice")
    assert notice.startswith("Cancelled") and page.is_visible("#notice")
    generations = int(page.get_attribute("#view", "data-generations") or 0)
    for chart in ("#c-loss", "#c-sigma", "#c-pop"):  # a chart without data is not drawn
        assert page.is_hidden(chart) == (generations == 0)
    if generations == 0:
        assert "No generations were recorded" in notice
    else:
        assert f"after {job['calls']} of 20000 calls" in notice


def _terminal(rest, job_id: str) -> dict | None:
    job = rest.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def _stream(job: dict) -> str:
    return f"event: job\ndata: {json.dumps(job)}\n\n"


def _serve(body: str):
    return lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body)


def test_phase_label_and_progress_bar_from_job_snapshots(page, service, rest):
    """The page renders `phase` as the API documents it: label, and a bar when done/total are given; a job
    without the field (an older service) or with null shows none. The snapshots are the API's own job, with
    the phase set as the runner reports it."""
    job = finished_job(rest)
    running = {**job, "status": "running", "finished_at": None}
    snapshots = [
        {
            **running,
            "phase": {
                "name": "loading",
                "label": "loading the model",
                "done": None,
                "total": None,
                "unit": None,
                "since": 0,
            },
        },
        {
            **running,
            "phase": {"name": "search", "label": "searching", "done": 50, "total": 200, "unit": "calls", "since": 0},
        },
    ]
    path = f"**/v1/jobs/{job['id']}/events"
    body = "".join(_stream(s) for s in snapshots)
    page.route(path, _serve(body))
    sign_in(page, service, f"#/job/{job['id']}")
    page.wait_for_selector('#phase .phase[data-phase="search"]')
    assert page.inner_text("#phase").split() == ["searching", "50", "/", "200", "calls"]
    assert page.eval_on_selector("#phase [data-share]", "bar => bar.style.width") == "25%"

    without = {k: v for k, v in running.items() if k != "phase"}
    for snapshot in (without, {**running, "phase": None}):
        page.unroute(path)
        page.route(path, _serve(_stream(snapshot)))
        page.reload()
        page.wait_for_selector("#stats .status-running")
        assert page.inner_text("#phase") == ""


def test_live_job_shows_its_phase(page, service, rest):
    """While a real job runs, its page names the phase the API reports (when this service reports one)."""
    job = rest.post("/v1/jobs", json={**SMALL_BBT, "budget": 600, "options": SMALL_OPTIONS}).json()
    sign_in(page, service, f"#/job/{job['id']}")
    page.wait_for_selector("#stats .status-running")
    if "phase" not in rest.get(f"/v1/jobs/{job['id']}").json():
        pytest.fail("the API's jobs carry no `phase` field yet (issue 13: another part adds it)")
    page.wait_for_selector("#phase .phase")
    page.wait_for_function("() => document.getElementById('view').dataset.ended === '1'", timeout=120_000)
    assert page.inner_text("#phase") == ""  # a finished job has no phase to show


def test_explanation_panel_gets_a_section_once_the_job_succeeded(page, service, rest):
    """The hook explain.js plugs into: `window.renderExplanation(section, job)` for a succeeded job. The script
    served here stands in for explain.js and records what it was given."""
    job = finished_job(rest)
    recorder = (
        "window.renderExplanation = (element, job) => {"
        " element.dataset.job = job.id; element.dataset.status = job.status; element.textContent = 'explained'; };"
    )
    page.route("**/static/explain.js", lambda route: route.fulfill(content_type="text/javascript", body=recorder))
    sign_in(page, service, f"#/job/{job['id']}")
    page.wait_for_selector("section#explain[data-job]")
    assert page.get_attribute("#explain", "data-job") == job["id"]
    assert page.get_attribute("#explain", "data-status") == "succeeded"
    assert page.locator("section#explain").count() == 1  # once, whatever the number of snapshots
