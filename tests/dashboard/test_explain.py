"""The job page's "what was learned" panel (explain.js) in real headless Chromium against a real service (fake
model): a soft-prompt job's prompt, its two confusion matrices side by side and its fixed and broken examples; an
icl baseline's demonstrations. Any console error (a CSP refusal included) fails a test (conftest.py)."""

from __future__ import annotations

from dashpages import sign_in
from procs import wait_until


def _finished(rest, **job) -> dict:
    job = rest.post("/v1/jobs", json=job).json()

    def done():
        current = rest.get(f"/v1/jobs/{job['id']}").json()
        assert current["status"] in ("queued", "running", "succeeded"), current
        return current if current["status"] == "succeeded" else None

    return wait_until(done, 120, "the job to finish", interval=0.3)


def _open(page, service, job_id: str) -> None:
    # Signing in opens a stylesheet as a page, for which Chromium may ask for /favicon.ico (a 404). A missing
    # analysis cannot hide behind it: the panel would then never say it explained the job.
    page.expected_statuses.add(404)
    sign_in(page, service, f"#/job/{job_id}")
    page.wait_for_selector("#explain[data-explained='1']")


def test_a_soft_prompt_job_shows_matrices_and_changed_examples(page, service, rest, tmp_path):
    job = _finished(
        rest, method="bbt", task="trec", model="fake:0.1", budget=60, dev_every=30, options={"popsize": 10, "dim": 16}
    )
    analysis = rest.get(f"/v1/jobs/{job['id']}/analysis").json()
    _open(page, service, job["id"])
    assert page.get_attribute("#explain .explain-prompt", "data-kind") == "soft"
    assert "Nearest tokens are not available" in page.inner_text("#explain .explain-prompt")
    matrices = page.locator("#explain .explain-matrix")
    assert matrices.count() == 2
    labels = analysis["labels"]
    assert page.locator("#explain .explain-matrix[data-side='tuned'] tbody tr").count() == len(labels)
    first = page.locator("#explain .explain-matrix[data-side='manual'] tbody tr").first.locator("td")
    assert [int(t) for t in first.all_inner_texts()] == analysis["manual"]["confusion"][0]
    # shades are set through the CSSOM (the CSP refuses style attributes in markup)
    assert page.eval_on_selector("#explain td[data-shade]", "cell => cell.style.backgroundColor").startswith("rgba")
    boxes = [matrices.nth(i).bounding_box() for i in range(2)]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 1 and boxes[1]["x"] > boxes[0]["x"]  # side by side
    fixed = page.locator("#explain .explain-changes[data-kind='fixed'] li")
    assert fixed.count() == len(analysis["changed"]["fixed"]) > 0
    assert analysis["changed"]["fixed"][0]["text"][:20] in fixed.first.inner_text()
    assert f"{analysis['changed']['n_broken']} broken" in page.inner_text(
        "#explain .explain-changes[data-kind='broken'] h4"
    )
    page.screenshot(path=str(tmp_path / "job-explained.png"), full_page=True)


def test_an_icl_baseline_lists_its_demonstrations(page, service, rest):
    job = _finished(rest, method="icl", task="trec", model="fake:0.1", options={"icl_shots": 1})
    _open(page, service, job["id"])
    assert page.get_attribute("#explain .explain-prompt", "data-kind") == "demos"
    assert page.locator("#explain .explain-demos li").count() == 6  # one per trec label
    assert page.locator("#explain .explain-matrix").count() == 2  # the demonstrations vs the template alone
