"""The store on SQLite and on PostgreSQL (a fresh database; skipped without a server): leases and fencing,
cancel, tenancy, keys."""

from __future__ import annotations

import sys
import time
import types

import pytest

from nograd.service.store import JobStateError, Status


def _job(store, tenant="alice", **kw):
    return store.create_job(
        tenant=tenant, method="bbt", task="mr", dataset_id=None, model="fake", config={"budget": 10}, budget=10, **kw
    )


def test_claim_is_exclusive_and_fenced_by_the_lease(store, monkeypatch):
    # the store's clock is moved by hand: a real 0.5 s lease could expire between two calls on a loaded machine
    now = [time.time()]
    clock = types.SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(sys.modules[type(store).__module__], "time", clock)
    job = _job(store)
    assert [j["id"] for j in store.claim_jobs("a", 0.5, 5)] == [job["id"]]
    now[0] += 0.4
    assert store.claim_jobs("b", 0.5, 5) == []  # leased
    assert store.save_progress(job["id"], "a", checkpoint={"g": 1}, entry={"generation": 0}, calls=5)
    assert not store.save_progress(job["id"], "b", checkpoint={"g": 9}, entry=None)
    now[0] += 0.2
    taken = store.claim_jobs("b", 5, 5)  # a's lease expired: b resumes from a's checkpoint
    assert taken[0]["checkpoint"] == '{"g": 1}' and taken[0]["calls"] == 5
    assert not store.save_progress(job["id"], "a", checkpoint={"g": 2}, entry=None)  # a is fenced out
    assert store.renew_leases("a", [job["id"]], 5) == set()
    assert store.renew_leases("b", [job["id"]], 5) == {job["id"]}
    assert not store.finish_job(job["id"], "a", Status.succeeded)
    assert store.finish_job(job["id"], "b", Status.succeeded, result={"ok": 1}, artifact=b"prompt")
    assert store.get_job(job["id"])["status"] == "succeeded" and store.artifact(job["id"]) == b"prompt"
    assert store.claim_jobs("c", 5, 5) == []


def test_history_is_idempotent_per_generation(store):
    job = _job(store)
    store.claim_jobs("a", 5, 1)
    for entry in ({"generation": 0, "v": 1}, {"generation": 1, "v": 1}, {"generation": 1, "v": 2}):
        store.save_progress(job["id"], "a", checkpoint="{}", entry=entry)
    assert store.history(job["id"]) == [{"generation": 0, "v": 1}, {"generation": 1, "v": 2}]
    assert store.history(job["id"], after=0) == [{"generation": 1, "v": 2}]


def test_cancel(store):
    queued, running = _job(store), _job(store)
    store.claim_jobs("a", 5, 1)  # the oldest (queued) job is claimed first
    assert store.request_cancel(queued["id"], "alice")["cancel_requested"]
    assert store.get_job(queued["id"])["status"] in ("cancelled", "running")
    with pytest.raises(JobStateError):
        store.request_cancel(queued["id"], "alice")
    assert store.request_cancel(running["id"], "bob") is None  # another tenant's job
    job = store.request_cancel(running["id"], "alice")
    assert job["status"] == "cancelled" and store.get_job(running["id"])["cancel_requested"]


def test_tenancy_and_paging(store):
    for _ in range(3):
        _job(store, "alice")
    _job(store, "bob")
    rows, count = store.list_jobs("alice", limit=2)
    assert count == 3 and len(rows) == 2 and {r["tenant"] for r in rows} == {"alice"}
    assert store.get_job(rows[0]["id"], "bob") is None
    assert store.count_by_status()["queued"] == 4
    dataset = store.create_dataset(tenant="alice", name="d", filename="d.csv", options={}, summary={}, content=b"x")
    assert store.get_dataset(dataset["id"], "bob") is None
    assert store.list_datasets("bob") == ([], 0)


def test_keys_hashed_and_checked(store):
    key = store.create_key("alice")
    assert store.tenant_for_key(key) == "alice"
    assert store.tenant_for_key(key + "x") is None
    assert store.tenant_for_key("ng_unknown_secret") is None
    assert store.tenant_for_key("garbage") is None
