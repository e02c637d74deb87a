"""`nograd serve | runner | worker | submit | status | watch | jobs | cancel | download | secret | keys | db`: the
service and its command-line client (whose plumbing, and the small commands, are in `nograd.cli.client`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time

from nograd.config import JOB_FIELDS, JOB_OPTIONS
from nograd.engine.memory import BUDGET_SHARE, FRACTIONS
from nograd.export import FORMATS
from nograd.methods import METHODS

from .client import cmd_cancel, cmd_download, cmd_export, cmd_jobs, connect, table
from .options import add_setting, run_field, setting_default
from .study import add_study_commands


def _settings(args: argparse.Namespace):
    from nograd.service.settings import Settings

    overrides = {
        name: getattr(args, name)
        for name in (
            "host",
            "port",
            "data_dir",
            "redis_url",
            "database_url",
            "models",
            "max_concurrent_jobs",
            "lease_seconds",
            "batch_size",
            "claim_idle",
            "max_deliveries",
            "memory_cap_mb",
            "dtype",
            "device",
            "namespace",
            "log_format",
            "worker_metrics_port",
        )
        if getattr(args, name, None) is not None
    }
    if getattr(args, "auth", None) is not None:
        overrides["auth"] = args.auth == "on"
    if getattr(args, "no_embedded_worker", False):
        overrides["embedded_worker"] = False
    if getattr(args, "no_run_jobs", False):
        overrides["run_jobs"] = False
    return Settings(**overrides)


def _setup_process(settings) -> None:
    """A service command's process: every logger (uvicorn's too) to stderr as `settings.log_format` says
    (`nograd.service.logs`), and numpy's BLAS held to `settings.blas_threads` (`nograd.service.cpu`)."""
    from nograd.service import logs
    from nograd.service.cpu import limit_blas_threads

    logs.configure(settings.log_format)
    limit_blas_threads(settings.blas_threads)


