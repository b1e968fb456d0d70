"""Bradley-Terry reward model: a GPT backbone with a scalar head, trained on preference pairs,
and the simulated annotators that label pairs in nanorl's world.

    v_t  = w . h_t + b        h_t: the final normalised hidden state of token t (PPO's value model
                              reads v at every position; see `value_model` for how it starts)
    r(x) = v_T                T: the LAST real token of [left-padded prompt | right-padded response]
    L    = -E[log sigmoid(r_c - r_r - margin)] + c * E[(r_c + r_r)^2]      chosen c > rejected r

Rotary positions count from each row's first real token and padding is masked out of attention,
so a score does not depend on the padding around it (tested). The margin (Llama-2 style) and the
centring term c are 0 by default. After training, train_rm.py rescales the head so calibration
responses score mean 0, std 1: the BT loss is blind to shift and scale, PPO's clipping is not.

Simulated annotators (Bradley-Terry in the noiseless limit, then each label flipped with
probability `label_noise`):

    gold(y)    = 1[verifier says y is correct] + quality_coef * quality(y)
    quality(y) = 1 - len(y) / max_new_tokens if y ended with EOS, else 0

The "target" gold also asks for a per-prompt target format, a hash of the question: no model
can predict it for a new question, so a reward model must memorise it as the policy must.
"""

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanorl import runtime, verifier
from nanorl.engine import Generation, generate_batches, pack, positions_of, token_budget
from nanorl.gpt import GPT, GPTConfig
from nanorl.rl import last_index
from nanorl.runtime import DataError, RunError, iter_jsonl
from nanorl.tasks import RENDERERS, encode_prompts, render


class ScalarModel(nn.Module):
    """GPT backbone + linear head: one scalar per position (reward model or value model)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.backbone = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, mean=0.0, std=1.0 / math.sqrt(config.n_embd + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T) scalars from tokens (B, T) and valid (B, T) bool (False on padding)."""
        hidden = self.backbone.hidden_states(tokens, positions=positions_of(valid), valid=valid)
        return self.head(hidden).squeeze(-1).float()

    @classmethod
    def from_gpt(cls, gpt: GPT) -> "ScalarModel":
        """A new ScalarModel whose backbone is a copy of `gpt`'s weights (gpt is untouched)."""
        model = cls(gpt.config).to(gpt.wte.weight.device)
        model.backbone.load_state_dict(gpt.state_dict())  # copies into the new model's own tensors
        return model


def value_model(policy: GPT, reward_model: ScalarModel | None = None) -> ScalarModel:
    """PPO's value model, trainable: a copy of the reward model (as TRL), or the policy's backbone with a
    ZERO head: a random head's values (std ~1.3) dwarf 0/1 rewards and value clipping unlearns them slowly."""
    if reward_model is not None:
        value = ScalarModel(reward_model.config).to(reward_model.head.weight.device)
        value.load_state_dict(reward_model.state_dict())
        return value.requires_grad_(True)
    value = ScalarModel.from_gpt(policy)
    nn.init.zeros_(value.head.weight)
    return value


