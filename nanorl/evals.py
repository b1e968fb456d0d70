"""Evaluation on held-out math problems: pass@k, maj@k, accuracy by difficulty and by format,
and the share of each solution format among samples (the Echo Chamber's signature metric).

    pass@k (unbiased, Chen et al. 2021):  1 - C(n - c, k) / C(n, k)   for n samples, c correct
    maj@k:   the most common extracted answer among k samples equals the gold answer
    win-rate: a simulated annotator compares one sampled response per problem from the model with
             one from a reference model; it prefers a over b with probability
             sigmoid((gold(a) - gold(b)) / T_judge) (Bradley-Terry on the gold reward; a tie is
             0.5; T_judge = 0: always the higher gold reward). win-rate = the mean of that
             probability over problems, stderr = its std / sqrt(n). gold = reward.gold_reward.
    format share:  fraction of samples whose format (verifier.extract_answer) is f
    accuracy by format:  among samples written in format f, the fraction that is correct

Answers are exact rationals (verifier.py): 3.5 and 7/2 are one vote. In maj@k a sample with no
answer does not vote and a tie for the most votes is no majority. pass@k with k > n is an error,
not 1.0. Greedy decoding picks one format per question, so shares are reported greedy and sampled.
"""

import math
import os
from collections import Counter, defaultdict

import torch

from nanorl import plots, runtime, verifier
from nanorl.engine import generate_batches
from nanorl.reward import gold_reward
from nanorl.tasks import Problem, encode_prompts

SMOOTH = 7  # steps in the moving mean of over-optimisation curves: one step's gold mean is noisy


def sample_completions(model, tokenizer, questions: list[str], *, n_samples: int = 1, temperature: float = 0.0,
                       max_new_tokens: int = 128, batch_size: int = 64, generator=None) -> list[list[str]]:
    """n_samples decoded completions per question, generated in batches of prompts."""
    out = []
    for _, gen in generate_batches(model, encode_prompts(tokenizer, questions), max_new_tokens, batch_size,
                                   eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, n_samples=n_samples,
                                   temperature=temperature, generator=generator):
        texts = tokenizer.decode_batch(gen.responses())
        out.extend(texts[j:j + n_samples] for j in range(0, len(texts), n_samples))
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn from n (c of them correct) is correct."""
    if not (1 <= k <= n and 0 <= c <= n):
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(answers: list[verifier.Answer | None], gold: verifier.Answer) -> bool:
    """The gold answer has strictly more votes than any other (None does not vote)."""
    top_two = Counter(a for a in answers if a is not None).most_common(2)
    if not top_two or (len(top_two) == 2 and top_two[0][1] == top_two[1][1]):
        return False  # no votes, or a tie for first place: no majority
    return top_two[0][0] == gold


def completion_metrics(problems: list[Problem], completions: list[list[str]], k: int | None = None) -> dict:
    """Metrics over problems with one or more completions each (k defaults to all samples)."""
    k = k or len(completions[0])
    correct_by_diff, formats, correct_by_format = defaultdict(list), Counter(), Counter()
    pass1, passk, majk = [], [], []
    for problem, texts in zip(problems, completions):
        extracted = [verifier.extract_answer(t) for t in texts]
        hits = [ans == problem.answer for _, ans in extracted]
        pass1.append(sum(hits) / len(hits))
        passk.append(pass_at_k(len(hits), sum(hits), k))
        majk.append(majority_correct([ans for _, ans in extracted[:k]], problem.answer))
        correct_by_diff[problem.difficulty].append(pass1[-1])
        for (fmt, _), hit in zip(extracted, hits):
            formats[fmt] += 1
            correct_by_format[fmt] += hit
    total = sum(formats.values())
    return {
        "pass@1": _mean(pass1), "pass@k": _mean(passk), "maj@k": _mean(majk), "k": k,
        "pass@1_by_difficulty": {str(d): _mean(v) for d, v in sorted(correct_by_diff.items())},
        "pass@1_by_format": {f: correct_by_format[f] / n for f, n in sorted(formats.items())},
        "format_share": {f: formats[f] / total for f in verifier.ALL_FORMATS},
        "n_eval": len(problems),
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


@torch.no_grad()
def held_out_metrics(model, tokenizer, problems: list[Problem], *, n_samples: int = 8, temperature: float = 0.7,
             max_new_tokens: int = 128, batch_size: int = 64, seed: int = 0) -> dict:
    """Greedy pass@1 (plus by difficulty / format) and sampled pass@k, maj@k and format shares."""
    questions = [p.question for p in problems]
    greedy = completion_metrics(problems, sample_completions(model, tokenizer, questions, max_new_tokens=max_new_tokens,
                                                batch_size=batch_size))
    device = model.rope_cos.device
    generator = torch.Generator(device=device).manual_seed(seed)
    sampled = completion_metrics(problems, sample_completions(model, tokenizer, questions, n_samples=n_samples,
                                                 temperature=temperature, max_new_tokens=max_new_tokens,
                                                 batch_size=max(1, batch_size // n_samples), generator=generator))
    result = {key: greedy[key] for key in ("pass@1", "pass@1_by_difficulty", "pass@1_by_format",
                                           "format_share", "n_eval")}
    result.update({"pass@k": sampled["pass@k"], "maj@k": sampled["maj@k"], "k": n_samples,
                   "temperature": temperature, "sampled_pass@1": sampled["pass@1"],
                   "sampled_format_share": sampled["format_share"],
                   "sampled_pass@1_by_format": sampled["pass@1_by_format"]})
    return result


def judge_win_probability(gold_a: torch.Tensor, gold_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(the simulated annotator prefers a over b), elementwise; ties are 0.5."""
    diff = gold_a - gold_b
    if temperature == 0:
        return (diff > 0).float() + 0.5 * (diff == 0).float()
    return torch.sigmoid(diff / temperature)


