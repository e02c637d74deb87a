"""The optimization loop shared by the CLI and the service: ask -> score the population on the training batch
through any `ModelClient` (or, with `racing`, on growing slices of it: `nograd.racing`) -> tell; dev evaluation
every N calls; the best-dev prompt is the result.

The loop owns no I/O: callers persist `state_dict()` after each generation and get per-generation records.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace

import numpy as np

from nograd.clients.losses import all_losses, metric
from nograd.clients.protocol import ModelClient
from nograd.clients.types import EvalRequest, EvalResult, Examples, ProjectionSpec, PromptSpec, TaskSpec
from nograd.optimizers import make_deep_optimizer, make_optimizer, optimizer_from_state

from . import racing
from .config import ResolvedConfig
from .progress import OnPhase, Phase, report

STATE_VERSION = 1


def prompt_spec(config: ResolvedConfig, mode: str) -> PromptSpec:
    """The prompt a run optimizes: BBT's `cat`/`add` soft prompt, or BBTv2's `deep` prompt."""
    projection = ProjectionSpec(
        seed=config.seed, dim=config.dim, distribution=config.distribution, alpha=config.alpha, sigma0=config.sigma0
    )
    return PromptSpec(mode=mode, n_tokens=config.n_tokens, projection=projection, init=config.init)


def _dev_key(metric: float, ce: float) -> tuple[float, float]:
    return (metric, -ce)


@dataclass
class _Scoring:
    """How one generation was scored on the training batch.

    Attributes:
        scored: the candidates scored (the population, or its first rows when the budget runs out).
        values: what the optimizer is told, one per scored candidate (the objective; racing: `racing.told_values`).
        full: positions in `scored` whose value is the objective on the whole training batch (racing: the last
            round's survivors), the only ones the best-train records consider.
        metric_max: the best training metric among `full`.
        result: the last evaluation (for `_entry_extra`).
        example_evals: example-evaluations spent (one candidate on one training example each).
        rounds: racing only: [candidates, new examples] of each round.
    """

    scored: np.ndarray
    values: np.ndarray
    full: np.ndarray
    metric_max: float
    result: EvalResult
    example_evals: int
    rounds: list[list[int]] | None = None


class PromptSearch:
    """Black-box search over z for one run.

    `mode` is the prompt mode the method optimizes (`nograd.methods.Method.prompt_mode`). `init_x`/`init_spec` start
    from an earlier run's prompt (transfer between tasks, as in SPoT): the search reuses that run's projection and
    starts its distribution at that run's z.

    Invariants: `example_evals` counts exactly the (candidate, training example) pairs scored, and `calls` is
    that over the training batch's size, so one candidate on the whole batch is one call and a racing round on a
    quarter of it a quarter call; it never exceeds the budget, and the search is done once less than one call is
    left. Dev evaluations are not charged. The candidate with the best dev metric (ties: lower dev CE) is the
    result; the initial prompt (z = 0) is always a contender, so the result is never worse on dev.
    """

    def __init__(
        self,
        config: ResolvedConfig,
        task: TaskSpec,
        train: Examples,
        dev: Examples,
        n_layers: int,
        *,
        mode: str,
        init_x: np.ndarray | None = None,
        init_spec: PromptSpec | None = None,
    ):
        self.config, self.task, self.train, self.dev = config, task, train, dev
        self.spec = init_spec if init_spec is not None else prompt_spec(config, mode)
        self.deep = self.spec.mode == "deep"
        self.n_layers = n_layers
        self.init_x = None if init_x is None else np.asarray(init_x, dtype=np.float64)
        shape = (n_layers, self.spec.projection.dim) if self.deep else (self.spec.projection.dim,)
        if self.init_x is not None and self.init_x.shape != shape:
            raise ValueError(
                f"init_from: the starting prompt has shape {self.init_x.shape}, this run needs {shape}; "
                "start from a prompt of the same method, model and dim"
            )
        options = dict(
            dim=config.dim,
            popsize=config.popsize,
            sigma0=config.sigma0,
            seed=config.seed,
            bounds=config.bounds,
            **({} if self.init_x is None else {"x0": self.init_x}),
        )
        if self.deep:
            self.optimizer = make_deep_optimizer(
                n_layers=n_layers, inner=config.optimizer, budget=config.budget, **options
            )
        else:
            self.optimizer = make_optimizer(config.optimizer, budget=config.budget, **options)
        self._reset_progress()

    def _reset_progress(self) -> None:
        self.example_evals = 0
        self.generation = 0
        self.started = False
        self.best_dev: dict | None = None
        self.best_train = {"loss": math.inf, "x": None}
        self._interval_best = {"loss": math.inf, "x": None}
        self._next_dev = self.config.dev_every
        self.initial: dict | None = None
        self._stale = 0  # dev rounds since the best dev metric last improved
        self.stopped: str | None = None  # why the search stopped before its budget (early stopping)

    # ---------------------------------------------------------------- candidates
    def _zero(self) -> np.ndarray:
        """The initial prompt: z = 0, or the `init_x` a run transfers from."""
        if self.init_x is not None:
            return self.init_x.copy()
        return np.zeros((self.n_layers, self.config.dim) if self.deep else self.config.dim)

    def _request(
        self,
        examples: Examples,
        x: np.ndarray | None = None,
        *,
        population: np.ndarray | None = None,
        layer: int | None = None,
        base: np.ndarray | None = None,
        generation: int | None = None,
    ) -> EvalRequest:
        """A request for full candidates `x` (one) or for a population varying one layer (deep) / all of z, in
        `generation` (default: the last completed one)."""
        generation = self.generation if generation is None else generation
        if x is not None:
            if self.deep:
                return EvalRequest(self.task, examples, self.spec, base=x, loss=self.config.loss, generation=generation)
            population = x[None]
        return EvalRequest(
            self.task,
            examples,
            self.spec,
            z=population,
            layer=layer,
            base=base,
            loss=self.config.loss,
            generation=generation,
        )

    def _objective(self, logits: np.ndarray, columns: np.ndarray, scored: np.ndarray) -> np.ndarray:
        """What the optimizer minimizes for candidates `scored`, from their (P, n, K) label-word logits on the
        training examples `columns` (n indices into `train`, the order of the logits' examples): the run's loss
        by default, computed as the endpoint computes `EvalResult.loss`."""
        labels = np.asarray(self.train.labels)[columns]
        return all_losses(np.asarray(logits, dtype=np.float64), labels, self.task.metric)[0][self.config.loss]

    def _entry_extra(self, result) -> dict:
        """Hook: extra fields for a generation's history record."""
        return {}

    async def _score_dev(self, client: ModelClient, candidates: list[np.ndarray]) -> list[tuple[float, float]]:
        if self.deep:
            results = [await client.evaluate(self._request(self.dev, x)) for x in candidates]
            return [(float(r.metric[0]), float(r.losses["ce"][0])) for r in results]
        result = await client.evaluate(self._request(self.dev, population=np.stack(candidates)))
        return [(float(m), float(c)) for m, c in zip(result.metric, result.losses["ce"])]

    async def _dev_round(self, client: ModelClient, candidates: list[np.ndarray]) -> dict:
        report(self.on_phase, Phase("dev"))
        scores = await self._score_dev(client, candidates)
        best_i = max(range(len(scores)), key=lambda i: _dev_key(*scores[i]))
        metric, ce = scores[best_i]
        improved = self.best_dev is None or _dev_key(metric, ce) > _dev_key(
            self.best_dev["metric"], self.best_dev["ce"]
        )
        if improved:
            self.best_dev = {"metric": metric, "ce": ce, "x": candidates[best_i].copy(), "calls": self.calls}
        return {"metric": metric, "ce": ce, "improved": improved, "best_metric": self.best_dev["metric"]}

    # ---------------------------------------------------------------- loop
    #: Executor for the optimizer's CPU work (None: asyncio's default). A service running many searches sets one
    #: shared single-thread executor, so that optimizer threads do not crowd the event loop out of the GIL.
    executor = None
    #: Told when the search enters a phase (`nograd.progress`): scoring the initial prompt, a generation, dev.
    on_phase: OnPhase | None = None

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @property
    def calls(self) -> int | float:
        """Model calls spent: `example_evals` over the training batch's size. A whole number (an int) unless
        racing scored candidates on part of the batch."""
        whole, part = divmod(self.example_evals, len(self.train))
        return whole if part == 0 else self.example_evals / len(self.train)

    @property
    def whole_calls(self) -> int:
        """`calls` rounded up, for what counts in whole calls (progress bars, the service's `calls` column): a
        call partly spent counts, and it never exceeds the budget (an integer)."""
        return math.ceil(self.example_evals / len(self.train))

    @property
    def _evals_left(self) -> int:
        return self.config.budget * len(self.train) - self.example_evals

    @property
    def _budget_spent(self) -> bool:
        """Less than one call (one candidate on the whole training batch) is left."""
        return self._evals_left < len(self.train)

    @property
    def done(self) -> bool:
        return self.started and (self._budget_spent or self.stopped is not None)

    def _optimizer_converged(self) -> str | None:
        """Why the optimizer's own stop criteria fired before the budget (with `optimizer_stop`), else None."""
        if not self.config.optimizer_stop or self._budget_spent or not self.optimizer.should_stop():
            return None
        conditions = getattr(self.optimizer, "stop_conditions", None) or {}
        named = f" ({', '.join(sorted(conditions))})" if conditions else ""
        return f"the optimizer's stop criteria fired{named}"

    def _after_dev(self, improved: bool) -> None:
        """Count dev rounds without improvement; past `patience` the search stops."""
        self._stale = 0 if improved else self._stale + 1
        patience = self.config.patience
        if patience is not None and self._stale >= patience and self.stopped is None and not self.done:
            self.stopped = f"no better dev metric in {patience} dev round{'s' if patience > 1 else ''}"

    async def start(self, client: ModelClient) -> dict:
        """Score the initial prompt (z = 0) on train and dev; pin the projection scales the endpoint derived."""
        report(self.on_phase, Phase("initial"))
        zero = self._zero()
        result = await client.evaluate(self._request(self.train, zero))
        if result.scales is not None:
            self.spec = replace(self.spec, scales=tuple(result.scales))
        self.initial = {"train_loss": float(result.loss[0]), "train_metric": float(result.metric[0])}
        if self.deep:
            self.optimizer.tell_reference(float(result.loss[0]))
        dev = await self._dev_round(client, [zero])
        self.initial["dev_metric"] = dev["metric"]
        self.started = True
        return dict(self.initial)

    async def step(self, client: ModelClient) -> dict:
        """One generation: returns its history record."""
        if not self.started:
            raise RuntimeError("call start() before step()")
        started = time.perf_counter()
        report(self.on_phase, Phase("search", self.whole_calls, self.config.budget, "calls"))
        layer = self.optimizer.layer if self.deep else None
        base = self.optimizer.base() if self.deep else None
        # ask/tell run off the event loop: CMA-ES at d = 500 takes milliseconds per call, which would stall
        # everything else a service runs on the loop (API requests, other jobs).
        population = await self._off_loop(self.optimizer.ask)
        score = self._race if self.config.racing else self._score_all
        scoring = await score(client, population, layer, base, self.generation + 1)
        losses = scoring.values
        partial = len(scoring.scored) < len(population)
        self.example_evals += scoring.example_evals
        if not partial:  # a truncated population is not told: the optimizer expects whole generations
            await self._off_loop(self.optimizer.tell, population, losses)
        i = int(scoring.full[np.argmin(losses[scoring.full])])
        x = scoring.scored[i].copy()
        if self.deep:
            x, row = base.copy(), x
            x[layer] = row
        for record in (self.best_train, self._interval_best):
            if losses[i] < record["loss"]:
                record.update(loss=float(losses[i]), x=x)
        self.generation += 1
        if not partial:
            self.stopped = self.stopped or self._optimizer_converged()
        entry = {
            "generation": self.generation,
            "calls": self.calls,
            "layer": layer,
            "losses": [float(v) for v in losses],
            "min_loss": float(losses.min()),
            "mean_loss": float(losses.mean()),
            "best_loss": self.best_train["loss"],
            "train_metric_max": scoring.metric_max,
            "sigma": self.optimizer.step_size,
            **self._entry_extra(scoring.result),
        }
        if scoring.rounds is not None:
            entry["racing"] = {"rounds": scoring.rounds, "example_evals": scoring.example_evals}
        if self.calls >= self._next_dev or self.done:
            while self._next_dev <= self.calls:
                self._next_dev += self.config.dev_every
            candidates = [np.asarray(self.optimizer.mean, dtype=np.float64)]
            if self._interval_best["x"] is not None:
                candidates.append(self._interval_best["x"])
            entry["dev"] = await self._dev_round(client, candidates)
            self._interval_best = {"loss": math.inf, "x": None}
            self._after_dev(entry["dev"]["improved"])
        if self.stopped is not None:
            entry["stopped"] = self.stopped
        entry["seconds"] = time.perf_counter() - started
        return entry

    async def _score_all(
        self, client: ModelClient, population: np.ndarray, layer: int | None, base: np.ndarray | None, generation: int
    ) -> _Scoring:
        """Every candidate on the whole training batch (only as many as the budget has whole calls left for)."""
        n_examples = len(self.train)
        scored = population[: self._evals_left // n_examples]
        result = await client.evaluate(
            self._request(self.train, population=scored, layer=layer, base=base, generation=generation)
        )
        losses = self._objective(result.logits, np.arange(n_examples), scored)
        return _Scoring(
            scored=scored,
            values=losses,
            full=np.arange(len(scored)),
            metric_max=float(np.max(result.metric)),
            result=result,
            example_evals=len(scored) * n_examples,
        )

    async def _race(
        self, client: ModelClient, population: np.ndarray, layer: int | None, base: np.ndarray | None, generation: int
    ) -> _Scoring:
        """Successive halving (`nograd.racing`): round r scores the candidates still in the race on the next slice
        of this generation's label-balanced order of the training batch; a candidate's loss after a round is the
        objective over every example it has seen (its logits gathered in batch order, so the survivors' last loss
        is their whole-batch loss), and the better half (rounded up) goes on. The optimizer is told
        `racing.told_values`. When the budget cannot pay for the whole population's race, the most candidates it
        can pay for race (and the optimizer is not told, as for any truncated generation)."""
        n_examples = len(self.train)
        size = len(population)
        if racing.cost(size, n_examples) > self._evals_left:
            size = racing.largest_population(size, n_examples, self._evals_left)
        scored = population[:size]
        order = racing.example_order(self.train.labels, self.config.seed, generation)
        logits: np.ndarray | None = None  # (size, E, K), filled in as the rounds go
        losses, rounds_seen = np.full(size, np.nan), np.zeros(size, dtype=np.int64)
        alive, rounds, spent = np.arange(size), [], 0
        bounds = racing.slice_bounds(n_examples)
        for r, ((start, stop), n_alive) in enumerate(zip(bounds, racing.survivors_per_round(size))):
            if r:
                alive = alive[racing.keep_best(losses[alive], n_alive)]
            new = order[start:stop]
            result = await client.evaluate(
                self._request(
                    self.train.take(new), population=scored[alive], layer=layer, base=base, generation=generation
                )
            )
            if logits is None:
                logits = np.full((size, n_examples, np.shape(result.logits)[-1]), np.nan)
            logits[alive[:, None], new[None, :]] = result.logits
            seen = np.sort(order[:stop])
            losses[alive] = self._objective(logits[alive][:, seen], seen, scored[alive])
            rounds_seen[alive] = r + 1
            spent += len(alive) * len(new)
            rounds.append([len(alive), len(new)])
        labels = np.asarray(self.train.labels)
        return _Scoring(
            scored=scored,
            values=racing.told_values(rounds_seen, losses),
            full=alive,
            metric_max=float(np.max(metric(logits[alive], labels, self.task.metric))),
            result=result,
            example_evals=spent,
            rounds=rounds,
        )

    def result(self) -> dict:
        best = self.best_dev
        return {
            "x": best["x"],
            "dev_metric": best["metric"],
            "dev_ce": best["ce"],
            "selected_at_calls": best["calls"],
            "best_train_loss": self.best_train["loss"],
            "calls": self.calls,
            "stopped": self.stopped,
            "spec": self.spec,
            "initial": self.initial,
            "text": self.prompt_text(best["x"]),
        }

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """State after a completed generation (numpy arrays inside; `nograd.optimizers.state_to_json` writes it
        losslessly); `load_state` continues bit-identically."""
        return {
            "version": STATE_VERSION,
            "calls": self.calls,
            "example_evals": self.example_evals,
            "generation": self.generation,
            "started": self.started,
            "spec": self.spec.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_dev": self.best_dev,
            "best_train": dict(self.best_train),
            "interval_best": dict(self._interval_best),
            "next_dev": self._next_dev,
            "initial": self.initial,
            "stale": self._stale,
            "stopped": self.stopped,
        }

    def _optimizer_from_state(self, state: dict):
        return optimizer_from_state(state)

    def prompt_text(self, x: np.ndarray) -> str | None:
        """The readable prompt a candidate stands for (discrete methods); None for soft prompts."""
        return None

    def load_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"search state version {state.get('version')} is not {STATE_VERSION}; rerun the job")
        self.generation, self.started = state["generation"], state["started"]
        # absent: written before racing, when every call scored the whole training batch
        self.example_evals = int(state.get("example_evals", state["calls"] * len(self.train)))
        self.spec = PromptSpec.from_dict(state["spec"])
        self.optimizer = self._optimizer_from_state(state["optimizer"])
        self.best_dev = None if state["best_dev"] is None else dict(state["best_dev"])
        self.best_train = dict(state["best_train"])
        self._interval_best = dict(state["interval_best"])
        self._next_dev = state["next_dev"]
        self.initial = state["initial"]
        self._stale, self.stopped = state.get("stale", 0), state.get("stopped")  # absent: written before early stop
