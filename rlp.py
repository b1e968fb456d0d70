"""Stage 5: Reward Learning on Policy: retrain the reward model on the RL policy's samples.

    python rlp.py --init runs/pretrain --rm runs/rm --policy runs/ppo_rm --out runs/rm_rlp           # UML + SPG
    python rlp.py --init runs/pretrain --rm runs/rm --policy runs/ppo_rm --out runs/rm_uml --method uml
    python train_ppo.py --init runs/pretrain --reward rm --rm runs/rm_rlp --out runs/ppo_rlp          # PPO again, from SFT

From the --rm model: Bradley-Terry on its own pairs plus SPG's synthetic pairs, + lam * L_M (UML; equations
in nanorl/rlp.py); pair accuracy before and after on pairs sampled from --init and --policy. Writes an "rm"
run (docs/rundir/README.md) for `train_ppo.py --reward rm --rm OUT`. Details: docs/rlp/README.md.
"""

import argparse
import copy
import os
import random
import time

import torch
from tqdm import tqdm

from nanorl import evals, plots, rlp, rundir, runtime, verifier
from nanorl.reward import (GOLD_KINDS, Pair, bradley_terry_loss, evaluate_pairs, normalise_scale, pairs_to_generation,
                           gold_pairs, sample_responses, score, score_responses)
from nanorl.runtime import RunError, non_negative_float, positive_float, positive_int, print0
from nanorl.tasks import problem_set

PRESETS = {
    # the default: minutes on a 2-core CPU (docs/rlp/README.md)
    "tiny": dict(n_prompts=96, n_eval_prompts=64, samples_per_prompt=8, max_new_tokens=128, epochs=1,
                 batch_size=16, sample_batch=16),
    # seconds; for the smoke tests
    "test": dict(n_prompts=6, n_eval_prompts=6, samples_per_prompt=4, max_new_tokens=24, epochs=1, batch_size=4,
                 sample_batch=6),
}


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=PRESETS, help="named size; other flags override it")
    p.add_argument("--init", default="runs/pretrain", help="the SFT (initial) policy the RM's data came from")
    p.add_argument("--rm", default="runs/rm", help="the reward model to retrain (a train_rm.py run)")
    p.add_argument("--policy", default="runs/ppo_rm", help="the RL policy whose samples retrain the RM")
    p.add_argument("--out", default="runs/rm_rlp", help="run directory to write (a reward-model run)")
    p.add_argument("--method", default="both", choices=("uml", "spg", "both"), help="RLP-UML, RLP-SPG or both")
    p.add_argument("--n-prompts", type=positive_int, help="unlabeled training problems to sample the policy on")
    p.add_argument("--samples-per-prompt", type=positive_int, help="responses per problem (n of SPG, views of UML)")
    p.add_argument("--gamma", type=non_negative_float, default=0.5, help="SPG: least confidence to keep a prompt")
    p.add_argument("--lam", type=non_negative_float, default=0.5, help="UML: weight of L_M")
    p.add_argument("--z-dim", type=positive_int, default=32, help="UML: size of the latent z")
    p.add_argument("--n-eval-prompts", type=positive_int, help="held-out test problems for gold-labelled pairs")
    p.add_argument("--pairs-per-prompt", type=positive_int, default=3, help="gold pairs per held-out problem")
    p.add_argument("--max-new-tokens", type=positive_int, help="longest sampled response")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature")
    p.add_argument("--quality-coef", type=non_negative_float, default=0.1, help="gold reward's shortness weight")
    p.add_argument("--gold", default="answer", choices=GOLD_KINDS, help="gold reward of the simulated annotators")
    p.add_argument("--judge-temperature", type=non_negative_float, default=0.1, help="win-rate annotator (see train_ppo.py)")
    p.add_argument("--epochs", type=positive_int, help="passes over D + synthetic pairs")
    p.add_argument("--batch-size", type=positive_int, help="pairs (and view pairs) per step")
    p.add_argument("--sample-batch", type=positive_int, help="problems per sampling call")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=1337, help="seed for prompts, sampling, pairs and training")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 (autocast)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a run")
    args = p.parse_args(argv)
    runtime.apply_preset(args, PRESETS)
    if args.gamma > 1:
        raise RunError(f"--gamma {args.gamma}: a confidence is at most 1")
    if args.samples_per_prompt < 2:
        raise RunError("--samples-per-prompt must be at least 2 (two views; a cluster and something outside it)")
    return args