@torch.no_grad()
def sampled_gold(model, tokenizer, problems: list[Problem], *, temperature: float, max_new_tokens: int,
                 quality_coef: float, seed: int, gold_kind: str = "answer", batch_size: int = 64) -> torch.Tensor:
    """(n,) gold rewards of one sampled response per problem (a seeded generator: same seed, same draws)."""
    prompts = encode_prompts(tokenizer, [p.question for p in problems])
    generator = torch.Generator(device=model.rope_cos.device).manual_seed(seed)
    gold = []
    for i, gen in generate_batches(model, prompts, max_new_tokens, batch_size, eos_id=tokenizer.eos_id,
                                   pad_id=tokenizer.pad_id, temperature=temperature, generator=generator):
        texts = tokenizer.decode_batch(gen.responses())
        for problem, text, length, ended in zip(problems[i:i + batch_size], texts, gen.mask.sum(1).tolist(),
                                                gen.ended.tolist()):
            gold.append(gold_reward(text, problem, length, ended, max_new_tokens, quality_coef, gold_kind))
    return torch.tensor(gold)


def win_rate(model, reference, tokenizer, problems: list[Problem], *, temperature: float, max_new_tokens: int,
             quality_coef: float, judge_temperature: float, seed: int, gold_kind: str = "answer") -> dict:
    """The model's win-rate against the reference, judged by the simulated annotator (module docstring).
    Both sample with the same seed, so a model judged against an identical copy scores exactly 0.5."""
    kwargs = dict(temperature=temperature, max_new_tokens=max_new_tokens, quality_coef=quality_coef, seed=seed,
                  gold_kind=gold_kind)
    mine, theirs = sampled_gold(model, tokenizer, problems, **kwargs), sampled_gold(reference, tokenizer, problems, **kwargs)
    wins = judge_win_probability(mine, theirs, judge_temperature)
    stderr = wins.std().item() / math.sqrt(len(wins)) if len(wins) > 1 else 0.0
    return {"win_rate": wins.mean().item(), "win_rate_stderr": stderr, "gold_reward": mine.mean().item(),
            "reference_gold_reward": theirs.mean().item()}


# ----------------------------------------------------------------------------- train_ppo.py's logs and plots

def rollout_stats(batch, info) -> dict:
    """Reward, length, and format share / accuracy of one step's samples (an algos.Rollout; all ranks)."""
    correct = batch.correct.tolist()
    counts = torch.tensor([[sum(f == fmt for f in batch.formats),
                            sum(c for f, c in zip(batch.formats, correct) if f == fmt)]
                           for fmt in verifier.ALL_FORMATS])
    sums = torch.tensor([batch.scores.sum().item(), (batch.scores ** 2).sum().item(), batch.correct.sum().item(),
                         batch.gen.mask.sum().item(), len(batch.scores)])
    counts, sums = runtime.all_reduce_sum(counts, info), runtime.all_reduce_sum(sums, info)
    n = sums[4].item()
    mean = sums[0].item() / n
    out = {"reward_mean": mean, "reward_std": max(sums[1].item() / n - mean ** 2, 0.0) ** 0.5,
           "train_acc": sums[2].item() / n, "response_len": sums[3].item() / n}
    for fmt, (count, right) in zip(verifier.ALL_FORMATS, counts.tolist()):
        out[f"share/{fmt}"] = count / n
        if count:
            out[f"acc/{fmt}"] = right / count
    return out