async def _until_signal(run, *, cleanup, cleanup_timeout: float = 5.0) -> None:
    """`await run(stop)` until SIGTERM/SIGINT sets `stop` (graceful: the callee finishes or hands back its
    work without waiting long on a broker that is away), then `await cleanup()`, for at most `cleanup_timeout`
    seconds (closing connections to an unreachable broker must not hold the exit)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(stop)
    finally:
        try:
            await asyncio.wait_for(cleanup(), cleanup_timeout)
        except TimeoutError:
            logging.getLogger("nograd").warning("cleanup took over %g s; exiting without it", cleanup_timeout)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from nograd.service.api import create_app
    from nograd.service.store import Store

    try:
        settings = _settings(args)
    except ValidationError as exc:
        raise ValueError(
            "; ".join(
                f"{'.'.join(map(str, e['loc']))} (NOGRAD_{str(e['loc'][0]).upper()}): {e['msg']}"
                if e["loc"]
                else e["msg"]
                for e in exc.errors()
            )
        ) from None
    _setup_process(settings)
    # The schema check before serving: an older database is refused in one line here, not in a lifespan traceback.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    Store(settings.db_url, auto_upgrade=settings.db_auto_upgrade).close()
    queue = "Redis" if settings.redis_url else "in-process queue"
    logging.getLogger("nograd").info(
        "serving on http://%s:%d (data in %s, %s, auth %s, models %s)",
        settings.host,
        settings.port,
        settings.data_dir,
        queue,
        "on" if settings.auth else "off",
        ", ".join(settings.models),
    )
    app = create_app(settings)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            # What exists once the app has started lives as long as the process (routes, schemas, the OpenAPI
            # document, the runner): out of the cyclic collector's sight, so a full collection during a request
            # flood walks the requests' objects only, not the whole app.
            gc.collect()
            gc.freeze()

        async def shutdown(self, sockets=None) -> None:
            # Tell long-lived responses (event streams) to end now, before uvicorn waits for connections to close;
            # whatever is still open after `shutdown_grace` is cancelled, then the lifespan hands jobs back.
            stopping = getattr(app.state, "stopping", None)
            if stopping is not None:
                stopping.set()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,  # uvicorn's loggers go to the root handler `_setup_process` set up (text or JSON)
        access_log=False,  # the app writes its own access line, with the request id and route (api.telemetry)
        timeout_graceful_shutdown=settings.shutdown_grace,  # seconds; uvicorn waits on it with wait_for
    )
    Server(config).run()
    return 0


def cmd_runner(args: argparse.Namespace) -> int:
    """A job runner process (a `JobExecutor`, no HTTP): for deployments that keep API latency independent of the
    optimizer work."""
    from nograd.service.executor import JobExecutor
    from nograd.service.queue import queue_from_settings
    from nograd.service.store import Store

    settings = _settings(args)
    _setup_process(settings)
    if not settings.redis_url:
        raise ValueError("nograd runner needs --redis-url (the workers are reached through Redis)")

    async def main() -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.db_url, auto_upgrade=settings.db_auto_upgrade)  # an older schema: refused
        queue = queue_from_settings(settings)

        async def cleanup() -> None:
            await queue.close()
            store.close()

        # On a signal the runner hands its jobs back; another runner resumes them from their checkpoints.
        await _until_signal(JobExecutor.from_settings(store, queue, settings).run, cleanup=cleanup)

    asyncio.run(main())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from nograd.service.metrics import WorkerMetrics
    from nograd.service.queue import queue_from_settings
    from nograd.service.worker import Worker, engines_from_settings

    args.models = args.model  # --model is repeatable; Settings reads NOGRAD_MODELS when it is not given
    settings = _settings(args)
    if not settings.redis_url:
        raise ValueError("nograd worker needs --redis-url (or NOGRAD_REDIS_URL)")
    _setup_process(settings)
    metrics = WorkerMetrics()
    server = _metrics_server(metrics, settings)

    async def main() -> None:
        engines = engines_from_settings(settings, on_loaded=metrics.on_loaded)
        queue = queue_from_settings(settings)
        worker = Worker(
            queue,
            engines,
            worker_id=args.id,
            heartbeat=args.heartbeat,
            heartbeat_file=args.heartbeat_file,
            metrics=metrics,
        )
        await _until_signal(worker.run, cleanup=queue.close)  # a signal: finish the batch in progress, then exit

    try:
        asyncio.run(main())
    finally:
        if server is not None:
            server.shutdown()
    return 0


def _metrics_server(metrics, settings):
    """The worker's Prometheus server on `settings.worker_metrics_port` (None for port 0). A port that is taken
    stops the worker when the operator chose it, and only warns for the default (a second worker on one host)."""
    from nograd.service.metrics import serve_metrics

    if settings.worker_metrics_port == 0:
        return None
    try:
        return serve_metrics(metrics.registry, settings.worker_metrics_port)
    except ValueError as exc:
        if "worker_metrics_port" in settings.model_fields_set:
            raise
        logging.getLogger("nograd.worker").warning("%s; serving without metrics", exc)
        return None


#: What an unset --memory-cap-mb does, in the help of the commands that run a worker.
AUTO_CAP = (
    f"auto: sized from the device once the models are loaded ({FRACTIONS['cuda']:.0%} of the free GPU memory or "
    f"{FRACTIONS['cpu']:.0%} of the available RAM, within bounds and at most {BUDGET_SHARE:.0%} of "
    "$NOGRAD_WORKER_MEMORY_MB), logged at start"
)

_client = connect  # every client command talks to the service through it (errors as one line)


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--option {text!r}: write KEY=VALUE, e.g. --option popsize=20")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _parse_endpoint(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(
            f'--endpoint is not JSON ({exc}); write it like \'{{"kind": "openai", "base_url": ..., "model": ...}}\''
        ) from None


def cmd_submit(args: argparse.Namespace) -> int:
    # Unset fields are left out, so the service applies RunConfig's defaults (one place decides them).
    job = {name: getattr(args, name) for name in JOB_FIELDS}
    job.update(
        dataset_id=args.dataset_id,
        init_from=args.init_from,
        options=dict(_parse_option(o) for o in args.option) or None,
        endpoint=_parse_endpoint(args.endpoint),
    )
    with _client(args) as api:
        created = api.submit(**{k: v for k, v in job.items() if v is not None})
        print(created["id"])
        if args.watch:
            return _watch(api, created["id"])
    return 0


def _summary(job: dict) -> dict:
    keys = (
        "id",
        "status",
        "method",
        "task",
        "model",
        "calls",
        "budget",
        "best_train_loss",
        "best_dev_metric",
        "test_metric",
        "error",
        "message",
    )
    return {k: job.get(k) for k in keys}


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as api:
        job = api.job(args.job).to_dict()
    print(json.dumps(job if args.full else _summary(job), indent=2))
    return 0


def _watch(api, job_id: str) -> int:
    from types import SimpleNamespace

    from .bars import PhaseBar

    api.job(job_id)  # a service that is down, or an unknown job: its one-line error before any progress line
    bar = PhaseBar()
    try:
        for event, data in api.events(job_id):
            if event == "job":
                if data.get("phase"):  # what the job is doing now (none once it ended)
                    bar.phase(SimpleNamespace(**data["phase"]))
                elif data["status"] in ("succeeded", "failed", "cancelled"):  # where it ended
                    ended = dict(name=data["status"], label=data["status"], since=data["finished_at"])
                    bar.phase(SimpleNamespace(**ended, done=data["calls"], total=data["budget"], unit="calls"))
                bar.show(
                    status=data["status"],
                    loss="-" if data["best_train_loss"] is None else f"{data['best_train_loss']:.4f}",
                    dev="-" if data["best_dev_metric"] is None else f"{data['best_dev_metric']:.3f}",
                )
            elif event == "end":
                break
    finally:
        bar.close()
    job = api.job(job_id).to_dict()
    print(json.dumps(_summary(job), indent=2))
    return 0 if job["status"] == "succeeded" else 1


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as api:
        return _watch(api, args.job)


def cmd_secret(args: argparse.Namespace) -> int:
    value = sys.stdin.readline().rstrip("\n")
    if not value:
        print(
            "nograd secret: pipe the key on stdin, e.g. `printenv OPENAI_API_KEY | nograd secret openai`",
            file=sys.stderr,
        )
        return 2
    with _client(args) as api:
        stored = api.put_secret(args.name, value)
    print(f"stored {stored['name']}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """`nograd keys create | list | revoke`: API keys, straight in the store (the operator's side; no server)."""
    from nograd.service.store import Store

    settings = _store_settings(args)
    store = Store(settings.db_url, auto_upgrade=settings.db_auto_upgrade)
    try:
        if args.keys_command == "list":
            _print_keys(store.list_keys(args.tenant))
            return 0
        if args.keys_command == "revoke":
            revoked = store.revoke_key(args.key_id)
            if revoked is None:
                raise ValueError(f"no API key with id {args.key_id!r}; `nograd keys list` shows the ids")
            print(f"revoked key {revoked['id']} of tenant {revoked['tenant']!r}", file=sys.stderr)
            return 0
        if args.expires_in is not None and not args.expires_in > 0:
            raise ValueError(f"--expires-in must be a positive number of days (got {args.expires_in:g})")
        expires_at = None if args.expires_in is None else time.time() + args.expires_in * 86400
        key = store.create_key(args.tenant, name=args.name, expires_at=expires_at)
    finally:
        store.close()
    print(key)
    print(f"API key for tenant {args.tenant!r}; it is shown only this once (only its hash is stored).", file=sys.stderr)
    return 0


def _store_settings(args: argparse.Namespace):
    """Settings of the operator's commands that open the store directly (`keys`, `db`): --data-dir and
    --database-url over $NOGRAD_*; the data folder is made if missing."""
    from nograd.service.settings import Settings

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("database_url", args.database_url)) if v}
    settings = Settings(**overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def cmd_db(args: argparse.Namespace) -> int:
    """`nograd db upgrade | current`: the store's schema revision, straight in the database (no server)."""
    from sqlalchemy.engine import make_url

    from nograd.service.store import schema_revision, upgrade_schema

    settings = _store_settings(args)
    where = make_url(settings.db_url).render_as_string(hide_password=True)
    if args.db_command == "upgrade":
        before, now = upgrade_schema(settings.db_url)
        if before is None:
            print(f"created the database at {where} at schema {now}")
        elif before == now:
            print(f"the database at {where} is at schema {now} already")
        else:
            print(f"upgraded the database at {where} from schema {before} to {now}")
        return 0
    current, needed = schema_revision(settings.db_url)
    if current == needed:
        print(f"{current} (head: what this release needs)")
        return 0
    if current is None:
        print(f"none: no tables at {where} yet (`nograd db upgrade` or the first start creates them at {needed})")
    else:
        print(f"{current} (this release needs {needed}: run `nograd db upgrade`)")
    return 1


def _print_keys(keys: list[dict]) -> None:
    """One line per key: id, tenant, name, created, expires, revoked (UTC; '-' for none). Never the key."""

    def when(t: float | None) -> str:
        return "-" if t is None else time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))

    rows = [("id", "tenant", "name", "created", "expires", "revoked")]
    now = time.time()
    for k in keys:
        expired = k["expires_at"] is not None and k["expires_at"] <= now
        expires = when(k["expires_at"]) + (" (expired)" if expired else "")
        rows.append((k["id"], k["tenant"], k["name"] or "-", when(k["created_at"]), expires, when(k["revoked_at"])))
    print("\n".join(table(rows)))
    print(f"{len(keys)} keys", file=sys.stderr)


