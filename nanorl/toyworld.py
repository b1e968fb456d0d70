"""The toy feature world of the extractability experiment (arXiv 2311.04046, after Lovering et al. 2021).

A prompt is 10 digits. The SPURIOUS feature s is "contains 2"; a TARGET feature t is one of TARGETS.
t and s split prompts into four SECTIONS: both, neither, s_only and t_only. A training set at
EVIDENCE p holds exactly ceil(p N) s_only prompts and floor((1 - p) N) from both and neither, so at
p = 0 s alone predicts the reward; t_only prompts are never trained on.

Rewards, on the digits the policy generates (any other token, e.g. EOS, ends the run):

    run    5 tokens: the length of the run of strictly increasing (t) or strictly decreasing (not t)
           digits from the first generated one, stopping at the first violation, divided by 4
    token  1 token: 1 if the digit is in the upper half 5-9 (t) or the lower half 0-4 (not t)
"""

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from nanorl import algos
from nanorl.engine import generate
from nanorl.gpt import GPT, GPTConfig
from nanorl.reward import value_model

SEQ_LEN = 10
SECTIONS = ("both", "neither", "s_only", "t_only")
TARGETS = {
    "contains_1": lambda x: (x == 1).any(1),
    "prefix_duplicate": lambda x: x[:, 0] == x[:, 1],
    "first_last": lambda x: x[:, 0] == x[:, -1],
    "adjacent_duplicate": lambda x: (x[:, 1:] == x[:, :-1]).any(1),
    "contains_first": lambda x: (x[:, 1:] == x[:, :1]).any(1),
}
REWARDS = {"run": 5, "token": 1}  # reward kind: tokens generated per prompt


def spurious(x: np.ndarray) -> np.ndarray:
    """s(x) = "contains 2", for prompts x of shape (n, 10)."""
    return (x == 2).any(1)


def section_of(x: np.ndarray, target: str) -> np.ndarray:
    t, s = TARGETS[target](x), spurious(x)
    return np.where(t & s, "both", np.where(~t & ~s, "neither", np.where(s, "s_only", "t_only")))


def sample_section(rng: np.random.Generator, target: str, section: str, n: int) -> np.ndarray:
    """n prompts drawn uniformly from one section (rejection sampling of uniform random digits)."""
    kept, have = [np.zeros((0, SEQ_LEN), dtype=np.int64)], 0
    while have < n:
        x = rng.integers(0, 10, size=(4096, SEQ_LEN))
        x = x[section_of(x, target) == section]
        kept.append(x)
        have += len(x)
    return np.concatenate(kept)[:n]


def evidence_counts(p: float, n: int) -> tuple[int, int, int]:
    """(s_only, both, neither) counts at evidence p: ceil(p n) s_only, on the decimal p (0.1 * 100 is 10, not 11)."""
    s_only = math.ceil(Fraction(str(p)) * n)
    rest = n - s_only
    return s_only, (rest + 1) // 2, rest // 2


def training_set(rng: np.random.Generator, target: str, p: float, n: int) -> np.ndarray:
    counts = evidence_counts(p, n)
    x = np.concatenate([sample_section(rng, target, name, k) for name, k in zip(("s_only", "both", "neither"), counts)])
    return x[rng.permutation(len(x))]


def reward(digits: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """(n,) rewards of generated digits (n, L), -1 for a non-digit token, given t (n,) bool (module docstring)."""
    digit = digits >= 0
    if kind == "token":
        return (digit[:, 0] & ((digits[:, 0] >= 5) == t)).float()
    step_up = digits[:, 1:] > digits[:, :-1]
    good = torch.where(t[:, None], step_up, digits[:, 1:] < digits[:, :-1]) & digit[:, 1:] & digit[:, :-1]
    run = good.long().cumprod(1).sum(1)  # steps before the first violation
    return run.float() / (digits.size(1) - 1)


@dataclass
class DigitVocab:
    """How the toy world's digits map onto a model's tokens."""
    digit_ids: list[int]
    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, x: np.ndarray) -> list[list[int]]:
        ids = np.asarray(self.digit_ids)[x]
        return [[self.bos_id] + row for row in ids.tolist()]

    def digits(self, tokens: torch.Tensor) -> torch.Tensor:
        table = torch.full((self.vocab_size,), -1, dtype=torch.long, device=tokens.device)
        table[torch.tensor(self.digit_ids, device=tokens.device)] = torch.arange(10, device=tokens.device)
        return table[tokens]