def load_inputs(args, device):
    """(init policy, RL policy, RM, tokenizer, RM config, D): all checked before anything is written."""
    init, tokenizer, _ = rundir.load_policy(args.init, "--init", device)
    policy, _, policy_config = rundir.load_policy(args.policy, "--policy", device, like=tokenizer)
    if rundir.kind_of(policy_config) != "policy":
        raise RunError(f"--policy {args.policy} is a pretraining run; --policy needs the RL policy (a train_ppo.py "
                       f"run) whose samples retrain the reward model")
    rm, _, rm_config = rundir.load_reward_model(args.rm, "--rm", device, like=tokenizer)
    ckpt = os.path.join(args.rm, "ckpt.pt")
    if not os.path.exists(ckpt):
        raise RunError(f"--rm {args.rm}: ckpt.pt (the RM's training pairs D) is missing; give a train_rm.py run")
    pairs = [Pair(**p) for p in runtime.load_checkpoint(ckpt)["data"]["pairs"]]
    return init, policy, rm, tokenizer, rm_config, pairs


def spg_pairs(rm, responses, gold, tokenizer, args, device, dtype) -> tuple[list[Pair], dict]:
    """Synthetic pairs from the policy's samples (n adjacent responses per prompt), and their stats."""
    K, rng = args.samples_per_prompt, random.Random(args.seed)
    answers = [verifier.extract_answer(t)[1] for t in tokenizer.decode_batch([r for _, r in responses])]
    scores = score_responses(rm, responses, tokenizer, args, device, dtype).tolist()
    pairs, confidences, hits = [], [], []
    for start in range(0, len(responses), K):
        group = range(start, start + K)
        confidences.append(rlp.largest_cluster([answers[i] for i in group])[1])
        picked = rlp.synthetic_pair([answers[i] for i in group], [scores[i] for i in group], args.gamma, rng)
        if picked is not None:
            c, r = start + picked[0], start + picked[1]
            pairs.append(Pair(responses[c][0], responses[c][1], responses[r][1], gold[c] - gold[r]))
            hits.append(1.0 if gold[c] > gold[r] else 0.5 if gold[c] == gold[r] else 0.0)
    return pairs, {"n_synthetic_pairs": len(pairs), "prompts_kept": len(pairs) / len(confidences),
                   "synthetic_pair_accuracy": sum(hits) / len(hits) if hits else None,
                   "share_reaching_gamma": rlp.confidence_histogram(confidences)}


