"""Stage 2: preference pairs + a Bradley-Terry reward model on the pretrained backbone.

    python train_rm.py --init runs/pretrain --out runs/rm                 # tiny preset, on a CPU
    python train_rm.py --init runs/pretrain --out runs/rm_noisy --label-noise 0.2
    python train_rm.py --init runs/pretrain --out runs/rm --shift-init runs/ppo   # + shifted accuracy

Pairs come from simulated annotators labelling the --init policy's samples by gold reward
(nanorl/reward.py), or from --prefs FILE.jsonl. Loss -log sigmoid(r_c - r_r - margin) + c E[(r_c + r_r)^2];
afterwards the head is normalised to mean 0, std 1 on calibration responses.
Writes a run directory of kind "rm" (docs/rundir/README.md). Details: docs/rm/README.md.
"""

import argparse
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from nanorl import plots, rundir, runtime
from nanorl.gpt import adamw
from nanorl.reward import (GOLD_KINDS, Pair, ScalarModel, bradley_terry_loss, evaluate_pairs, gold_pairs, normalise_scale,
                           pairs_to_generation, read_preferences, sample_pairs, sample_responses, score,
                           write_preferences)
from nanorl.runtime import (RunError, non_negative_float, non_negative_int, positive_float, positive_int,
                            print0)
from nanorl.tasks import MAX_DIFFICULTY, problem_set

PRESETS = {
    # sampling included, minutes on a 2-core CPU (one epoch: a second one overfits)
    "tiny": dict(n_prompts=384, n_eval_prompts=128, n_calib_prompts=128, samples_per_prompt=4, max_new_tokens=128,
                 epochs=1, batch_size=16, lr=1e-3, warmup_steps=5, sample_batch=32, eval_every=24),
    # seconds; for the smoke tests
    "test": dict(n_prompts=16, n_eval_prompts=16, n_calib_prompts=8, samples_per_prompt=4, max_new_tokens=48,
                 epochs=1, batch_size=4, lr=1e-3, warmup_steps=1, sample_batch=8, eval_every=0),
}


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = range(1, MAX_DIFFICULTY + 1)
    p.add_argument("--preset", default="tiny", choices=PRESETS, help="named size; other flags override it")
    p.add_argument("--init", default="runs/pretrain", help="pretrained run directory: backbone and sampling policy")
    p.add_argument("--out", default="runs/rm", help="run directory to write")
    p.add_argument("--prefs", default=None, help="JSONL file of {prompt, chosen, rejected} texts instead of sampling "
                                                 "(end each prompt with a blank line, as the policy's prompts do)")
    p.add_argument("--val-fraction", type=non_negative_float, default=0.1, help="--prefs: share of prompts held out")
    p.add_argument("--shift-init", default=None, help="another policy run: also report accuracy on its samples' pairs")
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
    p.add_argument("--gold", default="answer", choices=GOLD_KINDS, help="gold reward of the simulated annotators")
    p.add_argument("--min-difficulty", type=int, choices=steps, default=1, help="easiest problems sampled (steps)")
    p.add_argument("--max-difficulty", type=int, choices=steps, default=MAX_DIFFICULTY, help="hardest problems sampled")
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
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt exactly")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a run")
    p.add_argument("--stop-after", type=positive_int, default=None, help="save a checkpoint and exit after this step")
    args = p.parse_args(argv)
    runtime.apply_preset(args, PRESETS)
    if args.min_difficulty > args.max_difficulty:
        p.error("--min-difficulty is larger than --max-difficulty")
    if not 0.0 <= args.label_noise <= 1.0:
        raise RunError(f"--label-noise must be in [0, 1], got {args.label_noise}")
    if args.prefs and args.shift_init:
        raise RunError("--shift-init samples held-out pairs from a policy; it cannot be combined with --prefs")
    if args.samples_per_prompt < 2:
        raise RunError(f"--samples-per-prompt must be at least 2 to form pairs, got {args.samples_per_prompt}")
    return args


@dataclass
class PreferenceData:
    pairs: list[Pair]                               # training pairs
    held_out: list[Pair]                            # pair_accuracy is measured on these
    calibration: list[tuple[list[int], list[int]]]  # (prompt, response) token lists that set the score scale
    stats: dict                                     # where the pairs came from, for eval.json


