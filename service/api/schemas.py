"""Request and response models of the REST API (JobCreate / JobPublic / JobsPublic, ...)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import time

from pydantic import BaseModel, ConfigDict, Field, computed_field

from nograd.config import METHODS


class JobOptions(BaseModel):
    """Method and optimizer options; unset fields take the method's defaults (see README, Methods)."""

    model_config = ConfigDict(extra="forbid")

    popsize: int | None = Field(None, ge=2, le=1000, description="candidates per generation")
    optimizer: str | None = Field(None, max_length=64, description="cma or ng:<nevergrad optimizer>")
    sigma0: float | None = Field(None, gt=0, le=1000)
    alpha: float | None = Field(None, gt=0, le=1000, description="projection scale")
    bounds: float | None = Field(None, gt=0, le=1e6)
    loss: Literal["ce", "hinge", "perf"] | None = None
    mode: Literal["cat", "add"] | None = Field(None, description="bbt prompt injection")
    n_tokens: int | None = Field(None, ge=1, le=256)
    dim: int | None = Field(None, ge=1, le=10_000)
    distribution: Literal["normal", "uniform"] | None = None
    init: str | None = Field(None, max_length=2000, description="text whose tokens seed the prompt")
    icl_shots: int | None = Field(None, ge=1, le=32, description="demonstrations per class (icl, icl_search)")
    prompt_length: int | None = Field(None, ge=1, le=64, description="discrete prompt positions (bbpl: n-grams, "
                                      "rlprompt: tokens, icl_search: demonstrations)")
    lr: float | None = Field(None, gt=0, lt=1, description="learning rate (bbpl, rlprompt, icl_search)")
    vocab_size: int | None = Field(None, ge=2, le=5000, description="bbpl: candidate n-grams per position")
    ngram_max: int | None = Field(None, ge=1, le=5, description="bbpl: longest n-gram")
    ngram_min_count: int | None = Field(None, ge=1, le=1000, description="bbpl: least n-gram frequency")
    min_pmi: float | None = Field(None, ge=0, le=100, description="bbpl: least PMI to merge words into an n-gram")
    top_k: int | None = Field(None, ge=1, le=50_000, description="rlprompt: sampling cut-off")
    mlp_hidden: int | None = Field(None, ge=1, le=4096, description="rlprompt: policy MLP width")
    reward_correct: float | None = Field(None, gt=0, le=1e4, description="rlprompt: reward weight when right")
    reward_wrong: float | None = Field(None, gt=0, le=1e4, description="rlprompt: reward weight when wrong")


class EndpointSpec(BaseModel):
    """A remote model endpoint the job scores prompts on instead of this service's workers."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai", "vllm"] = Field(description="openai: any OpenAI-compatible server (OpenAI, llama.cpp, "
                                                        "vLLM's text API); vllm: also soft prompts via prompt_embeds")
    base_url: str = Field(max_length=500, description="e.g. https://api.openai.com/v1")
    model: str = Field(max_length=200, description="the model name the endpoint expects")
    api: Literal["completions", "chat"] = "completions"
    api_key_secret: str | None = Field(None, max_length=100, description="name of a secret (POST /v1/secrets)")
    top_logprobs: int | None = Field(None, ge=1, le=100)
    concurrency: int | None = Field(None, ge=1, le=64)
    timeout: float | None = Field(None, gt=0, le=600)
    max_retries: int | None = Field(None, ge=0, le=20)
    embedder_model: str | None = Field(None, max_length=500, description="vllm + bbt: the served model's weights "
                                       "here (built-in name or path), to build prompt_embeds")
    exact_label_ids: bool | None = Field(None, description="vllm: exact label-word scores via logprob_token_ids")
    rescore_missing: bool | None = Field(None, description="ask again with logit_bias for a label word without an "
                                         "exact match in the top list (default true)")
    label_token_ids: dict[str, Annotated[int, Field(ge=0)]] | None = Field(
        None, max_length=1000, description="label word -> the endpoint's id of its first token (else the server's "
                                           "tokenizer route is asked)")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal[METHODS] = Field(description=", ".join(METHODS))  # type: ignore[valid-type]
    task: str | None = Field(None, max_length=100, description="bundled task name (GET /v1/tasks)")
    dataset_id: str | None = Field(None, max_length=40, description="an uploaded dataset (POST /v1/datasets)")
    model: str = Field("smollm2-135m", max_length=200, description="GET /v1/models")
    budget: int = Field(600, ge=1, le=1_000_000, description="model calls (candidates scored on train)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    k_shot: int = Field(16, ge=1, le=1024, description="training (and dev) examples per class")
    dev_every: int = Field(100, ge=1, le=1_000_000, description="dev evaluation every N calls")
    init_from: str | None = Field(None, max_length=40, description="a finished job whose prompt is the start")
    options: JobOptions = Field(default_factory=JobOptions)
    endpoint: EndpointSpec | None = Field(None, description="score on a remote API instead of this service's "
                                                              "workers (model is then ignored)")


class JobPublic(BaseModel):
    id: str
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


class HistoryPublic(BaseModel):
    data: list[dict[str, Any]]
    count: int


class DatasetPublic(BaseModel):
    id: str
    name: str
    filename: str
    options: dict[str, Any]
    summary: dict[str, Any]
    sha256: str
    created_at: float


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


class ModelPublic(BaseModel):
    name: str
    workers: int
    info: dict[str, Any] | None


class WorkerPublic(BaseModel):
    id: str
    host: str
    pid: int
    models: list[str]
    devices: list[str]
    batches_done: int
    errors: int
    busy_seconds: float
    current: str | None
    started_at: float
    last_heartbeat: float
    heartbeat_age: float
