"""Typed results of the SDK: small pydantic models of what the REST API answers.

Every model keeps fields it does not declare (`extra="allow"`, read them as attributes or with `model_extra`), so
a newer service's additions never break an older client; most declared fields have defaults for the same reason
(an older service may not send them). For code written against the first client, which returned dicts, results
also read like mappings: `job["id"]`, `job.get("task")`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})  # a job in one of these never changes again


class Resource(BaseModel):
    """The base of the SDK's results: unknown fields kept, dict-style reads for older callers."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields:
            return getattr(self, key)
        extra = self.model_extra or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        """Whether the service sent the field `key` (as `key in answer_dict` read)."""
        return key in self.model_fields_set or key in (self.model_extra or {})

    def get(self, key: str, default: Any = None) -> Any:
        """The field `key` (declared or not), else `default`, like `dict.get`."""
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        """The fields as the service sent them (JSON types; defaults it did not send left out)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Job(Resource):
    """A job (`JobPublic`): what it runs, how far it got, its best metrics, timings (Unix seconds)."""

    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    method: str | None = None
    task: str | None = None
    dataset_id: str | None = None
    model: str | None = None
    name: str | None = None
    tags: list[str] = Field(default_factory=list)
    study_id: str | None = None
    budget: int = 0
    calls: int = 0
    generation: int = -1
    best_train_loss: float | None = None
    best_dev_metric: float | None = None
    test_metric: float | None = None
    error: str | None = None
    message: str | None = None
    cancel_requested: bool = False
    init_from: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    phase: dict[str, Any] | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None

    @property
    def done(self) -> bool:
        """The job has ended (succeeded, failed or cancelled) and will not change again."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class JobList(Resource):
    """A page of `GET /v1/jobs`: `data` (newest first) and `count`, the number of jobs matching the filters."""

    data: list[Job]
    count: int


class MetricSummary(Resource):
    """A metric over a study cell's succeeded jobs: `std` is the sample std (ddof=1), None under two jobs."""

    mean: float | None = None
    std: float | None = None
    n: int = 0


class StudyCell(Resource):
    """One combination of a study's non-seed sweep values, run once per seed."""

    key: str = Field(description='the combination in words, e.g. "method=bbt, options.dim=50"')
    params: dict[str, Any] = Field(default_factory=dict)
    job_ids: list[str] = Field(default_factory=list)
    seeds: list[Any] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict, description="its jobs per status")
    n_done: int = 0
    dev_metric: MetricSummary | None = None
    test_metric: MetricSummary | None = None


class Study(Resource):
    """A sweep of jobs (`POST /v1/studies`): its base job, the sweep, and per cell its jobs and metrics."""

    id: str
    name: str | None = None
    created_at: float | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    n_jobs: int = 0
    counts: dict[str, int] = Field(default_factory=dict, description="its jobs per status")
    done: bool = False
    cells: list[StudyCell] = Field(default_factory=list)

    @property
    def n_done(self) -> int:
        """Its jobs that have ended."""
        return sum(n for status, n in self.counts.items() if status in TERMINAL)


class StudyList(Resource):
    """`GET /v1/studies`: `data` and `count`."""

    data: list[Study]
    count: int


class Event(NamedTuple):
    """One server-sent event of a job: `event` is `job` (its snapshot, on change), `generation` (one history
    record; the stream's event id is its `generation`) or `end` (data `{"status": ...}`: the stream is over).

    It unpacks as `(event, data)`, as the first client's events did."""

    event: str
    data: Any

    @property
    def job(self) -> Job | None:
        """The snapshot of a `job` event as a `Job`; None for other events."""
        return Job.model_validate(self.data) if self.event == "job" else None

    @property
    def generation(self) -> int | None:
        """The generation of a `generation` event; None for other events."""
        return self.data.get("generation") if self.event == "generation" else None
