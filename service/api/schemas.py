"""Request and response models of the REST API (JobCreate / JobPublic / JobsPublic, ...).

A job's fields, its `options` and its `endpoint` are generated from the dataclasses that declare them once
(`nograd.config.RunConfig`, `nograd.clients.endpoint.EndpointConfig`) and from the method and endpoint-kind
registries, so the schema, the CLI and validation never disagree.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, computed_field, create_model, field_validator

from nograd.clients.endpoint import EndpointConfig
from nograd.clients.kinds import ENDPOINT_KINDS
from nograd.config import JOB_FIELDS, JOB_OPTIONS, RunConfig
from nograd.methods import METHODS
from nograd.progress import Phase

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _fields(cls: type, names: tuple[str, ...], *, optional: bool) -> dict[str, Any]:
    """`create_model` field definitions for `names` of dataclass `cls`: each field's annotation (with its bounds
    and description) and default, or `X | None = None` when `optional` (unset: the default applies later)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    out = {}
    for name in names:
        annotation = hints[name]
        if optional:
            base, *meta = typing.get_args(annotation) if typing.get_origin(annotation) is Annotated else (annotation,)
            out[name] = (Annotated[(base | None, *meta)], None)
        else:
            out[name] = (annotation, defaults[name] if defaults[name] is not dataclasses.MISSING else ...)
    return out


JobOptions = create_model(
    "JobOptions",
    __config__=_STRICT,
    __doc__="Method and optimizer options; unset fields take the method's defaults (see README, Methods).",
    **_fields(RunConfig, JOB_OPTIONS, optional=True),
)

_kind_help = "; ".join(f"{name}: {cls.description}" for name, cls in ENDPOINT_KINDS.items())
EndpointSpec = create_model(
    "EndpointSpec",
    __config__=_STRICT,
    __doc__="A remote model endpoint the job scores prompts on instead of this service's workers.",
    kind=(Literal[tuple(ENDPOINT_KINDS)], Field(description=_kind_help)),  # type: ignore[valid-type]
    **{
        name: spec
        for name, spec in _fields(
            EndpointConfig, tuple(f.name for f in dataclasses.fields(EndpointConfig)), optional=False
        ).items()
        if name != "kind"
    },
)

_top = _fields(RunConfig, JOB_FIELDS, optional=False)
_top["method"] = (
    Literal[tuple(METHODS)],  # type: ignore[valid-type]
    Field(description="; ".join(f"{m.name}: {m.description}" for m in METHODS.values())),
)
_top["task"] = (_top["task"][0], None)
TAG_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
Tag = Annotated[str, Field(pattern=TAG_PATTERN, description="1-64 characters of A-Z a-z 0-9 _ . : -")]
#: The request bodies' examples in the OpenAPI schema (tests/service/test_openapi.py validates them).
JOB_EXAMPLE = {"method": "bbt", "task": "mr", "budget": 200, "name": "mr, bbt", "tags": ["demo"]}
STUDY_EXAMPLE = {
    "name": "bbt vs bbpl on mr",
    "base": {"task": "mr", "budget": 200},
    "sweep": {"method": ["bbt", "bbpl"], "seed": [0, 1, 2]},
}
JobCreate = create_model(
    "JobCreate",
    __config__=ConfigDict(**_STRICT, json_schema_extra={"examples": [JOB_EXAMPLE]}),
    **_top,
    name=(
        str | None,
        Field(None, min_length=1, max_length=200, description="a label for the job (GET /v1/jobs?name= finds it)"),
    ),
    tags=(
        list[Tag],
        Field(default_factory=list, max_length=20, description="up to 20 tags (GET /v1/jobs?tag= filters by one)"),
    ),
    dataset_id=(str | None, Field(None, max_length=40, description="an uploaded dataset (POST /v1/datasets)")),
    init_from=(str | None, Field(None, max_length=40, description="a finished job whose prompt is the start")),
    options=(JobOptions, Field(default_factory=JobOptions)),
    endpoint=(
        EndpointSpec | None,
        Field(None, description="score on a remote API instead of this service's workers (model is then ignored)"),
    ),
)