def split_by_prompt(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out): a seeded val_fraction of the distinct prompts is held out with all its pairs."""
    prompts = list(dict.fromkeys(tuple(p.prompt) for p in pairs))  # file order, so only the seed decides
    random.Random(seed).shuffle(prompts)
    n = len(prompts)
    n_val = 0 if n < 2 or val_fraction <= 0 else min(n - 1, max(1, round(val_fraction * n)))
    held_out_prompts = set(prompts[:n_val])
    return ([p for p in pairs if tuple(p.prompt) not in held_out_prompts],
            [p for p in pairs if tuple(p.prompt) in held_out_prompts])


def problem_slices(args):
    """(training, calibration, held-out) problems. Calibration takes the training problems after the training
    ones, never test problems: held-out pairs and train_ppo.py's evaluation are drawn from those."""
    difficulties = range(args.min_difficulty, args.max_difficulty + 1)
    problems = problem_set("train", args.n_prompts + args.n_calib_prompts, args.seed, difficulties)
    return (problems[:args.n_prompts], problems[args.n_prompts:],
            problem_set("test", args.n_eval_prompts, args.seed, difficulties))


def prefs_data(args, tokenizer, block_size) -> PreferenceData:
    """Pairs from the --prefs file, split by prompt; the training pairs' responses calibrate."""
    pairs = read_preferences(args.prefs, tokenizer, block_size)
    train_pairs, held_out = split_by_prompt(pairs, args.val_fraction, args.seed)
    if not held_out:
        n_prompts = len({tuple(p.prompt) for p in pairs})
        raise RunError(f"{args.prefs}: no held-out pairs; raise --val-fraction (now {args.val_fraction}) "
                       f"or add pairs (the file has {n_prompts} distinct prompts; at least 2 are needed)")
    calibration = [(p.prompt, p.chosen) for p in train_pairs] + [(p.prompt, p.rejected) for p in train_pairs]
    return PreferenceData(train_pairs, held_out, calibration, {"source": args.prefs})


def sampled_data(args, policy, tokenizer, device, dtype) -> PreferenceData:
    train_problems, calib_problems, test_problems = problem_slices(args)
    pairs, stats = sample_pairs(policy, tokenizer, train_problems, args, args.label_noise, args.seed,
                                device, dtype, "sample train")
    held_out, eval_stats = sample_pairs(policy, tokenizer, test_problems, args, 0.0, args.seed + 1,
                                        device, dtype, "sample held-out")
    for what, formed in (("training", pairs), ("held-out", held_out)):
        if not formed:
            raise RunError(f"no {what} preference pairs were formed: all samples of each prompt got the same gold "
                           f"reward. Raise --samples-per-prompt, --n-prompts / --n-eval-prompts, --temperature or "
                           f"--quality-coef, or give pairs with --prefs")
    calibration = sample_responses(policy, tokenizer, calib_problems, args, args.seed + 3, device, dtype,
                                   "sample calibration")[0]
    flipped = sum(p.gold_gap < 0 for p in pairs)
    print0(f"policy samples: accuracy {stats['sample_accuracy']:.3f} | truncated {stats['truncated_share']:.3f} "
           f"| {len(pairs)} train pairs ({flipped} flipped) | {len(held_out)} held-out pairs "
           f"| {len(calibration)} calibration responses")
    return PreferenceData(pairs, held_out, calibration, {"source": "simulated", "n_flipped": flipped, **stats,
                                                         "eval_sample_accuracy": eval_stats["sample_accuracy"]})


@dataclass
class Run:
    """What ckpt.pt holds: everything --resume needs to continue exactly, without sampling again."""
    model: ScalarModel                  # before normalisation
    optimizer: torch.optim.Optimizer
    data: PreferenceData
    orders: list[list[int]]             # the order of the training pairs in each epoch
    accuracy_at_init: float             # held-out pair accuracy before training
    config: dict
    step: int = 0

    def save(self, out: str):
        runtime.save_checkpoint(os.path.join(out, "ckpt.pt"), {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
            "data": asdict(self.data), "orders": self.orders, "accuracy_at_init": self.accuracy_at_init,
            "config": self.config})


def start_run(args, policy, prefs, tokenizer, config, device, dtype) -> Run:
    """A new run: its data (sampled, unless --prefs gave it), model and step-0 checkpoint."""
    data = prefs or sampled_data(args, policy, tokenizer, device, dtype)
    model = ScalarModel.from_gpt(policy)
    batch_gen = torch.Generator().manual_seed(args.seed)
    orders = [torch.randperm(len(data.pairs), generator=batch_gen).tolist() for _ in range(args.epochs)]
    accuracy_at_init = evaluate_pairs(model, data.held_out, tokenizer, args, device, dtype)[0]
    run = Run(model, adamw(model, args.lr, args.weight_decay), data, orders, accuracy_at_init, config)
    rundir.write_config(args.out, config, "rm")
    write_preferences(os.path.join(args.out, "prefs.jsonl"), data.pairs, tokenizer)  # offline DPO's data
    write_preferences(os.path.join(args.out, "prefs_held_out.jsonl"), data.held_out, tokenizer)
    run.save(args.out)  # from here on a stopped run resumes without sampling again
    return run


