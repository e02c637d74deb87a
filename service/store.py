"""Persistent state: jobs (with checkpoints and leases), per-generation history, datasets, prompt artifacts and
API keys. SQLAlchemy Core over an embedded SQLite file by default, or PostgreSQL for several API/runner replicas.

Who runs a job is decided here: a runner *claims* a job by taking its lease (a conditional UPDATE, atomic in
both databases) and renews it while it runs; every progress write is fenced by the lease owner, so a runner that
lost its lease (it stalled, another replica took over) can no longer write. A job whose runner died is claimed by
any runner once its lease expires and resumes from its last checkpoint.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from . import migrations
from .migrations import SchemaError as SchemaError  # what opening a Store raises, for its callers to catch

log = logging.getLogger("nograd.store")


class Status(str, enum.Enum):  # noqa: UP042 (str() stays 'Status.x' as before)
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = {Status.succeeded.value, Status.failed.value, Status.cancelled.value}

metadata = sa.MetaData()
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(100), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("task", sa.String(200), nullable=False),
    sa.Column("dataset_id", sa.String(40)),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("init_from", sa.String(40)),
    sa.Column("budget", sa.Integer, nullable=False),
    sa.Column("calls", sa.Integer, nullable=False, default=0),
    sa.Column("generation", sa.Integer, nullable=False, default=0),
    sa.Column("best_train_loss", sa.Float),
    sa.Column("best_dev_metric", sa.Float),
    sa.Column("test_metric", sa.Float),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("message", sa.Text),
    sa.Column("checkpoint", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_until", sa.Float, nullable=False, default=0.0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Claims of the job after its runner died holding it (lease expired); past `max_takeovers` it is failed.
    sa.Column("takeovers", sa.Integer, nullable=False, default=0, server_default="0"),
    # What the running job is doing now (`nograd.progress.Phase` as JSON); meaningful while it runs.
    sa.Column("phase", sa.Text),
    # The submitter's label and tags (a JSON list; null in rows older than tags: none), and the study it belongs to.
    sa.Column("name", sa.String(200)),
    sa.Column("tags", sa.Text),
    sa.Column("study_id", sa.String(40), index=True),
)
# A sweep of jobs (`nograd.service.studies`): what was asked (base, sweep) and which job runs which cell and seed
# (`layout`, JSON: [{key, params, seeds, job_ids}]); its jobs carry its id, their results are read from them.
studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(100), nullable=False, index=True),
    sa.Column("name", sa.String(200)),
    sa.Column("base", sa.Text, nullable=False),
    sa.Column("sweep", sa.Text, nullable=False),
    sa.Column("layout", sa.Text, nullable=False),
    sa.Column("n_jobs", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
history = sa.Table(
    "history",
    metadata,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True),
    sa.Column("entry", sa.Text, nullable=False),
)
datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(100), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("filename", sa.String(200), nullable=False),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # An uploaded test file (same format and fields), the dataset's held-out test set; null: none.
    sa.Column("test_filename", sa.String(200)),
    sa.Column("test_content", sa.LargeBinary),
)
artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
# What a succeeded job learned (`nograd.analysis.explain`: the prompt, test confusion matrices, changed examples),
# written with its result; a table of its own so that job listings and pages never read it.
analyses = sa.Table(
    "analyses",
    metadata,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("name", sa.String(100)),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
)
secrets_table = sa.Table(
    "secrets",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

KEY_PREFIX = "ng_"
# The large columns are read only where they are used (the runner's claim, the worker-side dataset file): job
# listings, job pages and the events stream poll these tables often.
_JOB_SUMMARY = [c for c in jobs.c if c.name != "checkpoint"]
_DATASET_SUMMARY = [c for c in datasets.c if c.name not in ("content", "test_content")]
_KEY_COLUMNS = [c for c in api_keys.c if c.name != "key_hash"]  # what may be shown of a key


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def _hash_key(secret: str) -> str:
    # API keys are 32 random bytes: a plain SHA-256 is enough (no dictionary to attack), and lookups stay O(1).
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    """Thread-safe (SQLAlchemy pools connections); every method is one short transaction.

    Opening a database checks its schema revision (`nograd.service.migrations`): an empty database is created at
    this release's schema, one at it is used as it is, and one at an older schema (a database of nograd 0.1 has no
    revision and counts as 0.1's) raises `SchemaError` naming `nograd db upgrade`, unless `auto_upgrade`: then it
    is upgraded first (logged).

    Args:
        url: SQLAlchemy URL, e.g. `sqlite:////data/nograd.db` or `postgresql+psycopg://user@host/db`.
        auto_upgrade: upgrade an older schema instead of refusing it (`Settings.db_auto_upgrade`).
    """

    def __init__(self, url: str, *, auto_upgrade: bool = False):
        self.url = url
        self.engine = _engine(url)
        try:
            migrations.prepare(self.engine, metadata, auto_upgrade=auto_upgrade)
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- jobs
    def create_job(
        self,
        *,
        tenant: str,
        method: str,
        task: str,
        dataset_id: str | None,
        model: str,
        config: dict,
        budget: int,
        init_from: str | None = None,
        name: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
    ) -> dict:
        row = _job_row(
            tenant=tenant,
            method=method,
            task=task,
            dataset_id=dataset_id,
            model=model,
            config=config,
            budget=budget,
            init_from=init_from,
            name=name,
            tags=tags,
        )
        with self.engine.begin() as conn:
            conn.execute(jobs.insert().values(**row))
        return self.get_job(row["id"])

    def get_job(self, job_id: str, tenant: str | None = None, *, with_checkpoint: bool = False) -> dict | None:
        query = sa.select(*(jobs.c if with_checkpoint else _JOB_SUMMARY)).where(jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _job(row)

    def list_jobs(
        self,
        tenant: str | None,
        *,
        status: str | None = None,
        task: str | None = None,
        method: str | None = None,
        study_id: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict], int]:
        """This tenant's jobs (None: everyone's), newest first, and how many match. Filters are exact matches;
        `tag` matches a job that has that tag among its tags."""
        where = []
        if tenant is not None:
            where.append(jobs.c.tenant == tenant)
        filters = (
            (jobs.c.status, status),
            (jobs.c.task, task),
            (jobs.c.method, method),
            (jobs.c.study_id, study_id),
            (jobs.c.name, name),
        )
        for column, value in filters:
            if value is not None:
                where.append(column == value)
        if tag is not None:  # tags are a JSON list of strings: match the quoted tag, LIKE's wildcards escaped
            quoted = json.dumps(tag).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(jobs.c.tags.like(f"%{quoted}%", escape="\\"))
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(*where)).scalar_one()
            rows = (
                conn.execute(
                    sa.select(*_JOB_SUMMARY)
                    .where(*where)
                    .order_by(jobs.c.created_at.desc(), jobs.c.id)
                    .limit(limit)
                    .offset(offset)
                )
                .mappings()
                .all()
            )
        return [_job(r) for r in rows], int(count)

    def count_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        return {status.value: 0 for status in Status} | {s: int(n) for s, n in rows}

    def request_cancel(self, job_id: str, tenant: str | None) -> dict | None:
        """Queued jobs are cancelled at once; running ones at their next generation. Returns the job, or None
        if it does not exist for this tenant. Raises `JobStateError` if it already finished or is cancelling."""
        now = time.time()
        with self.engine.begin() as conn:
            query = sa.select(*_JOB_SUMMARY).where(jobs.c.id == job_id)
            if tenant is not None:
                query = query.where(jobs.c.tenant == tenant)
            row = conn.execute(query.with_for_update()).mappings().first()
            if row is None:
                return None
            if row["status"] in TERMINAL or row["cancel_requested"]:
                raise JobStateError(
                    f"job {job_id} is {row['status']}"
                    f"{' (cancel requested)' if row['cancel_requested'] else ''}; nothing to cancel"
                )
            values = {"cancel_requested": True, "updated_at": now}
            if row["status"] == Status.queued.value:
                values.update(status=Status.cancelled.value, finished_at=now, message="cancelled before it started")
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
        return self.get_job(job_id)

    def cancelling(self, owner: str) -> set[str]:
        """Ids of the running jobs `owner` holds whose cancellation was requested."""
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(jobs.c.id).where(
                        jobs.c.lease_owner == owner,
                        jobs.c.status == Status.running.value,
                        jobs.c.cancel_requested.is_(True),
                    )
                ).scalars()
            )

    # ---------------------------------------------------------------- studies
    def create_study(
        self, *, tenant: str, name: str | None, base: dict, sweep: dict, cells: list[dict]
    ) -> tuple[dict, list[dict]]:
        """Store a study and all its jobs in one transaction (all of them or none), each job queued with the study's
        id. Returns the study and its jobs.

        Args:
            cells: one per combination of the swept values: `key` (its name), `params` (the values), `seeds`, and
                `jobs`, the `create_job` arguments (without `tenant`) of its job for each seed, in `seeds` order.
        """
        study_id = _new_id("study")
        layout, rows = [], []
        for cell in cells:
            cell_rows = [_job_row(tenant=tenant, study_id=study_id, **job) for job in cell["jobs"]]
            rows += cell_rows
            layout.append(
                {
                    "key": cell["key"],
                    "params": cell["params"],
                    "seeds": cell["seeds"],
                    "job_ids": [r["id"] for r in cell_rows],
                }
            )
        study = {
            "id": study_id,
            "tenant": tenant,
            "name": name,
            "base": json.dumps(base),
            "sweep": json.dumps(sweep),
            "layout": json.dumps(layout),
            "n_jobs": len(rows),
            "created_at": time.time(),
        }
        with self.engine.begin() as conn:
            conn.execute(studies.insert().values(**study))
            if rows:
                conn.execute(jobs.insert(), rows)
        return self.get_study(study_id), self.study_jobs([study_id])

    def get_study(self, study_id: str, tenant: str | None = None) -> dict | None:
        """A study (base, sweep and layout decoded), None if it does not exist for this tenant."""
        query = sa.select(studies).where(studies.c.id == study_id)
        if tenant is not None:
            query = query.where(studies.c.tenant == tenant)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _study(row)

    def list_studies(self, tenant: str | None, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """This tenant's studies (None: everyone's), newest first, and how many there are."""
        where = [] if tenant is None else [studies.c.tenant == tenant]
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(studies).where(*where)).scalar_one()
            rows = (
                conn.execute(
                    sa.select(studies)
                    .where(*where)
                    .order_by(studies.c.created_at.desc(), studies.c.id)
                    .limit(limit)
                    .offset(offset)
                )
                .mappings()
                .all()
            )
        return [_study(r) for r in rows], int(count)

    def study_jobs(self, study_ids: list[str]) -> list[dict]:
        """What a study's summary needs of its jobs (id, study_id, status, cancel_requested, best_dev_metric,
        test_metric), for several studies at once."""
        if not study_ids:
            return []
        columns = ("id", "study_id", "status", "cancel_requested", "best_dev_metric", "test_metric")
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*(jobs.c[c] for c in columns)).where(jobs.c.study_id.in_(study_ids))
            ).mappings()
            return [dict(r, cancel_requested=bool(r["cancel_requested"])) for r in rows]

    def cancel_study(self, study_id: str, tenant: str | None) -> int | None:
        """Request the cancellation of every job of the study that has not ended (`request_cancel`: queued ones
        at once, running ones at their next generation). Returns how many were asked to stop, None if the study
        does not exist for this tenant. Jobs that ended or are already cancelling are left as they are."""
        if self.get_study(study_id, tenant) is None:
            return None
        with self.engine.connect() as conn:
            active = (
                conn.execute(
                    sa.select(jobs.c.id).where(
                        jobs.c.study_id == study_id,
                        jobs.c.status.not_in(sorted(TERMINAL)),
                        jobs.c.cancel_requested.is_(False),
                    )
                )
                .scalars()
                .all()
            )
        cancelled = 0
        for job_id in active:
            try:
                self.request_cancel(job_id, tenant)
            except JobStateError:  # it ended (or was cancelled) meanwhile
                continue
            cancelled += 1
        return cancelled

    # ---------------------------------------------------------------- leases
    def claim_jobs(
        self,
        owner: str,
        lease_seconds: float,
        limit: int,
        *,
        tenant_running: int | None = None,
        max_takeovers: int | None = None,
    ) -> list[dict]:
        """Take up to `limit` runnable jobs (queued, or running with an expired lease), shared fairly: round-robin
        across tenants, the tenant with the fewest running jobs first, oldest job first within a tenant.

        Args:
            tenant_running: most jobs one tenant has running at once, counted over every runner sharing this
                database (jobs with a live lease); the others stay queued until one of its jobs ends. None: no cap.
                The cap is checked inside the claiming UPDATE; on PostgreSQL a per-tenant advisory lock orders
                concurrent claims, so several runners never over-commit a tenant.
            max_takeovers: a job whose runner died holding it (its lease expired while it ran; a job handed back
                with `release` is not one) is taken over at most this many times, then failed with a message
                instead of being handed out again. None: no limit.
        """
        if limit <= 0:
            return []
        now = time.time()
        with self.engine.connect() as conn:
            running = dict(
                conn.execute(sa.select(jobs.c.tenant, sa.func.count()).where(_live(now)).group_by(jobs.c.tenant)).all()
            )
            # The oldest `limit` runnable jobs of each tenant: enough for any split of the free slots.
            rank = sa.func.row_number().over(partition_by=jobs.c.tenant, order_by=(jobs.c.created_at, jobs.c.id))
            ranked = (
                sa.select(
                    jobs.c.id, jobs.c.tenant, jobs.c.status, jobs.c.lease_owner, jobs.c.takeovers, jobs.c.created_at
                )
                .add_columns(rank.label("n"))
                .where(_runnable(now))
                .subquery()
            )
            rows = (
                conn.execute(sa.select(ranked).where(ranked.c.n <= limit).order_by(ranked.c.n, ranked.c.created_at))
                .mappings()
                .all()
            )
        waiting: dict[str, list] = {}
        for row in rows:  # each tenant's list oldest first; tenants in the order of their oldest job
            waiting.setdefault(row["tenant"], []).append(row)
        claimed = []
        while waiting and len(claimed) < limit:
            tenant = min(waiting, key=lambda t: running.get(t, 0))  # ties: the tenant whose oldest job is oldest
            if tenant_running is not None and running.get(tenant, 0) >= tenant_running:
                del waiting[tenant]
                continue
            row = waiting[tenant].pop(0)
            if not waiting[tenant]:
                del waiting[tenant]
            takeover = row["status"] == Status.running.value and row["lease_owner"] is not None
            if takeover and max_takeovers is not None and row["takeovers"] >= max_takeovers:
                self._fail_takeovers(row["id"], row["takeovers"] + 1, now)
                continue
            job = self._claim(row["id"], tenant, owner, now, lease_seconds, tenant_running)
            if job is not None:
                claimed.append(job)
                running[tenant] = running.get(tenant, 0) + 1
            elif tenant_running is not None:
                running[tenant] = self._running_count(tenant, now)  # taken by another runner, or the cap is full
        return claimed

    def _claim(
        self, job_id: str, tenant: str, owner: str, now: float, lease_seconds: float, tenant_running: int | None
    ) -> dict | None:
        """The conditional UPDATE that is the claim: the job is still runnable (and, with a cap, its tenant has
        fewer than `tenant_running` jobs under a live lease)."""
        where = [jobs.c.id == job_id, _runnable(now)]
        with self.engine.begin() as conn:
            if tenant_running is not None:
                if conn.dialect.name == "postgresql":  # READ COMMITTED: serialize this tenant's claims
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(tenant))))
                other = jobs.alias("other")
                live = (
                    sa.select(sa.func.count())
                    .select_from(other)
                    .where(other.c.tenant == tenant, _live(now, other), other.c.id != job_id)
                    .scalar_subquery()
                )
                where.append(live < tenant_running)
            # A job still marked running by an owner whose lease expired is a takeover (its runner died on it).
            died = sa.and_(jobs.c.status == Status.running.value, jobs.c.lease_owner.is_not(None))
            changed = conn.execute(
                jobs.update()
                .where(*where)
                .values(
                    lease_owner=owner,
                    lease_until=now + lease_seconds,
                    status=Status.running.value,
                    started_at=sa.func.coalesce(jobs.c.started_at, now),
                    updated_at=now,
                    takeovers=jobs.c.takeovers + sa.case((died, 1), else_=0),
                )
            ).rowcount
        return self.get_job(job_id, with_checkpoint=True) if changed else None

    def _fail_takeovers(self, job_id: str, deaths: int, now: float) -> None:
        """Fail a job its runners keep dying on (e.g. it needs more memory than a runner has) instead of handing
        it to the next runner to kill."""
        with self.engine.begin() as conn:
            failed = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, _runnable(now), jobs.c.lease_owner.is_not(None))
                .values(
                    status=Status.failed.value,
                    error=f"the runner died {deaths} times while running this job; its options may need more memory "
                    "than a runner has (see max_job_memory_mb)",
                    message=None,
                    lease_owner=None,
                    lease_until=0.0,
                    finished_at=now,
                    updated_at=now,
                )
            ).rowcount
        if failed:
            log.warning("job %s failed: its runner died %d times while running it", job_id, deaths)

    def _running_count(self, tenant: str, now: float) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).where(jobs.c.tenant == tenant, _live(now))).scalar_one()

    def count_jobs(self, tenant: str, status: Status) -> int:
        """How many jobs `tenant` has in `status` (the API's queued-jobs quota)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).where(jobs.c.tenant == tenant, jobs.c.status == status.value)
            ).scalar_one()

    def renew_leases(self, owner: str, job_ids: list[str], lease_seconds: float) -> set[str]:
        """Extend this owner's leases; returns the ids it still holds."""
        if not job_ids:
            return set()
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id.in_(job_ids), jobs.c.lease_owner == owner, jobs.c.status == Status.running.value)
                .values(lease_until=now + lease_seconds)
            )
            held = (
                conn.execute(
                    sa.select(jobs.c.id).where(
                        jobs.c.id.in_(job_ids), jobs.c.lease_owner == owner, jobs.c.status == Status.running.value
                    )
                )
                .scalars()
                .all()
            )
        return set(held)

    def release(self, job_id: str, owner: str, message: str | None = None) -> None:
        """Give a job back (e.g. the broker is down): another runner, or this one later, resumes it."""
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=0.0, message=message, updated_at=time.time())
            )

    # ---------------------------------------------------------------- progress
    def save_progress(self, job_id: str, owner: str, *, checkpoint: dict | str, entry: dict | None, **summary) -> bool:
        """Checkpoint + history entry + summary columns in one transaction, only while `owner` holds the lease.
        Returns False when the lease was lost (the caller must stop working on the job)."""
        text = checkpoint if isinstance(checkpoint, str) else json.dumps(checkpoint)
        with self.engine.begin() as conn:
            changed = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == Status.running.value)
                .values(checkpoint=text, updated_at=time.time(), **summary)
            ).rowcount
            if not changed:
                return False
            if entry is not None:
                conn.execute(
                    history.delete().where(history.c.job_id == job_id, history.c.generation == entry["generation"])
                )
                conn.execute(
                    history.insert().values(job_id=job_id, generation=entry["generation"], entry=json.dumps(entry))
                )
        return True

    def set_message(self, job_id: str, owner: str, message: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
                .values(message=message, updated_at=time.time())
            )

    def set_phase(self, job_id: str, owner: str, phase: dict | None) -> bool:
        """Record what the job is doing now (only by the runner holding its lease). Returns whether it did."""
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
                    .values(phase=None if phase is None else json.dumps(phase), updated_at=time.time())
                ).rowcount
                > 0
            )

    def finish_job(
        self,
        job_id: str,
        owner: str,
        status: Status,
        *,
        result: dict | None = None,
        error: str | None = None,
        artifact: bytes | None = None,
        analysis: dict | None = None,
        **summary,
    ) -> bool:
        now = time.time()
        with self.engine.begin() as conn:
            changed = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == Status.running.value)
                .values(
                    status=status.value,
                    result=None if result is None else json.dumps(result),
                    error=error,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_until=0.0,
                    message=None,
                    **summary,
                )
            ).rowcount
            if changed and artifact is not None:
                conn.execute(artifacts.delete().where(artifacts.c.job_id == job_id))
                conn.execute(artifacts.insert().values(job_id=job_id, data=artifact, created_at=now))
            if changed and analysis is not None:
                conn.execute(analyses.delete().where(analyses.c.job_id == job_id))
                conn.execute(analyses.insert().values(job_id=job_id, data=json.dumps(analysis), created_at=now))
        return bool(changed)

    def history(self, job_id: str, after: int = -1) -> list[dict]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(history.c.entry)
                    .where(history.c.job_id == job_id, history.c.generation > after)
                    .order_by(history.c.generation)
                )
                .scalars()
                .all()
            )
        return [json.loads(r) for r in rows]

    def last_generation(self, job_id: str) -> int:
        """The job's newest history generation (-1: none yet)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.max(history.c.generation)).where(history.c.job_id == job_id)
            ).scalar()
        return -1 if value is None else int(value)

    def artifact(self, job_id: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(artifacts.c.data).where(artifacts.c.job_id == job_id)).scalar()

    def analysis(self, job_id: str) -> dict | None:
        """The analysis a job stored when it succeeded (None: not finished, failed, or older than analyses)."""
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(analyses.c.data).where(analyses.c.job_id == job_id)).scalar()
        return None if data is None else json.loads(data)

    # ---------------------------------------------------------------- datasets
    def create_dataset(
        self,
        *,
        tenant: str,
        name: str,
        filename: str,
        options: dict,
        summary: dict,
        content: bytes,
        test_filename: str | None = None,
        test_content: bytes | None = None,
    ) -> dict:
        """Store an uploaded dataset (and its test file, if one came with it)."""
        row = {
            "id": _new_id("ds"),
            "tenant": tenant,
            "name": name,
            "filename": filename,
            "options": json.dumps(options),
            "summary": json.dumps(summary),
            "sha256": hashlib.sha256(content).hexdigest(),
            "content": content,
            "created_at": time.time(),
            "test_filename": test_filename,
            "test_content": test_content,
        }
        with self.engine.begin() as conn:
            conn.execute(datasets.insert().values(**row))
        return self.get_dataset(row["id"])

    def get_dataset(self, dataset_id: str, tenant: str | None = None, *, with_content: bool = False) -> dict | None:
        query = sa.select(*(datasets.c if with_content else _DATASET_SUMMARY)).where(datasets.c.id == dataset_id)
        if tenant is not None:
            query = query.where(datasets.c.tenant == tenant)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _dataset(row)

    def list_datasets(self, tenant: str | None, limit: int = 100, offset: int = 0) -> tuple[list[dict], int]:
        where = [] if tenant is None else [datasets.c.tenant == tenant]
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(datasets).where(*where)).scalar_one()
            rows = (
                conn.execute(
                    sa.select(*_DATASET_SUMMARY)
                    .where(*where)
                    .order_by(datasets.c.created_at.desc())
                    .limit(limit)
                    .offset(offset)
                )
                .mappings()
                .all()
            )
        return [_dataset(r) for r in rows], int(count)

    def dataset_bytes(self, tenant: str) -> int:
        """Bytes of dataset content (data and test files) `tenant` stores (the API's storage quota)."""
        size = sa.func.length(datasets.c.content) + sa.func.coalesce(sa.func.length(datasets.c.test_content), 0)
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(size), 0)).where(datasets.c.tenant == tenant)
                ).scalar_one()
            )

    def delete_dataset(self, dataset_id: str, tenant: str | None) -> bool:
        """Delete a dataset; False if it does not exist for this tenant. Raises `JobStateError` while a queued or
        running job uses it (finished jobs keep their results and prompts)."""
        with self.engine.begin() as conn:
            query = sa.select(datasets.c.id).where(datasets.c.id == dataset_id)
            if tenant is not None:
                query = query.where(datasets.c.tenant == tenant)
            if conn.execute(query.with_for_update()).first() is None:
                return False
            using = conn.execute(
                sa.select(jobs.c.id)
                .where(
                    jobs.c.dataset_id == dataset_id,
                    jobs.c.status.in_([Status.queued.value, Status.running.value]),
                )
                .limit(1)
            ).scalar()
            if using is not None:
                raise JobStateError(
                    f"dataset {dataset_id} is used by job {using}, which has not finished; cancel it "
                    f"(POST /v1/jobs/{using}/cancel) or wait until it ends"
                )
            conn.execute(datasets.delete().where(datasets.c.id == dataset_id))
        return True

    # ---------------------------------------------------------------- API keys
    def create_key(self, tenant: str, *, name: str | None = None, expires_at: float | None = None) -> str:
        """A new API key for `tenant` (refused from `expires_at` on, a Unix time, if given); only its hash is
        stored, so the returned key is shown once."""
        if not tenant or len(tenant) > 100:
            raise ValueError(f"tenant must be 1 to 100 characters (got {len(tenant)})")
        if name is not None and len(name) > 100:
            raise ValueError(f"key name must be at most 100 characters (got {len(name)})")
        key_id = uuid.uuid4().hex[:12]
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        row = {"id": key_id, "tenant": tenant, "key_hash": _hash_key(secret), "created_at": time.time()}
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(**row, name=name, expires_at=expires_at))
        return secret

    def tenant_for_key(self, secret: str) -> str | None:
        """The tenant of a valid key; None for unknown, revoked or expired keys. Read on every request (never
        cached), so a revocation takes effect at the next request."""
        if not secret.startswith(KEY_PREFIX) or secret.count("_") < 2:
            return None
        key_id = secret[len(KEY_PREFIX) :].split("_", 1)[0]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], _hash_key(secret)):
            return None
        if row["revoked_at"] is not None or (row["expires_at"] is not None and row["expires_at"] <= time.time()):
            return None
        return row["tenant"]

    def list_keys(self, tenant: str | None = None) -> list[dict]:
        """Keys' metadata (id, tenant, name, created_at, expires_at, revoked_at), oldest first; never the hash."""
        query = sa.select(*_KEY_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def revoke_key(self, key_id: str) -> dict | None:
        """Revoke a key (refused from the next request on); returns its metadata, None if there is no such key.
        Revoking a revoked key keeps its first revocation time."""
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            row = conn.execute(sa.select(*_KEY_COLUMNS).where(api_keys.c.id == key_id)).mappings().first()
        return None if row is None else dict(row)

    # ---------------------------------------------------------------- tenant secrets (encrypted by the caller)
    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> dict:
        now = time.time()
        with self.engine.begin() as conn:
            where = (secrets_table.c.tenant == tenant) & (secrets_table.c.name == name)
            if conn.execute(sa.select(secrets_table.c.name).where(where)).first():
                conn.execute(secrets_table.update().where(where).values(ciphertext=ciphertext, created_at=now))
            else:
                conn.execute(
                    secrets_table.insert().values(tenant=tenant, name=name, ciphertext=ciphertext, created_at=now)
                )
        return {"name": name, "created_at": now}

    def secret(self, tenant: str, name: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(secrets_table.c.ciphertext).where(
                    (secrets_table.c.tenant == tenant) & (secrets_table.c.name == name)
                )
            ).scalar()

    def list_secrets(self, tenant: str) -> list[dict]:
        """Names and dates only: a secret's value is never read back through the API."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(secrets_table.c.name, secrets_table.c.created_at)
                .where(secrets_table.c.tenant == tenant)
                .order_by(secrets_table.c.name)
            )
            return [dict(r._mapping) for r in rows]

    def delete_secret(self, tenant: str, name: str) -> bool:
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    secrets_table.delete().where((secrets_table.c.tenant == tenant) & (secrets_table.c.name == name))
                ).rowcount
                > 0
            )


class JobStateError(RuntimeError):
    """The job is in a state that does not allow the operation."""


def upgrade_schema(url: str) -> tuple[str | None, str]:
    """`nograd db upgrade`: bring the database at `url` to this release's schema (an empty one is created at it).
    Returns its revision before (None: it was empty) and after."""
    engine = _engine(url)
    try:
        return migrations.upgrade(engine, metadata), migrations.head()
    finally:
        engine.dispose()


def schema_revision(url: str) -> tuple[str | None, str]:
    """`nograd db current`: the revision of the database at `url` (None: empty) and the one this release needs."""
    path = _sqlite_path(url)
    if path is not None and not path.exists():  # nothing to read: do not create the file
        return None, migrations.head()
    engine = _engine(url)
    try:
        with migrations.reading(engine) as conn:
            return migrations.revision(conn, metadata), migrations.head()
    finally:
        engine.dispose()


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _private_sqlite_file(url: str) -> None:
    """Create a SQLite database file 0600 before SQLite does (it would honour the umask, and gives the -wal and
    -shm files the database file's mode); an existing file readable by others is made 0600 too."""
    path = _sqlite_path(url)
    if path is None:
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # an empty file is an empty database
        return
    except FileExistsError:
        pass
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if file.exists() and file.stat().st_mode & 0o077:
                file.chmod(0o600)
                log.warning("%s was readable by other users; made it 0600", file)
        except PermissionError:
            log.warning("%s is readable by other users and not ours to change: chmod 600 it", file)


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases, in-memory ones and `file:` URIs."""
    if not url.startswith("sqlite"):
        return None
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _live(now: float, table: sa.Table = jobs):
    """Jobs running under a lease that has not expired (what counts against a tenant's running cap)."""
    return sa.and_(table.c.status == Status.running.value, table.c.lease_until >= now)


def _runnable(now: float):
    """Jobs a runner may claim: queued, or running under a lease that expired (or was released)."""
    return sa.and_(jobs.c.status.in_([Status.queued.value, Status.running.value]), jobs.c.lease_until < now)


def _lock_key(tenant: str) -> int:
    """A PostgreSQL advisory-lock key (signed 64-bit) for one tenant's claims."""
    return int.from_bytes(hashlib.sha256(f"nograd-claim:{tenant}".encode()).digest()[:8], "big", signed=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    deadline = time.monotonic() + 30
    while True:  # readers never block the runner's writes
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            # Switching a new database to WAL needs it to itself, and SQLite does not wait for that: processes
            # that open it at once take turns.
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _job_row(
    *,
    tenant: str,
    method: str,
    task: str,
    dataset_id: str | None,
    model: str,
    config: dict,
    budget: int,
    init_from: str | None = None,
    name: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    study_id: str | None = None,
) -> dict:
    """A new queued job's row."""
    now = time.time()
    return {
        "id": _new_id("job"),
        "tenant": tenant,
        "status": Status.queued.value,
        "method": method,
        "task": task,
        "dataset_id": dataset_id,
        "model": model,
        "config": json.dumps(config),
        "init_from": init_from,
        "budget": budget,
        "calls": 0,
        "generation": 0,
        "cancel_requested": False,
        "lease_owner": None,
        "lease_until": 0.0,
        "created_at": now,
        "updated_at": now,
        "takeovers": 0,
        "name": name,
        "tags": json.dumps(list(tags)),
        "study_id": study_id,
    }


def _job(row) -> dict:
    """A job row as a dict: config and result decoded; the checkpoint (if selected) stays JSON text."""
    job = dict(row)
    for name in ("config", "result", "phase"):
        if job.get(name) is not None:
            job[name] = json.loads(job[name])
    job["cancel_requested"] = bool(job["cancel_requested"])
    if "tags" in job:
        job["tags"] = [] if job["tags"] is None else json.loads(job["tags"])  # rows older than tags have none
    return job


def _study(row) -> dict:
    study = dict(row)
    for name in ("base", "sweep", "layout"):
        study[name] = json.loads(study[name])
    return study


def _dataset(row) -> dict:
    data = dict(row)
    data["options"] = json.loads(data["options"])
    data["summary"] = json.loads(data["summary"])
    return data
