"""A service job with `options.racing` races like `nograd run`: succeeded within its budget, whole calls in the job's
`calls` column, fractional calls and each generation's rounds in the history; a job racing cannot run is a 422
naming options.racing."""

from __future__ import annotations

import math

from apiclient import Api
from test_api import make_api


def test_a_service_job_races_within_its_budget(tmp_path):
    client, _ = make_api(tmp_path)
    with client:
        api = Api(client, {"alice": client.app.state.store.create_key("alice")})
        # trec: 96 training examples; a race of 10 costs 5.25 calls, so 30 calls are 5 races and a truncated one
        job = api.submit(
            method="bbt",
            task="trec",
            model="fake",
            budget=30,
            dev_every=10,
            options={"popsize": 10, "dim": 8, "racing": True},
        )
        done = api.wait(job["id"])
        assert done["status"] == "succeeded", done["error"]
        assert done["config"]["racing"] is True
        history = api("GET", f"/v1/jobs/{job['id']}/history").json()["data"]
        searched = [entry for entry in history if "initial" not in entry]
        assert [entry["racing"]["rounds"] for entry in searched[:5]] == [[[10, 24], [5, 24], [3, 48]]] * 5
        assert [entry["calls"] for entry in searched[:5]] == [5.25, 10.5, 15.75, 21, 26.25]
        spent = sum(entry["racing"]["example_evals"] for entry in searched)
        assert spent <= 30 * 96 and 30 * 96 - spent < 96
        assert done["result"]["calls"] == spent / 96 and done["calls"] == math.ceil(spent / 96) == 30
        bad = api(
            "POST",
            "/v1/jobs",
            json={"method": "bbt", "task": "trec", "model": "fake", "options": {"popsize": 3, "racing": True}},
        )
        assert bad.status_code == 422 and "options.racing" in bad.text and "popsize >= 4" in bad.text