def resume_run(args, policy, config, device) -> Run:
    """The run in --out/ckpt.pt, after checking that it was started with the same flags and --init model."""
    rundir.check_resume(args.out, "rm", args)
    path = os.path.join(args.out, "ckpt.pt")
    ckpt = runtime.load_checkpoint(path)
    if ckpt["config"]["model"] != config["model"]:
        raise RunError(f"{path} was started from another model than --init {args.init} now holds; "
                       f"pass --overwrite to start again")
    model = ScalarModel(policy.config).to(device)
    model.load_state_dict(ckpt["model"])
    optimizer = adamw(model, args.lr, args.weight_decay)
    optimizer.load_state_dict(ckpt["optimizer"])
    print0(f"resuming from step {ckpt['step']}")
    d = ckpt["data"]  # dataclasses.asdict of the PreferenceData
    data = PreferenceData([Pair(**p) for p in d["pairs"]], [Pair(**p) for p in d["held_out"]], d["calibration"],
                          d["stats"])
    return Run(model, optimizer, data, ckpt["orders"], ckpt["accuracy_at_init"], ckpt["config"], ckpt["step"])


def train_step(run, batch, lr, tokenizer, args, device, dtype) -> dict:
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with runtime.autocast(device, dtype):  # chosen and rejected in one forward over 2B rows
        rewards = score(run.model, pairs_to_generation(batch, tokenizer.eos_id, tokenizer.pad_id, device))
    loss, stats = bradley_terry_loss(rewards[:len(batch)], rewards[len(batch):], args.margin, args.center_coef)
    if not math.isfinite(loss.item()):
        raise RunError(f"loss became {loss.item()} at step {run.step + 1}; lower --lr (now {args.lr})")
    loss.backward()
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return {"loss": loss.item(), **stats, "lr": lr}


def train(run, tokenizer, args, device, dtype):
    """The remaining steps; Ctrl-C (runtime.CtrlC: between two steps) or --stop-after saves ckpt.pt and exits."""
    steps_per_epoch = math.ceil(len(run.data.pairs) / args.batch_size)
    total = len(run.orders) * steps_per_epoch
    log = runtime.MetricsLog(os.path.join(args.out, "metrics.jsonl"), truncate=run.step == 0)
    log.drop_after(run.step)  # steps logged after the checkpoint are done again
    if run.step == 0:
        log.write({"step": 0, "eval/pair_accuracy": run.accuracy_at_init})
        print0(runtime.format_line({"step": 0, "held-out pair accuracy": run.accuracy_at_init}))
    bar = tqdm(total=total, initial=run.step, desc="reward model", dynamic_ncols=True)
    with runtime.CtrlC() as ctrl_c:
        while run.step < total:
            epoch, b = divmod(run.step, steps_per_epoch)
            batch = [run.data.pairs[k] for k in run.orders[epoch][b * args.batch_size:(b + 1) * args.batch_size]]
            record = {"step": run.step + 1, "epoch": epoch + 1,
                      **train_step(run, batch, runtime.lr_at(run.step, total, args.lr, args.warmup_steps, "linear"), tokenizer, args, device, dtype)}
            if b == steps_per_epoch - 1 or (args.eval_every and run.step % args.eval_every == 0):
                record["eval/pair_accuracy"] = evaluate_pairs(run.model, run.data.held_out, tokenizer, args,
                                                              device, dtype)[0]
            log.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
            if run.step % args.log_every == 0 or "eval/pair_accuracy" in record:
                bar.write(runtime.format_line(record))
            runtime.after_step(run.step, args, ctrl_c, runtime.Dist(), device, lambda _: run.save(args.out))
    bar.close()
    run.save(args.out)


