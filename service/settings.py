"""Service settings: one `Settings` object from NOGRAD_* environment variables (and CLI flags)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .tracking import check_uri


class Settings(BaseSettings):
    """Embedded defaults: SQLite in `data_dir`, no Redis (in-process queue and worker), auth on."""

    model_config = SettingsConfigDict(env_prefix="NOGRAD_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".nograd")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite in data_dir. Use "
        "PostgreSQL when several API/runner replicas share the state.",
    )
    db_auto_upgrade: bool = Field(
        False,
        description="upgrade a database at an older schema when the service opens it (else `nograd serve` and "
        "`nograd runner` refuse to start until `nograd db upgrade` ran)",
    )
    redis_url: str | None = Field(
        None, description="Redis for the batch queue and external workers; None: in-process queue and worker"
    )
    namespace: str = "nograd"
    auth: bool = Field(True, description="API keys required; off only for local single-user use (binds 127.0.0.1)")
    host: str = "127.0.0.1"
    port: int = 8000
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["smollm2-135m"], description="models jobs may use; the embedded worker loads them"
    )
    embedded_worker: bool = Field(True, description="with Redis: also run a worker in the API process")
    run_jobs: bool = Field(True, description="run the job runner in the API process")
    dtype: str = Field("auto", description="workers' dtype: auto (bf16 where native, else fp16 on GPU, fp32 on CPU)")
    device: str = "auto"
    memory_cap_mb: float | None = Field(
        None,
        description="activation memory per forward pass of a worker (scores do not depend on it); None: sized from "
        "the device once the models are loaded (a share of free GPU memory or available RAM, at most half of "
        "worker_memory_mb; the worker logs what it picked)",
    )
    max_concurrent_jobs: int = Field(16, ge=1)
    batch_size: int | None = Field(None, ge=1, description="most candidates per queue batch (None: whole populations)")
    lease_seconds: float = Field(30.0, gt=0)
    claim_idle: float = Field(60.0, gt=0, description="seconds before another worker takes over a batch")
    max_deliveries: int = Field(3, ge=1)
    max_upload_mb: float = Field(20.0, gt=0)
    worker_wait: float = Field(600.0, gt=0, description="seconds a job waits for a worker serving its model")

    # Limits and quotas (README "Limits and quotas": what each one bounds, what a user sees when it is hit).
    max_job_memory_mb: float = Field(
        1024.0, gt=0, description="largest memory a job's search may need in its runner (optimizer state, policy)"
    )
    worker_memory_mb: float = Field(
        2048.0,
        gt=0,
        description="memory a worker may spend on one job's batches beyond the model (projections, prompts, "
        "activations); jobs that need more are refused at submit and failed by the worker",
    )
    projection_cache_mb: float = Field(512.0, gt=0, description="bytes of projection matrices a worker keeps")
    max_job_calls: int = Field(200_000, ge=1, description="largest budget (model calls) of one job")
    max_takeovers: int = Field(
        3, ge=1, description="times a job may be taken over from a runner that died on it before it is failed"
    )
    max_body_mb: float = Field(1.0, gt=0, description="largest request body except dataset uploads")
    max_json_depth: int = Field(32, ge=2, description="deepest nesting of a JSON value in an uploaded dataset")
    remote_max_response_mb: float = Field(16.0, gt=0, description="largest response body read from an endpoint")
    remote_max_concurrency: int = Field(8, ge=1, description="most requests one job has in flight to an endpoint")
    tenant_running_jobs: int = Field(
        4, ge=1, description="running jobs per tenant; more wait queued, runner slots are shared fairly"
    )
    tenant_queued_jobs: int = Field(100, ge=1, description="queued jobs per tenant; more: 429")
    max_study_jobs: int = Field(
        100, ge=1, description="most jobs one study (POST /v1/studies) may create; it must fit tenant_queued_jobs too"
    )
    tenant_streams: int = Field(16, ge=1, description="open event streams per tenant; more: 429")
    tenant_storage_mb: float = Field(200.0, gt=0, description="dataset storage per tenant; more: 429")
    ready_timeout: float = Field(1.0, gt=0, description="seconds /readyz and API calls wait for the store or queue")
    shutdown_grace: float = Field(5.0, gt=0, description="seconds open connections get to close on SIGTERM")
    operator_key: str | None = Field(
        None, description="bearer key for /metrics (and other operator routes); None: data_dir/operator.key"
    )
    blas_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="threads of numpy's BLAS in serve, runner and worker (the optimizers' linear algebra; a model's "
        "own torch threads are apart): one, since a process runs many jobs' small decompositions at once",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="stderr log lines of serve, runner and worker: text, or json (one object per line: time, level, "
        "logger, message, request_id, tenant, job_id)",
    )
    worker_metrics_port: int = Field(
        9101, ge=0, le=65535, description="port of a worker's Prometheus /metrics on 0.0.0.0 (0: none)"
    )

    remote_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host names or CIDRs remote endpoints may use although they are "
        "private or loopback (denied by default); comma-separated",
    )
    secrets_key: str | None = Field(
        None,
        description="Fernet key encrypting tenant secrets (remote API keys); "
        "None: data_dir/secrets.key, created on first use. Set it on every replica "
        "that shares a database",
    )

    mlflow_uri: str | None = Field(
        None,
        max_length=2000,
        description="MLflow tracking URI (http(s)://, sqlite:///, or file:/// with MLFLOW_ALLOW_FILE_STORE=true): "
        "every finished job is logged there as a run (`nograd.service.tracking`); needs pip install 'nograd[mlflow]'",
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_usable(cls, value: str | None) -> str | None:
        return check_uri(value) if value else None

    @field_validator("memory_cap_mb")
    @classmethod
    def _cap_positive(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:  # `not >` also refuses NaN
            raise ValueError(
                f"memory_cap_mb must be more than 0 MB (got {value}); leave it unset to size it from the device"
            )
        return value

    @field_validator("models", "remote_allow", mode="before")
    @classmethod
    def _split_models(cls, value):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _auth_needs_loopback(self) -> Settings:
        if not self.auth and not _is_loopback(self.host):
            raise ValueError(
                f"auth is off, so the server may only bind to 127.0.0.1 (got host {self.host!r}); "
                "turn auth on (NOGRAD_AUTH=true) to listen on other interfaces"
            )
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'nograd.db'}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
