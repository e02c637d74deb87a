"""RLPrompt's policy (Deng et al., EMNLP 2022): a frozen small LM with a trainable MLP before its frozen LM head
proposes short discrete prompts; it learns from a reward computed on the served model's label-word scores.

What we do, and where it differs from the paper's code:
- Policy: `logits = head(h + MLP(h))`, h the frozen LM's last hidden state, MLP = Linear(H, hidden) -> ReLU ->
  Linear(hidden, H) with the last layer zero-initialised, so step 0 samples from the frozen LM itself. The paper
  feeds MLP(h) to the head without the residual path; the residual start keeps early samples fluent. Default
  hidden size 512 (paper: 2048) keeps a checkpoint at ~9 MB, written after every step so jobs resume.
- Sampling: `length` tokens after the BOS token, top-k (256) from the policy's softmax, `popsize` (16) per step;
  special tokens and tokens that contain a line break or braces are never proposed.
- Learning, `learning="pg"` (the default, and what we use instead of the paper's soft Q-learning): on-policy
  policy gradient, loss = -sum_t A * log pi(a_t | s_t) with A the step's z-scored reward. Why: soft Q-learning
  treats the policy's logits as Q-values and regresses them onto the rewards; SmolLM2's logits start around 20,
  z-scored rewards are around +-2, so until the MLP has rescaled every Q-value (the paper runs 12,000 steps) each
  update mostly lowers whatever was sampled, good or bad. A service job gets tens of steps (a 200-call budget is
  12 steps of 16 prompts), where the policy gradient moves probability toward better prompts from step one.
  `learning="sql"` keeps soft Q-learning (on-policy, single-step targets: Q(s_t, a_t) regressed on
  V(s_{t+1}) = logsumexp_a Q(s_{t+1}, a), the last token's Q on the reward; targets from the current network
  without gradient, no separate target network). Both use Adam (lr 5e-5) and gradient norm clipping at 5, as in
  the paper.
- Reward (computed by the caller from label-word logits): mean over examples of Gap x (lambda1 if correct else
  lambda2), Gap = p_gold - max other p; z-scored across the step's prompts (`tell` does the z-scoring).
The state (MLP weights, Adam moments, step count, numpy RNG) is plain data; `from_state` continues exactly.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from torch import nn

STATE_TYPE = "rlprompt"


def reward(logits: np.ndarray, labels: np.ndarray, correct: float = 200.0, wrong: float = 180.0) -> np.ndarray:
    """(P, E, K) label-word logits -> (P,) RLPrompt reward: mean of Gap x (correct if right else wrong)."""
    z = logits - logits.max(axis=2, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=2, keepdims=True)
    idx = np.arange(logits.shape[1])
    gold = p[:, idx, labels]
    others = p.copy()
    others[:, idx, labels] = -np.inf
    gap = gold - others.max(axis=2)
    return np.mean(gap * np.where(gap > 0, correct, wrong), axis=1)


def _pack(t: torch.Tensor) -> dict:
    a = t.detach().to(torch.float32).cpu().numpy()
    return {"shape": list(a.shape), "f32": base64.b64encode(a.tobytes()).decode()}


def _unpack(d: dict) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(d["f32"]), dtype=np.float32).reshape(d["shape"]).copy())


class RLPromptPolicy:
    """ask/tell over prompts of `length` policy-tokenizer ids (float64 rows, like every optimizer's candidates).

    Args:
        model: the frozen causal LM (a transformers `*ForCausalLM`); tokenizer: its tokenizer.
        length: prompt tokens; popsize: prompts per step; top_k: sampling cut-off.
        lr, max_grad_norm, hidden: Adam step size, gradient clipping, MLP width. seed: numpy RNG seed.
    """

    type_name = STATE_TYPE

    def __init__(
        self,
        model,
        tokenizer,
        *,
        length: int = 5,
        popsize: int = 16,
        top_k: int = 256,
        lr: float = 5e-5,
        max_grad_norm: float = 5.0,
        hidden: int = 512,
        seed: int = 0,
        learning: str = "pg",
    ):
        if length < 1 or popsize < 2 or top_k < 1 or hidden < 1:
            raise ValueError("length >= 1, popsize >= 2, top_k >= 1 and hidden >= 1 are required")
        if learning not in ("pg", "sql"):
            raise ValueError("learning must be pg (policy gradient) or sql (soft Q-learning)")
        self.model, self.tokenizer = model.eval(), tokenizer
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = {
            "length": int(length),
            "popsize": int(popsize),
            "top_k": int(top_k),
            "lr": float(lr),
            "max_grad_norm": float(max_grad_norm),
            "hidden": int(hidden),
            "seed": int(seed),
            "learning": learning,
        }
        self.popsize, self.dim = int(popsize), int(length)
        size = model.config.hidden_size
        torch.manual_seed(seed)  # reproducible MLP init (CPU generator)
        self.mlp = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, size)).float()
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self._m = [torch.zeros_like(p) for p in self.mlp.parameters()]
        self._v = [torch.zeros_like(p) for p in self.mlp.parameters()]
        self.steps = 0
        self.generation = 0
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._allowed = self._allowed_tokens()
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self._bos = int(bos if bos is not None else 0)

    def _allowed_tokens(self) -> torch.Tensor:
        vocab = self.model.get_output_embeddings().weight.shape[0]
        allowed = torch.ones(vocab, dtype=torch.bool)
        special = set(self.tokenizer.all_special_ids)
        for i in range(min(vocab, len(self.tokenizer))):
            piece = self.tokenizer.decode([i])
            if i in special or not piece.strip() or any(c in piece for c in "\n\r{}"):
                allowed[i] = False
        allowed[len(self.tokenizer) :] = False
        return allowed

    # ------------------------------------------------------------------ policy
    def _hidden(self, prefix: torch.Tensor) -> torch.Tensor:
        """Frozen last hidden states (P, T, H) of `prefix` token ids (no gradient)."""
        with torch.no_grad():
            out = self.model.base_model(input_ids=prefix)
        return out.last_hidden_state.float()

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        mixed = hidden + self.mlp(hidden)
        logits = mixed @ head.weight.float().T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias.float()
        return logits.masked_fill(~self._allowed, float("-inf"))

    def _generate(self, n: int, greedy: bool) -> np.ndarray:
        seq = torch.full((n, 1), self._bos, dtype=torch.long)
        k = min(self.config["top_k"], int(self._allowed.sum()))
        for _ in range(self.dim):
            with torch.no_grad():
                logits = self._logits(self._hidden(seq)[:, -1])
            top, idx = logits.topk(k, dim=-1)
            if greedy:
                choice = idx[:, 0]
            else:
                probs = torch.softmax(top.double(), dim=-1).numpy()
                cdf = np.cumsum(probs, axis=1)
                cdf[:, -1] = 1.0
                pick = (cdf < self._rng.random((n, 1))).sum(axis=1)
                choice = idx[torch.arange(n), torch.from_numpy(np.minimum(pick, k - 1))]
            seq = torch.cat([seq, choice[:, None]], dim=1)
        return seq[:, 1:].numpy().astype(np.float64)

    def ask(self) -> np.ndarray:
        """(popsize, length) sampled prompts (token ids as float64)."""
        return self._generate(self.popsize, greedy=False)

    #: No step size to report (the optimizer contract's dashboards field).
    step_size = None

    @property
    def mean(self) -> np.ndarray:
        """The policy's greedy prompt: what is evaluated on dev beside the best sampled one."""
        return self._generate(1, greedy=True)[0]

    def text(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode([int(i) for i in ids if i >= 0]).strip()

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """One update from the prompts' losses (= minus their rewards), z-scored here; see the module docstring."""
        rewards = -np.asarray(losses, dtype=np.float64)
        rewards = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
        actions = torch.from_numpy(np.asarray(candidates).astype(np.int64))
        n = actions.shape[0]
        states = torch.cat([torch.full((n, 1), self._bos, dtype=torch.long), actions], dim=1)
        hidden = self._hidden(states)  # (P, T+1, H): the state before each action, and after the last
        q_all = self._logits(hidden)
        advantage = torch.from_numpy(rewards).float()[:, None]
        if self.config["learning"] == "sql":
            q_taken = q_all[:, :-1].gather(2, actions[:, :, None]).squeeze(2)  # (P, T)
            with torch.no_grad():
                v_next = torch.logsumexp(q_all[:, 1:-1], dim=-1)  # V(s_{t+1}) for t < T-1
                target = torch.cat([v_next, advantage], dim=1)
            loss = ((q_taken - target) ** 2).mean()
        else:
            log_probs = torch.log_softmax(q_all[:, :-1], dim=-1).gather(2, actions[:, :, None]).squeeze(2)
            loss = -(advantage * log_probs).sum(1).mean()
        params = list(self.mlp.parameters())
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        scale = min(1.0, self.config["max_grad_norm"] / (float(norm) + 1e-12))
        self.steps += 1
        b1, b2, lr = 0.9, 0.999, self.config["lr"]
        with torch.no_grad():
            for p, g, m, v in zip(params, grads, self._m, self._v):
                g = g * scale
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = m / (1 - b1**self.steps)
                v_hat = v / (1 - b2**self.steps)
                p.sub_(lr * m_hat / (v_hat.sqrt() + 1e-8))
        self.generation += 1
        self.last_loss = float(loss.detach())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        params = list(self.mlp.parameters())
        return {
            "type": STATE_TYPE,
            "config": dict(self.config),
            "steps": self.steps,
            "generation": self.generation,
            "params": [_pack(p) for p in params],
            "m": [_pack(t) for t in self._m],
            "v": [_pack(t) for t in self._v],
            "rng": self._rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict, model, tokenizer) -> RLPromptPolicy:
        if state.get("type") != STATE_TYPE:
            raise ValueError(f"not an RLPrompt policy state (type {state.get('type')!r})")
        policy = cls(model, tokenizer, **state["config"])
        with torch.no_grad():
            for p, d in zip(policy.mlp.parameters(), state["params"]):
                p.copy_(_unpack(d))
        policy._m = [_unpack(d) for d in state["m"]]
        policy._v = [_unpack(d) for d in state["v"]]
        policy.steps, policy.generation = int(state["steps"]), int(state["generation"])
        policy._rng.bit_generator.state = dict(state["rng"])
        return policy