def retrain(model, heads, data: list[Pair], views: list[Pair], tokenizer, args, device, dtype, log):
    """Bradley-Terry on `data` (+ lam * L_M on `views` with --method uml/both), --epochs passes."""
    use_uml = args.method in ("uml", "both") and args.lam > 0
    params = list(model.parameters()) + (list(heads.parameters()) if use_uml else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps_per_epoch = -(-len(data) // args.batch_size)
    total, rng = args.epochs * steps_per_epoch, random.Random(args.seed)
    order = []
    for step in tqdm(range(total), desc="retrain RM", dynamic_ncols=True):
        if step % steps_per_epoch == 0:
            order = rng.sample(range(len(data)), len(data))
        batch = [data[k] for k in order[(step % steps_per_epoch) * args.batch_size:][:args.batch_size]]
        with runtime.autocast(device, dtype):
            rewards = score(model, pairs_to_generation(batch, tokenizer.eos_id, tokenizer.pad_id, device))
            loss, stats = bradley_terry_loss(rewards[:len(batch)], rewards[len(batch):])
            if use_uml:
                chosen = rng.sample(views, min(args.batch_size, len(views)))
                both = pairs_to_generation(chosen, tokenizer.eos_id, tokenizer.pad_id, device)
                hidden = rlp.last_hidden(model, both).float()
                l_m, uml_stats = rlp.uml_loss(heads, hidden[:len(chosen)], hidden[len(chosen):],
                                              rlp.kl_beta(step, total))
                loss, stats = loss + args.lam * l_m, {**stats, **uml_stats, "l_m": l_m.item()}
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.write({"step": step + 1, "loss": loss.item(), **stats})


def best_of_n(init, rm, tokenizer, problems, args, device, dtype) -> dict:
    """Best-of-(K-1) of the original RM among the --init policy's samples 1..K-1, judged against sample 0."""
    responses, gold, _ = sample_responses(init, tokenizer, problems, args, args.seed + 5, device, dtype, "best-of-n")
    K = args.samples_per_prompt
    scores = score_responses(rm, responses, tokenizer, args, device, dtype).view(-1, K)[:, 1:]
    gold = torch.tensor(gold, device=scores.device).view(-1, K)
    best = gold[:, 1:].gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
    wins = evals.judge_win_probability(best, gold[:, 0], args.judge_temperature)
    return {"n": K - 1, "win_rate": wins.mean().item(), "win_rate_stderr": wins.std().item() / len(wins) ** 0.5,
            "gold_reward": best.mean().item(), "pass@1": (best >= 1).float().mean().item()}


def pair_accuracies(model, eval_sets, tokenizer, args, device, dtype) -> dict:
    return {name: evaluate_pairs(model, pairs, tokenizer, args, device, dtype)[0] for name, pairs in eval_sets.items()}


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    device, dtype, _ = runtime.setup(args, f" | method {args.method}")
    init, policy, rm, tokenizer, rm_config, data = load_inputs(args, device)
    rundir.prepare_out(args.out, [args.init, args.rm, args.policy], overwrite=args.overwrite)
    log = runtime.MetricsLog(os.path.join(args.out, "metrics.jsonl"))

    train_problems = problem_set("train", args.n_prompts, seed=args.seed + 100)
    responses, gold, stats = sample_responses(policy, tokenizer, train_problems, args, args.seed, device, dtype,
                                              "sample policy")
    test_problems = problem_set("test", args.n_eval_prompts, seed=args.seed)
    eval_sets = {name: gold_pairs(m, tokenizer, test_problems, args, args.seed + 1, device, dtype, name)[0]
                 for name, m in (("init_policy", init), ("rl_policy", policy))}
    before = pair_accuracies(rm, eval_sets, tokenizer, args, device, dtype)
    synthetic, spg_stats = spg_pairs(rm, responses, gold, tokenizer, args, device, dtype)
    print0(f"SPG: {spg_stats['n_synthetic_pairs']} of {args.n_prompts} prompts pass gamma {args.gamma} | synthetic "
           f"pair accuracy vs gold {spg_stats['synthetic_pair_accuracy']} | RM accuracy before: {before}")
    bon = best_of_n(init, rm, tokenizer, test_problems, args, device, dtype)

    model = copy.deepcopy(rm).requires_grad_(True).train()
    heads = rlp.MultiViewHeads(model.config.n_embd, args.z_dim).to(device)
    K = args.samples_per_prompt  # UML's views: responses 2j and 2j+1 of each prompt, as (prompt, view 1, view 2)
    views = [Pair(responses[s + j][0], responses[s + j][1], responses[s + j + 1][1])
             for s in range(0, len(responses), K) for j in range(0, K - 1, 2)]
    retrain(model, heads, data + (synthetic if args.method in ("spg", "both") else []), views, tokenizer, args, device,
            dtype, log)
    model.eval()
    scale = normalise_scale(model, responses, tokenizer, args, device, dtype)
    after = pair_accuracies(model, eval_sets, tokenizer, args, device, dtype)

    result = {"method": args.method, "gamma": args.gamma, "lam": args.lam,
              **{f"pair_accuracy_{k}": {"before": before[k], "after": after[k]} for k in eval_sets},
              **{f"n_eval_pairs_{k}": len(v) for k, v in eval_sets.items()}, **spg_stats,
              "n_original_pairs": len(data), "policy_sample_accuracy": stats["sample_accuracy"],
              "best_of_n_original_rm": bon, **scale, "seconds": round(time.time() - t_start, 1)}
    config = {"script": "rlp.py", "init": args.init, "rm": args.rm, "policy": args.policy, "args": vars(args),
              "model": rm_config["model"]}
    rundir.save_model(args.out, model, tokenizer, config, kind="rm")
    runtime.write_json(os.path.join(args.out, "eval.json"), result)
    plots.bars(os.path.join(args.out, "rm_shift.png"), {"original RM": before, "after RLP": after},
               "RM accuracy on gold-labelled pairs, by the policy that sampled them", "pair accuracy")
    print0(runtime.format_line({f"{k} before": before[k] for k in before} | {f"{k} after": after[k] for k in after}))
    print0(f"best-of-{bon['n']} vs the original RM: win-rate {bon['win_rate']:.3f} | gold {bon['gold_reward']:.3f}")
    print0(f"wrote {args.out}/ (model.pt, config.json, tokenizer.json, eval.json, metrics.jsonl, rm_shift.png)")


if __name__ == "__main__":
    runtime.run_cli(main)
