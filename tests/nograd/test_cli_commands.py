"""The command line's completeness: help on every option of every subcommand (defaults shown), `--version`, and
`jobs` (table and --json), `cancel`, `download` and the one-line errors against a real `nograd serve` (embedded
queue and worker, fake models, auth on)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from procs import ROOT, free_port, serve, wait_until

from nograd.cli import build_parser
from nograd.cli.options import setting_default
from nograd.service.settings import Settings
from nograd.service.store import Status


def nograd(*args: str, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nograd.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


# ---------------------------------------------------------------- help on every option


def walk(parser: argparse.ArgumentParser):
    """(command path, parser, action) for every action of `parser` and of its subcommands, depth first."""
    path = parser.prog
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                yield path, parser, argparse.Action([], name, help=helps.get(name))  # the subcommand's own line
                yield from walk(child)
        else:
            yield path, parser, action


def without_help(parser: argparse.ArgumentParser) -> list[str]:
    return [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for path, _, action in walk(parser)
        if not action.help or action.help == argparse.SUPPRESS
    ]


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text as `--help` prints it (%(default)s and friends filled in)."""
    return parser._get_formatter()._expand_help(action)


def test_every_option_and_subcommand_has_help():
    assert without_help(build_parser()) == []


def test_the_walk_finds_an_option_or_a_subcommand_without_help():
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers()
    child = sub.add_parser("child")  # no help= for the subcommand
    child.add_argument("--bare")
    child.add_argument("--told", help="has some")
    assert without_help(parser) == ["x: child", "x child: --bare"]


def configures_the_service(path: str, action: argparse.Action) -> bool:
    """An option of serve/runner/worker/keys that mirrors a Settings field (unset unless given)."""
    command = path.split()[1] if " " in path else ""
    return (
        command in {"serve", "runner", "worker", "keys"}
        and action.dest in Settings.model_fields
        and not action.required
    )


def test_every_default_is_in_the_help():
    """An option with a real default shows it; one that mirrors a Settings field (unset: $NOGRAD_* then
    Settings) names the variable and Settings' default."""
    missing = []
    for path, parser, action in walk(build_parser()):
        if isinstance(action, argparse._HelpAction | argparse._VersionAction) or not action.option_strings:
            continue
        text = expanded_help(parser, action)
        if action.default not in (None, False, [], argparse.SUPPRESS):
            if str(action.default) not in text:
                missing.append(f"{path} {action.option_strings[0]}: default {action.default!r} not in {text!r}")
        elif configures_the_service(path, action) and "$NOGRAD_" not in text:
            missing.append(f"{path} {action.option_strings[0]}: no $NOGRAD_ default in {text!r}")
    assert missing == []


def test_serve_port_help_shows_the_default_port():
    result = nograd("serve", "--help")
    assert result.returncode == 0
    port = str(Settings.model_fields["port"].default)
    assert setting_default("port") == port == "8000"
    assert f"$NOGRAD_PORT or {port})" in " ".join(result.stdout.split())


def test_jobs_status_help_names_every_status():
    parser = build_parser()
    action = next(a for p, _, a in walk(parser) if p == "nograd jobs" and a.dest == "status")
    assert all(s.value in action.help for s in Status)


def test_submit_leaves_unset_job_fields_to_the_service():
    args = build_parser().parse_args(["submit", "--method", "bbt"])
    assert (args.task, args.model, args.budget, args.k_shot, args.seed, args.dev_every) == (None,) * 6


def test_version_is_the_installed_distributions():
    result = nograd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"nograd {importlib.metadata.version('nograd')}"


# ---------------------------------------------------------------- against a served app


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("cmds") / "data"
    key = nograd("keys", "create", "--tenant", "cmds", "--data-dir", str(data)).stdout.strip()
    port = free_port()
    # One job at a time, so a second job stays queued while a slow one runs.
    proc = serve(data, None, port, "--max-concurrent-jobs", "1", models="fake,fake:0.2")
    yield {"NOGRAD_URL": f"http://127.0.0.1:{port}", "NOGRAD_API_KEY": key}
    proc.terminate()


def submit(service: dict, *extra: str, model: str = "fake", budget: int = 40) -> str:
    job = ("--method", "bbt", "--task", "trec", "--model", model, "--budget", str(budget))
    result = nograd("submit", *job, "--option", "popsize=10", "--option", "dim=8", *extra, env=service)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0]


