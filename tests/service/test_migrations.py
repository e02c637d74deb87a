"""Schema migrations (`nograd.service.migrations`, `nograd db`): a new database is created at head, the revisions
lead to exactly the tables `create_all` makes (SQLite and PostgreSQL), a store written by nograd 0.1
(tests/fixtures/nograd-v0.1.db, made by tests/fixtures/make_nograd_v0_1_db.py) is refused by `serve` and `runner`
until `nograd db upgrade` (or NOGRAD_DB_AUTO_UPGRADE) brings it to head with every row kept, and its jobs then run:
the queued one to success, the one whose runner died taken over and resumed from its checkpoint."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from procs import ROOT, free_port, serve, wait_until

from nograd.cli import main as cli
from nograd.service import migrations
from nograd.service.api import create_app
from nograd.service.settings import Settings
from nograd.service.store import SchemaError, Store, metadata, schema_revision, upgrade_schema

FIXTURE = Path(__file__).parents[1] / "fixtures" / "nograd-v0.1.db"
KEY = "ng_0f1e2d3c4b5a_Qm9ndXMga2V5IGZvciB0aGUgdjAuMSBmaXh0dXJlIGRi"  # alice's key in the fixture
HEAD = migrations.head()
REFUSED = (
    "nograd: error: the database at {url} has schema 0001_v0_1, this release needs 0002_studies; run "
    "`nograd db upgrade` (or set NOGRAD_DB_AUTO_UPGRADE=true)"
)
# The fixture's jobs (make_nograd_v0_1_db.py): one succeeded, one running whose runner died, one queued.
with closing(sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True)) as _fixture:
    JOBS = dict(_fixture.execute("SELECT status, id FROM jobs"))
    CHECKPOINTED = _fixture.execute("SELECT generation, calls FROM jobs WHERE status = 'running'").fetchone()
SUCCEEDED, RUNNING, QUEUED = JOBS["succeeded"], JOBS["running"], JOBS["queued"]
COUNTS = {"jobs": 3, "history": 10, "datasets": 1, "artifacts": 1, "analyses": 1, "api_keys": 2, "secrets": 0}


@pytest.fixture(params=["sqlite", "postgres"])
def fresh(request, tmp_path):
    """Makes empty databases: SQLite files, or schemas of one PostgreSQL database (its search_path in the URL),
    dropped with the database (skipped where no PostgreSQL server runs)."""
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{tmp_path / name}.db"
    base = request.getfixturevalue("postgres_url")

    def schema(name: str) -> str:
        engine = sa.create_engine(base)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        engine.dispose()
        return f"{base}?options=-csearch_path%3D{name}"

    return schema


def _schema(url: str) -> dict:
    """The tables of a database as reflected: columns (name, type, nullable, server default), primary keys,
    indexes; alembic_version left out."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        found = {}
        for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
            found[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in inspector.get_columns(table)
                ],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
                ),
                "foreign keys": inspector.get_foreign_keys(table),
            }
        return found
    finally:
        engine.dispose()


def _differences(url: str, tables: sa.MetaData) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            options = {"compare_type": True, "compare_server_default": True}
            return compare_metadata(MigrationContext.configure(conn, opts=options), tables)
    finally:
        engine.dispose()


def _migrate(url: str, target: str, how=command.upgrade) -> None:
    """Alembic's own upgrade (or downgrade) to `target`, revision by revision, as the revisions are written."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            how(migrations.alembic_config(conn), target)
    finally:
        engine.dispose()


def _rows(url: str, tables: sa.MetaData) -> dict:
    """Every row of `tables` (their columns only), sorted."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: sorted((tuple(r) for r in conn.execute(sa.select(table))), key=repr)
                for name, table in tables.tables.items()
            }
    finally:
        engine.dispose()


def _bare(url: str, tables: sa.MetaData) -> str:
    """`url` with `tables` created the way nograd 0.1 did (`create_all`, no revision)."""
    engine = sa.create_engine(url)
    tables.create_all(engine)
    engine.dispose()
    return url


def _old_copy(tmp_path: Path, name: str = "nograd.db") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURE, path)
    return f"sqlite:///{path}"


