"""The job runner: claims jobs from the store and runs each one's loop (ask -> queue -> results -> tell).

Several jobs run at once as asyncio tasks (`max_concurrent`). Each job has at most one evaluation request in
flight, so with a FIFO queue every running job gets one population through the workers per round: the workers
are shared fairly. After every generation the search state, the history entry and the job's summary are written
in one fenced transaction; a job picked up again (this process restarted, or another replica took over after the
lease expired) resumes from its last completed generation with the same candidates, so its final prompt is the
one an uninterrupted run would have produced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clients.queued import EvaluationError, QueueClient
from clients.types import ModelInfo
from nograd.artifacts import prompt_bytes, read_prompt
from nograd.config import SEARCH_METHODS, RunConfig
from nograd.runner import finalize, prepare
from clients.remote import RemoteError
from nograd.discrete import make_search
from nograd.search import PromptSearch
from optimizers import state_from_json, state_to_json

from .queue import BatchQueue, QueueError
from .secrets import SecretBox, SecretError, tenant_secret
from .store import Status, Store

log = logging.getLogger("nograd.jobs")


class JobRunner:
    """Args:
        store: the persistent store (jobs, checkpoints, leases).
        queue: where evaluation batches go.
        data_dir: where uploaded datasets are materialized as files for the task loader.
        max_concurrent: jobs this runner runs at once.
        lease_seconds: how long a claimed job stays ours without renewal (a dead runner's jobs are taken over
            after this); leases are renewed every third of it.
        batch_size: most candidates per queue batch (None: one batch per population).
        worker_wait: seconds a job waits for a worker serving its model before failing.
        on_batch: metrics hook(roundtrip_seconds, n_batches).
        secret_box: decrypts tenant secrets (remote endpoints' API keys); remote_allow: hosts/CIDRs a remote
            endpoint may resolve to although private (checked again when the job starts, against DNS changes).
        remote_transport: httpx transport for remote endpoints (tests).
    """

    def __init__(self, store: Store, queue: BatchQueue, *, data_dir: Path, max_concurrent: int = 16,
                 lease_seconds: float = 30.0, poll: float = 0.25, batch_size: int | None = None,
                 worker_wait: float = 600.0, on_batch=None, owner: str | None = None, secret_box=None,
                 remote_allow: tuple[str, ...] = (), remote_transport=None):
        self.store, self.queue, self.data_dir = store, queue, Path(data_dir)
        self.max_concurrent, self.lease_seconds, self.poll = max_concurrent, lease_seconds, poll
        self.batch_size, self.worker_wait, self.on_batch = batch_size, worker_wait, on_batch
        self.secret_box, self.remote_allow, self.remote_transport = secret_box, tuple(remote_allow), remote_transport
        self.owner = owner or f"runner-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.tasks: dict[str, asyncio.Task] = {}
        self._cancelling: set[str] = set()
        self._wake = asyncio.Event()
        # One thread for all jobs' optimizer work and checkpoint serialization: the work holds the GIL, and a
        # single thread leaves the event loop (API requests, queue I/O) its fair share of it.
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="nograd-search")

    @classmethod
    def from_settings(cls, store: Store, queue: BatchQueue, settings, **options) -> "JobRunner":
        """A runner configured by `service.settings.Settings` (options override, e.g. `on_batch`)."""
        return cls(store, queue, data_dir=settings.data_dir, max_concurrent=settings.max_concurrent_jobs,
                   lease_seconds=settings.lease_seconds, batch_size=settings.batch_size,
                   worker_wait=settings.worker_wait, remote_allow=tuple(settings.remote_allow),
                   **{"secret_box": SecretBox.from_settings(settings), **options})

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
                        claimed = await asyncio.to_thread(self.store.claim_jobs, self.owner, self.lease_seconds, free)
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
            await asyncio.to_thread(self.store.release, job_id, self.owner, "runner stopped; resumes from the "
                                                                             "last checkpoint")
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
        try:
            await self._execute(job)
        except asyncio.CancelledError:
            if job_id in self._cancelling:
                await asyncio.to_thread(self.store.finish_job, job_id, self.owner, Status.cancelled)
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
        await asyncio.to_thread(self.store.finish_job, job_id, self.owner, Status.failed, error=error)
        await self._forget(job_id)

    async def _forget(self, job_id: str) -> None:
        try:
            await self.queue.forget_job(job_id)
        except Exception:  # only cleanup: results and contexts expire anyway
            log.warning("could not drop job %s's queue data", job_id, exc_info=True)

    def _config(self, job: dict) -> RunConfig:
        return job_config(self.store, self.data_dir, job["config"], job.get("dataset_id"))

    async def _model_info(self, job_id: str, model: str) -> ModelInfo:
        deadline = time.monotonic() + self.worker_wait
        waiting = False
        while True:
            for worker in await self.queue.workers():
                if model in worker.get("models", {}):
                    if waiting:
                        await asyncio.to_thread(self.store.set_message, job_id, self.owner, None)
                    return ModelInfo(**worker["models"][model])
            if time.monotonic() > deadline:
                raise LookupError(f"no worker served model {model!r} within {self.worker_wait:.0f} s; start one "
                                  f"with `nograd worker --model {model}`")
            if not waiting:
                waiting = True
                await asyncio.to_thread(self.store.set_message, job_id, self.owner,
                                        f"waiting for a worker serving {model}")
            await asyncio.sleep(0.5)

    def _init_from(self, job: dict) -> tuple:
        if not job.get("init_from"):
            return None, None
        data = self.store.artifact(job["init_from"])
        if data is None:
            raise LookupError(f"init_from: job {job['init_from']} has no prompt")
        saved = read_prompt(data)
        return saved["x"], saved["spec"]

    async def _execute(self, job: dict) -> None:
        job_id, started = job["id"], time.perf_counter()
        config = await asyncio.to_thread(self._config, job)
        data = await asyncio.to_thread(prepare, config)
        timing = {"queue": 0.0}

        def on_batch(seconds: float, n: int) -> None:
            timing["queue"] += seconds
            if self.on_batch is not None:
                self.on_batch(seconds, n)

        if config.endpoint is not None:
            client = await asyncio.to_thread(self._remote_client, job, config)
            info = await client.describe()
        else:
            info = await self._model_info(job_id, config.model)
            client = QueueClient(self.queue, job_id, config.model, info, batch_size=self.batch_size,
                                 on_batch=on_batch)
        try:
            await self._run_search(job, config, data, client, info, timing, started)
        finally:
            if hasattr(client, "aclose"):
                await client.aclose()

    def _remote_client(self, job: dict, config: RunConfig):
        from clients.remote import EndpointConfig, check_url, make_client

        endpoint = EndpointConfig.from_dict(config.endpoint)
        check_url(endpoint.base_url, self.remote_allow)
        key = None
        if endpoint.api_key_secret:
            if self.secret_box is None:
                raise SecretError("this runner has no secrets key; set NOGRAD_SECRETS_KEY")
            key = tenant_secret(self.store, self.secret_box, job["tenant"], endpoint.api_key_secret)
        embedder = None
        if endpoint.kind == "vllm" and endpoint.embedder_model and config.method == "bbt":
            embedder = _embedder(endpoint.embedder_model)
        return make_client(endpoint, key, embedder=embedder, transport=self.remote_transport,
                           allow=self.remote_allow)

    async def _run_search(self, job: dict, config: RunConfig, data, client, info, timing: dict,
                          started: float) -> None:
        job_id = job["id"]
        search = None
        if config.method in SEARCH_METHODS:
            init_x, init_spec = await asyncio.to_thread(self._init_from, job)
            search = await asyncio.to_thread(make_search, config, data.spec, data.train, data.dev, info.n_layers,
                                             init_x=init_x, init_spec=init_spec)
            search.executor = self._cpu
            if job.get("checkpoint"):
                search.load_state(state_from_json(job["checkpoint"]))
                log.info("job %s resumes at generation %d (%d calls)", job_id, search.generation, search.calls)
            else:
                initial = await search.start(client)
                await self._save(job_id, search, {"generation": 0, "calls": 0, "initial": initial,
                                                  "time": time.time()})
            while not search.done:
                client.generation = search.generation + 1
                timing["queue"] = 0.0
                entry = await search.step(client)
                entry.update(time=time.time(), roundtrip_seconds=timing["queue"])
                if getattr(client, "usage", None):  # a remote endpoint's running token account
                    entry["usage"] = dict(client.usage)
                if not await self._save(job_id, search, entry):
                    log.warning("job %s: lease lost; another runner continues it", job_id)
                    return
        client.generation = (search.generation if search else 0) + 1
        result, prompt, x = await finalize(config, data, client, info.model_id, search, started)
        artifact = prompt_bytes(config=config, spec=prompt, x=x, materialized=None, task_spec=data.spec,
                                model_id=info.model_id, text=result.get("prompt_text"))
        await asyncio.to_thread(self.store.finish_job, job_id, self.owner, Status.succeeded, result=result,
                                artifact=artifact, test_metric=result["test_metric"], calls=result["calls"],
                                best_dev_metric=result["dev_metric"])
        await self._forget(job_id)

    async def _save(self, job_id: str, search: PromptSearch, entry: dict) -> bool:
        best_dev = search.best_dev["metric"] if search.best_dev else None
        best_train = search.best_train["loss"] if search.best_train["loss"] != float("inf") else None
        state = search.state_dict()  # a snapshot now; serialized off the event loop
        checkpoint = await asyncio.get_running_loop().run_in_executor(self._cpu, state_to_json, state)
        return await asyncio.to_thread(self.store.save_progress, job_id, self.owner, checkpoint=checkpoint,
                                       entry=entry, calls=search.calls, generation=search.generation,
                                       best_train_loss=best_train, best_dev_metric=best_dev)


@functools.lru_cache(maxsize=2)
def _embedder(model: str):
    """A local copy of a vLLM-served model (fp32, CPU) that turns BBT candidates into prompt_embeds."""
    from service.engine import Engine, load_model

    return Engine(load_model(model, dtype="fp32", device="cpu"))


def job_config(store: Store, data_dir: Path, values: dict, dataset_id: str | None) -> RunConfig:
    """A job's RunConfig: its stored options, plus for an uploaded dataset the file (written once into
    `data_dir/datasets`) and the dataset's template, verbalizer and fields. Raises ConfigError / LookupError."""
    values = dict(values)
    if dataset_id:
        dataset = store.get_dataset(dataset_id)
        if dataset is None:
            raise LookupError(f"dataset {dataset_id} no longer exists")
        suffix = Path(dataset["filename"]).suffix
        path = Path(data_dir) / "datasets" / f"{dataset['id']}-{dataset['sha256'][:12]}{suffix}"
        if not path.exists():  # the content (up to the upload limit) is read only the first time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
            tmp.write_bytes(store.get_dataset(dataset_id, with_content=True)["content"])
            tmp.replace(path)
        values.update(dataset["options"])
        values.update(task=None, dataset=str(path))
    return RunConfig.from_dict(values)


def transfer_options(spec) -> dict:
    """The run options a transfer job takes from its source prompt's spec (same projection, dim and tokens)."""
    projection = spec.projection
    return {"dim": projection.dim, "n_tokens": spec.n_tokens, "alpha": projection.alpha,
            "sigma0": projection.sigma0, "distribution": projection.distribution}