def score(model: ScalarModel, gen: Generation) -> torch.Tensor:
    """(N,) reward-model scores of the rows of a Generation (prompt + response): r at the last real token."""
    seq, valid = gen.sequences()
    return model(seq, valid).gather(1, last_index(valid)[:, None]).squeeze(1)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0,
                       center_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The BT loss of a batch of pairs, and float stats "accuracy" and "margin"."""
    diff = r_chosen - r_rejected
    loss = -F.logsigmoid(diff - margin).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    stats = {"accuracy": (diff > 0).float().mean().item(), "margin": diff.mean().item()}
    return loss, stats


# ----------------------------------------------------------------------------- preference pairs

@dataclass
class Pair:
    prompt: list[int]    # [bos] + prompt tokens
    chosen: list[int]    # response tokens, ending in EOS unless the response was truncated
    rejected: list[int]
    gold_gap: float = math.nan  # gold(chosen) - gold(rejected) before label noise (nan: unknown)


def pairs_to_generation(pairs: list[Pair], eos_id: int, pad_id: int, device="cpu") -> Generation:
    """One batch of 2B rows: the B chosen responses, then the B rejected ones (same prompts)."""
    prompts = [p.prompt for p in pairs] * 2
    return pack(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], eos_id=eos_id, pad_id=pad_id,
                device=device)


def read_preferences(path: str, tokenizer, block_size: int) -> list[Pair]:
    """Pairs from a JSONL file of {"prompt", "chosen", "rejected"} texts: [bos] + encode(prompt), and
    encode(response) + [eos]. An optional "ids" object gives the exact token lists instead (what
    write_preferences stores: decode-then-encode is not always the identity). A bad line raises
    DataError naming the file and line."""
    if not os.path.isfile(path):
        raise DataError(f"preference file not found: {path}")
    pairs = []
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f'{where}: expected a JSON object with "prompt", "chosen", "rejected", '
                            f"got {type(row).__name__}")
        for field in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(field), str):
                raise DataError(f'{where}: field "{field}" is missing or not a string '
                                f'(each line needs "prompt", "chosen" and "rejected" texts)')
        if "ids" in row:
            prompt, chosen, rejected = token_ids(row["ids"], tokenizer.vocab_size, where)
        else:
            prompt = [tokenizer.bos_id] + tokenizer.encode(row["prompt"])
            chosen, rejected = (tokenizer.encode(row[f]) + [tokenizer.eos_id] for f in ("chosen", "rejected"))
        longest = len(prompt) + max(len(chosen), len(rejected))
        if longest > block_size:
            raise DataError(f"{where}: prompt + response is {longest} tokens, more than the model's "
                            f"block_size {block_size}; shorten the texts")
        pairs.append(Pair(prompt, chosen, rejected))
    if not pairs:
        raise DataError(f"{path}: no preference pairs (the file is empty)")
    return pairs


def token_ids(ids, vocab_size: int, where: str) -> tuple[list[int], list[int], list[int]]:
    """The (prompt, chosen, rejected) token lists of a preference line's "ids", checked."""
    fields = ("prompt", "chosen", "rejected")
    if not isinstance(ids, dict) or any(not isinstance(ids.get(f), list) or not ids[f] for f in fields) or any(
            not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size for f in fields for t in ids[f]):
        raise DataError(f'{where}: "ids" must map "prompt", "chosen" and "rejected" to non-empty lists of token '
                        f"ids below the vocabulary size {vocab_size}")
    return ids["prompt"], ids["chosen"], ids["rejected"]


def reference_pairs(problems, fmt: str, tokenizer) -> list[Pair]:
    """SFT data: each problem's reference solution in format `fmt` as the chosen response (no rejected one)."""
    prompts = encode_prompts(tokenizer, [p.question for p in problems])
    solutions = tokenizer.encode_batch([render(p, fmt) for p in problems])
    return [Pair(prompt, solution + [tokenizer.eos_id], []) for prompt, solution in zip(prompts, solutions)]


def write_preferences(path: str, pairs: list[Pair], tokenizer):
    """The inverse of read_preferences: one line per pair, the texts plus their exact "ids"."""
    def text(response):
        return tokenizer.decode(response[:-1] if response[-1] == tokenizer.eos_id else response)
    runtime.write_text(path, "".join(json.dumps({"prompt": tokenizer.decode(p.prompt[1:]), "chosen": text(p.chosen),
                                                "rejected": text(p.rejected), "ids": {"prompt": p.prompt, "chosen":
                                                p.chosen, "rejected": p.rejected}}) + "\n" for p in pairs))


# ----------------------------------------------------------------------------- simulated annotators

GOLD_KINDS = ("answer", "target")
TARGET_FORMATS = tuple(RENDERERS)  # the formats the math world renders


def target_format(question: str) -> str:
    """The "target" gold's format for a question: arbitrary, but fixed."""
    return TARGET_FORMATS[int(hashlib.sha256(question.encode()).hexdigest(), 16) % len(TARGET_FORMATS)]


