"""Exposure bias: a policy's errors on reference prefixes against its success on its own prefixes.

    python -m nanorl.exposure --run base=runs/pretrain --run sft=runs/sft_s1,runs/sft_s2 \\
        --run grpo=runs/grpo_s1,runs/grpo_s2 --format tinygsm --out docs/exposure

Per difficulty d (1-4 steps), on held-out problems with the world's own solution y* in one format
(tasks.render) as the reference; docs/exposure/README.md has why:

    teacher-forced error  e_d = mean over reference tokens t of 1[argmax p(. | x, y*_<t) != y*_t]
                          (also the mean NLL -log p(y*_t | x, y*_<t))
    predicted success     mean over problems of (1 - e_d)^L, L = len(y*) with its EOS: no compounding
    free-running success  greedy decoding reaches the gold answer (verifier; any path counts)
    excess error          100 * (err_free - err_pred) / err_pred, err = 1 - success (Arora et al. 2022)
    recovery              greedy after a correct prefix y*_<j (j uniform, seeded) plus the model's most
                          likely token other than y*_j: share answered correctly, and answered at all
    seq-rep-n             1 - |unique n-grams| / |n-grams| of one greedy response (Welleck et al. 2019)
    distinct-n            |unique n-grams| / |n-grams| over the k samples for one prompt
    greedy loop           a greedy response cut at max_new_tokens whose last LOOP_REPEATS * p tokens
                          repeat a block of p <= LOOP_MAX_PERIOD tokens

Groups of runs (seeds): mean +- std (ddof=1). Writes OUT/exposure.json, OUT/exposure.md,
success_by_difficulty.png and excess_error.png.
"""

import argparse
import os
import random

import torch

from nanorl import plots, rundir, runtime, verifier
from nanorl.compare import cell, parse_group, stats
from nanorl.engine import generate_batches, pack, response_logits
from nanorl.reward import reference_pairs
from nanorl.tasks import MAX_DIFFICULTY, RENDERERS, problem_set

LOOP_REPEATS, LOOP_MAX_PERIOD = 3, 20


def ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def seq_rep(tokens: list, n: int) -> float | None:
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def distinct(sequences: list[list], n: int) -> float | None:
    grams = [g for seq in sequences for g in ngrams(seq, n)]
    return len(set(grams)) / len(grams) if grams else None


def ends_in_loop(tokens: list, repeats: int = LOOP_REPEATS, max_period: int = LOOP_MAX_PERIOD) -> bool:
    for p in range(1, max_period + 1):
        tail = tokens[-repeats * p:]
        if len(tail) == repeats * p and all(tail[i] == tail[i + p] for i in range(len(tail) - p)):
            return True
    return False


def excess_error(success: float, predicted: float) -> float | None:
    return None if predicted >= 1.0 else 100.0 * ((1 - success) - (1 - predicted)) / (1 - predicted)


@torch.no_grad()
def teacher_forced(model, tokenizer, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, L) per reference token: argmax error, NLL, mask, and the most likely non-special wrong token."""
    gen = pack([p.prompt for p in pairs], [p.chosen for p in pairs], eos_id=tokenizer.eos_id,
               pad_id=tokenizer.pad_id, device=model.rope_cos.device)
    logits = response_logits(model, gen)
    nll = -torch.log_softmax(logits, -1).gather(-1, gen.tokens[..., None]).squeeze(-1)
    errors = logits.argmax(-1) != gen.tokens
    forbidden = logits.scatter(-1, gen.tokens[..., None], float("-inf"))
    forbidden[..., [tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id]] = float("-inf")
    return errors & gen.mask, torch.where(gen.mask, nll, 0.0), gen.mask, forbidden.argmax(-1)


def greedy(model, tokenizer, prompts, max_new_tokens, batch_size=64):
    """Greedy responses (EOS dropped) and whether each ended, batched by length (the longest prompt caps a batch)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses, ended = [None] * len(prompts), [None] * len(prompts)
    for start, gen in generate_batches(model, [prompts[i] for i in order], max_new_tokens, batch_size,
                                       eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, temperature=0.0):
        for i, r, e in zip(order[start:start + batch_size], gen.responses(), gen.ended.tolist()):
            responses[i], ended[i] = r, e
    return responses, ended


