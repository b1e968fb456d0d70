"""Stage 2: preference data + a Bradley-Terry reward model on the pretrained backbone.

    python train_rm.py --init runs/pretrain --out runs/rm                 # tiny preset, CPU, ~3 minutes
    python train_rm.py --init runs/pretrain --out runs/rm_noisy --label-noise 0.2
    python train_rm.py --init runs/pretrain --out runs/rm_prefs --prefs prefs.jsonl
    python train_rm.py --init runs/pretrain --out runs/rm --shift-init runs/ppo   # + shifted accuracy

Preference data, by default from simulated annotators (nanorl/reward.py):
  1. sample --samples-per-prompt responses per training problem from the --init policy;
  2. gold(y) = 1[correct] + --quality-coef * (1 - len(y) / max_new_tokens)  (0 if truncated);
  3. within each prompt, pair responses whose gold rewards differ (at most --pairs-per-prompt,
     largest gold gap first); the annotator prefers the higher gold reward, then each label is
     flipped with probability --label-noise.
Held-out pairs come from held-out TEST problems the same way, never flipped: pair_accuracy is
measured against the true gold order. --shift-init adds held-out pairs sampled from another
policy (pair_accuracy_shifted: the distribution shift that motivates RLP).
Calibration responses: the --init policy's samples for --n-calib-prompts more TRAINING problems
(the ones right after the training problems in problem_set order, which train_ppo.py with the
same seed also trains on). They are never test problems, so the normalisation below is fitted
neither on the held-out pairs nor on train_ppo.py's evaluation problems (the first --n-eval
test problems of the seed).
With --prefs FILE.jsonl ({"prompt", "chosen", "rejected"} texts) the pairs come from the file;
the file's distinct prompts are shuffled (seeded) and --val-fraction of them are held out with
all their pairs, so no prompt is on both sides. The training pairs' chosen and rejected texts
are the calibration responses.

Training: ScalarModel.from_gpt(policy), loss -log sigmoid(r_c - r_r - margin) + c E[(r_c + r_r)^2],
AdamW with linear warm-up and linear decay. After training the head is normalised so the
calibration responses score mean 0 and std 1 (as in "The N implementation details of RLHF with
PPO"): the BT loss cannot see a constant shift, and its scale depends on how long and how
confidently it trained, while PPO's value clip and KL coefficient assume rewards of order 1.
r' = gain * r + bias_shift with gain > 0, so pair accuracies are unchanged; all reported scores
and margins (mean_eval_margin, eval_score_*) are in normalised units.

Writes to --out: model.pt, config.json (kind "reward_model", init), tokenizer.json,
metrics.jsonl, eval.json (with reward_gain, reward_bias_shift and the calibration scores'
mean and std before and after normalisation) and rm_accuracy.png.
"""

import argparse
import json
import math
import os
import random
import time

import torch
from tqdm import tqdm

from nanorl import evals, runtime, verifier
from nanorl.engine import generate, pack
from nanorl.reward import (Pair, ScalarModel, bradley_terry_loss, gold_reward, pairs_to_generation,
                           preference_pairs, read_preferences, save_scalar_model, score)
from nanorl.runtime import (RunError, non_negative_float, non_negative_int, positive_float, positive_int,
                            print0)
from nanorl.tasks import problem_set

