"""The dashboard in real headless Chromium (Debian's chromium driven by Playwright): enter the key, submit a job
from the form, watch its charts update live, see a field error, open the compare and workers views. Any console
error fails the test (conftest.py); screenshots go to the test's tmp dir."""

from __future__ import annotations


def test_key_submit_live_charts_compare_workers(page, service, tmp_path):
    url, key = service
    page.expected_statuses |= {401, 422}  # the first call without a key; the invalid submission
    page.goto(url + "/")
    page.fill("#key-input", key)  # no key yet: the dashboard asks for one
    page.click("#key button")
    page.wait_for_selector("#jobs")
    page.screenshot(path=str(tmp_path / "jobs-empty.png"))

    page.click("text=Submit")
    page.wait_for_selector("#submit")
    page.click("#sec-advanced summary")  # advanced options are folded away
    assert page.is_hidden("#f-options\\.icl_shots") and page.is_visible("#f-options\\.mode")  # bbt's options
    page.select_option("#f-method", "icl")
    assert page.is_visible("#f-options\\.icl_shots") and page.is_hidden("#f-options\\.mode")
    page.select_option("#f-method", "bbt")
    page.select_option("#f-model", "fake:0.1")
    page.check('input[name="source"][value="dataset"]')
    page.click("#upload-box summary")
    # a dataset upload: the bad one's error shows next to its field, the good one lands in the picker
    bad, good = tmp_path / "bad.csv", tmp_path / "reviews.csv"
    rows = "".join(f"great film {i},pos\nawful film {i},neg\n" for i in range(40))
    bad.write_text("text,label\n" + rows)
    good.write_text("text,label\n" + rows)
    page.set_input_files("#u-file", str(bad))
    page.fill("#u-template", "{text} It was {mask}.")
    page.fill("#u-verbalizer", "neg:bad")
    page.click("#upload-box button")
    page.wait_for_selector('.error[data-field="verbalizer"]:not(:empty)')
    page.set_input_files("#u-file", str(good))
    page.fill("#u-verbalizer", "neg:bad,pos:great")
    page.click("#upload-box button")
    # Predicates are functions: the page's CSP has no 'unsafe-eval', and Playwright evals bare expressions there.
    page.wait_for_function("() => document.getElementById('f-dataset_id').selectedOptions[0]?.text === 'reviews'")
    # 80 rows, 40 per label: the default held-out test split is 20% of each label
    assert "80 rows, 16 held out for test" in page.inner_text("#dataset-hint")

    page.check('input[name="source"][value="task"]')  # the dataset picker is then disabled: a task job
    page.select_option("#f-task", "trec")
    page.fill("#f-budget", "1")  # less than a population: the API's field error shows next to the field
    page.click("#submit-button")
    page.wait_for_selector('.error[data-field="budget"]:not(:empty)')
    assert "popsize" in page.inner_text('.error[data-field="budget"]')

    page.fill("#f-budget", "200")
    page.fill("#f-dev_every", "50")
    page.fill("#f-options\\.popsize", "10")
    page.fill("#f-options\\.dim", "20")
    page.click("#submit-button")
    page.wait_for_url("**/#/job/*")
    page.wait_for_function("() => Number(document.getElementById('view').dataset.generations || 0) >= 3")
    early = int(page.get_attribute("#view", "data-generations"))
    page.screenshot(path=str(tmp_path / "job-running.png"))
    page.wait_for_function("() => document.getElementById('view').dataset.ended === '1'", timeout=120_000)
    assert int(page.get_attribute("#view", "data-generations")) == 20 > early  # the charts kept updating
    assert page.locator(".charts .chart:not([hidden]) .uplot").count() == 4
    page.wait_for_selector("#stats .status-succeeded")
    page.screenshot(path=str(tmp_path / "job-done.png"), full_page=True)

    page.click("text=Jobs")
    page.wait_for_selector("#jobs tbody tr")
    assert page.eval_on_selector("#jobs [data-share]", "bar => bar.style.width") == "100%"  # set from script (CSP)
    page.check("#jobs input[type=checkbox]")
    page.click("#compare-selected")
    page.wait_for_selector("#summary td")
    assert "trec / bbt" in page.inner_text("#summary")
    page.screenshot(path=str(tmp_path / "compare.png"))

    page.click("text=Workers")
    page.wait_for_selector("#workers td")
    assert "fake:0.1" in page.inner_text("#workers")
    page.screenshot(path=str(tmp_path / "workers.png"))


def test_a_wrong_key_shows_the_key_form_again(page, service):
    url, _ = service
    page.expected_statuses.add(401)
    page.goto(url + "/")
    page.fill("#key-input", "ng_wrong_key")
    page.click("#key button")
    page.wait_for_selector("#key-input")