def gold_reward(text: str, problem, length: int, ended: bool, max_new_tokens: int, quality_coef: float,
                kind: str = "answer", correct: bool | None = None) -> float:
    """1[correct (and, for kind "target", in the question's target format)] + quality_coef * quality,
    quality = 1 - length / max_new_tokens (0 if truncated). `correct`: verifier.is_correct(text, answer)
    where the caller has it already (it may run the response's code)."""
    hit = verifier.is_correct(text, problem.answer) if correct is None else correct
    if kind == "target":
        hit = hit and verifier.detect_format(text) == target_format(problem.question)
    quality = 1.0 - length / max_new_tokens if ended else 0.0
    return float(hit) + quality_coef * quality


def annotator_pairs(gold: list[float], group_size: int, max_pairs: int, label_noise: float,
                     rng: random.Random) -> list[tuple[int, int]]:
    """(chosen, rejected) indices into `gold`, within each group of `group_size` consecutive entries
    (one prompt's samples): per group the `max_pairs` pairs with the largest gold gap (ties in random
    order; equal gold never pairs), the higher gold chosen, then flipped with probability `label_noise`."""
    pairs = []
    for start in range(0, len(gold), group_size):
        idx = range(start, min(start + group_size, len(gold)))
        candidates = [(i, j) for i in idx for j in idx if i < j and gold[i] != gold[j]]
        rng.shuffle(candidates)
        candidates.sort(key=lambda ij: -abs(gold[ij[0]] - gold[ij[1]]))  # stable: ties stay shuffled
        for i, j in candidates[:max_pairs]:
            chosen, rejected = (i, j) if gold[i] > gold[j] else (j, i)
            if rng.random() < label_noise:
                chosen, rejected = rejected, chosen
            pairs.append((chosen, rejected))
    return pairs


# ----------------------------------------------------------------------------- sampling, scoring, calibration
# `args` below is any object with the sampling flags of train_rm.py and rlp.py: max_new_tokens,
# samples_per_prompt, sample_batch, temperature, quality_coef, gold, pairs_per_prompt, batch_size.

