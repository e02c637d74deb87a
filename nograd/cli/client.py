"""The command-line client's plumbing and its small commands (`nograd jobs | cancel | download`): one connection
helper that turns every way of not reaching the service into a one-line `CliError`, and aligned tables."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nograd.sdk import ApiConnectionError, ApiError, ApiTimeoutError, Client


class CliError(Exception):
    """A command cannot go on. The message names the problem and the fix; `nograd.cli.main` prints it on one
    line and exits with status 2."""


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    """The service client for `--url` / `--api-key` (or $NOGRAD_URL / $NOGRAD_API_KEY).

    Whatever goes wrong talking to the service inside the block (a refusal, a service that is down, a bad URL)
    leaves it as a `CliError` that names the URL and what to do, never as a traceback."""
    try:
        api = Client(args.url, args.api_key)
    except ValueError as exc:  # not an http(s) URL: the SDK's message names it and the fix
        raise CliError(f"{exc} (--url or $NOGRAD_URL)") from None
    with api:
        try:
            yield api
        except ApiTimeoutError:
            raise CliError(f"the nograd service at {api.url} did not answer in time; is it overloaded?") from None
        except ApiConnectionError as exc:
            if exc.connected:  # cut off mid-way, or an event stream that kept dropping
                raise CliError(str(exc)) from None
            raise CliError(
                f"{exc}; start one with `nograd serve`, or point --url (or $NOGRAD_URL) at a running one"
            ) from None
        except ApiError as exc:
            raise CliError(_refusal(exc, api.url)) from None


def _refusal(exc: ApiError, url: str) -> str:
    """The service's refusal, with the fix for the two a newcomer meets first (no key, unknown job)."""
    if exc.status == 401:
        return (
            f"{exc} (pass the key with --api-key or $NOGRAD_API_KEY; an operator creates one with "
            "`nograd keys create --tenant NAME`)"
        )
    if exc.status == 404:
        if str(exc.detail).startswith("job "):
            return f"{exc} (`nograd jobs` lists your jobs)"
        if str(exc.detail).startswith("study "):
            return f"{exc} (`nograd study list` lists your studies)"
        return f"{exc} (is {url} a nograd service?)"
    return str(exc)


def table(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """`rows` (the first is the header) as lines of columns two spaces apart; columns in `right` (numbers)
    right-aligned, the others left-aligned; no trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]


def duration(seconds: float | None) -> str:
    """45s, 3m07s, 2h05m; '-' for None (not started)."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


JOB_COLUMNS = ("id", "status", "method", "task", "calls/budget", "dev", "test", "elapsed")


def _elapsed(job: dict) -> float | None:
    """The API's elapsed_seconds; from the timestamps where a service does not send it."""
    if "elapsed_seconds" in job:
        return job["elapsed_seconds"]
    if job.get("started_at") is None:
        return None
    return (job.get("finished_at") or time.time()) - job["started_at"]


def job_row(job: dict) -> tuple[str, ...]:
    """One `nograd jobs` row, in JOB_COLUMNS order."""

    def metric(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    status = "cancelling" if job["status"] == "running" and job.get("cancel_requested") else job["status"]
    return (
        job["id"],
        status,
        job["method"],
        job.get("task") or job.get("dataset_id") or "-",
        f"{job['calls']}/{job['budget']}",
        metric(job["best_dev_metric"]),
        metric(job["test_metric"]),
        duration(_elapsed(job)),
    )


def cmd_jobs(args: argparse.Namespace) -> int:
    with connect(args) as api:
        page = api.jobs(status=args.status, task=args.task, method=args.method, limit=args.limit).to_dict()
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    if page["data"]:
        lines = table([JOB_COLUMNS, *map(job_row, page["data"])], right=frozenset({4, 5, 6, 7}))
        print("\n".join(lines))
    print(f"{len(page['data'])} of {page['count']} jobs", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Prints the job's id and its status after the request: cancelled (it was queued) or cancelling (it was
    running and stops at its next generation)."""
    with connect(args) as api:
        job = api.cancel(args.job)
    if job["status"] == "cancelled":
        print(f"{job['id']} cancelled")
    else:
        print(f"{job['id']} cancelling")
        print(f"it stops at its next generation; `nograd watch {job['id']}` follows it to the end", file=sys.stderr)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Writes the job's prompt (safetensors) to --out, whole or not at all (a partial file never takes the name)."""
    out = Path(args.out or f"{args.job}.safetensors")
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; pass --force to overwrite it, or --out another file")
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: the folder {out.parent} does not exist")
    with connect(args) as api:
        try:
            data = api.prompt(args.job)
        except ApiError as exc:
            if exc.status != 409:
                raise
            raise CliError(f"job {args.job} has no prompt to download: {exc.detail}") from None
    partial = out.with_name(f".{out.name}.part")
    partial.write_bytes(data)
    os.replace(partial, out)
    print(out)
    print(f"{len(data)} bytes; re-score it with `nograd eval --prompt {out}`", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Writes export `--format` of a run directory, a prompt file or a service job's prompt into `--out`
    (`nograd.export`): the same files `GET /v1/jobs/{id}/export` zips."""
    from nograd.export import export_files, write_export

    source = Path(args.source)
    if source.is_dir():
        if not (source / "prompt.safetensors").is_file():
            raise CliError(f"{source} has no prompt.safetensors; pass a run directory of `nograd run --out`")
        data = (source / "prompt.safetensors").read_bytes()
    elif source.is_file():
        data = source.read_bytes()
    elif "/" in args.source or args.source.endswith(".safetensors"):
        raise CliError(f"{args.source} does not exist; pass a run directory, a prompt file or a job id")
    else:
        with connect(args) as api:
            try:
                data = api.prompt(args.source)
            except ApiError as exc:
                if exc.status == 404:
                    raise CliError(
                        f"{args.source} is neither a run directory, a prompt file nor a job of yours at {api.url}"
                    ) from None
                if exc.status != 409:
                    raise
                raise CliError(f"job {args.source} has no prompt to export: {exc.detail}") from None
    paths = write_export(export_files(data, args.format), Path(args.out), force=args.force)
    for path in paths:
        print(path)
    return 0
