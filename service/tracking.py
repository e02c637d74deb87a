"""Experiment tracking: every finished job as one MLflow run (`NOGRAD_MLFLOW_URI`; `pip install 'nograd[mlflow]'`).

A run holds the job's identity as tags (job id, name, method, task, model, status, study; the tenant only as a
hash), its resolved config as params, its history as per-generation metrics (step = generation), its final
scores as `final.*` metrics, and its prompt file and result as artifacts. No secret goes out: a config names an
endpoint's API key secret but never holds the key, an endpoint URL loses any user info and query string before
it is logged, and a job's error message (which may quote a remote endpoint's answer) is not logged.

MLflow is imported when a tracker is made, never at module import, so the service runs without it. Logging is
synchronous and blocking (MLflow's client is); the executor calls it off the event loop after a job's final
state is written, so a slow or failing tracking server never changes or delays a job's status.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

#: The longest param value logged: MLflow servers before 2.x refused values over 500 characters (newer ones take
#: 6000), so a longer value (an init text, a verbalizer) is cut here, marked, rather than failing the whole run.
MAX_PARAM_CHARS = 500
#: MLflow's limits on one `log_batch` call (`mlflow.utils.validation`).
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000
#: History keys that are not metrics: the step itself, the timestamp, the optimizer's current layer (bbtv2).
_NOT_METRICS = {"generation", "time", "layer"}
#: nograd status -> MLflow run status.
_RUN_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
INSTALL_HINT = "pip install 'nograd[mlflow]'"


class TrackingError(ValueError):
    """Experiment tracking is configured in a way that cannot work (MLflow missing, a file store not opted into)."""


def check_uri(uri: str) -> str:
    """Refuse a tracking URI that cannot work on this machine, with the fix; returns it unchanged.

    Raises:
        TrackingError: MLflow is not installed, or `uri` is a local file store (a path or file:// URI), which
            MLflow 3 keeps in maintenance mode and opens only with MLFLOW_ALLOW_FILE_STORE=true.
    """
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingError(f"mlflow_uri (NOGRAD_MLFLOW_URI) is set but MLflow is not installed: {INSTALL_HINT}")
    if _is_file_store(uri) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise TrackingError(
            f"mlflow_uri {uri!r} is a local file store, which MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true; "
            "set that, or use sqlite:///path/mlflow.db or an MLflow server's http(s):// URL"
        )
    return uri


class MlflowTracker:
    """Logs finished jobs to the MLflow tracking store at `uri`, in the experiment `experiment` (created when
    missing). Thread-safe: `log_job` may run in several threads at once (the experiment is looked up once).

    Raises:
        TrackingError: see `check_uri`.
    """

    def __init__(self, uri: str, experiment: str = "nograd"):
        check_uri(uri)
        import mlflow  # the optional extra: imported only when tracking is on, here so that a broken install shows

        self.uri, self.experiment = uri, experiment
        self._mlflow = mlflow
        self._client = None  # made on first use: a file store creates its folder then, which may fail
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    @property
    def client(self):
        """The `mlflow.MlflowClient` of `uri`."""
        with self._lock:
            if self._client is None:
                self._client = self._mlflow.MlflowClient(tracking_uri=self.uri)
            return self._client

    @classmethod
    def from_settings(cls, settings) -> MlflowTracker | None:
        """The tracker `settings.mlflow_uri` asks for (None: tracking off)."""
        return cls(settings.mlflow_uri) if settings.mlflow_uri else None

    def log_job(
        self,
        job: dict,
        history: list[dict],
        prompt_bytes: bytes | None,
        files: dict[str, bytes] | None = None,
    ) -> str:
        """Log one finished job (a `Store.get_job` row) as a new run; returns the run's id.

        Args:
            job: the job, with its resolved `config` and (when it succeeded) its `result`.
            history: its history entries (`Store.history`), one per generation.
            prompt_bytes: its native prompt file (`Store.artifact`), logged as prompt.safetensors (None: it has none).
            files: more artifacts, relative path -> content (e.g. a text export).
        """
        from mlflow.entities import Metric, Param

        run = self.client.create_run(
            self._experiment(),
            start_time=_ms(job.get("started_at") or job["created_at"]),
            tags=_tags(job),
            run_name=(job.get("name") or job["id"])[:250],
        )
        run_id = run.info.run_id
        end = job.get("finished_at")
        try:
            params = [Param(key, value) for key, value in job_params(job).items()]
            metrics = [Metric(key, value, ms, step) for key, value, ms, step in job_metrics(job, history)]
            for i in range(0, len(params), _PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=params[i : i + _PARAMS_PER_BATCH])
            for i in range(0, len(metrics), _METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=metrics[i : i + _METRICS_PER_BATCH])
            self._log_files(run_id, job, prompt_bytes, files or {})
        except Exception:
            try:  # a half-logged run says so instead of looking as if it still ran
                self.client.set_terminated(run_id, "FAILED")
            except Exception:
                pass
            raise
        self.client.set_terminated(run_id, _RUN_STATUS.get(job["status"], "FINISHED"), _ms(end) if end else None)
        return run_id

    def describe(self, exc: BaseException) -> str:
        """A tracking error in words for the log, with the tracking URI's password (if it has one) masked."""
        text = f"{type(exc).__name__}: {exc}"
        password = urlsplit(self.uri).password
        return text.replace(password, "***") if password else text

    def _experiment(self) -> str:
        """The experiment's id, looked up (or created) once; two threads may both look it up, to the same id."""
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            try:
                self._experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
            except Exception:  # another thread or replica created it first
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def _log_files(self, run_id: str, job: dict, prompt_bytes: bytes | None, files: dict[str, bytes]) -> None:
        artifacts = dict(files)
        if prompt_bytes is not None:
            artifacts["prompt.safetensors"] = prompt_bytes
        if job.get("result") is not None:
            artifacts["result.json"] = json.dumps(job["result"], indent=2, sort_keys=True).encode()
        if not artifacts:
            return
        with tempfile.TemporaryDirectory(prefix="nograd-mlflow-") as tmp:
            for name, data in artifacts.items():
                path = Path(tmp, _artifact_path(name))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            self.client.log_artifacts(run_id, tmp)


# ---------------------------------------------------------------- what a run holds
def _tags(job: dict) -> dict[str, str]:
    config = job.get("config") or {}
    endpoint = config.get("endpoint") or {}
    tags = {
        "nograd.job_id": job["id"],
        "nograd.status": job["status"],
        "nograd.method": job.get("method") or config.get("method"),
        "nograd.task": job.get("task") or config.get("task"),
        "nograd.model": job.get("model") or config.get("model"),
        # an opaque, stable id: runs of one tenant group together without naming the tenant
        "nograd.tenant_hash": hashlib.sha256(str(job.get("tenant", "")).encode()).hexdigest()[:16],
        "nograd.study_id": job.get("study_id"),
        "nograd.name": job.get("name"),
        "nograd.tags": ",".join(job.get("tags") or []) or None,
        "nograd.init_from": job.get("init_from"),
        "nograd.endpoint_kind": endpoint.get("kind"),
        "nograd.endpoint_api_key_secret": endpoint.get("api_key_secret"),  # the secret's name, never its value
    }
    return {key: str(value)[:MAX_PARAM_CHARS] for key, value in tags.items() if value is not None}


def job_params(job: dict) -> dict[str, str]:
    """The job's resolved config as MLflow params: nested dicts flattened to dotted keys, lists as JSON, values
    cut to `MAX_PARAM_CHARS`; an endpoint URL without user info or query string (where keys may hide)."""
    config = dict(job.get("config") or {})
    if isinstance(config.get("endpoint"), dict) and config["endpoint"].get("base_url"):
        config["endpoint"] = {**config["endpoint"], "base_url": _safe_url(config["endpoint"]["base_url"])}
    params = {}
    for key, value in _flatten(config).items():
        text = value if isinstance(value, str) else json.dumps(value)
        params[_key(key)] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return params


def job_metrics(job: dict, history: list[dict]) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp in ms, step) for every numeric value of every history entry (step = its
    generation; nested values as dotted keys, e.g. `dev.metric`), then the job's final scores as `final.*` at
    the last generation: its summary columns, overlaid by every numeric value of its result."""
    metrics = []
    fallback = _ms(job.get("finished_at") or job["created_at"])
    for entry in history:
        step, timestamp = int(entry["generation"]), _ms(entry["time"]) if entry.get("time") else fallback
        values = {k: v for k, v in entry.items() if k not in _NOT_METRICS}
        metrics += [(_key(key), value, timestamp, step) for key, value in _numbers(values).items()]
    final = {name: job.get(name) for name in ("calls", "best_train_loss", "best_dev_metric")}
    final["test_metric"] = job.get("test_metric")
    final.update(_numbers(job.get("result") or {}))
    last = int(history[-1]["generation"]) if history else 0
    metrics += [(_key(f"final.{key}"), value, fallback, last) for key, value in _numbers(final).items()]
    return metrics


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:
            flat[f"{prefix}{key}"] = value
    return flat


def _numbers(values: dict) -> dict[str, float]:
    """The finite numbers (not booleans) among `values`, flattened; lists and text are left out."""
    return {
        key: float(value)
        for key, value in _flatten(values).items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def _key(name: str) -> str:
    """An MLflow param/metric key: at most 250 of the characters MLflow allows."""
    return re.sub(r"[^\w\-. /:]", "_", name)[:250]


def _artifact_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise ValueError(f"files: {name!r} is not a relative path inside the run's artifacts")
    return path


def _safe_url(url: str) -> str:
    """`url` without user info, query or fragment (the places a credential can sit in a URL)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def _is_file_store(uri: str) -> bool:
    return urlsplit(uri).scheme in ("", "file")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
