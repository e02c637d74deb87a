"""The job executor (what `nograd serve` and `nograd runner` run): claims jobs from the store and runs each one's
loop (ask -> queue -> results -> tell).

Several jobs run at once as asyncio tasks (`max_concurrent`). Each job has at most one evaluation request in
flight, so with a FIFO queue every running job gets one population through the workers per round: the workers
are shared fairly. After every generation the search state, the history entry and the job's summary are written
in one fenced transaction; a job picked up again (this process restarted, or another replica took over after the
lease expired) resumes from its last completed generation with the same candidates, so its final prompt is the
one an uninterrupted run would have produced. A job runs the resolved config stored at submit time
(`nograd.methods.resolve`); the executor never resolves it again, so a release that changes a default does not
change a job that already started.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nograd import costs
from nograd.artifacts import read_prompt
from nograd.clients.endpoint import RemoteError, RemoteLimits
from nograd.clients.protocol import ModelClient
from nograd.clients.types import ModelInfo
from nograd.config import ResolvedConfig, RunConfig
from nograd.endpoints import open_client
from nograd.export import ready_to_use
from nograd.methods import make_search
from nograd.pipeline import RunData, finalize, located, prepare, prompt_file, resolve_run
from nograd.progress import Phase
from nograd.search import PromptSearch
from nograd.validation import field_names

from . import logs
from .checkpoints import dump_checkpoint, load_checkpoint
from .fairness import FairShare
from .phases import PhaseWriter
from .queue import BatchQueue, QueueError
from .queue.client import EvaluationError, QueueClient
from .secrets import SecretBox, SecretError, tenant_secret
from .store import Status, Store
from .tracking import MlflowTracker

log = logging.getLogger("nograd.jobs")
#: Seconds a stopping runner waits for the MLflow runs of jobs it just finished (a dead server: not longer).
TRACKING_GRACE = 5.0


class JobExecutor:
    """Args:
    store: the persistent store (jobs, checkpoints, leases).
    queue: where evaluation batches go.
    data_dir: where uploaded datasets are materialized as files for the task loader.
    max_concurrent: jobs this runner runs at once.
    lease_seconds: how long a claimed job stays ours without renewal (a dead runner's jobs are taken over
        after this); leases are renewed every third of it.
    batch_size: most candidates per queue batch (None: one batch per population).
    worker_wait: seconds a job waits for a worker serving its model before failing.
    tenant_running_jobs: most jobs one tenant runs at once over all runners (None: no cap); slots are shared
        round-robin across tenants (`Store.claim_jobs`).
    max_takeovers: times a job is taken over from a runner that died on it before it is failed (None: no limit).
    on_batch: metrics hook(roundtrip_seconds, n_batches).
    secret_box: decrypts tenant secrets (remote endpoints' API keys); remote_allow: hosts/CIDRs a remote
        endpoint may resolve to although private (checked again when the job starts, against DNS changes).
    remote_limits: the operator's caps on remote endpoints' response size and requests in flight per job.
    remote_transport: httpx transport for remote endpoints (tests).
    job_limits: the operator's limits on a job's memory and calls (`nograd.costs`), checked again once the served
        model's shape is known (None: not checked).
    tracker: logs each job this runner finishes to MLflow (`nograd.service.tracking`; None: not logged), in a
        thread after its final state is written; a tracking failure is logged and changes nothing about the job.
    """

    def __init__(
        self,
        store: Store,
        queue: BatchQueue,
        *,
        data_dir: Path,
        max_concurrent: int = 16,
        lease_seconds: float = 30.0,
        poll: float = 0.25,
        batch_size: int | None = None,
        worker_wait: float = 600.0,
        tenant_running_jobs: int | None = None,
        max_takeovers: int | None = None,
        on_batch=None,
        owner: str | None = None,
        secret_box=None,
        remote_allow: tuple[str, ...] = (),
        remote_limits: RemoteLimits | None = None,
        remote_transport=None,
        job_limits: costs.Limits | None = None,
        tracker: MlflowTracker | None = None,
    ):
        self.store, self.queue, self.data_dir = store, queue, Path(data_dir)
        self.max_concurrent, self.lease_seconds, self.poll = max_concurrent, lease_seconds, poll
        self.batch_size, self.worker_wait, self.on_batch = batch_size, worker_wait, on_batch
        self.tenant_running_jobs, self.max_takeovers = tenant_running_jobs, max_takeovers
        self.secret_box, self.remote_allow, self.remote_transport = secret_box, tuple(remote_allow), remote_transport
        self.remote_limits = remote_limits or RemoteLimits()
        self.job_limits, self.tracker = job_limits, tracker
        self._tracking: set[asyncio.Task] = set()  # jobs being logged to MLflow (held: the loop keeps weak refs)
        self.owner = owner or f"runner-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.tasks: dict[str, asyncio.Task] = {}
        self._cancelling: set[str] = set()
        self._wake = asyncio.Event()
        # One thread for all jobs' optimizer work and checkpoint serialization: the work holds the GIL, and a
        # single thread leaves the event loop (API requests, queue I/O) its fair share of it.
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="nograd-search")
        # Tenants share the workers equally, whatever their number of jobs (`fairness.FairShare`).
        self._fair = FairShare()
        self._serving: dict[str, int] = {}  # model -> workers serving it when a job last looked

    @classmethod
    def from_settings(cls, store: Store, queue: BatchQueue, settings, **options) -> JobExecutor:
        """A runner configured by `nograd.service.settings.Settings` (options override, e.g. `on_batch`)."""
        return cls(
            store,
            queue,
            data_dir=settings.data_dir,
            max_concurrent=settings.max_concurrent_jobs,
            lease_seconds=settings.lease_seconds,
            batch_size=settings.batch_size,
            worker_wait=settings.worker_wait,
            tenant_running_jobs=settings.tenant_running_jobs,
            max_takeovers=settings.max_takeovers,
            remote_allow=tuple(settings.remote_allow),
            remote_limits=RemoteLimits.from_settings(settings),
            job_limits=costs.Limits.from_settings(settings),
            **{
                "secret_box": SecretBox.from_settings(settings),
                "tracker": MlflowTracker.from_settings(settings),
                **options,
            },
        )

    @functools.cached_property
    def _cleanup_queue(self) -> BatchQueue:
        """The queue for cleanup after a job, bounded: a Redis outage must neither hold the job's runner slot for
        the queue's whole retry time nor delay a shutdown (results and contexts expire anyway)."""
        return self.queue.bounded(5.0)

    def wake(self) -> None:
        """Look for new jobs now instead of at the next poll (the API calls this after a submission)."""
        self._wake.set()

    # ---------------------------------------------------------------- main loop
    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop`; then hand running jobs back (their checkpoints stay)."""
        last_renew = last_cancel_check = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() - last_renew > self.lease_seconds / 3:
                    await self._renew()
                    last_renew = time.monotonic()
                if self.tasks and time.monotonic() - last_cancel_check > 1.0:
                    await self._check_cancellations()
                    last_cancel_check = time.monotonic()
                free = self.max_concurrent - len(self.tasks)
                if free > 0:
                    try:
                        claimed = await asyncio.to_thread(
                            self.store.claim_jobs,
                            self.owner,
                            self.lease_seconds,
                            free,
                            tenant_running=self.tenant_running_jobs,
                            max_takeovers=self.max_takeovers,
                        )
                    except Exception:
                        log.exception("claiming jobs failed")
                        claimed = []
                    for job in claimed:
                        self.tasks[job["id"]] = asyncio.create_task(self._run_job(job), name=job["id"])
                self._wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                await asyncio.wait(waiters, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        tasks = list(self.tasks.items())
        for _, task in tasks:
            task.cancel()
        for job_id, task in tasks:
            try:
                await task
            except BaseException:
                pass
            await asyncio.to_thread(
                self.store.release, job_id, self.owner, "runner stopped; resumes from the last checkpoint"
            )
        if self._tracking:  # jobs that just finished: give their MLflow runs a moment to be written
            await asyncio.wait(list(self._tracking), timeout=TRACKING_GRACE)
        self._cpu.shutdown(wait=False)

    async def _renew(self) -> None:
        ids = list(self.tasks)
        try:
            held = await asyncio.to_thread(self.store.renew_leases, self.owner, ids, self.lease_seconds)
        except Exception:
            log.exception("renewing leases failed")
            return
        for job_id in ids:
            task = self.tasks.get(job_id)
            if task is not None and not task.done() and job_id not in held:
                log.warning("lost the lease of job %s; stopping it here", job_id)
                task.cancel()

    async def _check_cancellations(self) -> None:
        """Stop cancelled jobs within about a second (one query for all of this runner's jobs)."""
        try:
            cancelled = await asyncio.to_thread(self.store.cancelling, self.owner)
        except Exception:
            log.exception("checking for cancellations failed")
            return
        for job_id in cancelled:
            task = self.tasks.get(job_id)
            if task is not None and not task.done() and job_id not in self._cancelling:
                self._cancelling.add(job_id)
                task.cancel()

    # ---------------------------------------------------------------- one job
    async def _run_job(self, job: dict) -> None:
        job_id = job["id"]
        logs.bind(job_id=job_id, tenant=job.get("tenant"))  # this task's own context: every line it logs names them
        log.info("running job %s (%s on %s)", job_id, job.get("method"), job.get("model"))
        try:
            await self._execute(job)
        except asyncio.CancelledError:
            if job_id in self._cancelling:
                if await asyncio.to_thread(self.store.finish_job, job_id, self.owner, Status.cancelled):
                    self._track(job_id)
                await self._forget(job_id)
        except (EvaluationError, RemoteError, ValueError, FileNotFoundError, LookupError) as exc:
            await self._fail(job_id, str(exc))
        except QueueError as exc:
            log.warning("job %s: %s; handing it back", job_id, exc)
            await asyncio.to_thread(self.store.release, job_id, self.owner, f"queue unavailable: {exc}")
        except Exception as exc:
            log.exception("job %s crashed", job_id)
            await self._fail(job_id, f"internal error ({type(exc).__name__}: {exc}); see the service log")
        finally:
            self.tasks.pop(job_id, None)
            self._cancelling.discard(job_id)

    async def _fail(self, job_id: str, error: str) -> None:
        if await asyncio.to_thread(self.store.finish_job, job_id, self.owner, Status.failed, error=error):
            self._track(job_id)
        await self._forget(job_id)

    def _track(self, job_id: str) -> None:
        """Log the finished job to MLflow in the background: neither its status nor its runner slot waits."""
        if self.tracker is None:
            return
        task = asyncio.create_task(self._log_job(job_id), name=f"track-{job_id}")
        self._tracking.add(task)
        task.add_done_callback(self._tracking.discard)

    async def _log_job(self, job_id: str) -> None:
        def log_job() -> str:
            job, artifact = self.store.get_job(job_id), self.store.artifact(job_id)
            files = ready_to_use(artifact) if artifact is not None else None
            return self.tracker.log_job(job, self.store.history(job_id), artifact, files)

        try:
            run_id = await asyncio.to_thread(log_job)
            log.info("job %s logged to MLflow as run %s", job_id, run_id)
        except Exception as exc:
            log.warning("job %s: logging to MLflow failed (%s)", job_id, self.tracker.describe(exc))

    async def _forget(self, job_id: str) -> None:
        try:
            await self._cleanup_queue.forget_job(job_id)
        except Exception:
            log.warning("could not drop job %s's queue data", job_id, exc_info=True)

    async def _model_info(self, job_id: str, model: str) -> ModelInfo:
        deadline = time.monotonic() + self.worker_wait
        waiting = False
        while True:
            live = await self.queue.workers()
            for worker in live:
                if model in worker.get("models", {}):
                    self._serving[model] = sum(model in w.get("models", {}) for w in live)
                    if waiting:
                        await asyncio.to_thread(self.store.set_message, job_id, self.owner, None)
                    return ModelInfo.from_dict(worker["models"][model])
            if time.monotonic() > deadline:
                raise LookupError(
                    f"no worker served model {model!r} within {self.worker_wait:.0f} s; start one "
                    f"with `nograd worker --model {model}`"
                )
            if not waiting:
                waiting = True
                await asyncio.to_thread(
                    self.store.set_message, job_id, self.owner, f"waiting for a worker serving {model}"
                )
            await asyncio.sleep(0.5)

    @staticmethod
    def _resume(search: PromptSearch, job: dict) -> None:
        """Loads the job's checkpoint into `search`; refused for other library versions. A replay equal to the
        saved run only up to rounding (a runner on a CPU whose BLAS rounds differently) is logged, not refused."""
        search.load_state(load_checkpoint(job["checkpoint"], job["id"]))
        for note in getattr(search.optimizer, "restore_notes", ()):  # RLPrompt's policy restores exactly, silently
            log.warning("job %s: %s", job["id"], note)

    def _init_from(self, job: dict) -> dict:
        if not job.get("init_from"):
            return {}
        data = self.store.artifact(job["init_from"])
        if data is None:
            raise LookupError(f"init_from: job {job['init_from']} has no prompt")
        saved = read_prompt(data)
        return {"init_x": saved["x"], "init_spec": saved["spec"]}

    def _api_key(self, job: dict, config: ResolvedConfig) -> str | None:
        name = (config.endpoint or {}).get("api_key_secret")
        if not name:
            return None
        if self.secret_box is None:
            raise SecretError("this runner has no secrets key; set NOGRAD_SECRETS_KEY")
        return tenant_secret(self.store, self.secret_box, job["tenant"], name)

    async def _client(self, job: dict, config: ResolvedConfig, timing: dict) -> ModelClient:
        def on_batch(seconds: float, n: int) -> None:
            timing["queue"] += seconds
            if self.on_batch is not None:
                self.on_batch(seconds, n)

        async def workers() -> ModelClient:
            info = await self._model_info(job["id"], config.model)
            return QueueClient(
                self.queue,
                job["id"],
                config.model,
                info,
                batch_size=self.batch_size,
                on_batch=on_batch,
                gate=lambda: self._fair.slot(job["tenant"], self._serving.get(config.model, 1)),
            )

        key = await asyncio.to_thread(self._api_key, job, config)
        return await open_client(
            config,
            local=workers,
            api_key=key,
            allow=self.remote_allow,
            limits=self.remote_limits,
            **({} if self.remote_transport is None else {"transport": self.remote_transport}),
        )

    def _config(self, job: dict) -> ResolvedConfig:
        """The settings the job runs with: its config as resolved at submit time, never resolved again; with an
        uploaded dataset, located at this runner's copy of the file."""
        path = dataset_file(self.store, self.data_dir, job["dataset_id"]) if job.get("dataset_id") else None
        test = dataset_file(self.store, self.data_dir, job["dataset_id"], test=True) if path is not None else None
        values = dict(job["config"])
        # A resolved config always has `notes`; one stored before an option existed lacks that option and gets its
        # default, which is what it ran with (a job stored before `racing` did not race).
        if "notes" in values or set(field_names(RunConfig)) <= set(values):
            return located(ResolvedConfig.from_dict(values), path, test)
        # Stored by nograd 0.1, which kept the submitted options and resolved them whenever the job ran: resolve
        # them this once (a job that starts now has no checkpoint written under other settings).
        log.warning("job %s was stored by nograd 0.1 without resolved settings; resolving them now", job["id"])
        if path is not None:
            values.update(self.store.get_dataset(job["dataset_id"])["options"], task=None, dataset=str(path))
        return resolve_run(RunConfig.from_dict(values))[0]

    async def _execute(self, job: dict) -> None:
        started = time.perf_counter()
        phases = PhaseWriter(self.store, job["id"], self.owner)
        try:
            config = await asyncio.to_thread(self._config, job)
            where = f"a worker serving {config.model}" if config.endpoint is None else "the remote endpoint"
            phases(Phase("loading", label=f"waiting for {where}"))
            data = await asyncio.to_thread(prepare, config)
            timing = {"queue": 0.0}
            client = await self._client(job, config, timing)
            self._fair.join(job["tenant"])
            try:
                await self._run_search(job, config, data, client, timing, started, phases)
            finally:
                await self._fair.leave(job["tenant"])
                await client.aclose()
        finally:
            await phases.aclose()

    async def _run_search(
        self,
        job: dict,
        config: ResolvedConfig,
        data: RunData,
        client: ModelClient,
        timing: dict,
        started: float,
        phases: PhaseWriter,
    ) -> None:
        job_id = job["id"]
        info = await client.describe()
        if self.job_limits is not None and config.endpoint is None:
            # The shape the API may not have known at submit (no worker yet): a job that cannot fit fails here.
            costs.check(config, info, self.job_limits)
        init = await asyncio.to_thread(self._init_from, job)
        search = await asyncio.to_thread(make_search, config, data.spec, data.train, data.dev, info.n_layers, **init)
        if search is not None:
            search.executor, search.on_phase = self._cpu, phases
            if job.get("checkpoint"):
                # a replay of the optimizer's log (seconds for a long CMA-ES run): off the event loop
                await asyncio.to_thread(self._resume, search, job)
                log.info("job %s resumes at generation %d (%d calls)", job_id, search.generation, search.calls)
            else:
                initial = await search.start(client)
                await self._save(job_id, search, {"generation": 0, "calls": 0, "initial": initial, "time": time.time()})
            while not search.done:
                timing["queue"] = 0.0
                entry = await search.step(client)
                entry.update(time=time.time(), roundtrip_seconds=timing["queue"])
                if client.usage:  # a remote endpoint's running token account
                    entry["usage"] = dict(client.usage)
                if not await self._save(job_id, search, entry):
                    log.warning("job %s: lease lost; another runner continues it", job_id)
                    return
        result, prompt, x, analysis = await finalize(config, data, client, info.model_id, search, started, phases)
        phases(Phase("saving"))
        artifact = await prompt_file(config, data, client, info, result, prompt, x)
        if await asyncio.to_thread(
            self.store.finish_job,
            job_id,
            self.owner,
            Status.succeeded,
            result=result,
            artifact=artifact,
            analysis=analysis,
            test_metric=result["test_metric"],
            calls=math.ceil(result["calls"]),  # the column counts whole calls; racing spends fractions of one
            best_dev_metric=result["dev_metric"],
        ):
            self._track(job_id)
        await self._forget(job_id)

    async def _save(self, job_id: str, search: PromptSearch, entry: dict) -> bool:
        best_dev = search.best_dev["metric"] if search.best_dev else None
        best_train = search.best_train["loss"] if search.best_train["loss"] != float("inf") else None
        state = search.state_dict()  # a snapshot now; serialized off the event loop
        checkpoint = await asyncio.get_running_loop().run_in_executor(self._cpu, dump_checkpoint, state)
        return await asyncio.to_thread(
            self.store.save_progress,
            job_id,
            self.owner,
            checkpoint=checkpoint,
            entry=entry,
            calls=search.whole_calls,
            generation=search.generation,
            best_train_loss=best_train,
            best_dev_metric=best_dev,
        )


def dataset_file(store: Store, data_dir: Path, dataset_id: str, *, test: bool = False) -> Path | None:
    """An uploaded dataset as a file in `data_dir/datasets` (written once, from the store, by whichever process
    needs it first); with `test`, its uploaded test file (None: it has none). Raises LookupError when the dataset
    is gone."""
    dataset = store.get_dataset(dataset_id)
    if dataset is None:
        raise LookupError(f"dataset {dataset_id} no longer exists")
    filename = dataset["test_filename"] if test else dataset["filename"]
    if filename is None:
        return None
    suffix = ("-test" if test else "") + Path(filename).suffix
    path = Path(data_dir) / "datasets" / f"{dataset['id']}-{dataset['sha256'][:12]}{suffix}"
    if not path.exists():  # the content (up to the upload limit) is read only the first time
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # a tenant's data: owner-only
        with os.fdopen(fd, "wb") as fh:
            fh.write(store.get_dataset(dataset_id, with_content=True)["test_content" if test else "content"])
        tmp.replace(path)
    return path


def transfer_options(spec) -> dict:
    """The run options a transfer job takes from its source prompt's spec (same projection, dim and tokens)."""
    projection = spec.projection
    return {
        "dim": projection.dim,
        "n_tokens": spec.n_tokens,
        "alpha": projection.alpha,
        "sigma0": projection.sigma0,
        "distribution": projection.distribution,
    }