def add_commands(sub) -> None:
    """The service's subcommands: the processes (serve, runner, worker), the client (submit, status, watch, jobs,
    cancel, download, secret), the operator's keys and the database schema (db). Options that mirror a Settings
    field stay unset unless given, so $NOGRAD_* and then Settings' defaults apply; their help shows both."""
    _add_serve(sub)
    _add_runner(sub)
    _add_worker(sub)
    _add_client_commands(sub)
    _add_keys(sub)
    _add_db(sub)


def _add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="run the REST API, the job runner and (without Redis) a worker")
    add_setting(serve, "host", help="interface to listen on")
    add_setting(serve, "port", help="TCP port to listen on", type=int)
    add_setting(serve, "data_dir", help="folder of the store (SQLite), uploaded datasets and keys")
    add_setting(
        serve,
        "redis_url",
        help="use this Redis for the batch queue and external `nograd worker`s",
        unset="none: an in-process queue and worker",
    )
    _add_database_url(serve)
    add_setting(serve, "auth", choices=["on", "off"])
    add_setting(serve, "models", help="comma-separated models jobs may use (the embedded worker loads them)")
    serve.add_argument("--no-embedded-worker", action="store_true", help="with --redis-url: no worker in this process")
    serve.add_argument(
        "--no-run-jobs",
        action="store_true",
        help="API only; jobs run in `nograd runner` processes (keeps API latency flat under load)",
    )
    _add_runner_settings(serve)
    add_setting(serve, "claim_idle", type=float)
    add_setting(
        serve,
        "memory_cap_mb",
        help="the embedded worker's activation memory per forward pass (scores do not depend on it)",
        unset=AUTO_CAP,
        type=float,
    )
    add_setting(
        serve,
        "dtype",
        help="the embedded worker's dtype: auto (bf16 where native, else fp16 on GPU, fp32 on CPU), bf16, fp16, fp32",
    )
    add_setting(serve, "device", help="the embedded worker's device: auto (CUDA when present), cpu, cuda, cuda:1")
    add_setting(serve, "namespace", help="prefix of the Redis keys (lets deployments share one Redis)")
    _add_log_format(serve)
    serve.set_defaults(func=cmd_serve)