def sampled(model, tokenizer, prompts, max_new_tokens, k, temperature, seed, batch_size=16):
    generator, out = torch.Generator(device=model.rope_cos.device).manual_seed(seed), []
    for _, gen in generate_batches(model, prompts, max_new_tokens, batch_size, eos_id=tokenizer.eos_id,
                                   pad_id=tokenizer.pad_id, n_samples=k, temperature=temperature, generator=generator):
        rows = gen.responses()
        out += [rows[j:j + k] for j in range(0, len(rows), k)]
    return out


def measure(model, tokenizer, problems, fmt: str, *, max_new_tokens: int, k: int, temperature: float, n: int,
            seed: int) -> dict:
    pairs = reference_pairs(problems, fmt, tokenizer)
    errors, nll, mask, wrong = teacher_forced(model, tokenizer, pairs)
    lengths = mask.sum(1)
    error_rate = (errors.sum() / lengths.sum()).item()
    prompts = [p.prompt for p in pairs]
    free, ended = greedy(model, tokenizer, prompts, max_new_tokens)
    hits = [verifier.is_correct(tokenizer.decode(r), p.answer) for r, p in zip(free, problems)]
    rng = random.Random(seed)
    cuts = [rng.randrange(int(length) - 1) for length in lengths]  # never the EOS position
    prefixes = [pair.chosen[:j] + [int(wrong[i, j])] for i, (pair, j) in enumerate(zip(pairs, cuts))]
    tails, _ = greedy(model, tokenizer, [p + q for p, q in zip(prompts, prefixes)], max_new_tokens)
    recovered = [verifier.extract_answer(tokenizer.decode(q + t))[1] for q, t in zip(prefixes, tails)]
    samples = sampled(model, tokenizer, prompts, max_new_tokens, k, temperature, seed)
    predicted = ((1 - error_rate) ** lengths.float()).mean().item()
    success = sum(hits) / len(hits)
    return {
        "n": len(problems), "reference_len": lengths.float().mean().item(), "tf_error": error_rate,
        "tf_nll": (nll.sum() / lengths.sum()).item(), "predicted_success": predicted, "free_success": success,
        "excess_error_pct": excess_error(success, predicted),
        "recovery": sum(a == p.answer for a, p in zip(recovered, problems)) / len(problems),
        "recovery_answered": sum(a is not None for a in recovered) / len(problems),
        f"seq_rep_{n}": stats([seq_rep(r, n) for r in free])["mean"],
        f"reference_seq_rep_{n}": stats([seq_rep(p.chosen[:-1], n) for p in pairs])["mean"],
        f"distinct_{n}": stats([distinct(group, n) for group in samples])["mean"],
        "greedy_loops": sum(not e and ends_in_loop(r) for r, e in zip(free, ended)) / len(free),
    }


def markdown(groups: dict) -> str:
    metrics = list(next(iter(next(iter(groups.values())).values())))
    lines = ["| metric | difficulty | " + " | ".join(groups) + " |", "|---|---" + "|---" * len(groups) + "|"]
    for m in metrics:
        for d in next(iter(groups.values())):
            lines.append(f"| {m} | {d} | " + " | ".join(cell(g[d][m]) for g in groups.values()) + " |")
    return "\n".join(lines) + "\n"


def band(group: dict, metric: str, x_metric: str | None = None) -> tuple[list, list, list, list]:
    """(x, mean, mean - std, mean + std) where the metric has a value; x: the difficulty or x_metric's mean."""
    xs, means, lows, highs = [], [], [], []
    for d, row in group.items():
        if row[metric]["mean"] is not None:
            m, s = row[metric]["mean"], row[metric]["std"] or 0.0
            xs.append(row[x_metric]["mean"] if x_metric else int(d))
            means.append(m), lows.append(m - s), highs.append(m + s)
    return xs, means, lows, highs


