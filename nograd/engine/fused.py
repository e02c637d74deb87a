"""A fused forward pass for Llama-family decoders (Llama, Mistral, Qwen2, SmolLM2), for the engine's two shapes: a
prefix encoded once per candidate, and example bodies that attend to it.

The engine's work is many short rows over a small model, so on a CPU the time outside the matmuls decides its speed:
Hugging Face's forward spends it on its cache objects, 4-D masks built per call, key/value copies per example, three
projections where one would do, and RMSNorm/rotary/SiLU as chains of separate elementwise ops. This module runs the
same arithmetic with the model's own weights (no copied modeling code beyond the Llama equations):
- q/k/v and gate/up are each one matmul: the module's weights are re-bound as views of one concatenated matrix,
  so no weight is held twice;
- a body's keys and values are its candidate's prefix ones broadcast into one buffer with its own (no cache
  objects, no mask built per layer), and only the scored position runs the last layer's attention output and MLP;
- optionally, each layer is compiled with `torch.compile` (one graph per phase, dynamic row counts, so a new
  population size does not recompile; `can_compile` says when). A compile that fails at run time falls back to
  the eager forward, with a warning.

Rotary embeddings come from the model's own rotary module, so every RoPE variant it implements is honoured.
`FusedDecoder.supports` says which models take this path; the engine falls back to the Hugging Face forward for the
rest. Exactness: in fp32 the logits agree with the Hugging Face forward to float rounding (tests/engine checks 1e-5,
the engine's own tolerance); each row is still computed independently of the others, so scores do not depend on how
a population is split.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .injection import Plan

log = logging.getLogger(__name__)

#: Decoder families whose layers are exactly: RMSNorm -> attention (q/k/v/o, RoPE, GQA) -> residual -> RMSNorm ->
#: gated SiLU MLP -> residual. Others (Qwen3's q/k norms, Gemma's scaled embeddings, ...) use the HF forward.
FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    eps1: float
    eps2: float
    w_qkv: torch.Tensor
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor
    w_gu: torch.Tensor
    w_down: torch.Tensor


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (sum of outputs, in) weight for several linears over the same input; the modules' weights (and biases)
    become views of it, so the model keeps working and no weight is stored twice."""
    weight = torch.cat([m.weight.detach() for m in linears], dim=0)
    has_bias = [m.bias is not None for m in linears]
    bias = torch.cat([m.bias.detach() for m in linears]) if all(has_bias) else None
    if any(has_bias) and bias is None:
        raise ValueError("linears with and without biases cannot be fused")
    start = 0
    for m in linears:
        stop = start + m.out_features
        m.weight = nn.Parameter(weight[start:stop], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[start:stop], requires_grad=False)
        start = stop
    return weight, bias


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm, as Hugging Face computes it (fp32 statistics, scaled in the model's dtype)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (R, T, heads, d) rotated; cos/sin (R or 1, T, 1, d)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _mlp(x: torch.Tensor, layer: _Layer) -> torch.Tensor:
    h = _rms(x, layer.ln2, layer.eps2)
    gate, up = F.linear(h, layer.w_gu).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, layer.w_down)


def _qkv(x: torch.Tensor, layer: _Layer, dims: tuple[int, int, int], cos, sin):
    """Normed x (R, T, H) -> rotated q (R, T, nh, d), k (R, T, kvh, d), v (R, T, kvh, d)."""
    nh, kvh, d = dims
    h = _rms(x, layer.ln1, layer.eps1)
    qkv = F.linear(h, layer.w_qkv, layer.b_qkv)
    rows, width = x.shape[0], x.shape[1]
    q, k, v = qkv.split((nh * d, kvh * d, kvh * d), dim=-1)
    q = _rope(q.view(rows, width, nh, d), cos, sin)
    k = _rope(k.view(rows, width, kvh, d), cos, sin)
    return q, k, v.view(rows, width, kvh, d)


def prefix_layer(x, layer: _Layer, dims, cos, sin, scale: float):
    """One layer over whole prefixes (R, T, H), causal, no padding -> (output, keys, values (R, kvh, T, d))."""
    q, k, v = _qkv(x, layer, dims, cos, sin)
    keys, values = k.transpose(1, 2), v.transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), keys, values, is_causal=True, scale=scale, enable_gqa=dims[0] != dims[1]
    )
    rows, width = x.shape[0], x.shape[1]
    x = x + F.linear(out.transpose(1, 2).reshape(rows, width, -1), layer.w_o)
    return _mlp(x, layer), keys, values


