"""`nograd study submit | show | list | cancel`: sweeps of jobs on a running service (`POST /v1/studies`), their
per-cell results as mean ± std over seeds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .client import CliError, connect, table

ENDED = ("succeeded", "failed", "cancelled")
CELL_COLUMNS = ("cell", "done", "dev", "test")
STUDY_COLUMNS = ("id", "name", "done", "succeeded", "failed", "cancelled", "created")
EXAMPLE = (
    '{"name": "dims", "base": {"method": "bbt", "task": "mr"}, "sweep": {"options.dim": [50, 100], "seed": [0, 1]}}'
)


def _read_study(path: str) -> dict:
    """The study request in `path` (`-`: stdin): a JSON object with `base`, `sweep` and optionally `name`."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not JSON ({exc}); write it like {EXAMPLE}") from None
    if not isinstance(body, dict) or not {"base", "sweep"} <= body.keys() or body.keys() - {"name", "base", "sweep"}:
        raise CliError(f"{path}: a study is a JSON object with base, sweep and optionally name, like {EXAMPLE}")
    return body


def _metric(summary) -> str:
    """mean ± std over a cell's succeeded jobs; the mean alone for one job; '-' for none."""
    if summary is None:
        return "-"
    if summary["std"] is None:
        return f"{summary['mean']:.3f}"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def cell_rows(study) -> list[tuple[str, ...]]:
    """The `study show` table: a row per cell (its jobs that ended of all, dev and test mean ± std)."""
    rows = [CELL_COLUMNS]
    for cell in study["cells"]:
        n = len(cell["job_ids"])
        rows.append((cell["key"], f"{cell['n_done']}/{n}", _metric(cell["dev_metric"]), _metric(cell["test_metric"])))
    return rows


def _counts(study) -> str:
    """'2 running, 1 succeeded': the statuses the study's jobs are in."""
    return ", ".join(f"{n} {status}" for status, n in study["counts"].items() if n) or "no jobs"


def _n_done(study) -> int:
    return sum(study["counts"].get(status, 0) for status in ENDED)


def _print_study(study) -> None:
    print("\n".join(table(cell_rows(study), right=frozenset({1}))))
    print(f"study {study['id']}: {_counts(study)}", file=sys.stderr)


def _watch(api, study_id: str) -> int:
    """A one-line status on stderr (jobs ended of all, counts) until every job ended, then the cells' table; 0 when
    every job succeeded, else 1."""
    from tqdm import tqdm

    first = api.study(study_id)  # an unknown study: its one-line error before any progress line
    bar = tqdm(total=first["n_jobs"], unit="jobs", desc=f"study {study_id}", file=sys.stderr, dynamic_ncols=True)

    def show(study) -> None:
        bar.n = _n_done(study)
        bar.set_postfix_str(_counts(study))

    try:
        show(first)
        study = first if first["done"] else api.wait_study(study_id, on_progress=show, poll=1.0)
        show(study)
    finally:
        bar.close()
    _print_study(study)
    return 0 if study["counts"].get("succeeded", 0) == study["n_jobs"] else 1


def cmd_study_submit(args: argparse.Namespace) -> int:
    body = _read_study(args.file)
    name = args.name or body.get("name")
    with connect(args) as api:
        study = api.submit_study(body["base"], body["sweep"], name)
        print(study["id"], flush=True)  # before a --watch: a script reading the id need not wait for the end
        print(
            f"{study['n_jobs']} jobs in {len(study['cells'])} cells; `nograd study show {study['id']}` shows them",
            file=sys.stderr,
        )
        if args.watch:
            return _watch(api, study["id"])
    return 0


def cmd_study_show(args: argparse.Namespace) -> int:
    with connect(args) as api:
        study = api.study(args.study)
    if args.json:
        print(json.dumps(study.to_dict(), indent=2))
        return 0
    _print_study(study)
    return 0


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))


def cmd_study_list(args: argparse.Namespace) -> int:
    with connect(args) as api:
        page = api.studies()
    if args.json:
        print(json.dumps(page.to_dict(), indent=2))
        return 0
    rows = [STUDY_COLUMNS]
    for study in page["data"]:
        counts = study["counts"]
        rows.append(
            (
                study["id"],
                study["name"] or "-",
                f"{_n_done(study)}/{study['n_jobs']}",
                *(str(counts.get(status, 0)) for status in ENDED),
                _when(study["created_at"]),
            )
        )
    if page["data"]:
        print("\n".join(table(rows, right=frozenset({2, 3, 4, 5}))))
    print(f"{len(page['data'])} of {page['count']} studies", file=sys.stderr)
    return 0


def cmd_study_cancel(args: argparse.Namespace) -> int:
    """Prints the study's id and its jobs' statuses after the request (running ones stop at their next
    generation)."""
    with connect(args) as api:
        study = api.cancel_study(args.study)
    print(f"{study['id']} {'cancelled' if study['done'] else 'cancelling'}")
    print(f"study {study['id']}: {_counts(study)}", file=sys.stderr)
    return 0


def add_study_commands(sub, client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """`nograd study ACTION`; `client_options` adds --url and --api-key to each action."""
    study = sub.add_parser("study", help="run a sweep of jobs (a study) and compare its cells over seeds")
    actions = study.add_subparsers(dest="study_command", required=True, metavar="ACTION")

    def study_argument(parser) -> None:
        parser.add_argument("study", help="the study's id (as `nograd study submit` printed it; `study list`)")

    submit = actions.add_parser("submit", help="submit a study from a JSON file; prints its id")
    submit.add_argument(
        "file",
        metavar="FILE.json",
        help=f"the study (- for stdin): base (a job, as `POST /v1/jobs` takes it), sweep (a job field or "
        f"options.NAME -> values; each combination runs once per seed) and optionally name, e.g. {EXAMPLE}",
    )
    submit.add_argument("--name", help="the study's name (default: the file's name field, if any)")
    submit.add_argument(
        "--watch", action="store_true", help="show its progress on one line until every job ended, then its cells"
    )
    submit.set_defaults(func=cmd_study_submit)

    show = actions.add_parser("show", help="a study's cells: jobs done, dev and test metric mean ± std over seeds")
    study_argument(show)
    show.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    show.set_defaults(func=cmd_study_show)

    listing = actions.add_parser("list", help="list your studies, newest first")
    listing.add_argument("--json", action="store_true", help="print the API's JSON (data, count) instead of a table")
    listing.set_defaults(func=cmd_study_list)

    cancel = actions.add_parser("cancel", help="cancel every job of a study that has not ended")
    study_argument(cancel)
    cancel.set_defaults(func=cmd_study_cancel)

    for parser in (submit, show, listing, cancel):
        client_options(parser)
