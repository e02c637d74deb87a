"""Tenant quotas and fairness (issue 12, item 4) and the takeover limit: runner slots shared round-robin across
tenants under a per-tenant running cap (also with several runners at once), 429 + Retry-After past the queued-jobs
and event-stream quotas, the dataset storage quota and dataset deletion, event streams served from one shared poll
per job (replay after Last-Event-ID without duplicates, slow consumers cut off, prompt end on shutdown), and a job
whose runner keeps dying failed after `max_takeovers` takeovers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from apiclient import Api
from fastapi.testclient import TestClient

from nograd.service.api import create_app
from nograd.service.api.streams import JobStreams
from nograd.service.executor import JobExecutor
from nograd.service.queue import queue_from_settings
from nograd.service.settings import Settings
from nograd.service.store import Status, Store

JOB = {"method": "bbt", "task": "trec", "model": "fake", "budget": 40, "dev_every": 20}
JOB["options"] = {"dim": 8, "popsize": 10}
CSV = "text,label\n" + "".join(f"great movie number {i},pos\nawful film number {i},neg\n" for i in range(40))
FORM = {"template": "{text} It was {mask}.", "verbalizer": "neg:bad,pos:great"}


def _job(store, tenant="alice"):
    return store.create_job(
        tenant=tenant, method="bbt", task="mr", dataset_id=None, model="fake", config={}, budget=10
    )["id"]


def _running(store, tenant):
    return store.list_jobs(tenant, status="running")[1]


@pytest.fixture
def make_api(tmp_path):
    """`make_api(**settings)` -> a started app (fake model, embedded worker); every one is stopped afterwards."""
    clients = []

    def make(**settings):
        options = dict(data_dir=tmp_path / "data", models=["fake"], auth=True, lease_seconds=2.0)
        client = TestClient(create_app(Settings(**{**options, **settings})))
        client.__enter__()
        clients.append(client)
        client.app.state.events_poll = 0.05
        return Api(client, {name: client.app.state.store.create_key(name) for name in ("alice", "bob")}, JOB)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _lines(lines_of, until: str, limit: int = 10_000) -> list[str]:
    """Lines of an event stream (the iterator of its lines, kept by the caller: a response's line iterator that
    is dropped closes the response) up to and including the first line starting with `until`."""
    lines = []
    for line in lines_of:
        lines.append(line)
        if line.startswith(until) or len(lines) >= limit:
            break
    return lines


# ------------------------------------------------------------------ fair share of runner slots
def test_claims_are_round_robin_across_tenants_oldest_first(store):
    alice = [_job(store, "alice") for _ in range(16)]
    bob = _job(store, "bob")
    first = [j["id"] for j in store.claim_jobs("r1", 30, 2, tenant_running=4)]
    assert first == [alice[0], bob]  # bob's one job does not wait behind alice's sixteen
    # alice alone now: up to her cap of 4 over every runner, oldest first; the rest stay queued
    assert [j["id"] for j in store.claim_jobs("r2", 30, 16, tenant_running=4)] == alice[1:4]
    assert store.claim_jobs("r3", 30, 16, tenant_running=4) == []
    assert _running(store, "alice") == 4 and store.count_jobs("alice", Status.queued) == 12
    # one of hers ends: the slot goes to her oldest queued job; a job handed back is claimable again
    assert store.finish_job(alice[0], "r1", Status.succeeded)
    store.release(alice[1], "r2")
    assert [j["id"] for j in store.claim_jobs("r3", 30, 16, tenant_running=4)] == [alice[1], alice[4]]


def test_fewest_running_tenant_goes_first(store):
    for _ in range(3):
        _job(store, "alice")
    store.claim_jobs("r1", 30, 2)  # alice: 2 running
    carol, bob = _job(store, "carol"), _job(store, "bob")
    claimed = store.claim_jobs("r2", 30, 3, tenant_running=4)
    # carol and bob (0 running) before alice's third job; between them the older job first
    assert [j["tenant"] for j in claimed] == ["carol", "bob", "alice"] and claimed[0]["id"] == carol
    assert claimed[1]["id"] == bob


def test_concurrent_runners_never_pass_a_tenants_cap(store):
    for _ in range(30):
        _job(store, "alice")
    barrier, counts = threading.Barrier(6), []

    def claim(name):
        barrier.wait()
        counts.append(len(store.claim_jobs(name, 30, 5, tenant_running=3)))

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(counts) == 3 and _running(store, "alice") == 3


def test_the_cap_holds_when_runners_claim_different_jobs_at_the_same_instant(store):
    """The race a count-then-claim would lose: eight claims of eight different jobs of one tenant in flight at
    once (the claiming UPDATE itself, as each runner's `claim_jobs` issues it)."""
    ids = [_job(store, "alice") for _ in range(8)]
    barrier, won = threading.Barrier(len(ids)), []

    def claim(job_id):
        barrier.wait()
        if store._claim(job_id, "alice", f"runner-{job_id}", time.time(), 30, 3) is not None:
            won.append(job_id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 3 and _running(store, "alice") == 3


def test_app_runner_shares_its_slots_and_caps_each_tenant(make_api):
    api = make_api(models=["fake:0.01"], max_concurrent_jobs=2, tenant_running_jobs=4)
    alice = [api.submit(model="fake:0.01", seed=s, budget=20)["id"] for s in range(16)]
    bob = api.submit("bob", model="fake:0.01", budget=20)["id"]
    jobs = {i: api.wait(i, timeout=120) for i in alice}
    bob_job = api.wait(bob, "bob", timeout=120)
    assert all(j["status"] == "succeeded" for j in [*jobs.values(), bob_job])
    later = [j for j in jobs.values() if j["started_at"] > bob_job["started_at"]]
    assert len(later) >= 8, "bob's job waited for alice's queue to drain"

    capped = make_api(data_dir=api.client.app.state.settings.data_dir.parent / "capped", tenant_running_jobs=1)
    ids = [capped.submit(seed=s, budget=20)["id"] for s in range(3)]
    spans = sorted((j["started_at"], j["finished_at"]) for j in (capped.wait(i) for i in ids))
    # one at a time (a claim reads the clock just before it counts: allow that instant)
    assert all(a[1] <= b[0] + 0.05 for a, b in zip(spans, spans[1:], strict=False)), spans


# ------------------------------------------------------------------ takeover limit
def test_a_job_whose_runner_keeps_dying_is_failed_after_max_takeovers(store):
    job = _job(store)
    for n in range(4):  # first claim + 3 takeovers, each runner "dies" (never renews its short lease)
        (claimed,) = store.claim_jobs(f"dead{n}", 0.05, 1, max_takeovers=3)
        assert claimed["id"] == job and claimed["takeovers"] == n
        time.sleep(0.08)
    assert store.claim_jobs("next", 30, 1, max_takeovers=3) == []
    failed = store.get_job(job)
    assert failed["status"] == "failed" and failed["lease_owner"] is None
    assert "the runner died 4 times while running this job" in failed["error"]
    assert "max_job_memory_mb" in failed["error"]


def test_jobs_handed_back_cleanly_are_not_takeovers(store):
    job = _job(store)
    for n in range(5):
        store.claim_jobs(f"r{n}", 30, 1, max_takeovers=1)
        store.release(job, f"r{n}", "runner stopped")
    assert store.claim_jobs("r", 30, 1, max_takeovers=1)[0]["takeovers"] == 0


def test_the_app_runner_fails_a_job_past_its_takeovers(make_api, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models=["fake"], max_takeovers=1)
    settings.data_dir.mkdir(parents=True)
    store = Store(settings.db_url)
    try:
        runner = JobExecutor.from_settings(store, queue_from_settings(settings), settings)
        assert (runner.max_takeovers, runner.tenant_running_jobs) == (1, settings.tenant_running_jobs)
        job = _job(store)
        for name in ("dead1", "dead2"):  # first claim + the one takeover allowed; both runners die
            assert store.claim_jobs(name, 0.05, 1)
            time.sleep(0.08)
    finally:
        store.close()
    api = make_api(max_takeovers=1)
    failed = api.wait(job)
    assert failed["status"] == "failed" and "runner died 2 times" in failed["error"]


# ------------------------------------------------------------------ queued jobs and streams: 429
def test_queued_jobs_past_the_quota_are_429_with_retry_after(make_api):
    api = make_api(run_jobs=False, tenant_queued_jobs=3)
    for seed in range(3):
        api.submit(seed=seed)
    refused = api("POST", "/v1/jobs", json=JOB)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "tenant_queued_jobs" in refused.json()["detail"] and "NOGRAD_TENANT_QUEUED_JOBS" in refused.json()["detail"]
    api.submit("bob")  # another tenant's quota is its own
    job = api("GET", "/v1/jobs", params={"status": "queued"}).json()["data"][0]
    assert api("POST", f"/v1/jobs/{job['id']}/cancel").status_code == 200
    api.submit()  # one fewer queued: room again


def test_streams_past_the_quota_are_429_and_slots_come_back(make_api):
    api = make_api(run_jobs=False, tenant_streams=2)
    job = api.submit()["id"]
    with api.stream(job) as one, api.stream(job) as two:
        held = [one.iter_lines(), two.iter_lines()]
        assert all(_lines(lines, "event: job") for lines in held)
        refused = api("GET", f"/v1/jobs/{job}/events")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "tenant_streams" in refused.json()["detail"]
        bob_job = api.submit("bob")["id"]
        with api.stream(bob_job, "bob") as bobs:
            assert bobs.status_code == 200
    assert api.client.app.state.job_streams.open_streams == {}
    with api.stream(job) as again:  # closed streams gave their slots back
        lines = again.iter_lines()
        assert again.status_code == 200 and _lines(lines, "event: job")
    assert api("GET", "/v1/jobs/job_nope/events").status_code == 404
    assert api.client.app.state.job_streams.open_streams == {}  # a 404 holds no slot


# ------------------------------------------------------------------ dataset storage
def test_storage_quota_is_429_until_datasets_are_deleted(make_api):
    api = make_api(run_jobs=False, tenant_storage_mb=2.5 * len(CSV) / 2**20)

    def upload(tenant="alice"):
        return api("POST", "/v1/datasets", tenant, files={"file": ("reviews.csv", CSV)}, data=FORM)

    first, second = upload().json(), upload().json()
    refused = upload()
    assert refused.status_code == 429 and "tenant_storage_mb" in refused.json()["detail"]
    assert "DELETE /v1/datasets" in refused.json()["detail"] and "Retry-After" not in refused.headers
    assert upload("bob").status_code == 201
    job = api.submit(task=None, dataset_id=first["id"], k_shot=8)
    busy = api("DELETE", f"/v1/datasets/{first['id']}")
    assert busy.status_code == 409 and job["id"] in busy.json()["detail"]  # a queued job uses it
    assert api("DELETE", f"/v1/datasets/{second['id']}", "bob").status_code == 404  # not bob's
    assert api("DELETE", f"/v1/datasets/{second['id']}").status_code == 204
    assert api("GET", f"/v1/datasets/{second['id']}").status_code == 404
    assert upload().status_code == 201


# ------------------------------------------------------------------ one shared poll per job
class Counting:
    """The real store, counting the calls the event streams make."""

    def __init__(self, store: Store):
        self.store, self.calls = store, {"get_job": 0, "history": 0}
        for name in self.calls:
            setattr(self, name, self._counted(name))

    def _counted(self, name):
        method = getattr(self.store, name)

        def call(*args, **kw):
            self.calls[name] += 1
            return method(*args, **kw)

        return call

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_many_streams_on_one_job_share_one_poll(make_api):
    api = make_api(run_jobs=False)
    job = api.submit()["id"]
    counting = Counting(api.store)
    api.client.app.state.store = counting  # what the routes and the streams' registry read
    streams = [api.stream(job) for _ in range(12)]
    try:
        responses = [s.__enter__() for s in streams]
        held = [response.iter_lines() for response in responses]
        for lines in held:
            assert _lines(lines, "event: job")  # subscribed, replayed, snapshot sent
        before = dict(counting.calls)
        time.sleep(1.0)
        polls = {name: counting.calls[name] - before[name] for name in before}
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    # one poll every 0.05 s for all twelve streams (about 20 in a second), not twelve of them (about 240)
    assert 3 <= polls["get_job"] <= 30 and 3 <= polls["history"] <= 30, polls


def test_stream_with_last_event_id_replays_then_follows_without_duplicates(make_api):
    api = make_api(models=["fake:0.02"])
    job = api.submit(model="fake:0.02", budget=80)["id"]
    with api.stream(job) as first:
        lines = first.iter_lines()
        head = _lines(lines, "id: 2")  # the job is under way
        with api.stream(job, **{"Last-Event-ID": "1"}) as second:
            resumed = [int(line[3:]) for line in _lines(second.iter_lines(), "event: end") if line.startswith("id:")]
        rest = _lines(lines, "event: end")
    ids = [int(line[3:]) for line in head + rest if line.startswith("id:")]
    assert ids == list(range(9)), ids  # 80 calls: the initial entry + 8 generations of 10
    assert resumed == list(range(2, 9)), resumed


def test_a_replay_overlapping_the_shared_updates_sends_each_generation_once(tmp_path):
    """Force the race: a generation written during a stream's replay reaches it both ways; it is sent once."""
    store = Store(f"sqlite:///{tmp_path / 'nograd.db'}")
    job_id = _job(store)
    store.claim_jobs("r", 30, 1)
    for g in range(3):
        store.save_progress(job_id, "r", checkpoint="{}", entry={"generation": g})
    streams = JobStreams(store, poll=0.02)
    replay = store.history

    def slow_history(job, after=-1):
        if after == 0:  # the second stream's replay: gen 3 lands now, the shared poll fans it out meanwhile
            store.save_progress(job_id, "r", checkpoint="{}", entry={"generation": 3})
            time.sleep(0.2)
        return replay(job, after)

    store.history = slow_history

    async def follow(after):
        """The ids a stream sends until its `end` (a chunk may hold several events)."""
        ids = []
        async for chunk in streams.response(store.get_job(job_id), after, streams.reserve("alice")).body_iterator:
            text = chunk.decode() if isinstance(chunk, bytes) else chunk
            ids += [int(line[3:]) for line in text.split("\n") if line.startswith("id:")]
        return ids

    async def main():
        first = asyncio.create_task(follow(-1))
        await asyncio.sleep(0.1)  # the first stream has its poll running
        second = asyncio.create_task(follow(0))
        await asyncio.sleep(0.5)  # its replay is over
        await asyncio.to_thread(store.finish_job, job_id, "r", Status.succeeded)
        return await asyncio.wait_for(first, 5), await asyncio.wait_for(second, 5)

    try:
        first, second = asyncio.run(main())
    finally:
        store.close()
    assert first == [0, 1, 2, 3] and second == [1, 2, 3]
    assert streams.open_streams == {}


def test_a_slow_stream_is_told_to_reconnect_and_a_stopping_app_ends_streams(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'nograd.db'}")
    job_id = _job(store)
    store.claim_jobs("r", 30, 1)

    async def main():
        stopping = asyncio.Event()
        streams = JobStreams(store, poll=0.02, queue_size=4, stopping=stopping)
        slow = streams.response(store.get_job(job_id), -1, streams.reserve("alice")).body_iterator
        assert (await anext(slow)).startswith("event: job")  # then it reads nothing for a while
        for g in range(10):  # one generation per poll: ten updates queued for it
            await asyncio.to_thread(store.save_progress, job_id, "r", checkpoint="{}", entry={"generation": g})
            await asyncio.sleep(0.05)
        behind = [text async for text in slow]
        quiet = streams.response(store.get_job(job_id), 9, streams.reserve("alice")).body_iterator
        assert (await anext(quiet)).startswith("event: job")
        pending = asyncio.ensure_future(anext(quiet))
        await asyncio.sleep(0.05)  # waiting for updates
        started = time.monotonic()
        stopping.set()
        last = await asyncio.wait_for(pending, 2)
        seconds = time.monotonic() - started
        assert [text async for text in quiet] == []  # it ended there
        return behind, last, seconds, streams

    try:
        behind, last, seconds, streams = asyncio.run(main())
    finally:
        store.close()
    # at most queue_size updates were held for it; it ends with where to resume (it saw no generation yet)
    assert len(behind) == 1 and "fell behind" in behind[0] and "Last-Event-ID: -1" in behind[0]
    assert "shutting down" in last and seconds < 1.0
    assert streams.open_streams == {} and streams._pollers == {}
