"""The global reward model against the "local" one a DPO policy implies, on held-out preferences.

    python -m nanorl.implicit_rm --rm runs/rm --policy dpo=runs/dpo_s1,runs/dpo_s2 \\
        --shift runs/ppo_rm --out runs/implicit_rm

    r_local(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))      pi_ref = the run's --init

(divided by the response length for --dpo-kind ipo, the log-ratio its loss compares). Both rewards are
scored by preference accuracy, r(chosen) > r(rejected) (ties wrong), on gold-labelled pairs: the --rm
run's prefs_held_out.jsonl ("in distribution") and pairs sampled the same way from --shift ("shifted").
Seeds: mean +- std (ddof=1). Writes OUT/implicit_rm.json and prints a table (docs/online_offline/README.md).
"""

import argparse
import os
from types import SimpleNamespace

import torch

from nanorl import rundir, runtime
from nanorl.compare import cell, parse_group, stats
from nanorl.engine import token_logprobs
from nanorl.reward import evaluate_pairs, gold_pairs, map_rows, pair_rows, read_preferences
from nanorl.rl import sequence_logprob
from nanorl.tasks import MAX_DIFFICULTY, problem_set


@torch.no_grad()
def log_likelihoods(model, responses, tokenizer, batch_size: int = 32) -> torch.Tensor:
    """(N,) log pi(response | prompt) of [(prompt, response) token lists]."""
    return map_rows(lambda gen: sequence_logprob(token_logprobs(model, gen), gen.mask), responses, tokenizer,
                    model.rope_cos.device, batch_size)


def implicit_rewards(policy, ref_logps, responses, tokenizer, beta: float, per_token: bool = False,
                     batch_size: int = 32) -> torch.Tensor:
    """(N,) beta * (log pi - log pi_ref), given pi_ref's log_likelihoods; per_token: divided by the length (IPO)."""
    log_ratio = log_likelihoods(policy, responses, tokenizer, batch_size) - ref_logps
    if per_token:
        log_ratio = log_ratio / torch.tensor([len(r) for _, r in responses], device=log_ratio.device)
    return beta * log_ratio


def implicit_accuracy(policy, ref_logps, pairs, tokenizer, beta: float, per_token: bool = False) -> float:
    """Share of pairs whose chosen response gets the larger implicit reward (ref_logps: of pair_rows(pairs))."""
    rewards = implicit_rewards(policy, ref_logps, pair_rows(pairs), tokenizer, beta, per_token)
    return (rewards[:len(pairs)] > rewards[len(pairs):]).float().mean().item()


def shifted_pairs(path: str, tokenizer, rm_args: dict, args, device):
    """Gold-labelled pairs of the --shift policy's samples for test problems, made as the --rm run made its own."""
    same = ("samples_per_prompt", "pairs_per_prompt", "sample_batch", "temperature", "quality_coef", "gold")
    policy, _, _ = rundir.load_policy(path, "--shift", device, like=tokenizer)
    difficulties = range(rm_args.get("min_difficulty", 1), rm_args.get("max_difficulty", MAX_DIFFICULTY) + 1)
    problems = problem_set("test", args.n_prompts, seed=args.seed, difficulties=difficulties)
    sampling = SimpleNamespace(**{k: rm_args[k] for k in same},
                               max_new_tokens=args.max_new_tokens or rm_args["max_new_tokens"])
    return gold_pairs(policy, tokenizer, problems, sampling, args.seed, device, torch.float32, f"--shift policy {path}")[0]


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rm", required=True, help="train_rm.py run: the global reward model and its held-out pairs")
    p.add_argument("--policy", action="append", type=parse_group, required=True,
                   help="NAME=RUN[,RUN...]: DPO-trained policy runs (seeds) whose implicit reward is scored; repeatable")
    p.add_argument("--shift", help="a later policy run: also score pairs sampled from it")
    p.add_argument("--n-prompts", type=runtime.positive_int, default=128, help="test problems for the shifted pairs")
    p.add_argument("--max-new-tokens", type=runtime.positive_int, help="longest shifted sample (default: the --rm run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shifted problems and samples")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--out", default="runs/implicit_rm", help="directory for implicit_rm.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = runtime.pick_device(args.device)
    rm, tokenizer, rm_config = rundir.load_reward_model(args.rm, "--rm", device)
    held_out = os.path.join(args.rm, "prefs_held_out.jsonl")
    if not os.path.isfile(held_out):
        raise runtime.RunError(f"--rm {args.rm} has no prefs_held_out.jsonl; train it again with this train_rm.py")
    pair_sets = {"in distribution": read_preferences(held_out, tokenizer, rm.config.block_size)}
    if args.shift:
        pair_sets["shifted"] = shifted_pairs(args.shift, tokenizer, rm_config["args"], args, device)
    scoring = SimpleNamespace(batch_size=32)
    table = {"global RM": {name: stats([evaluate_pairs(rm, pairs, tokenizer, scoring, device, torch.float32)[0]])
                           for name, pairs in pair_sets.items()}}
    ref_logps = {}  # seeds of a group share their init: its log-likelihoods are computed once
    for name, paths in args.policy:
        accuracies = {set_name: [] for set_name in pair_sets}
        for path in paths:
            policy, _, config = rundir.load_policy(path, "--policy", device)
            if config["init"] not in ref_logps:
                ref = rundir.load_policy(config["init"], f"--policy {path}'s init", device)[0]
                ref_logps[config["init"]] = {set_name: log_likelihoods(ref, pair_rows(pairs), tokenizer)
                                             for set_name, pairs in pair_sets.items()}
            beta, per_token = config["args"]["dpo_beta"], config["args"]["dpo_kind"] == "ipo"
            for set_name, pairs in pair_sets.items():
                accuracies[set_name].append(implicit_accuracy(policy, ref_logps[config["init"]][set_name], pairs,
                                                              tokenizer, beta, per_token))
        table[f"{name} (implicit)"] = {set_name: stats(values) for set_name, values in accuracies.items()}
    os.makedirs(args.out, exist_ok=True)
    runtime.write_json(os.path.join(args.out, "implicit_rm.json"),
                       {"args": vars(args), "n_pairs": {k: len(v) for k, v in pair_sets.items()}, "accuracy": table})
    print("| reward | " + " | ".join(f"{k} ({len(v)} pairs)" for k, v in pair_sets.items()) + " |")
    print("|---" * (len(pair_sets) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(cell(row[k]) for k in pair_sets) + " |")
    print(f"wrote {args.out}/implicit_rm.json")


if __name__ == "__main__":
    runtime.run_cli(main)