def _add_log_format(parser) -> None:
    add_setting(parser, "log_format", choices=["text", "json"])


def _add_runner_settings(parser) -> None:
    add_setting(parser, "max_concurrent_jobs", help="jobs this process runs at once", type=int)
    add_setting(
        parser,
        "lease_seconds",
        help="how long a claimed job stays this runner's without renewal (another runner takes over the jobs "
        "of one that died)",
        type=float,
    )
    add_setting(parser, "batch_size", help="most candidates per queue batch", unset="whole populations", type=int)


def _add_database_url(parser) -> None:
    add_setting(
        parser,
        "database_url",
        help="SQLAlchemy URL of the store; PostgreSQL when several API/runner replicas share it",
        unset="SQLite in the data folder",
    )


def _add_runner(sub) -> None:
    runner = sub.add_parser("runner", help="run jobs (no HTTP) for a Redis-backed service; any number of them")
    runner.add_argument("--redis-url", dest="redis_url", required=True, help="the service's Redis (required)")
    _add_database_url(runner)
    add_setting(runner, "data_dir", help="the service's data folder (its SQLite store unless --database-url)")
    _add_runner_settings(runner)
    add_setting(runner, "namespace", help="prefix of the Redis keys (the service's)")
    _add_log_format(runner)
    runner.set_defaults(func=cmd_runner)


