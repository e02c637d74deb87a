"""A service job with `patience` stops early like `nograd run`: succeeded, calls below budget, why in the result and
the last history record; a bad value is a 422 naming the field."""

from __future__ import annotations

from apiclient import Api
from test_api import make_api


def test_a_service_job_stops_early_too(tmp_path):
    client, _ = make_api(tmp_path)
    with client:
        api = Api(client, {"alice": client.app.state.store.create_key("alice")})
        job = api.submit(
            method="bbt",
            task="trec",
            model="fake",
            budget=5000,
            dev_every=10,
            patience=2,
            options={"popsize": 10, "dim": 8},
        )
        done = api.wait(job["id"])
        assert done["status"] == "succeeded" and done["calls"] < 5000
        assert done["result"]["stopped"] == "no better dev metric in 2 dev rounds"
        assert done["result"]["unused_budget"] == 5000 - done["calls"]
        history = api("GET", f"/v1/jobs/{job['id']}/history").json()["data"]
        assert history[-1]["stopped"] == done["result"]["stopped"]
        bad = api("POST", "/v1/jobs", json={"method": "bbt", "task": "trec", "model": "fake", "patience": 0})
        assert bad.status_code == 422 and "patience" in bad.text