def api_job(service: dict, job_id: str) -> dict:
    headers = {"Authorization": f"Bearer {service['NOGRAD_API_KEY']}"}
    return httpx.get(f"{service['NOGRAD_URL']}/v1/jobs/{job_id}", headers=headers, timeout=10).json()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command prints (exit status 2, no traceback, no progress line before it)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nograd: error: "), result.stderr
    return lines[0]


def test_jobs_prints_a_header_and_aligned_columns_or_the_apis_json(service):
    job_id = submit(service, "--watch")
    table = nograd("jobs", "--method", "bbt", env=service)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "status", "method", "task", "calls/budget", "dev", "test", "elapsed"]
    row = next(line for line in lines if line.startswith(job_id))
    assert row.split()[1:5] == ["succeeded", "bbt", "trec", "40/40"]
    assert row.split()[-1].endswith("s")  # elapsed, e.g. 2s
    assert len({len(line) for line in lines}) == 1  # right-aligned last column: every line as wide
    assert lines[0].index("status") == row.index("succeeded")  # columns line up under the header
    as_json = json.loads(nograd("jobs", "--json", "--method", "bbt", env=service).stdout)
    assert set(as_json) == {"data", "count"} and job_id in [j["id"] for j in as_json["data"]]
    assert next(j for j in as_json["data"] if j["id"] == job_id)["calls"] == 40


def test_cancel_a_running_and_a_queued_job(service):
    slow = submit(service, model="fake:0.2", budget=20_000)
    wait_until(lambda: api_job(service, slow)["status"] == "running", 60, "the slow job to start")
    queued = submit(service)  # one job at a time: this one waits
    assert api_job(service, queued)["status"] == "queued"
    cancelled = nograd("cancel", queued, env=service)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"{queued} cancelled", cancelled.stderr
    cancelling = nograd("cancel", slow, env=service)
    assert cancelling.returncode == 0 and cancelling.stdout.strip() == f"{slow} cancelling", cancelling.stderr
    assert f"nograd watch {slow}" in cancelling.stderr
    wait_until(lambda: api_job(service, slow)["status"] == "cancelled", 60, "the slow job to stop")
    again = one_error_line(nograd("cancel", slow, env=service))
    assert "HTTP 409" in again and "nothing to cancel" in again
    no_prompt = one_error_line(nograd("download", slow, env=service))
    assert f"job {slow} has no prompt to download" in no_prompt and "cancelled" in no_prompt


def test_download_writes_the_prompt_and_never_clobbers(service, tmp_path):
    from nograd.artifacts import load_prompt

    job_id = submit(service, "--watch")
    done = nograd("download", job_id, env=service, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / f"{job_id}.safetensors"
    assert done.stdout.strip() == path.name and "nograd eval --prompt" in done.stderr
    saved = load_prompt(path)
    assert saved["config"].method == "bbt" and saved["x"].shape[-1] == 8
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind
    exists = one_error_line(nograd("download", job_id, env=service, cwd=tmp_path))
    assert "exists; pass --force" in exists
    forced = nograd("download", job_id, "--out", str(tmp_path / "p.safetensors"), env=service)
    assert forced.returncode == 0 and (tmp_path / "p.safetensors").read_bytes() == path.read_bytes()
    nowhere = one_error_line(nograd("download", job_id, "--out", str(tmp_path / "no" / "p.st"), env=service))
    assert "does not exist" in nowhere


def test_service_errors_are_one_line_naming_the_problem(service):
    missing = one_error_line(nograd("cancel", "job_missing", env=service))
    assert "HTTP 404: job job_missing not found" in missing and "`nograd jobs`" in missing
    assert "HTTP 404" in one_error_line(nograd("download", "job_missing", env=service))
    no_key = one_error_line(nograd("jobs", env={**service, "NOGRAD_API_KEY": ""}))
    assert "HTTP 401" in no_key and "--api-key" in no_key and "NOGRAD_API_KEY" in no_key
    wrong_key = one_error_line(nograd("status", "job_x", env={**service, "NOGRAD_API_KEY": "ng_wrong"}))
    assert "HTTP 401: invalid API key" in wrong_key


def test_a_service_that_is_not_running_is_named_with_the_fix():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    for command in (("jobs",), ("status", "job_x"), ("cancel", "job_x"), ("watch", "job_x")):
        refused = one_error_line(nograd(*command, "--url", url))
        assert f"cannot reach the nograd service at {url}" in refused, refused
        assert "Connection refused" in refused and "`nograd serve`" in refused
    assert time.monotonic() - started < 60
    no_scheme = one_error_line(nograd("jobs", "--url", "localhost:8000"))
    assert "http://" in no_scheme