PRESETS = {
    # about 3 minutes on a 2-core CPU, sampling included (one epoch: a second one overfits)
    "tiny": dict(n_prompts=384, n_eval_prompts=128, n_calib_prompts=128, samples_per_prompt=4, max_new_tokens=128,
                 epochs=1, batch_size=16, lr=1e-3, warmup_steps=5, sample_batch=32, eval_every=24),
    # seconds; for the smoke tests
    "test": dict(n_prompts=16, n_eval_prompts=16, n_calib_prompts=8, samples_per_prompt=4, max_new_tokens=48,
                 epochs=1, batch_size=4, lr=1e-3, warmup_steps=1, sample_batch=8, eval_every=0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=PRESETS, help="named size; other flags override it")
    p.add_argument("--init", default="runs/pretrain", help="pretrained run directory: backbone and sampling policy")
    p.add_argument("--out", default="runs/rm", help="run directory to write")
    p.add_argument("--prefs", default=None, help="JSONL file of {prompt, chosen, rejected} texts instead of sampling")
    p.add_argument("--val-fraction", type=non_negative_float, default=0.1,
                   help="with --prefs: share of the distinct prompts held out, each with all its pairs")
    p.add_argument("--shift-init", default=None, help="another policy's run directory: also report held-out "
                                                      "accuracy on pairs from its samples")
    p.add_argument("--n-prompts", type=positive_int, help="training problems to sample responses for")
    p.add_argument("--n-eval-prompts", type=positive_int, help="held-out test problems for held-out pairs")
    p.add_argument("--n-calib-prompts", type=positive_int, help="more training problems whose samples set the score scale "
                                                       "(unused with --prefs: it calibrates on the training pairs)")
    p.add_argument("--samples-per-prompt", type=positive_int, help="responses sampled per problem (K)")
    p.add_argument("--pairs-per-prompt", type=positive_int, default=3, help="at most this many pairs per problem")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=positive_int, help="longest sampled response (capped by the context)")
    p.add_argument("--sample-batch", type=positive_int, help="problems per sampling call")
    p.add_argument("--quality-coef", type=non_negative_float, default=0.1, help="weight of the shortness term in gold rewards")
    p.add_argument("--label-noise", type=non_negative_float, default=0.0, help="probability of flipping each training label")
    p.add_argument("--epochs", type=positive_int, help="passes over the training pairs")
    p.add_argument("--batch-size", type=positive_int, help="pairs per optimizer step")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-steps", type=non_negative_int, help="linear warm-up steps, then linear decay to 0")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="AdamW weight decay on matrices")
    p.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="max global gradient norm (0 = off)")
    p.add_argument("--margin", type=float, default=0.0, help="BT margin: loss -log sigmoid(r_c - r_r - margin)")
    p.add_argument("--center-coef", type=non_negative_float, default=0.0, help="weight of the centring term E[(r_c + r_r)^2]")
    p.add_argument("--eval-every", type=non_negative_int, help="steps between held-out evaluations (0: end of each epoch only)")
    p.add_argument("--log-every", type=positive_int, default=1, help="steps between printed log lines")
    p.add_argument("--seed", type=int, default=1337, help="seed for problems, sampling, labels and batches")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 (autocast)")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0.0 <= args.label_noise <= 1.0:
        raise RunError(f"--label-noise must be in [0, 1], got {args.label_noise}")
    if args.prefs and args.shift_init:
        raise RunError("--shift-init samples held-out pairs from a policy; it cannot be combined with --prefs")
    if args.samples_per_prompt < 2:
        raise RunError(f"--samples-per-prompt must be at least 2 to form pairs, got {args.samples_per_prompt}")
    return args


# ----------------------------------------------------------------------------- preference data

