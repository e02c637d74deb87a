"""The evaluation engine: a whole population of candidate prompts scored on a batch of examples in batched
forward passes.

Scores never depend on the memory cap or on how a population is split: examples are sorted by length and taken in
fixed micro-batches of `MICRO_BATCH` (padded to the micro-batch's own longest example), and the cap only decides
how many candidates run in one pass over a micro-batch. Each row of a forward pass is computed independently of
the others (tests/engine checks this holds bit for bit in bf16), so a candidate's scores are the same in one pass
with many candidates, alone, or on another worker.

Two exact reuses make it fast on causal LMs:
- prefix reuse: the shared prefix (instruction, prompt, demonstrations) is encoded once per candidate and every
  example attends to its keys and values;
- frozen-layer reuse (deep prompts): when only layer i's prompt varies across candidates, the hidden states
  entering layer i are computed once and only layers >= i run per candidate.
On an accelerator, discrete prompts whose token sequences differ only inside equally long prefixes share one
layout: their prefix token embeddings go into the differing positions and they run as one population (exact: the
same tokens at the same positions). On CPU this bought nothing (bench/discrete.py: 1.00x BBPL, 0.87x RLPrompt
populations), so there they run one by one.
The LM head is applied only at the scored position, restricted to the label-word rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import torch
from transformers import DynamicCache

from nograd.clients.losses import score_logits
from nograd.clients.render import candidates
from nograd.clients.types import (
    DISCRETE_MODES,
    EvalRequest,
    EvalResult,
    Examples,
    ModelInfo,
    PromptSpec,
    TaskSpec,
    TokenNeighbor,
)

from . import DEFAULT_MEMORY_CAP_MB, MICRO_BATCH
from .batching import PromptSet, cache_from, ranges, select
from .budget import batch_cost
from .errors import EngineError
from .fused import FusedDecoder
from .injection import Injector, Plan
from .layout import PLACEHOLDER_START, Layout, build_layout, text_ids
from .models import ModelHandle
from .projection import Projections

log = logging.getLogger(__name__)

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class Engine:
    """Scores populations of prompts with one model. One call at a time (the model's hooks are shared).

    Args:
        handle: the loaded model.
        memory_cap_mb: activation memory a single forward may use; candidates are chunked to fit (a single
            candidate on one micro-batch always runs).
        prefix_reuse: encode the shared prefix once per candidate (causal LMs; exact).
        layer_reuse: in deep mode, share the layers below the varying one across candidates (exact).
        discrete_batching: score discrete prompts of equal token length as one population (exact); None: only
            when the model is not on the CPU.
        fused: run Llama-family models through `nograd.engine.fused` (exact to float rounding); None: wherever
            the model supports it. False: always the Hugging Face forward.
        compile: let the fused forward use `torch.compile` (None: `fused.can_compile`, NOGRAD_COMPILE).
    """

    def __init__(
        self,
        handle: ModelHandle,
        *,
        memory_cap_mb: float = DEFAULT_MEMORY_CAP_MB,
        prefix_reuse: bool = True,
        layer_reuse: bool = True,
        discrete_batching: bool | None = None,
        memory_budget_mb: float | None = None,
        projection_cache_mb: float = 512.0,
        fused: bool | None = None,
        compile: bool | None = None,
    ):
        self.handle = handle
        self.memory_budget = None if memory_budget_mb is None else memory_budget_mb * 2**20
        self.discrete_batching = handle.device.type != "cpu" if discrete_batching is None else discrete_batching
        self.memory_cap = memory_cap_mb * 2**20
        self.prefix_reuse = prefix_reuse
        self.layer_reuse = layer_reuse
        self.projections = Projections(projection_cache_mb * 2**20)
        self.injector = Injector(handle.layers)
        self._layer_scales: dict[tuple, list[float]] = {}
        self._emb_std = handle.embedding_std()
        self._vocab_ids: torch.Tensor | None = None  # `_vocabulary_ids`, found on first use
        self.fused = self._fused_decoder(fused, compile)

    def _fused_decoder(self, fused: bool | None, compile: bool | None) -> FusedDecoder | None:
        if fused is False or not self.prefix_reuse:
            return None
        why_not = FusedDecoder.supports(self.handle)
        if why_not is not None:
            if fused:
                raise EngineError(f"the fused forward does not serve {self.handle.name}: {why_not}")
            log.info("engine: Hugging Face forward for %s (%s)", self.handle.name, why_not)
            return None
        decoder = FusedDecoder(self.handle, compile=compile)
        log.info("engine: fused forward for %s (%s)", self.handle.name, "compiled" if decoder.compiled else "eager")
        return decoder

    def describe(self) -> ModelInfo:
        h = self.handle
        return ModelInfo(
            model_id=h.model_id,
            kind=h.kind,
            hidden_size=h.hidden_size,
            n_layers=h.n_layers,
            max_length=h.max_length,
            device=str(h.device),
            dtype=_DTYPE_NAMES.get(h.dtype, str(h.dtype)),
        )

    # ------------------------------------------------------------------ public API
    def evaluate(self, request: EvalRequest) -> EvalResult:
        """Label-word logits, losses and metric for every candidate of `request`."""
        started = time.perf_counter()
        if request.prompt.mode in DISCRETE_MODES:
            logits, scales = self.discrete_logits(request), None
        else:
            layout = self.layout(request)
            prompts = self.prompts(request, layout)
            logits, scales = self.population_logits(layout, prompts).numpy(), prompts.scales
        return score_logits(request, logits, model_id=self.handle.model_id, started=started, scales=scales)

    def _discrete_layouts(self, request: EvalRequest) -> list[tuple[Layout, list[int]]]:
        """One layout per distinct concrete prompt of a `text`/`demos` request, with the candidates it scores."""
        h = self.handle
        members: dict[tuple, list[int]] = {}
        for i, (task, text) in enumerate(candidates(request)):
            members.setdefault((task, text), []).append(i)
        return [
            (
                build_layout(
                    h.tokenizer, h.kind, task, request.examples, PromptSpec(mode="none"), h.max_length, prompt_text=text
                ),
                rows,
            )
            for (task, text), rows in members.items()
        ]

    def discrete_logits(self, request: EvalRequest) -> np.ndarray:
        """(P, E, K) logits for `text`/`demos` candidates: each is a concrete prefix (its prompt tokens and
        demonstrations), encoded once and shared by every example; identical candidates are scored once, and
        (with discrete batching) prompts whose token sequences differ only inside equally long prefixes run as
        one population."""
        out = np.empty((request.population, len(request.examples), len(request.task.labels)))
        groups: dict[tuple, list[tuple[Layout, list[int]]]] = {}
        for layout, rows in self._discrete_layouts(request):
            key = (
                len(layout.prefix_ids),
                layout.body_ids.numpy().tobytes(),
                layout.body_mask.numpy().tobytes(),
                layout.score_pos.numpy().tobytes(),
                layout.label_ids.numpy().tobytes(),
            )
            groups.setdefault(key if self.discrete_batching else (len(groups),), []).append((layout, rows))
        for members in groups.values():
            if len(members) == 1:
                layout, rows = members[0]
                out[rows] = self.population_logits(layout, PromptSet(population=1)).numpy()[0]
                continue
            prefixes = torch.stack([layout.prefix_ids for layout, _ in members])
            slots = torch.nonzero((prefixes != prefixes[:1]).any(0)).flatten()
            with torch.inference_mode():  # each prompt's own token embeddings at the positions where they differ
                embed = self.handle.embedding(prefixes[:, slots].to(self.handle.device))
            shared = replace(members[0][0], slots=slots, p0_ids=None, mode="cat")
            scored = self.population_logits(shared, PromptSet(population=len(members), embed=embed)).numpy()
            for row, (_, rows) in enumerate(members):
                out[rows] = scored[row]
        return out

    def scored_tokens(self, request: EvalRequest) -> tuple[list[list[list[int]]], list[int]]:
        """The token ids the engine scores: per candidate and example, the sequence up to and including the scored
        position (soft prompt slots as their placeholder ids), and the label words' token ids."""
        if request.prompt.mode in DISCRETE_MODES:
            layouts = self._discrete_layouts(request)
            by_row = {row: layout for layout, rows in layouts for row in rows}
            return [by_row[i].sequences() for i in range(request.population)], layouts[0][0].label_ids.tolist()
        layout = self.layout(request)
        return [layout.sequences()] * request.population, layout.label_ids.tolist()

    def input_embeddings(self, request: EvalRequest) -> tuple[list[list[np.ndarray]], list[int]]:
        """For endpoints that take whole inputs as embeddings (vLLM's prompt_embeds): per candidate and example,
        the (T, H) float32 input embeddings up to and including the scored position, and the label words' token
        ids. Causal LMs and `cat`/`add` prompts only."""
        h = self.handle
        if h.kind != "causal" or request.prompt.mode not in ("cat", "add"):
            raise EngineError("input embeddings are built for causal LMs and cat/add prompts only")
        layout = self.layout(request)
        prompts = self.prompts(request, layout)
        with torch.inference_mode():
            prefix = self._prefix_embeddings(layout, prompts, 0, prompts.population).float().cpu()
            bodies = [
                h.embedding(layout.body_ids[e, : int(layout.score_pos[e]) + 1].to(h.device)).float().cpu()
                for e in range(layout.n_examples)
            ]
        rows = [[torch.cat([prefix[c], body]).numpy() for body in bodies] for c in range(prompts.population)]
        return rows, [int(i) for i in layout.label_ids]

    def layout(self, request: EvalRequest) -> Layout:
        h = self.handle
        return build_layout(h.tokenizer, h.kind, request.task, request.examples, request.prompt, h.max_length)

    def materialize(self, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray:
        """The prompt candidate `x` stands for, float32: (n, H) for cat/add (`x` is z), (L, n, H) for deep (`x` is
        the (L, d) base; needs pinned `spec.scales`); (0, H) without a soft prompt."""
        h = self.handle
        n = spec.n_tokens if not spec.init else len(h.tokenizer(spec.init, add_special_tokens=False)["input_ids"])
        if spec.mode in ("cat", "add"):
            scale = spec.scales[0] if spec.scales else self._emb_std
            vector = np.zeros((1, spec.projection.dim)) if x is None else np.asarray(x).reshape(1, -1)
            return self.projections.materialize(spec.projection, vector, 0, n, h.hidden_size, scale)[0].numpy()
        if spec.mode == "deep":
            if not spec.scales:
                raise EngineError("materializing a deep prompt needs prompt.scales (returned by the first evaluation)")
            base = np.zeros((h.n_layers, spec.projection.dim)) if x is None else np.asarray(x)
            return np.stack(
                [
                    self.projections.materialize(spec.projection, base[i : i + 1], i, n, h.hidden_size, spec.scales[i])[
                        0
                    ].numpy()
                    for i in range(h.n_layers)
                ]
            )
        return np.zeros((0, h.hidden_size), dtype=np.float32)

    def prompt_embeddings(self, spec: PromptSpec, x: np.ndarray | None) -> torch.Tensor:
        """(n, H) float32 on the model's device: the input embeddings a `cat`/`add` soft prompt puts at its
        positions, as `_prefix_embeddings` builds them (cat: p0 + A z, p0 = the init text's embeddings or 0; add:
        the placeholder or init tokens' embeddings + A z), in fp32 instead of the model's dtype."""
        if spec.mode not in ("cat", "add"):
            raise EngineError(f"prompt embeddings exist for cat/add soft prompts only, not mode {spec.mode!r}")
        h = self.handle
        delta = torch.from_numpy(self.materialize(spec, x)).to(h.device)
        if spec.init:
            slot_ids = text_ids(h.tokenizer, spec.init)
        elif spec.mode == "add":
            slot_ids = list(range(PLACEHOLDER_START, PLACEHOLDER_START + spec.n_tokens))
        else:
            return delta
        weight = h.embedding.weight.detach()
        return weight[torch.tensor(slot_ids, device=weight.device)].float() + delta

    def virtual_tokens(self, task: TaskSpec, spec: PromptSpec, x: np.ndarray | None) -> np.ndarray:
        """(V, H) float32: the input embeddings of every position of `task`'s text up to and including a `cat`/`add`
        soft prompt's last one (special tokens, the template's text before `{prompt}`, the prompt), as the model
        reads them, in fp32. Prepended to the embeddings of the rest of an example's text, they give exactly the
        inputs this engine scores: what a PEFT prompt-tuning adapter or vLLM `prompt_embeds` need (`nograd.export`).
        Causal LMs only: a masked LM's text has special tokens after the text too."""
        h = self.handle
        if h.kind != "causal" or spec.mode not in ("cat", "add"):
            raise EngineError("virtual tokens are built for causal LMs and cat/add soft prompts only")
        layout = build_layout(h.tokenizer, h.kind, task, Examples(texts=["x"], labels=[0]), spec, h.max_length)
        end = int(layout.slots[-1]) + 1
        with torch.inference_mode():
            weight = h.embedding.weight.detach()
            rows = weight[layout.prefix_ids[:end].to(weight.device)].float()
            rows[layout.slots.to(weight.device)] = self.prompt_embeddings(spec, x)
        return rows.cpu().numpy()

    def nearest_tokens(self, spec: PromptSpec, x: np.ndarray | None, k: int) -> list[list[TokenNeighbor]]:
        """Per position of the `cat`/`add` prompt candidate `x` stands for, the `k` tokens whose input embeddings
        have the highest cosine similarity (fp32) to its embedding, nearest first. Candidates are the ids the
        tokenizer can produce, special tokens left out; a position whose embedding is zero has no neighbours."""
        if k < 1:
            raise EngineError(f"k must be >= 1 (got {k})")
        h = self.handle
        with torch.inference_mode():
            prompt = self.prompt_embeddings(spec, x)
            ids = self._vocabulary_ids()
            table = torch.nn.functional.normalize(h.embedding.weight.detach()[ids.to(h.device)].float(), dim=-1)
            norms = prompt.norm(dim=-1)
            similarity = torch.nn.functional.normalize(prompt, dim=-1) @ table.T
            values, index = similarity.topk(min(k, int(ids.numel())), dim=-1)
        token_ids = ids[index.cpu()].tolist()
        return [
            []
            if float(norms[row]) == 0.0
            else [
                TokenNeighbor(id=int(t), token=h.tokenizer.decode([t]), similarity=float(v))
                for t, v in zip(token_ids[row], values[row].cpu().tolist())
            ]
            for row in range(len(token_ids))
        ]

    def _vocabulary_ids(self) -> torch.Tensor:
        """Ids of the tokens a text can hold: the tokenizer's (an embedding matrix is often padded past them),
        without its special tokens."""
        if self._vocab_ids is None:
            h = self.handle
            size = min(int(h.embedding.weight.shape[0]), len(h.tokenizer))
            keep = torch.ones(size, dtype=torch.bool)
            special = [i for i in h.tokenizer.all_special_ids if 0 <= i < size]
            keep[special] = False
            self._vocab_ids = torch.nonzero(keep).flatten()
        return self._vocab_ids

    # ------------------------------------------------------------------ prompts
    def prompts(self, request: EvalRequest, layout: Layout) -> PromptSet:
        spec, h = request.prompt, self.handle
        n = int(layout.slots.numel())
        if spec.mode == "none":
            if request.z is not None:
                raise EngineError("prompt.mode is 'none' but candidates z were sent; set a prompt mode or omit z")
            return PromptSet(population=1)
        d = spec.projection.dim
        self._check_budget(request, n)
        if spec.mode in ("cat", "add"):
            z = np.zeros((1, d)) if request.z is None else np.asarray(request.z)
            scales = spec.scales or (self._emb_std,)
            embed = self.projections.materialize(spec.projection, z, 0, n, h.hidden_size, scales[0])
            return PromptSet(population=embed.shape[0], embed=embed, scales=tuple(scales))
        if spec.mode != "deep":
            raise EngineError(f"prompt.mode {spec.mode!r} is unknown; use none, cat, add or deep")
        scales = tuple(spec.scales) if spec.scales else self.layer_scales(layout)
        if len(scales) != h.n_layers:
            raise EngineError(f"prompt.scales has {len(scales)} values; deep prompts need one per layer ({h.n_layers})")
        base = np.zeros((h.n_layers, d)) if request.base is None else np.asarray(request.base, dtype=np.float64)
        if base.shape != (h.n_layers, d):
            raise EngineError(f"base must have shape ({h.n_layers}, {d}) (layers x projection.dim); got {base.shape}")
        deep = [
            self.projections.materialize(spec.projection, base[i : i + 1], i, n, h.hidden_size, scales[i])
            for i in range(h.n_layers)
        ]
        if request.z is None:
            return PromptSet(population=1, deep=deep, scales=scales)
        if request.layer is None or not 0 <= request.layer < h.n_layers:
            raise EngineError(f"deep candidates need `layer` in [0, {h.n_layers}) naming the layer z is for")
        z = np.asarray(request.z)
        deep[request.layer] = self.projections.materialize(
            spec.projection, z, request.layer, n, h.hidden_size, scales[request.layer]
        )
        return PromptSet(population=z.shape[0], deep=deep, varying_layer=request.layer, scales=scales)

    def _check_budget(self, request: EvalRequest, n_tokens: int) -> None:
        """Refuse, before allocating, a request whose projection and prompts would not fit the worker's budget."""
        if self.memory_budget is None:
            return
        population = 1 if request.z is None else len(request.z)
        cost = batch_cost(population, request.prompt.projection.dim, n_tokens, self.handle.hidden_size, self.memory_cap)
        if cost.total > self.memory_budget:
            raise EngineError(
                f"this batch needs {cost.describe()}, over this worker's memory budget of "
                f"{self.memory_budget / 2**20:,.0f} MB (NOGRAD_WORKER_MEMORY_MB); lower n_tokens, dim or popsize"
            )

    def layer_scales(self, layout: Layout) -> tuple[float, ...]:
        """BBTv2's per-layer scale: layer 0 from the embedding matrix; layer i > 0 from the std of the hidden
        states entering layer i (real tokens of these examples, no prompt), after 5 rounds of clipping at 3 sigma.
        """
        key = (layout.prefix_ids.numpy().tobytes(), layout.body_ids.numpy().tobytes())
        if key not in self._layer_scales:
            plan = Plan(capture=set(range(1, self.handle.n_layers)))
            with torch.inference_mode():
                self._full_logits(layout, PromptSet(population=1), 0, 1, 0, layout.n_examples, plan)
            width = int(layout.body_mask.sum(1).max())
            lp = int(layout.prefix_ids.numel())
            real = torch.cat([torch.ones(layout.n_examples, lp, dtype=torch.bool), layout.body_mask[:, :width]], 1)
            scales = [self._emb_std]
            for i in range(1, self.handle.n_layers):
                values = plan.captured[i].float().cpu()[real]
                for _ in range(5):
                    mean, std = values.mean(), values.std()
                    values = values.clamp(float(mean - 3 * std), float(mean + 3 * std))
                scales.append(float(values.std()))
            self._layer_scales[key] = tuple(scales)
        return self._layer_scales[key]

    # ------------------------------------------------------------------ forward passes
    def _uses_prefix_reuse(self, layout: Layout) -> bool:
        return self.prefix_reuse and self.handle.kind == "causal" and layout.prefix_ids.numel() > 0

    def _candidates_per_pass(self, layout: Layout, population: int) -> int:
        """Candidates per forward pass over one micro-batch so a pass stays under the memory cap (at least 1)."""
        cfg, h = self.handle.config, self.handle
        elem = torch.finfo(h.dtype).bits // 8
        lp, lb = int(layout.prefix_ids.numel()), int(layout.body_ids.shape[1])
        kv_dim = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * (
            h.hidden_size // cfg.num_attention_heads
        )
        inter = getattr(cfg, "intermediate_size", 4 * h.hidden_size)
        per_row = (
            (lp + lb) * 2 * h.n_layers * kv_dim * elem
            + lb * (6 * h.hidden_size + 3 * inter) * elem
            + cfg.num_attention_heads * lb * (lp + lb) * 4
        )
        rows = int(self.memory_cap // per_row)
        return max(1, min(population, rows // min(MICRO_BATCH, layout.n_examples)))

    @torch.inference_mode()
    def population_logits(self, layout: Layout, prompts: PromptSet) -> torch.Tensor:
        """(P, E, K) float32 label-word logits for every candidate on every example."""
        population = prompts.population
        out = torch.empty(population, layout.n_examples, int(layout.label_ids.numel()))
        order = torch.argsort(layout.body_mask.sum(1), descending=True, stable=True)  # similar lengths together
        layout = select(layout, order)
        groups = ranges(layout.n_examples, MICRO_BATCH)
        shared = self._shared_states(layout, prompts, groups)
        per_cand = self._candidates_per_pass(layout, population)
        for c0 in range(0, population, per_cand):
            c1 = min(population, c0 + per_cand)
            for (e0, e1), logits in zip(groups, self._candidate_logits(layout, prompts, c0, c1, groups, shared)):
                out[c0:c1, order[e0:e1]] = logits
        return out

    def _candidate_logits(
        self, layout: Layout, prompts: PromptSet, c0: int, c1: int, groups: list, shared: dict | None
    ):
        """Candidates [c0, c1) on each micro-batch of `groups` in turn -> (c1-c0, group size, K) logits each; with
        prefix reuse the candidates' prefix is encoded once for all micro-batches."""
        n_cand = c1 - c0
        layer = shared["layer"] if shared else 0
        if not self._uses_prefix_reuse(layout):
            for g, (e0, e1) in enumerate(groups):
                yield self._full_logits(
                    layout, prompts, c0, c1, e0, e1, Plan(), layer, shared["full_hidden"][g] if shared else None
                )
            return
        plan = Plan()
        if shared:
            plan.replace[layer] = shared["prefix_hidden"].expand(n_cand, -1, -1)
        cache = self._prefix_cache(layout, prompts, c0, c1, plan, skip=layer)
        for g, (e0, e1) in enumerate(groups):
            plan = Plan()
            if shared:
                plan.replace[layer] = shared["body_hidden"][g].repeat(n_cand, 1, 1)
            yield self._body_logits(
                layout, cache, n_cand, e0, e1, plan, skip=layer, shared_kv=shared["prefix_kv"] if shared else None
            )

    def _frozen_layer(self, prompts: PromptSet) -> int:
        if self.layer_reuse and prompts.varying_layer:
            return prompts.varying_layer
        return 0

    def _shared_states(self, layout: Layout, prompts: PromptSet, groups: list) -> dict | None:
        """For frozen-layer reuse: the hidden states entering the varying layer, computed once with base prompts
        (one tensor per micro-batch of `groups`)."""
        layer = self._frozen_layer(prompts)
        if layer == 0:
            return None
        base = PromptSet(population=1, deep=[p[:1] if p is not None else None for p in prompts.deep])
        base.deep[layer] = None  # the varying layer's prompt is added per candidate after the replace
        plan = Plan(capture={layer})
        state: dict = {"layer": layer}
        if self._uses_prefix_reuse(layout):
            cache = self._prefix_cache(layout, base, 0, 1, plan)
            state["prefix_hidden"] = plan.captured[layer]
            state["prefix_kv"] = cache[:layer]
            hidden = []
            for e0, e1 in groups:
                plan = Plan(capture={layer})
                self._body_logits(layout, cache, 1, e0, e1, plan, skip=0)
                hidden.append(plan.captured[layer])
            state["body_hidden"] = hidden
        else:
            hidden = []
            for e0, e1 in groups:
                plan = Plan(capture={layer})
                self._full_logits(layout, base, 0, 1, e0, e1, plan)
                hidden.append(plan.captured[layer])
            state["full_hidden"] = hidden
        return state

    def _prefix_embeddings(self, layout: Layout, prompts: PromptSet, c0: int, c1: int) -> torch.Tensor:
        h = self.handle
        ids = layout.prefix_ids.to(h.device)
        emb = h.embedding(ids)[None].expand(c1 - c0, -1, -1).clone()
        if prompts.embed is not None:
            slots = layout.slots.to(h.device)
            delta = prompts.embed[c0:c1].to(h.device, h.dtype)
            if layout.mode == "cat":
                p0 = h.embedding(layout.p0_ids.to(h.device)) if layout.p0_ids is not None else 0
                emb[:, slots] = p0 + delta
            else:
                emb[:, slots] += delta
        return emb

    def _prefix_cache(
        self, layout: Layout, prompts: PromptSet, c0: int, c1: int, plan: Plan, skip: int = 0
    ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Run the prefix for candidates [c0, c1) -> per layer its keys and values, (c1 - c0, kv heads, Lp, d)
        (None for layers below `skip`, which do not run)."""
        plan.prompts, plan.slots = prompts.deep_for(c0, c1), layout.slots.to(self.handle.device)
        emb = self._prefix_embeddings(layout, prompts, c0, c1)
        if self.fused is not None:
            return self.fused.prefix(emb, plan, skip)
        cache = DynamicCache(config=self.handle.config)
        with self.injector.active(plan, skip):
            self.handle.base(inputs_embeds=emb, cache=cache, use_cache=True)
        return [(lay.keys, lay.values) if i >= skip else None for i, lay in enumerate(cache.layers)]

    def _body_logits(
        self,
        layout: Layout,
        cache: list[tuple[torch.Tensor, torch.Tensor] | None],
        n_cand: int,
        e0: int,
        e1: int,
        plan: Plan,
        skip: int,
        shared_kv: list | None = None,
    ) -> torch.Tensor:
        """Examples [e0, e1) for n_cand candidates whose prefix keys/values are `cache` (layers below
        len(shared_kv): `shared_kv`, one for all candidates) -> (n_cand, e1-e0, K)."""
        h = self.handle
        width = int(layout.body_mask[e0:e1].sum(1).max())
        ids = layout.body_ids[e0:e1, :width].to(h.device)
        mask = layout.body_mask[e0:e1, :width].to(h.device)
        n_ex, lp = e1 - e0, int(layout.prefix_ids.numel())
        rows = n_cand * n_ex
        emb = h.embedding(ids).repeat(n_cand, 1, 1)
        shared = len(shared_kv) if shared_kv is not None else 0
        prefix_kv = [shared_kv[i] if i < shared else kv for i, kv in enumerate(cache)]
        if self.fused is not None:
            plan.prompts, plan.slots = None, None
            score_pos = layout.score_pos[e0:e1].to(h.device)
            hidden = self.fused.body(emb, prefix_kv, n_ex, mask, score_pos, plan, skip)
            return h.label_logits(hidden, layout.label_ids.to(h.device)).view(n_cand, n_ex, -1).cpu()
        kv = []
        for index, (keys, values) in enumerate(prefix_kv):
            if index < shared:
                keys, values = (t.expand(rows, -1, -1, -1) for t in (keys, values))
            else:
                keys, values = (t.repeat_interleave(n_ex, dim=0) for t in (keys, values))
            kv.append((keys, values))
        body_cache = cache_from(kv, h.config)
        attention = torch.cat(
            [torch.ones(rows, lp, dtype=torch.long, device=h.device), mask.repeat(n_cand, 1).long()], dim=1
        )
        positions = torch.arange(lp, lp + width, device=h.device)[None]
        plan.prompts, plan.slots = None, None
        with self.injector.active(plan, skip):
            hidden = h.base(
                inputs_embeds=emb, attention_mask=attention, position_ids=positions, cache=body_cache, use_cache=True
            ).last_hidden_state
        pos = layout.score_pos[e0:e1].to(h.device).repeat(n_cand)
        picked = hidden[torch.arange(rows, device=h.device), pos]
        return h.label_logits(picked, layout.label_ids.to(h.device)).view(n_cand, n_ex, -1).cpu()

    def _full_logits(
        self,
        layout: Layout,
        prompts: PromptSet,
        c0: int,
        c1: int,
        e0: int,
        e1: int,
        plan: Plan,
        layer: int = 0,
        shared_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Without prefix reuse (masked LMs, or switched off): whole sequences, one row per (candidate, example);
        with `shared_hidden` (frozen-layer reuse) the layers below `layer` are skipped."""
        h = self.handle
        n_cand, n_ex = c1 - c0, e1 - e0
        lp = int(layout.prefix_ids.numel())
        width = int(layout.body_mask[e0:e1].sum(1).max())
        prefix = self._prefix_embeddings(layout, prompts, c0, c1).repeat_interleave(n_ex, dim=0)
        body = h.embedding(layout.body_ids[e0:e1, :width].to(h.device)).repeat(n_cand, 1, 1)
        emb = torch.cat([prefix, body], dim=1)
        mask = layout.body_mask[e0:e1, :width].to(h.device).repeat(n_cand, 1).long()
        attention = torch.cat([torch.ones(n_cand * n_ex, lp, dtype=torch.long, device=h.device), mask], dim=1)
        plan.prompts, plan.slots = prompts.deep_for(c0, c1), layout.slots.to(h.device)
        if shared_hidden is not None:
            plan.replace[layer] = shared_hidden.repeat(n_cand, 1, 1)
        with self.injector.active(plan, layer if shared_hidden is not None else 0):
            hidden = h.base(inputs_embeds=emb, attention_mask=attention).last_hidden_state
        pos = lp + layout.score_pos[e0:e1].to(h.device).repeat(n_cand)
        picked = hidden[torch.arange(n_cand * n_ex, device=h.device), pos]
        return h.label_logits(picked, layout.label_ids.to(h.device)).view(n_cand, n_ex, -1).cpu()