def body_layer(x, layer: _Layer, dims, cos, sin, scale: float, prefix_k, prefix_v, allowed, n_ex: int, score_pos):
    """One layer over example bodies (C * E rows of T tokens, candidate-major) attending to their candidate's prefix
    keys/values (C or 1, kvh, Lp, d) and causally to themselves; `allowed` (rows, 1, Tq, Lp + T) says which keys each
    query sees. With `score_pos` (rows,) given (the last layer), only the scored positions go on past the attention:
    nothing reads the others' outputs."""
    nh, kvh, d = dims
    rows, width = x.shape[0], x.shape[1]
    q, k, v = _qkv(x, layer, dims, cos, sin)
    if score_pos is not None:
        index = torch.arange(rows, device=x.device)
        x, q = x[index, score_pos][:, None], q[index, score_pos][:, None]
    lp = prefix_k.shape[2]
    # The candidate's prefix keys/values are broadcast over its examples into one (rows, kvh, Lp + T, d) buffer.
    keys = x.new_empty(rows, kvh, lp + width, d)
    values = x.new_empty(rows, kvh, lp + width, d)
    grouped_k = keys.view(rows // n_ex, n_ex, kvh, lp + width, d)
    grouped_v = values.view(rows // n_ex, n_ex, kvh, lp + width, d)
    grouped_k[:, :, :, :lp] = prefix_k[:, None]
    grouped_v[:, :, :, :lp] = prefix_v[:, None]
    keys[:, :, lp:] = k.transpose(1, 2)
    values[:, :, lp:] = v.transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), keys, values, attn_mask=allowed, scale=scale, enable_gqa=nh != kvh
    )
    x = x + F.linear(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1), layer.w_o)
    return _mlp(x, layer)