def final_evaluation(run, tokenizer, args, device, dtype) -> dict:
    """Normalise the trained model's scale, then its held-out and training pair accuracies (eval.json)."""
    model, data = run.model, run.data
    acc, r_c, r_r = evaluate_pairs(model, data.held_out, tokenizer, args, device, dtype)
    scale = normalise_scale(model, data.calibration, tokenizer, args, device, dtype)
    r_c, r_r = (scale["reward_gain"] * r + scale["reward_bias_shift"] for r in (r_c, r_r))  # normalised units
    result = {"pair_accuracy": acc, "pair_accuracy_at_init": run.accuracy_at_init,
              "train_pair_accuracy": evaluate_pairs(model, data.pairs, tokenizer, args, device, dtype)[0],
              "n_pairs": len(data.pairs), "n_eval_pairs": len(data.held_out), "label_noise": args.label_noise,
              "mean_eval_margin": (r_c - r_r).mean().item(), "eval_score_mean": torch.cat([r_c, r_r]).mean().item(),
              "eval_score_std": torch.cat([r_c, r_r]).std().item(), **scale, **data.stats}
    if not args.prefs:  # held-out accuracy split by what separates the pair
        by_correctness = torch.tensor([abs(p.gold_gap) >= 0.5 for p in data.held_out])
        hits = r_c > r_r
        for name, sel in (("correctness", by_correctness), ("quality_only", ~by_correctness)):
            result[f"pair_accuracy_{name}"] = hits[sel].float().mean().item() if sel.any() else None
            result[f"n_eval_pairs_{name}"] = int(sel.sum())
    return result


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    device, dtype, _ = runtime.setup(args)
    policy, tokenizer, init_config = rundir.load_policy(args.init, "--init", device)
    shifted_policy = (rundir.load_policy(args.shift_init, "--shift-init", device, like=tokenizer)[0]
                      if args.shift_init else None)
    prefs = prefs_data(args, tokenizer, policy.config.block_size) if args.prefs else None
    if not args.prefs and args.max_new_tokens >= policy.config.block_size:
        raise RunError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the "
                       f"{policy.config.block_size}-token context of --init {args.init}; lower it")
    # every input is valid: only now is --out touched (the --prefs file too must not lie inside it)
    rundir.prepare_out(args.out, [args.init, args.shift_init, args.prefs], args.resume, args.overwrite)
    config = {"script": "train_rm.py", "init": args.init, "init_kind": rundir.kind_of(init_config),
              "args": vars(args), "model": policy.config.to_dict()}
    try:
        run = (resume_run(args, policy, config, device) if args.resume
               else start_run(args, policy, prefs, tokenizer, config, device, dtype))
        print0(f"reward model: {sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters | "
               f"{len(run.data.pairs)} train pairs | {len(run.data.held_out)} held-out pairs | {args.epochs} epochs")
        train(run, tokenizer, args, device, dtype)
        result = final_evaluation(run, tokenizer, args, device, dtype)
        if shifted_policy is not None:  # pairs from the --shift-init policy for the held-out problems
            shifted, stats = gold_pairs(shifted_policy, tokenizer, problem_slices(args)[2], args, args.seed + 2, device,
                                        dtype, f"--shift-init policy {args.shift_init}")
            acc = evaluate_pairs(run.model, shifted, tokenizer, args, device, dtype)[0]
            result.update({"pair_accuracy_shifted": acc, "n_shifted_pairs": len(shifted),
                           "shifted_sample_accuracy": stats["sample_accuracy"]})
    except KeyboardInterrupt:  # while sampling or evaluating: the training loop stops between steps itself
        saved = os.path.exists(os.path.join(args.out, "ckpt.pt"))
        print0("\ninterrupted: " + (f"continue with --resume from {args.out}/ckpt.pt" if saved
                                    else "nothing was saved yet; start again with --overwrite"))
        sys.exit(130)
    result["seconds"] = round(time.time() - t_start, 1)

    rundir.save_model(args.out, run.model, tokenizer, config, kind="rm")
    runtime.write_json(os.path.join(args.out, "eval.json"), result)
    metrics = [record for _, record in runtime.iter_jsonl(os.path.join(args.out, "metrics.jsonl"))]
    train_steps = [m for m in metrics if "accuracy" in m]
    evals_ = [m for m in metrics if "eval/pair_accuracy" in m]
    plots.lines(os.path.join(args.out, "rm_accuracy.png"), {
        "train pairs (per step)": ([m["step"] for m in train_steps], [m["accuracy"] for m in train_steps]),
        "held-out pairs": ([m["step"] for m in evals_], [m["eval/pair_accuracy"] for m in evals_])},
        "Reward model pair accuracy", "step", "accuracy 1[r_chosen > r_rejected]")
    print0(runtime.format_line({k: v for k, v in result.items() if k in (
        "pair_accuracy", "pair_accuracy_at_init", "train_pair_accuracy", "pair_accuracy_shifted",
        "n_pairs", "n_eval_pairs", "label_noise", "reward_gain", "seconds")}))
    print0(f"wrote {args.out}/ (model.pt, config.json, tokenizer.json, ckpt.pt, eval.json, rm_accuracy.png)")


if __name__ == "__main__":
    runtime.run_cli(main)