@torch.no_grad()
def sample_responses(policy, tokenizer, problems, args, seed, device, dtype, desc):
    """K samples per problem from the policy: [(prompt, response) token lists], their gold rewards, and stats."""
    prompts = encode_prompts(tokenizer, [p.question for p in problems])
    max_new = token_budget(policy, prompts, args.max_new_tokens)
    if max_new < 1:
        raise RunError(f"prompts of up to {max(map(len, prompts))} tokens leave no room in block_size "
                       f"{policy.config.block_size}")
    K, generator = args.samples_per_prompt, torch.Generator(device=device).manual_seed(seed)
    responses, gold, correct, truncated = [], [], [], []
    with runtime.autocast(device, dtype):
        for i, gen in generate_batches(policy, prompts, max_new, args.sample_batch, eos_id=tokenizer.eos_id,
                                       pad_id=tokenizer.pad_id, n_samples=K, temperature=args.temperature,
                                       generator=generator, desc=desc):
            chunk = problems[i:i + args.sample_batch]
            texts, rows = tokenizer.decode_batch(gen.responses()), gen.tokens.tolist()
            lengths, ended = gen.mask.sum(1).tolist(), gen.ended.tolist()
            hits = [verifier.is_correct(text, chunk[r // K].answer) for r, text in enumerate(texts)]
            gold += [gold_reward(texts[r], chunk[r // K], lengths[r], ended[r], max_new, args.quality_coef, args.gold,
                                 correct=hits[r]) for r in range(len(rows))]
            responses += [(prompts[i + r // K], rows[r][:lengths[r]]) for r in range(len(rows))]
            correct += hits
            truncated += [not e for e in ended]
    stats = {"sample_accuracy": sum(correct) / len(correct), "truncated_share": sum(truncated) / len(truncated),
             "max_new_tokens": max_new}
    return responses, gold, stats


def sample_pairs(policy, tokenizer, problems, args, label_noise, seed, device, dtype, desc):
    """Preference pairs from the policy's samples, labelled by simulated annotators; and stats."""
    responses, gold, stats = sample_responses(policy, tokenizer, problems, args, seed, device, dtype, desc)
    labelled = annotator_pairs(gold, args.samples_per_prompt, args.pairs_per_prompt, label_noise, random.Random(seed))
    pairs = [Pair(responses[c][0], responses[c][1], responses[r][1], gold[c] - gold[r]) for c, r in labelled]
    return pairs, stats


def gold_pairs(policy, tokenizer, problems, args, seed, device, dtype, who: str) -> tuple[list[Pair], dict]:
    """Pairs of `policy`'s samples labelled by the noise-free annotator, for held-out accuracy on `who`'s
    distribution; a RunError when every prompt's samples tie."""
    pairs, stats = sample_pairs(policy, tokenizer, problems, args, 0.0, seed, device, dtype, f"gold pairs ({who})")
    if not pairs:
        raise RunError(f"no held-out pairs from the {who}: all its samples of each prompt got the same gold reward; "
                       f"raise the number of prompts, the samples per prompt, the temperature or the quality weight")
    return pairs, stats


@torch.no_grad()
def map_rows(fn, rows, tokenizer, device, batch_size: int) -> torch.Tensor:
    """torch.cat of fn(Generation) over [(prompt, response) token lists], batch_size rows at a time."""
    out = []
    for i in range(0, len(rows), batch_size):
        prompts, responses = zip(*rows[i:i + batch_size])
        out.append(fn(pack(prompts, responses, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, device=device)))
    return torch.cat(out)


def score_responses(model, responses, tokenizer, args, device, dtype) -> torch.Tensor:
    """(N,) scores of [(prompt, response) token lists], in batches of 2 * args.batch_size rows."""
    with runtime.autocast(device, dtype):
        return map_rows(lambda gen: score(model, gen), responses, tokenizer, device, 2 * args.batch_size)


def pair_rows(pairs: list[Pair]) -> list[tuple[list[int], list[int]]]:
    """The (prompt, response) rows of pairs: every chosen response, then every rejected one."""
    return [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]


def evaluate_pairs(model, pairs, tokenizer, args, device, dtype):
    """Accuracy (vs the stored labels) and the (r_chosen, r_rejected) scores of all pairs."""
    rewards = score_responses(model, pair_rows(pairs), tokenizer, args, device, dtype)
    chosen, rejected = rewards[:len(pairs)], rewards[len(pairs):]
    return (chosen > rejected).float().mean().item(), chosen, rejected


@torch.no_grad()
def normalise_head(head: torch.nn.Linear, scores: torch.Tensor) -> tuple[float, float]:
    """Rescale `head` in place so that `scores` (its outputs on the calibration responses) get mean 0
    and std 1; returns (gain, bias_shift), with new score = gain * old score + bias_shift."""
    mean, std = scores.mean().item(), scores.std().item()
    if not std > 0:
        raise RunError(f"the {len(scores)} calibration responses all score {mean:.4g}: cannot normalise the "
                       f"reward scale; raise --n-calib-prompts or --temperature (or add pairs to --prefs)")
    gain, bias_shift = 1.0 / std, -mean / std
    head.weight.mul_(gain)
    head.bias.mul_(gain).add_(bias_shift)
    return gain, bias_shift


def normalise_scale(model, calibration, tokenizer, args, device, dtype) -> dict:
    """Normalise the reward head on the calibration responses; the recorded gain, shift and scores."""
    before = score_responses(model, calibration, tokenizer, args, device, dtype)
    gain, bias_shift = normalise_head(model.head, before)
    after = score_responses(model, calibration, tokenizer, args, device, dtype)  # measured, not assumed
    return {"reward_gain": gain, "reward_bias_shift": bias_shift, "n_calib_responses": len(calibration),
            "score_mean_before_normalisation": before.mean().item(),
            "score_std_before_normalisation": before.std().item(),
            "calib_score_mean": after.mean().item(), "calib_score_std": after.std().item()}