class FusedDecoder:
    """The fused forward of one Llama-family model (see the module docstring). Built once per engine."""

    def __init__(self, handle, *, compile: bool | None = None):
        cfg = handle.config
        base = handle.base
        self.handle = handle
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.dims = (self.n_heads, self.n_kv, self.head_dim)
        self.scale = self.head_dim**-0.5
        self.rotary = base.rotary_emb
        self.norm = base.norm
        self.layers: list[_Layer] = []
        for block in handle.layers:
            attn, mlp = block.self_attn, block.mlp
            w_qkv, b_qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            w_gu, _ = _fuse([mlp.gate_proj, mlp.up_proj])
            self.layers.append(
                _Layer(
                    ln1=block.input_layernorm.weight.detach(),
                    ln2=block.post_attention_layernorm.weight.detach(),
                    eps1=float(block.input_layernorm.variance_epsilon),
                    eps2=float(block.post_attention_layernorm.variance_epsilon),
                    w_qkv=w_qkv,
                    b_qkv=b_qkv,
                    w_o=attn.o_proj.weight.detach(),
                    w_gu=w_gu,
                    w_down=mlp.down_proj.weight.detach(),
                )
            )
        self._prefix_layer, self._body_layer = prefix_layer, body_layer
        self.compiled = False
        self.compile_seconds = 0.0  # spent in first (compiling) calls
        self._warm: set[str] = set()
        if compile is None:
            compile = can_compile(handle.device)
        if compile:
            self._compile()

    @staticmethod
    def supports(handle) -> str | None:
        """None if this model can take the fused path, else why not (for the log)."""
        cfg = handle.config
        if handle.kind != "causal":
            return "not a causal LM"
        model_type = getattr(cfg, "model_type", "")
        if model_type not in FUSED_MODEL_TYPES:
            return f"model type {model_type!r} is not one of {', '.join(FUSED_MODEL_TYPES)}"
        if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
            return "its MLP is not a bias-free gated SiLU"
        if getattr(cfg, "pretraining_tp", 1) != 1:
            return "pretraining_tp > 1"
        window = getattr(cfg, "sliding_window", None)
        if (
            window is not None
            and getattr(cfg, "use_sliding_window", model_type == "mistral")
            and window < handle.max_length
        ):
            return "it uses sliding-window attention"
        base = handle.base
        if not all(hasattr(base, a) for a in ("rotary_emb", "norm")):
            return "its base model has no rotary_emb/norm"
        block = handle.layers[0]
        needed = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
        for part, names in needed.items():
            if not all(hasattr(getattr(block, part, None), n) for n in names):
                return f"its layers lack {part}.{'/'.join(names)}"
        if not hasattr(block, "input_layernorm") or not hasattr(block.input_layernorm, "variance_epsilon"):
            return "its layers have no Llama RMSNorm"
        return None

    # ------------------------------------------------------------------ compile
    def _compile(self) -> None:
        try:
            self._prefix_layer = torch.compile(prefix_layer, dynamic=True)
            self._body_layer = torch.compile(body_layer, dynamic=True)
            self.compiled = True
        except Exception as exc:  # noqa: BLE001 - compilation is an optimization; eager is always correct
            log.warning("torch.compile is unavailable (%s); the fused forward runs eagerly", exc)

    def _run(self, phase: str, *args):
        """One layer of `phase` (prefix/body), compiled if it compiles; the first call of a compiled phase pays the
        compile (its time is added to `compile_seconds`), and a failing compile switches to eager for good."""
        fn = self._prefix_layer if phase == "prefix" else self._body_layer
        if not self.compiled or phase in self._warm:
            return fn(*args)
        started = time.perf_counter()
        try:
            out = fn(*args)
        except Exception as exc:  # noqa: BLE001 - see _compile
            log.warning("torch.compile failed (%s: %s); the fused forward runs eagerly", type(exc).__name__, exc)
            self._prefix_layer, self._body_layer, self.compiled = prefix_layer, body_layer, False
            return (prefix_layer if phase == "prefix" else body_layer)(*args)
        self.compile_seconds += time.perf_counter() - started
        self._warm.add(phase)
        return out

    # ------------------------------------------------------------------ forward
    def _rotary(self, like: torch.Tensor, positions: torch.Tensor):
        cos, sin = self.rotary(like, positions)  # (B, T, d) in the model's dtype
        return cos[:, :, None], sin[:, :, None]

    def prefix(self, emb: torch.Tensor, plan: Plan, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Prefixes `emb` (C, Lp, H) through every layer (injecting `plan`; layers below `skip` are not run and get
        no keys) -> per layer (keys, values), each (C, kvh, Lp, d)."""
        width = emb.shape[1]
        positions = torch.arange(width, device=emb.device)[None]
        cos, sin = self._rotary(emb, positions)
        x, kv = emb, []
        for i, layer in enumerate(self.layers):
            if i < skip:
                kv.append(None)
                continue
            x = plan.apply(i, x)
            x, keys, values = self._run("prefix", x, layer, self.dims, cos, sin, self.scale)
            kv.append((keys, values))
        return kv

    def body(
        self,
        emb: torch.Tensor,
        prefix_kv: list[tuple[torch.Tensor, torch.Tensor]],
        n_ex: int,
        mask: torch.Tensor,
        score_pos: torch.Tensor,
        plan: Plan,
        skip: int = 0,
    ) -> torch.Tensor:
        """Bodies `emb` (C * E, T, H), candidate-major, after their candidate's prefix (`prefix_kv` per layer, (C or 1,
        kvh, Lp, d)); `mask` (E, T) real tokens; `score_pos` (E,) -> final-normed hidden states at the scored
        positions, (C * E, H)."""
        rows, width = emb.shape[0], emb.shape[1]
        lp = prefix_kv[-1][0].shape[2]
        positions = torch.arange(lp, lp + width, device=emb.device)[None]
        cos, sin = self._rotary(emb, positions)
        causal = torch.ones(width, width, dtype=torch.bool, device=emb.device).tril()
        body_allowed = causal[None] & mask.bool()[:, None, :]  # (E, Tq, Tk)
        prefix_allowed = torch.ones(mask.shape[0], width, lp, dtype=torch.bool, device=emb.device)
        allowed = torch.cat([prefix_allowed, body_allowed], dim=2)[:, None]  # (E, 1, Tq, Lp + Tk)
        n_cand = rows // n_ex
        allowed = allowed.repeat(n_cand, 1, 1, 1)
        pos = score_pos.to(emb.device).repeat(n_cand)
        last_allowed = allowed[torch.arange(rows, device=emb.device), :, pos][:, :, None]  # (rows, 1, 1, Lp + Tk)
        x = emb
        n_layers = len(self.layers)
        for i, layer in enumerate(self.layers):
            if i < skip:
                continue
            x = plan.apply(i, x)
            last = i == n_layers - 1
            x = self._run(
                "body",
                x,
                layer,
                self.dims,
                cos,
                sin,
                self.scale,
                prefix_kv[i][0],
                prefix_kv[i][1],
                last_allowed if last else allowed,
                n_ex,
                pos if last else None,
            )
        return self.norm(x[:, 0])


def can_compile(device: torch.device) -> bool:
    """Whether the fused forward compiles its layers: NOGRAD_COMPILE=1 yes, 0 no; unset or `auto`: on CUDA when
    Triton is installed (the CUDA wheels bring it), not on a CPU. On a CPU it needs a C++ compiler, and bought
    ~15% per population for 40-70 s of compiling on the first call, with fp32 logits off the eager ones by up to
    5e-5 (smollm2-135m, 2 cores, bench/throughput.py), so it is opt-in there."""
    setting = os.environ.get("NOGRAD_COMPILE", "auto").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return device.type == "cuda" or shutil.which(os.environ.get("CXX", "g++")) is not None
    if device.type != "cuda":
        return False
    import importlib.util

    return importlib.util.find_spec("triton") is not None
