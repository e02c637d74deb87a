"""The dashboard's Studies view in real headless Chromium against a real service (fake model): the list, a finished
study's page (cells table with the API's mean ± std, the best test mean marked, links to each cell's jobs, one
curve per cell of the mean best dev metric so far), the Compare view loading a study's jobs, cancelling a running
study from its page, and a hostile study name shown as text. Any console error fails a test (conftest.py). The
README's screenshot docs/dashboard-study.png is saved from these runs with NOGRAD_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from dashpages import sign_in

BASE = {"task": "trec", "model": "fake:0.1", "budget": 100, "dev_every": 20, "options": {"popsize": 10, "dim": 8}}
SWEEP = {"method": ["bbt", "bbpl"], "seed": [0, 1]}
HOSTILE = "<img src=x onerror=alert(1)>"
SCREENSHOT_MAX_BYTES = 250_000


def _fixed(value: float) -> str:
    # Number.prototype.toFixed(3) rounds the double's exact value half up; Python's format rounds half to even.
    return str(Decimal(value).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def spread(metric: dict | None) -> str:
    """The page's text for a cell's metric summary."""
    if metric is None:
        return "–"
    std = "" if metric["std"] is None else f" ± {_fixed(metric['std'])}"
    return f"{_fixed(metric['mean'])}{std} (n = {metric['n']})"


def create_study(rest, name: str, base: dict = BASE, sweep: dict = SWEEP) -> dict:
    response = rest.post("/v1/studies", json={"name": name, "base": base, "sweep": sweep})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_finished_study_shows_its_cells_curves_and_jobs(page, service, rest, shots):
    study = create_study(rest, "methods x seeds")
    sign_in(page, service, "#/studies")
    page.wait_for_selector(f'#studies tr[data-id="{study["id"]}"]')
    row = [c.strip() for c in page.locator(f'#studies tr[data-id="{study["id"]}"] td').all_inner_texts()]
    assert row[0] == "methods x seeds" and row[1] == "4" and row[3] == "2", row
    page.click(f'#studies tr[data-id="{study["id"]}"] a')
    page.wait_for_url(f"**/#/study/{study['id']}")
    page.wait_for_function("() => document.getElementById('view').dataset.ended === '1'", timeout=120_000)

    done = rest.get(f"/v1/studies/{study['id']}").json()
    assert done["done"] and done["counts"]["succeeded"] == 4, done["counts"]
    assert page.inner_text("#study-title") == "methods x seeds"
    assert "4 succeeded" in page.inner_text("#study-stats") and page.is_hidden("#study-cancel")
    rows = page.locator("#cells tbody tr")
    assert rows.count() == len(done["cells"]) == 2
    for i, cell in enumerate(done["cells"]):
        cells = [c.strip() for c in rows.nth(i).locator("td").all_inner_texts()]
        assert cells[0] == cell["key"] and cells[2] == "2 / 2", cells
        assert cells[3] == spread(cell["dev_metric"]) and cells[4] == spread(cell["test_metric"]), (cells, cell)
        assert cell["test_metric"]["std"] is not None  # two succeeded seeds: a real ± to compare
        links = rows.nth(i).locator("td:nth-child(2) a")
        assert [links.nth(j).get_attribute("href") for j in range(links.count())] == [
            f"#/job/{job_id}" for job_id in cell["job_ids"]
        ]
    best = max(range(2), key=lambda i: done["cells"][i]["test_metric"]["mean"])
    assert page.locator("#cells td.test.best").count() >= 1
    assert "best" in (rows.nth(best).locator("td.test").get_attribute("class") or "")

    # one curve per cell; each ends at the mean of its jobs' best dev metric (what the cells table shows)
    assert page.get_attribute("#c-study", "data-series") == "2"
    assert page.locator("#c-study .u-legend .u-series").count() == 1 + 2  # calls, then the cells
    assert page.locator("#c-study canvas").count() >= 1 and int(page.get_attribute("#c-study", "data-points")) >= 3
    last = page.eval_on_selector("#c-study", "box => JSON.parse(box.dataset.last)")
    assert last == pytest.approx([cell["dev_metric"]["mean"] for cell in done["cells"]])

    page.screenshot(path=str(shots / "dashboard-study.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 720})
    assert (shots / "dashboard-study.png").stat().st_size <= SCREENSHOT_MAX_BYTES

    # a cell's job link opens the job
    first_job = done["cells"][0]["job_ids"][0]
    page.click(f'#cells a[href="#/job/{first_job}"]')
    # the study's view was ended too: wait for the job's own title before its ended flag
    page.wait_for_function("id => document.querySelector('h2')?.innerText === 'Job ' + id", arg=first_job)
    page.wait_for_function("() => document.getElementById('view').dataset.ended === '1'")
    assert page.inner_text("h2") == f"Job {first_job}"

    # the Compare view takes the study: all its jobs, labelled and grouped by cell
    page.goto(page.url.split("#")[0] + f"#/compare?study={study['id']}")
    page.wait_for_selector("#summary td")
    assert page.input_value("#study") == study["id"]
    assert set(page.input_value("#ids").split(",")) == {j for cell in done["cells"] for j in cell["job_ids"]}
    summary = page.locator("#summary tr td:first-child").all_inner_texts()
    assert summary == [cell["key"] for cell in done["cells"]]
    assert page.locator("#c-compare .u-legend .u-series").count() == 1 + 4
    # ... and picking a study from its select does the same
    page.goto(page.url.split("#")[0] + "#/compare")
    page.wait_for_selector("#summary")
    page.select_option("#study", study["id"])
    page.wait_for_url(f"**/#/compare?study={study['id']}")
    page.wait_for_selector("#summary td")


def test_a_running_study_is_cancelled_from_its_page_and_its_name_is_text(page, service, rest):
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    study = create_study(
        rest, HOSTILE, base={**BASE, "method": "bbt", "budget": 20_000, "dev_every": 200}, sweep={"seed": [0, 1]}
    )
    sign_in(page, service, "#/studies")
    link = page.locator(f'#studies tr[data-id="{study["id"]}"] a')
    link.wait_for()
    assert link.inner_text() == HOSTILE and page.locator("#view img").count() == 0
    link.click()
    page.wait_for_selector("#cells tbody tr")
    assert page.inner_text("#study-title") == HOSTILE and page.locator("#view img").count() == 0
    assert page.inner_text("#cells tbody tr td") == "(base)"  # a seeds-only sweep has one cell

    page.wait_for_selector("#study-stats .status-running")
    page.click("#study-cancel")
    page.wait_for_selector("#study-stats[data-done='1']", timeout=60_000)
    assert page.is_hidden("#study-cancel")
    page.wait_for_function("() => document.getElementById('view').dataset.ended === '1'", timeout=60_000)
    after = rest.get(f"/v1/studies/{study['id']}").json()
    assert after["done"] and after["counts"]["cancelled"] == 2, after["counts"]
    assert "2 cancelled" in page.inner_text("#study-stats")
    assert dialogs == []