def _to_postgres(source: str, target: str) -> None:
    """The fixture's rows into a fresh PostgreSQL schema at nograd 0.1's tables, without a revision: as 0.1 left
    a PostgreSQL store."""
    tables = migrations.baseline()
    rows = _rows(source, tables)
    engine = sa.create_engine(target)
    try:
        with engine.begin() as conn:
            tables.create_all(conn)
            for name, table in tables.tables.items():
                if rows[name]:
                    conn.execute(table.insert(), [dict(zip(table.c.keys(), r)) for r in rows[name]])
    finally:
        engine.dispose()


# ------------------------------------------------------------------ revisions
def test_the_revisions_lead_to_the_tables_create_all_makes(fresh):
    migrated, created = fresh("migrated"), fresh("created")
    _migrate(migrated, migrations.BASELINE)
    assert _schema(migrated) == _schema(
        _bare(fresh("baseline"), migrations.baseline())
    )  # 0.1's tables, as 0.1 made them
    _migrate(migrated, "head")
    Store(created).close()
    assert _schema(migrated) == _schema(created)
    assert _differences(migrated, metadata) == []
    assert schema_revision(migrated) == schema_revision(created) == (HEAD, HEAD)


def test_downgrading_to_the_baseline_gives_0_1s_tables(fresh):
    url = fresh("db")
    Store(url).close()
    _migrate(url, migrations.BASELINE, how=command.downgrade)
    assert _differences(url, migrations.baseline()) == []
    assert schema_revision(url) == (migrations.BASELINE, HEAD)


# ------------------------------------------------------------------ opening a store
def test_a_new_database_is_created_at_head_and_reopened_as_it_is(fresh):
    url = fresh("db")
    assert schema_revision(url) == (None, HEAD)
    store = Store(url)
    job = store.create_job(tenant="t", method="manual", task="mr", dataset_id=None, model="f", config={}, budget=0)
    store.close()
    store = Store(url)  # at head: nothing to do, the rows are there
    assert store.get_job(job["id"])["id"] == job["id"]
    store.close()
    assert schema_revision(url) == (HEAD, HEAD)


def test_an_older_database_is_refused_unless_auto_upgrade(fresh, caplog):
    url = _bare(fresh("db"), migrations.baseline())
    where = sa.engine.make_url(url).render_as_string(hide_password=True)
    with pytest.raises(SchemaError) as refused:
        Store(url)
    assert REFUSED.format(url=where) == f"nograd: error: {refused.value}"
    assert schema_revision(url) == (migrations.BASELINE, HEAD)  # refused: left as it was
    caplog.set_level(logging.WARNING, "nograd.store")
    Store(url, auto_upgrade=True).close()
    assert f"upgraded the database at {where} from schema 0001_v0_1 to {HEAD}" in caplog.text
    assert schema_revision(url) == (HEAD, HEAD) and _differences(url, metadata) == []


def test_a_schema_this_release_does_not_know_is_refused(fresh):
    url = fresh("db")
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_future'")
    engine.dispose()
    for open_it in (Store, lambda u: Store(u, auto_upgrade=True), upgrade_schema):
        with pytest.raises(SchemaError, match="has schema 0099_future, which this release does not know"):
            open_it(url)


def test_tables_without_a_revision_count_as_0_1_or_head_when_they_match_and_are_refused_otherwise(fresh):
    current = _bare(fresh("current"), metadata)  # a development version's database: this release's tables
    Store(current).close()
    assert schema_revision(current) == (HEAD, HEAD)  # stamped, nothing else changed
    unknown = _bare(fresh("unknown"), migrations.baseline())
    engine = sa.create_engine(unknown)
    with engine.begin() as conn:  # from before 0.1 had takeovers
        conn.exec_driver_sql("ALTER TABLE jobs DROP COLUMN takeovers")
    engine.dispose()
    with pytest.raises(SchemaError, match=r"not those of nograd 0\.1 \(missing column jobs\.takeovers\)"):
        Store(unknown, auto_upgrade=True)


def test_tables_of_other_applications_are_left_alone(fresh):
    url = fresh("db")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE theirs (id INTEGER PRIMARY KEY)")
    engine.dispose()
    Store(url).close()  # empty for nograd: created at head next to it
    assert schema_revision(url) == (HEAD, HEAD) and "theirs" in _schema(url)


@pytest.mark.parametrize("old", [False, True], ids=["new", "0.1"])
def test_processes_that_open_a_database_at_once_create_or_upgrade_it_once(fresh, old, caplog):
    url = fresh("db")
    if old:
        _bare(url, migrations.baseline())
    errors, start = [], threading.Barrier(4)
    caplog.set_level(logging.INFO, "nograd.store")

    def open_store():
        try:
            start.wait()
            Store(url, auto_upgrade=True).close()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [HEAD]
    engine.dispose()
    done = "upgraded the database" if old else "created the database"
    (line,) = [r.message for r in caplog.records if "the database at" in r.message]  # one process did it
    assert line.startswith(done)
    assert _differences(url, metadata) == []


