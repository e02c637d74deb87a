"""`deploy/grafana/nograd.json` reads only metrics the service exposes: every panel's PromQL names series that the
API's registry (`GET /metrics`, embedded worker included) or a worker's registry (`nograd worker --metrics-port`)
actually has after a small job on the fake model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from apiclient import Api
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_api import FAST, make_api

from nograd.service.metrics import WorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "nograd.json"
#: PromQL words that are neither metrics nor followed by "(" (functions and aggregations are).
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
#: What the issue asks the dashboard to show; the titles it uses for them.
REQUIRED = {
    "Queue depth by model",
    "Batch latency (p50, p95)",
    "Jobs by status",
    "Worker utilisation",
    "API latency p95 by route",
    "HTTP error rate",
}


def metric_names(expr: str) -> set[str]:
    """The metric (sample) names a PromQL expression selects: identifiers outside strings, label matchers, range
    brackets and label lists, that are no keyword and not called like a function."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if match.group() not in KEYWORDS and not expr[match.end() :].lstrip().startswith("("):
            names.add(match.group())
    return names


def test_metric_names_finds_the_series_and_nothing_else():
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route!~"x_y", status="5.."}[$__rate_interval])))'
        " / ignoring(route) group_left sum(rate(b_total[5m])) > bool 0 or on (model) c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names("max(nograd_jobs) by (status)") == {"nograd_jobs"}


def _panels() -> list[dict]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]  # rows may hold panels
    return [p for p in panels if p.get("type") != "row"]


def test_the_dashboard_is_importable_and_shows_what_the_issue_asks():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = _panels()
    assert {p["title"] for p in panels} >= REQUIRED
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


@pytest.fixture(scope="module")
def exposed(tmp_path_factory) -> set[str]:
    """Sample names the API registry (after a job, scraped) and a worker's registry (after a batch) expose."""
    client, _ = make_api(tmp_path_factory.mktemp("dashboard"))
    with client:
        api = Api(client, {"alice": client.app.state.store.create_key("alice")}, FAST)
        assert api.wait(api.submit()["id"])["status"] == "succeeded"
        operator = {"Authorization": f"Bearer {client.app.state.operator_key}"}
        assert client.get("/metrics", headers=operator).status_code == 200  # sets the scrape-time gauges
        texts = [generate_latest(client.app.state.metrics.registry).decode()]
    worker = WorkerMetrics()  # what `nograd worker --metrics-port` serves
    worker.serve(["fake"], ["cpu"])
    worker.on_loaded("fake", 0.1)
    worker.on_batch("fake", 0.01)
    texts.append(generate_latest(worker.registry).decode())
    return {s.name for text in texts for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_panel_queries_series_the_service_exposes(exposed):
    for panel in _panels():
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            missing = names - exposed
            assert not missing, f"{panel['title']}: {sorted(missing)} not exposed (exposed: {sorted(exposed)})"