def plot(out: str, groups: dict, fmt: str):
    series = {}
    for name, group in groups.items():
        series[f"{name} free-running"] = band(group, "free_success")
        series[f"{name} predicted by teacher-forced error"] = band(group, "predicted_success")
    plots.bands(os.path.join(out, "success_by_difficulty.png"), series,
                f"Greedy success vs the no-compounding prediction ({fmt}; mean ± std)", "difficulty (steps)",
                "share of problems", ylim=(0, 1.02),
                dashed=tuple(name for name in series if name.endswith("predicted by teacher-forced error")))
    plots.bands(os.path.join(out, "excess_error.png"),
                {name: band(group, "excess_error_pct", x_metric="reference_len") for name, group in groups.items()},
                "Excess error of free running over teacher forcing (mean ± std)",
                "reference length (tokens)", "excess error (%)")


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", type=parse_group, required=True,
                   help="NAME=RUN[,RUN...]: a group of pretrain or policy runs (seeds); repeatable")
    p.add_argument("--format", default="tinygsm", choices=tuple(RENDERERS), help="format of the reference solutions")
    p.add_argument("--n-per-difficulty", type=runtime.positive_int, default=50, help="held-out problems per difficulty")
    p.add_argument("--samples", type=runtime.positive_int, default=4, help="k sampled responses per prompt (distinct-n)")
    p.add_argument("--temperature", type=runtime.positive_float, default=0.7, help="temperature of those samples")
    p.add_argument("--ngram", type=runtime.positive_int, default=4, help="n of seq-rep-n and distinct-n")
    p.add_argument("--max-new-tokens", type=runtime.positive_int, default=128, help="longest response")
    p.add_argument("--seed", type=int, default=0, help="seed of the problems, the injection points and the samples")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--out", default="runs/exposure", help="directory for exposure.json, exposure.md and the plots")
    args = p.parse_args(argv)
    if len({name for name, _ in args.run}) < len(args.run):
        p.error("give every --run group its own NAME")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = runtime.pick_device(args.device)
    loaded = [[rundir.load_policy(path, "--run", device) for path in paths] for _, paths in args.run]
    os.makedirs(args.out, exist_ok=True)
    difficulties = range(1, MAX_DIFFICULTY + 1)
    problems = {str(d): problem_set("test", args.n_per_difficulty, args.seed, [d]) for d in difficulties}
    model, tokenizer, _ = loaded[0][0]
    for d, subset in problems.items():  # keep the problems whose prompt and reference fit the context together
        pairs = reference_pairs(subset, args.format, tokenizer)
        problems[d] = [p for p, r in zip(subset, pairs) if len(r.prompt) + len(r.chosen) <= model.config.block_size]
        if len(problems[d]) < len(subset):
            print(f"difficulty {d}: {len(subset) - len(problems[d])} of {len(subset)} problems skipped: prompt and "
                  f"reference do not fit the {model.config.block_size}-token context")
    problems = {d: subset for d, subset in problems.items() if subset}
    per_run = {}
    for (name, paths), models in zip(args.run, loaded):
        per_run[name] = []
        for path, (model, tokenizer, _) in zip(paths, models):
            result = {}
            for d, subset in problems.items():
                result[d] = measure(model, tokenizer, subset, args.format, max_new_tokens=args.max_new_tokens,
                                    k=args.samples, temperature=args.temperature, n=args.ngram, seed=args.seed)
                print(f"{name} {path} d={d} | " + runtime.format_line(result[d]), flush=True)
            per_run[name].append(result)
    groups = {name: {d: {m: stats([r[d][m] for r in runs]) for m in runs[0][d]} for d in runs[0]}  # stats over runs
              for name, runs in per_run.items()}
    runtime.write_json(os.path.join(args.out, "exposure.json"),
                       {"args": vars(args), "runs": dict(args.run), "per_run": per_run, "groups": groups})
    table = markdown(groups)
    runtime.write_text(os.path.join(args.out, "exposure.md"), table)
    plot(args.out, groups, args.format)
    print(table)
    print(f"wrote {args.out}/ (exposure.json, exposure.md, success_by_difficulty.png, excess_error.png)")


if __name__ == "__main__":
    runtime.run_cli(main)