@pytest.mark.parametrize("trial", range(3))
def test_a_process_reading_the_schema_while_another_upgrades_it_sees_it_before_or_after(fresh, trial):
    # Opening a store reads the schema before it takes the migration lock; read one statement at a time, an
    # upgrade committing in between showed a mix (an index on a column not there yet: KeyError 'study_id').
    url = _bare(fresh("db"), migrations.baseline())
    seen, errors, stop = set(), [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                seen.add(schema_revision(url)[0])
            except Exception as exc:  # reported below
                errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    time.sleep(0.05)
    upgrade_schema(url)
    stop.set()
    for t in readers:
        t.join()
    assert errors == [] and seen <= {migrations.BASELINE, HEAD}
    assert schema_revision(url) == (HEAD, HEAD)


# ------------------------------------------------------------------ nograd 0.1's store
def test_nograd_db_upgrade_brings_0_1s_store_to_head_and_keeps_every_row(tmp_path, capsys):
    url = _old_copy(tmp_path)
    before = _rows(url, migrations.baseline())
    assert {name: len(rows) for name, rows in before.items()} == COUNTS
    assert cli(["db", "current", "--database-url", url]) == 1
    assert capsys.readouterr().out == f"0001_v0_1 (this release needs {HEAD}: run `nograd db upgrade`)\n"
    assert cli(["db", "upgrade", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"upgraded the database at {url} from schema 0001_v0_1 to {HEAD}\n"
    assert cli(["db", "current", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"{HEAD} (head: what this release needs)\n"
    assert cli(["db", "upgrade", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"the database at {url} is at schema {HEAD} already\n"

    assert _rows(url, migrations.baseline()) == before  # every row, every 0.1 column
    assert _differences(url, metadata) == []
    store = Store(url)
    try:
        old = store.get_job(SUCCEEDED)
        assert old["tags"] == [] and old["name"] is None and old["study_id"] is None  # nulls: none
        assert store.tenant_for_key(KEY) == "alice"
        assert [k["revoked_at"] is not None for k in store.list_keys()] == [False, True]
        tagged = store.create_job(
            tenant="alice", method="manual", task="mr", dataset_id=None, model="fake", config={}, budget=0, tags=["x"]
        )
        assert [j["id"] for j in store.list_jobs("alice", tag="x")[0]] == [tagged["id"]]
        assert store.list_jobs("alice")[1] == 4
    finally:
        store.close()


def test_nograd_db_upgrade_on_postgres_keeps_every_row(tmp_path, postgres_url, capsys):
    _to_postgres(_old_copy(tmp_path), postgres_url)
    before = _rows(postgres_url, migrations.baseline())
    assert {name: len(rows) for name, rows in before.items()} == COUNTS
    where = sa.engine.make_url(postgres_url).render_as_string(hide_password=True)
    with pytest.raises(SchemaError, match="has schema 0001_v0_1, this release needs"):
        Store(postgres_url)
    assert cli(["db", "upgrade", "--database-url", postgres_url]) == 0
    assert capsys.readouterr().out == f"upgraded the database at {where} from schema 0001_v0_1 to {HEAD}\n"
    assert _rows(postgres_url, migrations.baseline()) == before
    assert _differences(postgres_url, metadata) == []
    assert schema_revision(postgres_url) == (HEAD, HEAD)


def _nograd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nograd.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), **(env or {})},
    )


def _env() -> dict:
    """This environment without NOGRAD_* settings (the tests give theirs)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NOGRAD_")}


@pytest.mark.redis
def test_serve_and_runner_refuse_0_1s_store_until_it_is_upgraded(tmp_path, redis_server):
    data = tmp_path / "data"
    url = _old_copy(data)
    line = REFUSED.format(url=url)
    served = _nograd("serve", "--data-dir", str(data), "--port", str(free_port()), "--models", "fake")
    assert served.returncode == 2 and served.stderr.strip().splitlines()[-1] == line, served.stderr
    ran = _nograd("runner", "--data-dir", str(data), "--redis-url", redis_server.url)
    assert ran.returncode == 2 and ran.stderr.strip().splitlines()[-1] == line, ran.stderr
    assert schema_revision(url) == (migrations.BASELINE, HEAD)

    assert cli(["db", "upgrade", "--data-dir", str(data)]) == 0
    api = serve(data, None, free_port(), "--no-run-jobs", env=_env())
    api.terminate()
    runner = _runner(data, redis_server.url, tmp_path / "runner.log")
    try:  # it claims the queued job (and waits for a worker serving fake)
        wait_until(lambda: _claimed_by_another(url, QUEUED), 60, "the runner to claim the queued job")
    finally:
        assert runner.terminate() == 0, runner.output()


@pytest.mark.redis
def test_serve_and_runner_upgrade_0_1s_store_with_auto_upgrade(tmp_path, redis_server):
    auto = {"NOGRAD_DB_AUTO_UPGRADE": "true"}
    data = tmp_path / "api"
    url = _old_copy(data)
    api = serve(data, None, free_port(), "--no-run-jobs", env={**_env(), **auto})
    api.terminate()
    assert f"upgraded the database at {url} from schema 0001_v0_1 to {HEAD}" in api.output()
    assert schema_revision(url) == (HEAD, HEAD)

    data = tmp_path / "runner"
    url = _old_copy(data)
    runner = _runner(data, redis_server.url, tmp_path / "runner.log", env=auto)
    try:
        wait_until(lambda: _claimed_by_another(url, QUEUED), 60, "the runner to claim the queued job")
    finally:
        assert runner.terminate() == 0, runner.output()
    assert f"upgraded the database at {url} from schema 0001_v0_1 to {HEAD}" in runner.output()


def _runner(data: Path, redis_url: str, log: Path, env: dict | None = None):
    from procs import Proc

    args = ["runner", "--data-dir", str(data), "--redis-url", redis_url, "--namespace", f"mig{free_port()}"]
    return Proc(args, log, env={**_env(), **(env or {})}).start()


def _claimed_by_another(url: str, job_id: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT status, lease_owner FROM jobs WHERE id = :id"), {"id": job_id}).one()
        return row.status == "running" and row.lease_owner is not None
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def upgraded(request, tmp_path) -> str:
    """The fixture upgraded with `nograd db upgrade`: a SQLite copy, or its rows in a fresh PostgreSQL database."""
    url = _old_copy(tmp_path)
    if request.param == "postgres":
        target = request.getfixturevalue("postgres_url")
        _to_postgres(url, target)
        url = target
    assert cli(["db", "upgrade", "--database-url", url]) == 0
    return url


def test_after_the_upgrade_0_1s_jobs_run_the_queued_one_and_the_orphaned_one_resumes(upgraded, tmp_path, caplog):
    caplog.set_level(logging.INFO, "nograd.jobs")
    settings = Settings(data_dir=tmp_path / "data", database_url=upgraded, models=["fake"], lease_seconds=2.0)
    alice = {"Authorization": f"Bearer {KEY}"}
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        store = client.app.state.store
        history_before = client.get(f"/v1/jobs/{RUNNING}/history", headers=alice).json()["data"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses = {j["id"]: j["status"] for j in client.get("/v1/jobs", headers=alice).json()["data"]}
            if statuses[QUEUED] == statuses[RUNNING] == "succeeded":
                break
            assert "failed" not in statuses.values(), [store.get_job(j)["error"] for j in statuses]
            time.sleep(0.1)
        assert statuses == {SUCCEEDED: "succeeded", RUNNING: "succeeded", QUEUED: "succeeded"}
        resumed = store.get_job(RUNNING)
        assert resumed["takeovers"] == 1 and resumed["calls"] == resumed["budget"] > CHECKPOINTED[1]
        generation, calls = CHECKPOINTED  # where 0.1's checkpoint left it
        assert f"job {RUNNING} resumes at generation {generation} ({calls} calls)" in caplog.text
        history = client.get(f"/v1/jobs/{RUNNING}/history", headers=alice).json()["data"]
        assert history[: len(history_before)] == history_before and len(history) > len(history_before)
        assert client.get(f"/v1/jobs/{QUEUED}/prompt", headers=alice).status_code == 200
        assert client.get(f"/v1/jobs/{SUCCEEDED}/prompt", headers=alice).status_code == 200  # 0.1's artifact
        assert client.get(f"/v1/jobs/{SUCCEEDED}/analysis", headers=alice).status_code == 200