SCRATCH_VOCAB = DigitVocab(list(range(10)), bos_id=10, eos_id=11, pad_id=12, vocab_size=13)


def tokenizer_vocab(tokenizer) -> DigitVocab:
    """The DigitVocab of a project tokenizer (every digit is one token there)."""
    ids = [tokenizer.encode(str(d)) for d in range(10)]
    if any(len(i) != 1 for i in ids):
        raise ValueError("this tokenizer does not give every digit its own token")
    return DigitVocab([i[0] for i in ids], tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.vocab_size)


def scratch_policy(n_layer: int, n_embd: int, n_head: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=SCRATCH_VOCAB.vocab_size, block_size=1 + SEQ_LEN + max(REWARDS.values()),
                       n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    return GPT(config).eval()


@torch.no_grad()
def representations(model: GPT, vocab: DigitVocab, x: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """(n, n_embd) frozen final hidden state at the last prompt token: what the MDL probes read."""
    device = model.rope_cos.device
    out = [model.hidden_states(torch.tensor(vocab.encode(x[i:i + batch_size]), device=device))[:, -1].float()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).cpu()


def _rollout(policy, vocab: DigitVocab, x: np.ndarray, target: str, kind: str, generator) -> algos.Rollout:
    gen = generate(policy, vocab.encode(x), REWARDS[kind], eos_id=vocab.eos_id, pad_id=vocab.pad_id,
                   temperature=1.0, generator=generator)
    t = torch.tensor(TARGETS[target](x), device=gen.tokens.device)
    digits = torch.where(gen.mask, vocab.digits(gen.tokens), -1)
    scores = reward(digits, t, kind)
    return algos.Rollout(gen, [], [], scores, group_size=1, temperature=1.0, scores=scores)


def train_policy(policy: GPT, vocab: DigitVocab, prompts: np.ndarray, target: str, kind: str, *, iterations: int,
                 batch_size: int, lr: float, seed: int, progress=None) -> list[float]:
    """PPO with no KL penalty on the toy reward; returns the mean reward of each iteration."""
    cfg = algos.RLConfig(temperature=1.0, kl_coef=0.0, missing_eos_penalty=0.0)  # fixed-length answers: no EOS
    value = value_model(policy)
    optimizer = torch.optim.AdamW(list(policy.parameters()) + list(value.parameters()), lr=lr, eps=1e-5,
                                  weight_decay=0.0)
    torch.manual_seed(seed)  # PPO's minibatch order: a resumed experiment repeats each run exactly
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=policy.rope_cos.device).manual_seed(seed)
    rewards = []
    for _ in range(iterations):
        batch = _rollout(policy, vocab, prompts[rng.integers(0, len(prompts), batch_size)], target, kind, generator)
        algos.ppo_step(policy, policy, value, optimizer, batch, cfg)  # kl_coef 0: the reference is never called
        rewards.append(batch.scores.mean().item())
        if progress is not None:
            progress()
    return rewards


@torch.no_grad()
def section_rewards(policy: GPT, vocab: DigitVocab, target: str, kind: str, n: int, seed: int) -> dict[str, float]:
    """Mean reward of sampled responses (temperature 1) on n fresh test prompts of each section."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=policy.rope_cos.device).manual_seed(seed)
    return {name: _rollout(policy, vocab, sample_section(rng, target, name, n), target, kind, generator).scores.mean()
            .item() for name in SECTIONS}
