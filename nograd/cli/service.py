"""`nograd serve | runner | worker | submit | status | watch | jobs | secret | keys`: the service and its
command-line client."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from nograd.engine import DEFAULT_MEMORY_CAP_MB


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


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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

    _log_to_stderr()
    try:
        settings = _settings(args)
    except ValidationError as exc:
        raise ValueError("; ".join(e["msg"] for e in exc.errors())) from None
    queue = "Redis" if settings.redis_url else "in-process queue"
    print(
        f"nograd: serving on http://{settings.host}:{settings.port} (data in {settings.data_dir}, {queue}, "
        f"auth {'on' if settings.auth else 'off'}, models {', '.join(settings.models)})",
        file=sys.stderr,
    )
    app = create_app(settings)

    class Server(uvicorn.Server):
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

    _log_to_stderr()
    settings = _settings(args)
    if not settings.redis_url:
        raise ValueError("nograd runner needs --redis-url (the workers are reached through Redis)")

    async def main() -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.db_url)
        queue = queue_from_settings(settings)

        async def cleanup() -> None:
            await queue.close()
            store.close()

        # On a signal the runner hands its jobs back; another runner resumes them from their checkpoints.
        await _until_signal(JobExecutor.from_settings(store, queue, settings).run, cleanup=cleanup)

    asyncio.run(main())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from nograd.engine import build_engine
    from nograd.service.queue import queue_from_settings
    from nograd.service.worker import Worker

    args.models = args.model  # --model is repeatable; Settings reads NOGRAD_MODELS when it is not given
    settings = _settings(args)
    if not settings.redis_url:
        raise ValueError("nograd worker needs --redis-url (or NOGRAD_REDIS_URL)")
    _log_to_stderr()

    async def main() -> None:
        engines = {
            m: build_engine(
                m,
                dtype=settings.dtype,
                device=settings.device,
                memory_cap_mb=settings.memory_cap_mb,
                memory_budget_mb=settings.worker_memory_mb,
                projection_cache_mb=settings.projection_cache_mb,
            )
            for m in settings.models
        }
        queue = queue_from_settings(settings)
        worker = Worker(queue, engines, worker_id=args.id, heartbeat=args.heartbeat, heartbeat_file=args.heartbeat_file)
        await _until_signal(worker.run, cleanup=queue.close)  # a signal: finish the batch in progress, then exit

    asyncio.run(main())
    return 0


def _client(args: argparse.Namespace):
    from nograd.sdk import Client

    return Client(args.url, args.api_key)


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--option {text!r}: write KEY=VALUE, e.g. --option popsize=20")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def cmd_submit(args: argparse.Namespace) -> int:
    job = {
        "method": args.method,
        "model": args.model,
        "budget": args.budget,
        "seed": args.seed,
        "k_shot": args.k_shot,
        "dev_every": args.dev_every,
        "task": args.task,
        "dataset_id": args.dataset_id,
        "init_from": args.init_from,
        "options": dict(_parse_option(o) for o in args.option),
        "endpoint": json.loads(args.endpoint) if args.endpoint else None,
    }
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
        job = api.job(args.job)
    print(json.dumps(job if args.full else _summary(job), indent=2))
    return 0


def _watch(api, job_id: str) -> int:
    from tqdm import tqdm

    job = api.job(job_id)
    bar = tqdm(total=max(job["budget"], 1), unit="call", dynamic_ncols=True, file=sys.stderr, desc=job_id)
    for event, data in api.events(job_id):
        if event == "job":
            job = data
            bar.update(job["calls"] - bar.n)
            bar.set_postfix(
                status=job["status"],
                loss=f"{job['best_train_loss']:.4f}" if job["best_train_loss"] is not None else "-",
                dev=f"{job['best_dev_metric']:.3f}" if job["best_dev_metric"] is not None else "-",
            )
        elif event == "end":
            break
    bar.close()
    job = api.job(job_id)
    print(json.dumps(_summary(job), indent=2))
    return 0 if job["status"] == "succeeded" else 1


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as api:
        return _watch(api, args.job)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as api:
        page = api.jobs(status=args.status, task=args.task, method=args.method, limit=args.limit)
    for job in page["data"]:
        dev = "-" if job["best_dev_metric"] is None else f"{job['best_dev_metric']:.3f}"
        test = "-" if job["test_metric"] is None else f"{job['test_metric']:.3f}"
        print(
            f"{job['id']}  {job['status']:9s} {job['method']:7s} {job['task']:10s} {job['calls']:>6}/"
            f"{job['budget']:<6} dev={dev} test={test}"
        )
    print(f"{len(page['data'])} of {page['count']} jobs", file=sys.stderr)
    return 0


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
    from nograd.service.settings import Settings
    from nograd.service.store import Store

    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("database_url", args.database_url)) if v}
    settings = Settings(**overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_url)
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(keys)} keys", file=sys.stderr)


def add_commands(sub) -> None:
    serve = sub.add_parser("serve", help="run the REST API, the job runner and (without Redis) a worker")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir", dest="data_dir")
    serve.add_argument("--redis-url", dest="redis_url", help="use Redis and external workers")
    serve.add_argument("--database-url", dest="database_url", help="SQLAlchemy URL (default: SQLite in data dir)")
    serve.add_argument("--auth", choices=["on", "off"], help="off: local single-user use; binds 127.0.0.1 only")
    serve.add_argument("--models", help="comma-separated models jobs may use (the embedded worker loads them)")
    serve.add_argument("--no-embedded-worker", action="store_true", help="with --redis-url: no worker in here")
    serve.add_argument(
        "--no-run-jobs",
        action="store_true",
        help="API only; jobs run in `nograd runner` processes (keeps API latency flat under load)",
    )
    serve.add_argument("--max-concurrent-jobs", dest="max_concurrent_jobs", type=int)
    serve.add_argument("--lease-seconds", dest="lease_seconds", type=float)
    serve.add_argument("--batch-size", dest="batch_size", type=int, help="most candidates per queue batch")
    serve.add_argument("--claim-idle", dest="claim_idle", type=float)
    serve.add_argument("--memory-cap-mb", dest="memory_cap_mb", type=float)
    serve.add_argument("--dtype")
    serve.add_argument("--device")
    serve.add_argument("--namespace")
    serve.set_defaults(func=cmd_serve)

    runner = sub.add_parser("runner", help="run jobs (no HTTP) for a Redis-backed service; any number of them")
    runner.add_argument("--redis-url", dest="redis_url", required=True)
    runner.add_argument("--database-url", dest="database_url")
    runner.add_argument("--data-dir", dest="data_dir")
    runner.add_argument("--max-concurrent-jobs", dest="max_concurrent_jobs", type=int)
    runner.add_argument("--lease-seconds", dest="lease_seconds", type=float)
    runner.add_argument("--batch-size", dest="batch_size", type=int)
    runner.add_argument("--namespace")
    runner.set_defaults(func=cmd_runner)

    worker = sub.add_parser("worker", help="serve models to a Redis-backed nograd service")
    # Unset options come from the NOGRAD_* environment, then Settings' defaults (service/settings.py).
    worker.add_argument("--redis-url", dest="redis_url", help="default $NOGRAD_REDIS_URL")
    worker.add_argument(
        "--model",
        action="append",
        default=None,
        help="model to serve (repeatable; default $NOGRAD_MODELS, comma-separated, or smollm2-135m)",
    )
    worker.add_argument("--device", help="default $NOGRAD_DEVICE or auto")
    worker.add_argument("--dtype", help="default $NOGRAD_DTYPE or bf16")
    worker.add_argument(
        "--memory-cap-mb",
        dest="memory_cap_mb",
        type=float,
        help=f"activation memory per forward pass (default {DEFAULT_MEMORY_CAP_MB:g})",
    )
    worker.add_argument("--namespace")
    worker.add_argument(
        "--claim-idle",
        dest="claim_idle",
        type=float,
        help="take over batches a live worker left unacknowledged this long (a stalled worker; a few batch times; "
        "default 60). A dead worker's batch is taken over as soon as its heartbeat expires",
    )
    worker.add_argument("--max-deliveries", dest="max_deliveries", type=int, help="default 3")
    worker.add_argument(
        "--heartbeat",
        type=float,
        default=2.0,
        help="seconds between heartbeats; after 3 missed the worker counts as dead and its batch is taken over",
    )
    worker.add_argument("--id", default=None)
    worker.add_argument(
        "--heartbeat-file",
        default=os.environ.get("NOGRAD_HEARTBEAT_FILE"),
        help="touched after every heartbeat (for a container healthcheck)",
    )
    worker.set_defaults(func=cmd_worker)

    def client_options(p):
        p.add_argument("--url", default=None, help="service URL (default $NOGRAD_URL or http://127.0.0.1:8000)")
        p.add_argument("--api-key", default=None, help="default $NOGRAD_API_KEY")

    submit = sub.add_parser("submit", help="submit a job to a running service")
    client_options(submit)
    submit.add_argument("--method", required=True)
    submit.add_argument("--task")
    submit.add_argument("--dataset-id")
    submit.add_argument("--model", default="smollm2-135m")
    submit.add_argument("--budget", type=int, default=600)
    submit.add_argument("--seed", type=int, default=0)
    submit.add_argument("--k-shot", type=int, default=16)
    submit.add_argument("--dev-every", type=int, default=100)
    submit.add_argument("--init-from")
    submit.add_argument("--option", action="append", default=[], help="KEY=VALUE method option (repeatable)")
    submit.add_argument(
        "--endpoint",
        help='a remote endpoint as JSON, e.g. \'{"kind": "openai", '
        '"base_url": "https://api.openai.com/v1", "model": "M", '
        '"api_key_secret": "openai"}\'',
    )
    submit.add_argument("--watch", action="store_true", help="follow the job with a progress bar")
    submit.set_defaults(func=cmd_submit)

    secret = sub.add_parser("secret", help="store a remote API key for your tenant (read from stdin, never echoed)")
    client_options(secret)
    secret.add_argument("name")
    secret.set_defaults(func=cmd_secret)

    status = sub.add_parser("status", help="show a job")
    client_options(status)
    status.add_argument("job")
    status.add_argument("--full", action="store_true")
    status.set_defaults(func=cmd_status)

    watch = sub.add_parser("watch", help="follow a job's progress live")
    client_options(watch)
    watch.add_argument("job")
    watch.set_defaults(func=cmd_watch)

    jobs = sub.add_parser("jobs", help="list jobs")
    client_options(jobs)
    jobs.add_argument("--status")
    jobs.add_argument("--task")
    jobs.add_argument("--method")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(func=cmd_jobs)

    keys = sub.add_parser("keys", help="manage API keys (operator)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key for a tenant (printed once, on stdout)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", help="what the key is for (shown by `keys list`)")
    create.add_argument("--expires-in", dest="expires_in", type=float, metavar="DAYS", help="refused after DAYS")
    listing = keys_sub.add_parser("list", help="list keys: id, tenant, name, created, expires, revoked (no secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = keys_sub.add_parser("revoke", help="revoke a key: refused from its next request on")
    revoke.add_argument("key_id", help="the key's id (`keys list`; the part after ng_ in the key)")
    for p in (create, listing, revoke):
        p.add_argument("--data-dir")
        p.add_argument("--database-url")
        p.set_defaults(func=cmd_keys)