def rollout_gold(batch, problems: list[Problem], max_new_tokens: int, quality_coef: float,
                 gold_kind: str = "answer") -> torch.Tensor:
    """(N,) the gold reward (reward.gold_reward) of each sample of a rollout; problems: one per prompt."""
    lengths, ended = batch.gen.mask.sum(1).tolist(), batch.gen.ended.tolist()
    return torch.tensor([gold_reward(text, problems[i // batch.group_size], lengths[i], ended[i], max_new_tokens,
                                     quality_coef, gold_kind, correct=bool(batch.correct[i]))
                         for i, text in enumerate(batch.texts)], dtype=torch.float64)


def overoptimisation_stats(gold: torch.Tensor, kl: torch.Tensor, info) -> dict:
    """Gao et al.'s over-optimisation coordinates of one rollout (all ranks), beside its proxy reward: the
    mean gold reward, and sqrt of the mean per-response KL(pi || pi_0) (an estimate below 0 counts as 0)."""
    sums = runtime.all_reduce_sum(torch.tensor([gold.sum().item(), kl.sum().item(), len(gold)], dtype=torch.float64),
                                  info).tolist()
    gold_mean, kl_mean = sums[0] / sums[2], sums[1] / sums[2]
    return {"gold_reward": gold_mean, "kl_seq": kl_mean, "sqrt_kl": max(kl_mean, 0.0) ** 0.5}


def eval_record(result: dict) -> dict:
    """The held-out metrics that go into a metrics.jsonl line."""
    record = {"eval/pass@1": result["pass@1"], "eval/pass@k": result["pass@k"], "eval/maj@k": result["maj@k"]}
    record.update({f"eval/share/{f}": v for f, v in result["sampled_format_share"].items()})
    record.update({f"eval/pass@1_d{d}": v for d, v in result["pass@1_by_difficulty"].items()})
    return record


def write_plots(args, metrics: list[dict], before: dict, after: dict):
    """train_ppo.py's plots (args: its flags): format share over steps, held-out accuracy, pass@1 by difficulty."""
    out, formats = args.out, verifier.ALL_FORMATS
    # offline algorithms sample nothing while training: for them, the held-out samples' format share
    source = "share/" if any("share/tinygsm" in m for m in metrics) else "eval/share/"
    rollout_steps = [m for m in metrics if source + "tinygsm" in m]
    plots.stacked(os.path.join(out, "format_share.png"), [m["step"] for m in rollout_steps],
                  {f: [m.get(source + f, 0.0) for m in rollout_steps] for f in formats},
                  f"Solution format of samples during {args.algo.upper()}", "step", "share of samples")
    evals_at = [m for m in metrics if "eval/pass@1" in m]
    plots.lines(os.path.join(out, "pass_at_k.png"),
                {"pass@1 (greedy)": ([m["step"] for m in evals_at], [m["eval/pass@1"] for m in evals_at]),
                 f"pass@{args.eval_samples} (T={args.temperature})":
                     ([m["step"] for m in evals_at], [m["eval/pass@k"] for m in evals_at]),
                 f"maj@{args.eval_samples}": ([m["step"] for m in evals_at], [m["eval/maj@k"] for m in evals_at])},
                f"Held-out accuracy during {args.algo.upper()}", "step", "fraction of problems")
    if any("gold_reward" in m for m in metrics):
        plot_overoptimisation(os.path.join(out, "overoptimisation.png"), [m for m in metrics if "sqrt_kl" in m],
                              f"{args.algo.upper()} against the reward model {args.rm}")
    plots.bars(os.path.join(out, "pass_at_1_by_difficulty.png"),
               {"before": before["pass@1_by_difficulty"], "after": after["pass@1_by_difficulty"]},
               f"Greedy pass@1 by difficulty (trained on {args.min_difficulty}-{args.max_difficulty} steps)",
               "pass@1")


def plot_overoptimisation(path: str, records: list[dict], title: str):
    """Gao et al. 2022's figure: proxy (RM) and gold reward of the samples against sqrt(KL(pi || pi_0))."""
    xs = [m["sqrt_kl"] for m in records]
    plots.smoothed_paths(path, {"proxy reward (RM score)": (xs, [m["reward_mean"] for m in records]),
                                "gold reward (verifier + shortness)": (xs, [m["gold_reward"] for m in records])},
                         SMOOTH, title, "sqrt(KL(pi || pi_0)), nats^0.5", "mean reward of a step's samples")