class JobPublic(BaseModel):
    id: str
    name: str | None = None
    tags: list[str] = Field(default_factory=list)
    study_id: str | None = Field(None, description="the study that created the job (POST /v1/studies), if any")
    status: str
    method: str
    task: str
    dataset_id: str | None
    model: str
    budget: int
    calls: int
    generation: int
    best_train_loss: float | None
    best_dev_metric: float | None
    test_metric: float | None
    error: str | None
    message: str | None
    cancel_requested: bool
    init_from: str | None
    config: dict[str, Any]
    result: dict[str, Any] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    phase: dict[str, Any] | None = Field(
        None,
        validate_default=True,
        description="what the job is doing now, null once it ended: name (queued, loading, initial, search, dev, "
        "final_train, test, saving), label (in words), done/total/unit (calls or examples) where it can say, since",
    )

    @field_validator("phase")
    @classmethod
    def _phase_of_status(cls, phase: dict | None, info: ValidationInfo) -> dict | None:
        """The runner's phase while running; `queued` while waiting; none once ended. The search phase's count is
        the job's calls (written every generation; the phase itself is written when it changes)."""
        status = info.data.get("status")
        if status == "queued":
            return Phase("queued", since=info.data.get("created_at") or time.time()).to_dict()
        if status != "running":
            return None
        if phase is None:
            return Phase("loading", since=info.data.get("started_at") or time.time()).to_dict()
        if phase.get("name") == "search":
            phase = {**phase, "done": info.data.get("calls", phase.get("done"))}
        return phase

    @computed_field
    @property
    def elapsed_seconds(self) -> float | None:
        """Wall time since the job started (until it finished)."""
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    @computed_field
    @property
    def eta_seconds(self) -> float | None:
        """Remaining search time at the rate so far (the final test scoring comes on top)."""
        elapsed = self.elapsed_seconds
        if self.status != "running" or not self.calls or elapsed is None:
            return None
        return elapsed / self.calls * max(0, self.budget - self.calls)


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


# ---------------------------------------------------------------- studies (sweeps of jobs; `api.sweeps`)
#: What a study may sweep: a job's top-level fields (its name and tags are the study's to set) and its options.
SWEEP_KEYS = tuple(f for f in JobCreate.model_fields if f not in ("name", "tags")) + tuple(
    f"options.{name}" for name in JobOptions.model_fields
)


class StudyCreate(BaseModel):
    model_config = ConfigDict(**_STRICT, json_schema_extra={"examples": [STUDY_EXAMPLE]})

    name: str | None = Field(
        None, min_length=1, max_length=200, description="the study's label; its jobs are named after it and their cell"
    )
    base: dict[str, Any] = Field(
        description="the jobs' common settings, a JobCreate body (as POST /v1/jobs takes it); fields the sweep "
        "sets may be left out, and a swept value replaces the base's"
    )
    # Keys are checked by `api.sweeps.check_sweep` (its 422 lists the valid ones in full); the schema lists them too.
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        min_length=1,
        description="values to try: a JobCreate field or options.NAME -> a list of distinct values. Each "
        "combination of the keys other than seed is a cell; each cell runs once per seed (default: the base's)",
        json_schema_extra={"propertyNames": {"enum": list(SWEEP_KEYS)}},
    )

    @field_validator("base", "sweep")
    @classmethod
    def _finite(cls, value: dict, info: ValidationInfo) -> dict:
        """Free-form JSON is stored and echoed back: no NaN or Infinity in it (JSON has neither)."""
        if not _finite(value):
            raise ValueError(f"{info.field_name} holds NaN or Infinity; numbers must be finite")
        return value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


class MetricSummary(BaseModel):
    mean: float
    std: float | None = Field(description="sample standard deviation (ddof=1); null when n < 2")
    n: int = Field(description="succeeded jobs that reported the metric")


class StudyCell(BaseModel):
    key: str = Field(description="the cell's values in words, e.g. 'method=bbt, options.dim=50'")
    params: dict[str, Any] = Field(description="the cell's values of the swept keys other than seed")
    job_ids: list[str] = Field(description="its jobs, one per seed, in `seeds` order")
    seeds: list[Any]
    counts: dict[str, int] = Field(description="its jobs by status")
    n_done: int = Field(description="its jobs that ended (succeeded, failed or cancelled)")
    dev_metric: MetricSummary | None = Field(description="best dev metric over its succeeded jobs")
    test_metric: MetricSummary | None = Field(description="test metric over its succeeded jobs")


class StudyPublic(BaseModel):
    id: str
    name: str | None
    created_at: float
    base: dict[str, Any]
    sweep: dict[str, list[Any]]
    n_jobs: int
    counts: dict[str, int] = Field(description="the study's jobs by status (every status, 0 included)")
    done: bool = Field(description="every job ended")
    cells: list[StudyCell]


class StudiesPublic(BaseModel):
    data: list[StudyPublic]
    count: int


class HistoryPublic(BaseModel):
    data: list[dict[str, Any]]
    count: int


# ---------------------------------------------------------------- a finished job's analysis (`nograd.analysis`)
class TokenNeighborPublic(BaseModel):
    id: int
    token: str = Field(description="the token decoded alone")
    similarity: float = Field(description="cosine similarity of its input embedding to the soft position's")


class DemonstrationPublic(BaseModel):
    index: int = Field(description="index into the run's demonstration pool (its training examples)")
    text: str
    text2: str | None = None
    label: str


