"""Hardening (issue 12, item 7), through the real app: with auth off only loopback Host names and same-origin
state changes are served (DNS rebinding, CSRF); security headers on every response; /docs from vendored assets
(and working under the CSP in real Chromium); /v1/workers names only the caller's own work; /metrics needs the
operator key; database, key and dataset files are 0600; API keys are listed, revoked and expire, and a revoked
or expired key is refused at its next request."""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from procs import free_port, wait_until

from nograd.cli import main as cli
from nograd.service.api import create_app
from nograd.service.executor import dataset_file
from nograd.service.settings import Settings
from nograd.service.store import Store

ORIGIN = "http://127.0.0.1:8000"
JOB = {"method": "bbt", "task": "trec", "model": "fake", "budget": 40, "options": {"dim": 8, "popsize": 10}}
CSV = "text,label\n" + "".join(f"great movie {i},pos\nawful film {i},neg\n" for i in range(20))
FORM = {"template": "{text} It was {mask}.", "verbalizer": "neg:bad,pos:great"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_client(tmp_path, **overrides) -> TestClient:
    """The app with the fake model, no job runner (submitted jobs stay queued), addressed as 127.0.0.1:8000."""
    options = dict(data_dir=tmp_path / "data", models=["fake"], run_jobs=False, auth=False)
    options.update(overrides)
    return TestClient(create_app(Settings(**options)), base_url=ORIGIN)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def local(tmp_path):
    with make_client(tmp_path) as client:
        yield client


@pytest.fixture
def tenants(tmp_path):
    """Auth on, with keys for alice and bob."""
    with make_client(tmp_path, auth=True) as client:
        store = client.app.state.store
        client.keys = {t: {"Authorization": f"Bearer {store.create_key(t)}"} for t in ("alice", "bob")}
        yield client


# ------------------------------------------------------------------ auth off: DNS rebinding and CSRF
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io:8000", "localhost.evil:80"])
def test_auth_off_refuses_foreign_host_names(local, host):
    for method, path, kw in (("GET", "/v1/jobs", {}), ("GET", "/", {}), ("POST", "/v1/jobs", {"json": JOB})):
        response = local.request(method, path, headers={"Host": host}, **kw)
        assert response.status_code == 421, (method, path, response.text)
        assert "DNS-rebinding" in response.json()["detail"] and host in response.json()["detail"]
    assert local.app.state.store.list_jobs(None)[1] == 0


def test_auth_off_serves_loopback_names_on_any_port(local):
    for host in ("localhost", "localhost:8000", "LOCALHOST:1234", "127.0.0.1", "127.0.0.1:9", "[::1]", "[::1]:8000"):
        assert local.get("/v1/jobs", headers={"Host": host}).status_code == 200, host
    for host in ("localhost:port", "user@localhost", "localhost/x"):
        response = local.get("/v1/jobs", headers={"Host": host})
        assert response.status_code == 400 and "Host" in response.json()["detail"], host


def test_auth_off_refuses_cross_origin_state_changes(local):
    store = local.app.state.store
    foreign = (
        {"Origin": "http://evil.example"},
        {"Origin": "http://localhost:8000"},  # another origin of this machine (Host says 127.0.0.1:8000)
        {"Origin": "http://127.0.0.1:8001"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": ORIGIN},
    )
    for headers in foreign:
        response = local.post("/v1/jobs", json=JOB, headers=headers)
        assert response.status_code == 403 and "cross-origin" in response.json()["detail"], headers
        upload = local.post("/v1/datasets", files={"file": ("r.csv", CSV)}, data=FORM, headers=headers)
        assert upload.status_code == 403, (headers, upload.text)
        assert local.post("/v1/secrets", json={"name": "k", "value": "v"}, headers=headers).status_code == 403
        assert local.delete("/v1/secrets/k", headers=headers).status_code == 403
    assert store.list_jobs(None)[1] == 0 and store.list_datasets(None)[1] == 0 and store.list_secrets("local") == []
    # Same-origin pages (the dashboard) and clients that send no Origin (curl, the SDK) may change state; reads
    # from anywhere are fine (the same-origin policy keeps their answers from a foreign page).
    same = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}
    assert local.post("/v1/jobs", json=JOB, headers=same).status_code == 201
    assert local.post("/v1/jobs", json=JOB).status_code == 201
    assert local.post("/v1/datasets", files={"file": ("r.csv", CSV)}, data=FORM, headers=same).status_code == 201
    assert local.get("/v1/jobs", headers={"Origin": "http://evil.example"}).json()["count"] == 2


def test_auth_on_checks_the_key_not_the_origin(tenants):
    # A bearer key is never attached by the browser on its own: a foreign page cannot act as the tenant.
    response = tenants.post("/v1/jobs", json=JOB, headers={**tenants.keys["alice"], "Origin": "http://evil.example"})
    assert response.status_code == 201
    assert tenants.post("/v1/jobs", json=JOB, headers={"Origin": ORIGIN}).status_code == 401
    assert tenants.get("/v1/jobs", headers={**tenants.keys["bob"], "Host": "nograd.example.com"}).status_code == 200


# ------------------------------------------------------------------ headers and docs
def _assert_security_headers(response) -> None:
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["frame-ancestors"] == "'none'" and directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in policy and "http" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_security_headers_on_every_response(local, tenants):
    for path in ("/", "/v1/jobs", "/static/app.js", "/static/vendor/uPlot.min.css", "/docs", "/openapi.json"):
        response = local.get(path)
        assert response.status_code == 200, path
        _assert_security_headers(response)
    _assert_security_headers(local.get("/nope"))  # 404
    _assert_security_headers(local.get("/v1/jobs", headers={"Host": "evil.example"}))  # 421
    _assert_security_headers(local.post("/v1/jobs", json={"method": "bbt"}))  # 422
    _assert_security_headers(tenants.get("/v1/jobs"))  # 401 from the route
    _assert_security_headers(tenants.post("/v1/jobs", json=JOB))  # 401 before the body is read
    assert local.get("/static/app.js").headers["content-type"].split(";")[0] in (
        "text/javascript",
        "application/javascript",
    )


def test_docs_are_served_from_this_app(local):
    page = local.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert re.findall(r"https?://", page.text) == []  # no CDN, no third party sees the page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {"/static/vendor/swagger-ui-bundle.js", "/static/vendor/swagger-ui.css", "/static/docs.js"} <= set(assets)
    for asset in assets:
        response = local.get(asset)
        assert response.status_code == 200 and len(response.content) > 100, asset
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline for the CSP to refuse
    assert local.get("/redoc").status_code == 404  # no offline ReDoc: off rather than from a CDN


@contextmanager
def live(app):
    """`app` served by uvicorn in a thread on a free port (stopped on exit)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "uvicorn")
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_docs_work_under_the_policy_in_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed (scripts/setup.sh test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    settings = Settings(data_dir=tmp_path / "data", models=["fake"], run_jobs=False, auth=False)
    errors, foreign = [], []
    with live(create_app(settings)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((url, "data:")) else foreign.append(r.url))
            page.goto(url + "/docs")
            page.wait_for_selector("#operations-jobs-create_job, .opblock", timeout=20_000)
            page.click(".opblock-summary >> nth=0")  # expand an operation: React renders it under the policy
            page.wait_for_selector(".opblock-body", timeout=10_000)
            assert page.locator(".opblock").count() >= 10
        finally:
            browser.close()
    assert errors == [] and foreign == [], (errors, foreign)


# ------------------------------------------------------------------ leaks: workers and metrics
def test_workers_show_other_tenants_work_only_as_busy(tenants):
    job = tenants.post("/v1/jobs", json=JOB, headers=tenants.keys["alice"]).json()
    status = {
        "id": "gpu-box-7-4242-a1b2c3",
        "host": "gpu-box-7",
        "pid": 4242,
        "models": {"fake": {}},
        "devices": ["cuda:0"],
        "batches_done": 3,
        "errors": 0,
        "busy_seconds": 1.5,
        "current": f"{job['id']}/2",
        "started_at": time.time() - 10,
        "last_heartbeat": time.time(),
    }
    tenants.portal.call(tenants.app.state.queue.heartbeat, status, 60.0)
    seen = {}
    for tenant in ("alice", "bob"):
        response = tenants.get("/v1/workers", headers=tenants.keys[tenant])
        assert response.status_code == 200
        assert "gpu-box-7" not in response.text  # not as host, not inside the worker's id
        assert all("host" not in w and "pid" not in w and 4242 not in w.values() for w in response.json())
        seen[tenant] = next(w for w in response.json() if w["devices"] == ["cuda:0"])
    assert seen["alice"]["current"] == f"{job['id']}/2"
    assert (
        seen["bob"]["current"] == "busy"
        and job["id"] not in tenants.get("/v1/workers", headers=tenants.keys["bob"]).text
    )
    assert seen["alice"]["id"] == seen["bob"]["id"]  # a stable handle for the dashboard's batches/s
    idle = [w for w in tenants.get("/v1/workers", headers=tenants.keys["bob"]).json() if w["devices"] != ["cuda:0"]]
    assert idle and all(w["current"] is None for w in idle)  # the embedded worker, idle


def test_metrics_need_the_operator_key(tenants, tmp_path):
    job = tenants.post("/v1/jobs", json=JOB, headers=tenants.keys["alice"]).json()
    key_file = tmp_path / "data" / "operator.key"
    assert mode(key_file) == 0o600
    operator = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    assert tenants.get("/metrics").status_code == 401
    assert tenants.get("/metrics", headers=tenants.keys["alice"]).status_code == 401  # a tenant key is not enough
    assert tenants.get("/metrics", headers={"Authorization": "Bearer ngop_wrong"}).status_code == 401
    response = tenants.get("/metrics", headers=operator)
    assert response.status_code == 200 and 'nograd_jobs{status="queued"} 1.0' in response.text
    assert "alice" not in response.text and job["id"] not in response.text  # labels carry no tenant data
    with make_client(tmp_path / "other", operator_key="op-from-settings") as client:
        assert client.get("/metrics", headers={"Authorization": "Bearer op-from-settings"}).status_code == 200
        assert client.get("/metrics").status_code == 401  # auth off too: metrics are the operator's
    assert not (tmp_path / "other" / "data" / "operator.key").exists()


# ------------------------------------------------------------------ file modes
def test_database_key_and_dataset_files_are_owner_only(tmp_path):
    previous = os.umask(0o022)  # the usual umask: without care, files come out world-readable
    try:
        data = tmp_path / "data"
        with make_client(tmp_path) as client:
            client.post("/v1/jobs", json=JOB)
            store = client.app.state.store
            dataset = store.create_dataset(
                tenant="local", name="r", filename="r.csv", options={}, summary={}, content=CSV.encode()
            )
            path = dataset_file(store, data, dataset["id"])
            assert path.read_text() == CSV
            files = [data / n for n in ("nograd.db", "nograd.db-wal", "nograd.db-shm", "secrets.key", "operator.key")]
            assert {f.name: mode(f) for f in [*files, path]} == {f.name: 0o600 for f in [*files, path]}
            assert mode(data) == mode(path.parent) == 0o700  # a new data dir, and the datasets in it
        # A database created world-readable (by nograd 0.1) is made owner-only when it is opened.
        old = tmp_path / "old.db"
        old.touch(mode=0o644)
        os.chmod(old, 0o644)
        Store(f"sqlite:///{old}").close()
        assert mode(old) == 0o600
    finally:
        os.umask(previous)


# ------------------------------------------------------------------ key lifecycle
def test_keys_list_revoke_and_expiry_through_the_cli_and_the_api(tmp_path, capsys):
    data = str(tmp_path / "data")
    assert (
        cli(["keys", "create", "--tenant", "alice", "--name", "laptop", "--expires-in", "30", "--data-dir", data]) == 0
    )
    alice = capsys.readouterr().out.strip()
    assert cli(["keys", "create", "--tenant", "bob", "--data-dir", data]) == 0
    bob = capsys.readouterr().out.strip()
    assert re.fullmatch(r"ng_[0-9a-f]{12}_\S+", alice) and "\n" not in bob  # the key alone on stdout, as before
    alice_id, bob_id = alice.split("_")[1], bob.split("_")[1]

    assert cli(["keys", "list", "--data-dir", data]) == 0
    listing = capsys.readouterr().out
    header, *rows = listing.splitlines()
    assert header.split() == ["id", "tenant", "name", "created", "expires", "revoked"] and len(rows) == 2
    assert rows[0].split()[:3] == [alice_id, "alice", "laptop"] and rows[1].split()[:3] == [bob_id, "bob", "-"]
    store = Store(f"sqlite:///{tmp_path / 'data' / 'nograd.db'}")
    (listed,) = store.list_keys("alice")
    assert set(listed) == {"id", "tenant", "name", "created_at", "expires_at", "revoked_at"}  # never the hash
    assert abs(listed["expires_at"] - (time.time() + 30 * 86400)) < 60
    assert time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(listed["expires_at"])) == rows[0].split()[4]
    assert alice not in listing and alice.split("_", 2)[2] not in listing
    assert cli(["keys", "list", "--tenant", "bob", "--data-dir", data]) == 0
    assert [r.split()[0] for r in capsys.readouterr().out.splitlines()[1:]] == [bob_id]

    settings = Settings(data_dir=tmp_path / "data", models=["fake"], run_jobs=False)
    with TestClient(create_app(settings), base_url=ORIGIN) as client:
        as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
        assert client.get("/v1/jobs", headers=as_alice).status_code == 200
        assert client.post("/v1/jobs", json=JOB, headers=as_alice).status_code == 201
        assert cli(["keys", "revoke", alice_id, "--data-dir", data]) == 0
        assert "alice" in capsys.readouterr().err
        # Refused at once, before a body is read and by every route; bob's key still works.
        assert client.get("/v1/jobs", headers=as_alice).status_code == 401
        assert client.post("/v1/jobs", json=JOB, headers=as_alice).status_code == 401
        assert client.get("/v1/jobs", headers=as_bob).status_code == 200
        expired = store.create_key("carol", expires_at=time.time() - 1)
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    assert cli(["keys", "list", "--tenant", "alice", "--data-dir", data]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] != "-"  # the revocation time
    first = store.list_keys("alice")[0]["revoked_at"]
    assert (
        cli(["keys", "revoke", alice_id, "--data-dir", data]) == 0
        and store.list_keys("alice")[0]["revoked_at"] == first
    )
    store.close()

    assert cli(["keys", "revoke", "nosuchkey", "--data-dir", data]) == 2
    assert "no API key with id 'nosuchkey'" in capsys.readouterr().err
    assert cli(["keys", "create", "--tenant", "x", "--expires-in", "0", "--data-dir", data]) == 2
    assert "--expires-in must be a positive" in capsys.readouterr().err