@torch.no_grad()
def sample_responses(policy, tokenizer, problems, args, seed, device, dtype, desc):
    """K samples per problem from the policy: [(prompt, response) token lists], their gold rewards, and stats."""
    prompts = evals.encode_prompts(tokenizer, [p.question for p in problems])
    max_new = min(args.max_new_tokens, policy.config.block_size - max(len(p) for p in prompts))
    if max_new < 1:
        raise RunError(f"prompts of up to {max(map(len, prompts))} tokens leave no room in block_size "
                       f"{policy.config.block_size}")
    K, generator = args.samples_per_prompt, torch.Generator(device=device).manual_seed(seed)
    responses, gold, correct, truncated = [], [], [], []
    for i in tqdm(range(0, len(problems), args.sample_batch), desc=desc, leave=False, dynamic_ncols=True):
        chunk = problems[i:i + args.sample_batch]
        with runtime.autocast(device, dtype):
            gen = generate(policy, prompts[i:i + len(chunk)], max_new, eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id, n_samples=K, temperature=args.temperature, generator=generator)
        texts, rows = tokenizer.decode_batch(gen.responses()), gen.tokens.tolist()
        lengths, ended = gen.mask.sum(1).tolist(), gen.ended.tolist()
        hits = [verifier.is_correct(text, chunk[r // K].answer) for r, text in enumerate(texts)]
        gold += [gold_reward(hits[r], lengths[r], ended[r], max_new, args.quality_coef) for r in range(len(rows))]
        responses += [(prompts[i + r // K], rows[r][:lengths[r]]) for r in range(len(rows))]
        correct += hits
        truncated += [not e for e in ended]
    stats = {"sample_accuracy": sum(correct) / len(correct), "truncated_share": sum(truncated) / len(truncated),
             "max_new_tokens": max_new}
    return responses, gold, stats


def sample_pairs(policy, tokenizer, problems, args, label_noise, seed, device, dtype, desc):
    """Preference pairs from the policy's samples, labelled by simulated annotators; and stats."""
    responses, gold, stats = sample_responses(policy, tokenizer, problems, args, seed, device, dtype, desc)
    labelled = preference_pairs(gold, args.samples_per_prompt, args.pairs_per_prompt, label_noise, random.Random(seed))
    pairs = [Pair(responses[c][0], responses[c][1], responses[r][1], gold[c] - gold[r]) for c, r in labelled]
    return pairs, stats


def split_by_prompt(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out): a seeded val_fraction of the distinct prompts is held out with all its pairs,
    so the held-out accuracy is measured on prompts the model never trained on."""
    prompts = list(dict.fromkeys(tuple(p.prompt) for p in pairs))  # file order, so only the seed decides
    random.Random(seed).shuffle(prompts)
    n = len(prompts)
    n_val = 0 if n < 2 or val_fraction <= 0 else min(n - 1, max(1, round(val_fraction * n)))
    held_out_prompts = set(prompts[:n_val])
    return ([p for p in pairs if tuple(p.prompt) not in held_out_prompts],
            [p for p in pairs if tuple(p.prompt) in held_out_prompts])


def problem_slices(args):
    """(training, calibration, held-out) problems. Calibration takes the training-split problems
    right after the training ones (problem_set of a larger n extends the smaller one), never
    test problems: held-out pairs and train_ppo.py's evaluation are drawn from those."""
    problems = problem_set("train", args.n_prompts + args.n_calib_prompts, seed=args.seed)
    return (problems[:args.n_prompts], problems[args.n_prompts:],
            problem_set("test", args.n_eval_prompts, seed=args.seed))


def no_pairs_error(what: str) -> RunError:
    return RunError(f"no {what} preference pairs were formed: all samples of each prompt got the same gold reward. "
                    f"Raise --samples-per-prompt, --n-prompts / --n-eval-prompts, --temperature or --quality-coef, "
                    f"or give pairs with --prefs")


def load_pairs(args, policy, tokenizer, device, dtype):
    """(train pairs, held-out pairs, calibration responses, stats) from --prefs or from the policy's samples."""
    if args.prefs:
        pairs = read_preferences(args.prefs, tokenizer, policy.config.block_size)
        train_pairs, held_out = split_by_prompt(pairs, args.val_fraction, args.seed)
        if not held_out:
            n_prompts = len({tuple(p.prompt) for p in pairs})
            raise RunError(f"{args.prefs}: no held-out pairs; raise --val-fraction (now {args.val_fraction}) "
                           f"or add pairs (the file has {n_prompts} distinct prompts; at least 2 are needed)")
        calibration = [(p.prompt, p.chosen) for p in train_pairs] + [(p.prompt, p.rejected) for p in train_pairs]
        return train_pairs, held_out, calibration, {"source": args.prefs}
    train_problems, calib_problems, test_problems = problem_slices(args)
    pairs, stats = sample_pairs(policy, tokenizer, train_problems, args, args.label_noise, args.seed,
                                device, dtype, "sample train")
    held_out, eval_stats = sample_pairs(policy, tokenizer, test_problems, args, 0.0, args.seed + 1,
                                        device, dtype, "sample held-out")
    if not pairs:
        raise no_pairs_error("training")
    if not held_out:
        raise no_pairs_error("held-out")
    calibration = sample_responses(policy, tokenizer, calib_problems, args, args.seed + 3, device, dtype,
                                   "sample calibration")[0]
    flipped = sum(p.gold_gap < 0 for p in pairs)
    print0(f"policy samples: accuracy {stats['sample_accuracy']:.3f} | truncated {stats['truncated_share']:.3f} "
           f"| {len(pairs)} train pairs ({flipped} flipped) | {len(held_out)} held-out pairs "
           f"| {len(calibration)} calibration responses")
    return pairs, held_out, calibration, {"source": "simulated", "n_flipped": flipped, **stats,
                                          "eval_sample_accuracy": eval_stats["sample_accuracy"]}


# ----------------------------------------------------------------------------- training

def pair_rewards(model, pairs, tokenizer, device, dtype):
    """(r_chosen, r_rejected) of a batch of pairs, from one forward over 2B rows."""
    with runtime.autocast(device, dtype):
        rewards = score(model, pairs_to_generation(pairs, tokenizer.eos_id, tokenizer.pad_id, device))
    return rewards[:len(pairs)], rewards[len(pairs):]


@torch.no_grad()
def score_responses(model, responses, tokenizer, args, device, dtype) -> torch.Tensor:
    """(N,) scores of [(prompt, response) token lists], in batches of 2 * --batch-size rows."""
    scores = []
    for i in range(0, len(responses), 2 * args.batch_size):
        prompts, texts = zip(*responses[i:i + 2 * args.batch_size])
        gen = pack(list(prompts), list(texts), eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, device=device)
        with runtime.autocast(device, dtype):
            scores.append(score(model, gen))
    return torch.cat(scores)


def evaluate_pairs(model, pairs, tokenizer, args, device, dtype):
    """Accuracy (vs the stored labels) and the (r_chosen, r_rejected) scores of all pairs."""
    responses = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    rewards = score_responses(model, responses, tokenizer, args, device, dtype)
    chosen, rejected = rewards[:len(pairs)], rewards[len(pairs):]
    return (chosen > rejected).float().mean().item(), chosen, rejected


def lr_at(step: int, total: int, args) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    return args.lr * max(0.0, (total - step) / max(1, total - args.warmup_steps))


def train(model, pairs, held_out, tokenizer, args, device, dtype, log):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    steps_per_epoch = math.ceil(len(pairs) / args.batch_size)
    total = args.epochs * steps_per_epoch
    batch_gen = torch.Generator().manual_seed(args.seed)
    acc0 = evaluate_pairs(model, held_out, tokenizer, args, device, dtype)[0]
    log.write({"step": 0, "eval/pair_accuracy": acc0})
    print0(runtime.format_line({"step": 0, "held-out pair accuracy": acc0}))
    step, bar = 0, tqdm(total=total, desc="reward model", dynamic_ncols=True)
    for epoch in range(args.epochs):
        order = torch.randperm(len(pairs), generator=batch_gen).tolist()
        for b in range(steps_per_epoch):
            batch = [pairs[k] for k in order[b * args.batch_size:(b + 1) * args.batch_size]]
            lr = lr_at(step, total, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            r_c, r_r = pair_rewards(model, batch, tokenizer, device, dtype)
            loss, stats = bradley_terry_loss(r_c, r_r, args.margin, args.center_coef)
            if not math.isfinite(loss.item()):
                raise RunError(f"loss became {loss.item()} at step {step + 1}; lower --lr (now {args.lr})")
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record = {"step": step, "epoch": epoch + 1, "loss": loss.item(), **stats, "lr": lr}
            if b == steps_per_epoch - 1 or (args.eval_every and step % args.eval_every == 0):
                held_out_eval = evaluate_pairs(model, held_out, tokenizer, args, device, dtype)
                record["eval/pair_accuracy"] = held_out_eval[0]
            log.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
            if step % args.log_every == 0 or "eval/pair_accuracy" in record:
                bar.write(runtime.format_line(record))
    bar.close()
    return acc0, held_out_eval


# ----------------------------------------------------------------------------- normalisation

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


def write_plot(args, metrics):
    train_steps = [m for m in metrics if "accuracy" in m]
    evals_ = [m for m in metrics if "eval/pair_accuracy" in m]
    runtime.plot_lines(os.path.join(args.out, "rm_accuracy.png"), {
        "train pairs (per step)": ([m["step"] for m in train_steps], [m["accuracy"] for m in train_steps]),
        "held-out pairs": ([m["step"] for m in evals_], [m["eval/pair_accuracy"] for m in evals_])},
        "Reward model pair accuracy", "step", "accuracy 1[r_chosen > r_rejected]")


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    device = runtime.pick_device(args.device)
    dtype, why = runtime.pick_dtype(device, args.dtype)
    runtime.seed_everything(args.seed)
    print0(f"device {device} | dtype {str(dtype).replace('torch.', '')} ({why})")
    runtime.require_run_dir(args.init)
    if args.shift_init:
        runtime.require_run_dir(args.shift_init)
    policy, tokenizer, init_config = runtime.load_run(args.init, device)
    os.makedirs(args.out, exist_ok=True)
    pairs, held_out, calibration, data_stats = load_pairs(args, policy, tokenizer, device, dtype)

    model = ScalarModel.from_gpt(policy)
    config = {"script": "train_rm.py", "kind": "reward_model", "init": args.init, "args": vars(args),
              "model": model.config.to_dict(), "init_script": init_config.get("script")}
    runtime.write_json(os.path.join(args.out, "config.json"), config)
    log = runtime.MetricsLog(os.path.join(args.out, "metrics.jsonl"))
    print0(f"reward model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters | "
           f"{len(pairs)} train pairs | {len(held_out)} held-out pairs | {args.epochs} epochs")
    acc0, (acc, r_c, r_r) = train(model, pairs, held_out, tokenizer, args, device, dtype, log)

    scale = normalise_scale(model, calibration, tokenizer, args, device, dtype)
    r_c, r_r = (scale["reward_gain"] * r + scale["reward_bias_shift"] for r in (r_c, r_r))  # normalised units
    train_acc = evaluate_pairs(model, pairs, tokenizer, args, device, dtype)[0]
    result = {"pair_accuracy": acc, "pair_accuracy_at_init": acc0, "train_pair_accuracy": train_acc,
              "n_pairs": len(pairs), "n_eval_pairs": len(held_out), "label_noise": args.label_noise,
              "mean_eval_margin": (r_c - r_r).mean().item(), "eval_score_mean": torch.cat([r_c, r_r]).mean().item(),
              "eval_score_std": torch.cat([r_c, r_r]).std().item(), **scale, **data_stats}
    if not args.prefs:  # held-out accuracy split by what separates the pair
        by_correctness = torch.tensor([abs(p.gold_gap) >= 0.5 for p in held_out])
        hits = r_c > r_r
        for name, sel in (("correctness", by_correctness), ("quality_only", ~by_correctness)):
            result[f"pair_accuracy_{name}"] = hits[sel].float().mean().item() if sel.any() else None
            result[f"n_eval_pairs_{name}"] = int(sel.sum())
    if args.shift_init:
        shifted_policy, shifted_tok, _ = runtime.load_run(args.shift_init, device)
        if shifted_tok.to_json() != tokenizer.to_json():
            raise RunError(f"--shift-init {args.shift_init} uses a different tokenizer from --init {args.init}")
        problems = problem_set("test", args.n_eval_prompts, seed=args.seed)
        shifted, shifted_stats = sample_pairs(shifted_policy, tokenizer, problems, args, 0.0, args.seed + 2,
                                              device, dtype, "sample shifted")
        if not shifted:
            raise no_pairs_error("shifted held-out")
        result["pair_accuracy_shifted"] = evaluate_pairs(model, shifted, tokenizer, args, device, dtype)[0]
        result["n_shifted_pairs"] = len(shifted)
        result["shifted_sample_accuracy"] = shifted_stats["sample_accuracy"]
    result["seconds"] = round(time.time() - t_start, 1)

    save_scalar_model(args.out, model, tokenizer, config)
    runtime.write_json(os.path.join(args.out, "eval.json"), result)
    with open(os.path.join(args.out, "metrics.jsonl")) as f:
        write_plot(args, [json.loads(line) for line in f])
    print0(runtime.format_line({k: v for k, v in result.items() if k in (
        "pair_accuracy", "pair_accuracy_at_init", "train_pair_accuracy", "pair_accuracy_shifted",
        "n_pairs", "n_eval_pairs", "label_noise", "reward_gain", "seconds")}))
    print0(f"wrote {args.out}/ (model.pt, config.json, tokenizer.json, eval.json, rm_accuracy.png)")


if __name__ == "__main__":
    runtime.run_cli(main)