def _add_worker(sub) -> None:
    worker = sub.add_parser("worker", help="serve models to a Redis-backed nograd service")
    add_setting(worker, "redis_url", help="the service's Redis", unset="none, and one is required")
    worker.add_argument(
        "--model",
        action="append",
        default=None,
        help=f"model to serve (repeatable; default: $NOGRAD_MODELS, comma-separated, or {setting_default('models')})",
    )
    add_setting(worker, "device", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    add_setting(worker, "dtype", help="auto (bf16 where native, else fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32")
    add_setting(
        worker,
        "memory_cap_mb",
        help="activation memory per forward pass (scores do not depend on it)",
        unset=AUTO_CAP,
        type=float,
    )
    add_setting(worker, "namespace", help="prefix of the Redis keys (the service's)")
    add_setting(
        worker,
        "claim_idle",
        help="take over batches a live worker left unacknowledged this many seconds (a stalled worker; a few "
        "batch times). A dead worker's batch is taken over as soon as its heartbeat expires",
        type=float,
    )
    add_setting(worker, "max_deliveries", help="deliveries of a batch before it is given up (its job fails)", type=int)
    worker.add_argument(
        "--heartbeat",
        type=float,
        default=2.0,
        help="seconds between heartbeats; after 3 missed the worker counts as dead and its batch is taken over "
        "(default %(default)s)",
    )
    worker.add_argument(
        "--id", default=None, help="this worker's name in /v1/workers and the logs (default: HOST-PID-random)"
    )
    worker.add_argument(
        "--heartbeat-file",
        default=os.environ.get("NOGRAD_HEARTBEAT_FILE"),
        help="touched after every heartbeat, for a container healthcheck (default: $NOGRAD_HEARTBEAT_FILE or none)",
    )
    worker.add_argument(
        "--metrics-port",
        dest="worker_metrics_port",
        metavar="PORT",
        type=int,
        default=None,
        help="serve Prometheus /metrics (batches, batch latency, model load time, device memory) on 0.0.0.0:PORT; "
        f"0: none (default: $NOGRAD_WORKER_METRICS_PORT or {setting_default('worker_metrics_port')})",
    )
    _add_log_format(worker)
    worker.set_defaults(func=cmd_worker)


def _client_options(parser) -> None:
    parser.add_argument("--url", default=None, help="service URL (default: $NOGRAD_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=None, help="API key (default: $NOGRAD_API_KEY; none with auth off)")


def _job_argument(parser) -> None:
    parser.add_argument("job", help="the job's id (as `nograd submit` printed it; `nograd jobs` lists them)")


def _add_submit(sub) -> None:
    submit = sub.add_parser("submit", help="submit a job to a running service")
    _client_options(submit)
    methods = "; ".join(f"{m.name}: {m.description}" for m in METHODS.values())
    submit.add_argument("--method", required=True, choices=list(METHODS), metavar="METHOD", help=f"{methods}")
    for name in JOB_FIELDS:
        if name == "method":
            continue
        kind, extra, description, default = run_field(name)
        shown = "" if default is None or name == "task" else f" (default {default})"
        if name == "task":
            shown = f" (default {default} unless --dataset-id)"
        submit.add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=f"{description}{shown}", **extra
        )
    submit.add_argument("--dataset-id", help="an uploaded dataset instead of a bundled task (POST /v1/datasets)")
    submit.add_argument("--init-from", help="a finished job whose prompt this job starts from (bbt, bbtv2)")
    submit.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a method option (repeatable; VALUE as JSON or text), KEY one of: {', '.join(JOB_OPTIONS)} "
        "(`nograd run --help` explains each; unset: the method's defaults)",
    )
    submit.add_argument(
        "--endpoint",
        help='score on a remote endpoint instead of the workers, as JSON, e.g. \'{"kind": "openai", '
        '"base_url": "https://api.openai.com/v1", "model": "M", '
        '"api_key_secret": "openai"}\' (the key stored with `nograd secret openai`)',
    )
    submit.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    submit.set_defaults(func=cmd_submit)