class PromptDescription(BaseModel):
    kind: Literal["manual", "text", "demos", "soft", "deep"]
    mode: str = Field(description="the prompt mode: none, cat, add, deep, text or demos")
    template: str
    verbalizer: dict[str, str]
    chat: bool = False
    text: str | None = Field(None, description="text: the discrete prompt")
    demonstrations: list[DemonstrationPublic] | None = Field(None, description="demos: the examples shown, in order")
    n_tokens: int | None = Field(None, description="soft/deep: prompt positions")
    init: str | None = None
    dim: int | None = None
    nearest_tokens: list[list[TokenNeighborPublic]] | None = Field(
        None,
        description="soft: per position, the nearest vocabulary tokens (a hint); null when the endpoint that ran "
        "the job cannot tell (remote APIs, the service's queued workers)",
    )


class ScoredPublic(BaseModel):
    metric: float
    confusion: list[list[int]] = Field(description="counts[gold][predicted], in `labels` order")


class ChangedExample(BaseModel):
    index: int = Field(description="position in the test set")
    text: str
    text2: str | None = None
    gold: str
    manual: str = Field(description="the manual prompt's prediction")
    tuned: str = Field(description="the tuned prompt's prediction")


class ChangedPublic(BaseModel):
    fixed: list[ChangedExample] = Field(description="manual wrong, tuned right (at most `limit`)")
    broken: list[ChangedExample] = Field(description="manual right, tuned wrong (at most `limit`)")
    n_fixed: int
    n_broken: int
    limit: int


class AnalysisPublic(BaseModel):
    """What a succeeded job learned: its prompt, test confusion matrices of the tuned and the manual prompt, and
    the test examples whose prediction changed. `tuned`, `manual` and `changed` are null without a test split."""

    job_id: str
    version: int
    labels: list[str]
    metric_name: str
    n_test: int
    prompt: PromptDescription
    tuned: ScoredPublic | None
    manual: ScoredPublic | None
    changed: ChangedPublic | None


class DatasetPublic(BaseModel):
    id: str
    name: str
    filename: str
    options: dict[str, Any]
    summary: dict[str, Any] = Field(
        description="rows, pool (train and dev rows), test (held-out rows), labels, per_label (pool rows), "
        "test_per_label, fields, test_fraction (the share held out; 0 with a test file), notes"
    )
    sha256: str
    created_at: float
    test_filename: str | None = Field(None, description="the uploaded test file (test_file), if any")


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class TaskPublic(BaseModel):
    name: str
    labels: list[str]
    verbalizer: dict[str, str]
    metric: str
    template: str
    pool: int
    test: int


class OptionPublic(BaseModel):
    name: str
    type: str = Field(description="integer, number, string or boolean")
    choices: list[Any] | None = None
    default: Any = Field(None, description="the method's default (None: unset, or derived from the task)")
    description: str = ""


class MethodPublic(BaseModel):
    name: str
    description: str
    when: str = Field("", description="when to pick it, in one line")
    search: bool = Field(description="searches for a prompt (budget applies); else a baseline")
    prompt: str = Field(description="what candidates are: none, soft, deep, text or demos")
    needs_embeddings: bool
    transfers: bool = Field(description="its prompts can start another job (init_from)")
    endpoint_kinds: list[str] = Field(description="remote endpoint kinds that serve it with default options")
    options: list[OptionPublic]


class ModelPublic(BaseModel):
    name: str
    workers: int
    info: dict[str, Any] | None


class WorkerPublic(BaseModel):
    """A live worker as tenants see it: no host or pid, and only their own work named."""

    id: str = Field(description="a digest of the worker's id (its default id names its host and pid)")
    models: list[str]
    devices: list[str]
    batches_done: int
    candidates_done: int = Field(0, description="candidates scored (model calls), over all its batches")
    errors: int
    busy_seconds: float = Field(description="seconds spent evaluating batches (idle time excluded)")
    current: str | None = Field(
        description="'JOB_ID/GENERATION' while it evaluates one of your jobs, 'busy' for another tenant's, null idle"
    )
    started_at: float
    last_heartbeat: float
    heartbeat_age: float

    # Rates over the worker's busy time, from counters it publishes with each heartbeat. A client that differences
    # `batches_done` between its own polls reads 0 whenever no batch finished between two heartbeats (a batch that
    # runs longer than the poll, or two polls within one heartbeat); these do not.
    @computed_field
    @property
    def batches_per_second(self) -> float | None:
        """Batches finished per second of evaluating; null before its first batch."""
        return self.batches_done / self.busy_seconds if self.batches_done and self.busy_seconds > 0 else None

    @computed_field
    @property
    def candidates_per_second(self) -> float | None:
        """Candidates (model calls) scored per second of evaluating; null before its first batch."""
        return self.candidates_done / self.busy_seconds if self.candidates_done and self.busy_seconds > 0 else None