def _add_client_commands(sub) -> None:
    _add_submit(sub)
    add_study_commands(sub, _client_options)

    secret = sub.add_parser("secret", help="store a remote API key for your tenant (read from stdin, never echoed)")
    _client_options(secret)
    secret.add_argument("name", help="the name jobs use for it (--endpoint's api_key_secret)")
    secret.set_defaults(func=cmd_secret)

    status = sub.add_parser("status", help="show a job")
    _client_options(status)
    _job_argument(status)
    status.add_argument("--full", action="store_true", help="the whole job (config, result, timings), not a summary")
    status.set_defaults(func=cmd_status)

    watch = sub.add_parser("watch", help="follow a job's progress live")
    _client_options(watch)
    _job_argument(watch)
    watch.set_defaults(func=cmd_watch)

    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    _client_options(jobs)
    jobs.add_argument("--status", help="only jobs in this status: queued, running, succeeded, failed, cancelled")
    jobs.add_argument("--task", help="only jobs on this task")
    jobs.add_argument("--method", help="only jobs of this method")
    jobs.add_argument("--limit", type=int, default=50, help="most jobs to list, up to 500 (default %(default)s)")
    jobs.add_argument("--json", action="store_true", help="print the API's JSON (data, count) instead of a table")
    jobs.set_defaults(func=cmd_jobs)

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    _client_options(cancel)
    _job_argument(cancel)
    cancel.set_defaults(func=cmd_cancel)

    download = sub.add_parser("download", help="download a finished job's prompt (safetensors, for `nograd eval`)")
    _client_options(download)
    _job_argument(download)
    download.add_argument("--out", metavar="FILE", help="where to write it (default: JOB.safetensors here)")
    download.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    download.set_defaults(func=cmd_download)

    export = sub.add_parser("export", help="export a tuned prompt: PEFT adapter, text, chat messages or native file")
    _client_options(export)
    export.add_argument(
        "source", metavar="SOURCE", help="a run directory (`nograd run --out`), a prompt file, or a service job's id"
    )
    export.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="peft: a PEFT prompt-tuning adapter (BBT); text: the prompt in its template; chat: chat messages; "
        "native: the prompt file",
    )
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write the files into (created)")
    export.add_argument("--force", action="store_true", help="overwrite files that exist in DIR")
    export.set_defaults(func=cmd_export)


def _add_keys(sub) -> None:
    keys = sub.add_parser("keys", help="manage API keys (operator)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create an API key for a tenant (printed once, on stdout)")
    create.add_argument(
        "--tenant", required=True, help="the tenant it acts for (a tenant sees only its own jobs and data)"
    )
    create.add_argument("--name", help="what the key is for (shown by `keys list`)")
    create.add_argument(
        "--expires-in", dest="expires_in", type=float, metavar="DAYS", help="refused after DAYS (default: never)"
    )
    listing = keys_sub.add_parser("list", help="list keys: id, tenant, name, created, expires, revoked (no secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = keys_sub.add_parser("revoke", help="revoke a key: refused from its next request on")
    revoke.add_argument("key_id", help="the key's id (`keys list`; the part after ng_ in the key)")
    for p in (create, listing, revoke):
        add_setting(p, "data_dir", help="the service's data folder (its store holds the keys)")
        _add_database_url(p)
        p.set_defaults(func=cmd_keys)


def _add_db(sub) -> None:
    db = sub.add_parser("db", help="the store's schema: upgrade it to this release's, or show its revision (operator)")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser(
        "upgrade",
        help="apply the schema migrations up to this release's (a new database is created at it); run it before "
        "starting a new release's API and runners",
    )
    current = db_sub.add_parser(
        "current", help="print the database's schema revision and whether it is this release's (exit 1 if not)"
    )
    for p in (upgrade, current):
        add_setting(p, "data_dir", help="the service's data folder (its SQLite store unless --database-url)")
        _add_database_url(p)
        p.set_defaults(func=cmd_db)
