"""Stage 3: RL fine-tuning of a pretrained policy, the Echo Chamber experiment (docs/echo/README.md).

    python train_ppo.py --init runs/pretrain --algo grpo --out runs/grpo
    python train_ppo.py --init runs/pretrain --algo ppo --reward rm --rm runs/rm --out runs/ppo_rm
    torchrun --nproc_per_node=2 train_ppo.py --init runs/pretrain --algo grpo --out runs/grpo_ddp

Every step of `main` reads top to bottom: sample responses to a batch of training prompts with the
batched engine, reward them (the verifier's 1/0, or a reward model's score), and update the policy
with one function of nanorl/algos.py per --algo (ppo, grpo, ei, online_dpo; dpo and sft update on
fixed pairs instead). Writes --out, a run directory of kind "policy" (docs/rundir/README.md).
"""

import argparse
import copy
import dataclasses
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from nanorl import algos, evals, rl, rundir, runtime, tasks
from nanorl.engine import pack
from nanorl.reward import GOLD_KINDS, Pair, read_preferences, reference_pairs, score, value_model
from nanorl.runtime import RunError, non_negative_float, positive_float, positive_int, print0

ALGOS = ("ppo", "grpo", "ei", "dpo", "online_dpo", "sft")
# --reward rm defaults, chosen once from the over-optimisation experiment (docs/rm/README.md), never from
# the gold reward inside a run: the RM's proxy reward keeps rising while the gold reward of the samples
# peaks and falls, sooner the smaller beta is. beta = 0.1 holds sqrt(KL(pi || pi_0)) near the peak.
RM_KL_COEF = 0.1
RM_MAX_STEPS = {"tiny": 40}  # the preset's own step count for the others
PRESETS = {
    # CPU, minutes: 16 prompts x 8 samples per step
    "tiny": dict(max_steps=60, prompts_per_step=16, samples=8, lr=1e-4, n_train_prompts=2000, n_eval=200,
                 eval_samples=4, eval_every=20, max_new_tokens=128),
    # GPU: the paper's 64 prompts x 8 samples
    "gpu": dict(max_steps=500, prompts_per_step=64, samples=8, lr=5e-6, n_train_prompts=20000, n_eval=1000,
                eval_samples=16, eval_every=50, max_new_tokens=256),
    # seconds; for the smoke tests
    "test": dict(max_steps=2, prompts_per_step=2, samples=2, lr=1e-4, n_train_prompts=20, n_eval=4,
                 eval_samples=2, eval_every=1, max_new_tokens=24),
}


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", required=True, help="run to start from: a pretraining or a fine-tuned policy run")
    p.add_argument("--out", default="runs/ppo", help="run directory to write (never one of the inputs)")
    p.add_argument("--algo", default="ppo", choices=ALGOS, help="update rule")
    p.add_argument("--preset", default="tiny", choices=PRESETS, help="named size; other flags override it")
    p.add_argument("--reward", default="verifier", choices=("verifier", "rm"), help="reward source")
    p.add_argument("--rm", help="reward-model run directory (train_rm.py --out), with --reward rm")
    p.add_argument("--prompts", help="GSM8K-format JSONL of training prompts (default: the synthetic world)")
    steps = range(1, tasks.MAX_DIFFICULTY + 1)
    p.add_argument("--min-difficulty", type=int, choices=steps, default=1, help="easiest training problems (steps)")
    p.add_argument("--max-difficulty", type=int, choices=steps, default=4, help="hardest training problems (steps)")
    p.add_argument("--eval-max-difficulty", type=int, choices=steps, default=4, help="hardest held-out problems")
    p.add_argument("--max-steps", type=positive_int, help="policy updates (EI: rounds); with --reward rm and the tiny "
                                                          f"preset {RM_MAX_STEPS['tiny']} (over-optimisation)")
    p.add_argument("--prompts-per-step", type=positive_int, help="prompts per rollout (over all ranks)")
    p.add_argument("--samples", type=positive_int, help="responses per prompt (GRPO group size, EI k, online DPO K)")
    p.add_argument("--temperature", type=positive_float, default=0.7, help="rollout temperature (EI samples at 1)")
    p.add_argument("--lr", type=positive_float, help="AdamW learning rate")
    p.add_argument("--kl-coef", type=non_negative_float, default=None,
                   help="beta: KL-to-reference coefficient (k1 in PPO's reward, k3 in GRPO's loss); default 0 with "
                        f"the verifier's reward, {RM_KL_COEF} with --reward rm (a learned reward invites hacking)")
    p.add_argument("--clip", type=non_negative_float, default=0.2, help="ratio clip epsilon")
    p.add_argument("--value-clip", type=non_negative_float, default=0.2, help="PPO value clip")
    p.add_argument("--vf-coef", type=non_negative_float, default=0.5, help="PPO value-loss weight")
    p.add_argument("--lam", type=non_negative_float, default=0.95, help="GAE lambda (gamma is 1)")
    p.add_argument("--epochs", type=positive_int, default=2, help="passes over each rollout (PPO/GRPO) or over kept samples (EI)")
    p.add_argument("--minibatches", type=positive_int, default=2, help="optimizer steps per epoch")
    p.add_argument("--micro-batch", type=positive_int, default=64, help="rows per forward/backward (memory only)")
    p.add_argument("--ei-batch", type=positive_int, default=64, help="EI: kept samples per optimizer step")
    p.add_argument("--aggregation", default="dapo", choices=rl.AGGREGATIONS,
                   help="GRPO loss: dapo = token sum / minibatch tokens; grpo = the paper's per-sequence mean; "
                        "dr_grpo = token sum / (sequences x max length) AND advantages not divided by the group std")
    p.add_argument("--missing-eos-penalty", type=non_negative_float, default=1.0, help="subtracted from the score of truncated responses (PPO)")
    p.add_argument("--ei-restart", action="store_true", help="EI: restart each round from the base model, SFT on all kept samples")
    p.add_argument("--prefs", help="dpo / sft: preference JSONL (prompt, chosen, rejected), not sampled pairs")
    p.add_argument("--sft-format", choices=tuple(tasks.RENDERERS),
                   help="sft: learn the world's reference solutions in this format (instead of --prefs or samples)")
    p.add_argument("--dpo-beta", type=positive_float, default=0.1, help="DPO beta")
    p.add_argument("--dpo-kind", default="sigmoid", choices=("sigmoid", "ipo"), help="DPO loss")
    p.add_argument("--n-train-prompts", type=positive_int, help="size of the synthetic training-prompt pool")
    p.add_argument("--n-eval", type=positive_int, help="held-out problems for evaluation")
    p.add_argument("--eval-samples", type=positive_int, help="k of pass@k / maj@k")
    p.add_argument("--eval-every", type=positive_int, help="steps between held-out evaluations")
    p.add_argument("--judge-temperature", type=non_negative_float, default=0.1,
                   help="win-rate judge: P(a beats b) = sigmoid((gold_a - gold_b) / T); 0: the higher gold wins")
    p.add_argument("--gold", default="answer", choices=GOLD_KINDS, help="gold reward of the win-rate judge")
    p.add_argument("--quality-coef", type=non_negative_float, default=0.1,
                   help="gold reward = 1[correct] + this * (1 - length / max_new_tokens), as in train_rm.py")
    p.add_argument("--max-new-tokens", type=positive_int, help="longest response")
    p.add_argument("--ckpt-every", type=positive_int, default=20, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=1337, help="seed for prompts, sampling and updates")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 (autocast)")
    p.add_argument("--compile", action="store_true", help="torch.compile the policy and value model of the updates")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a run")
    p.add_argument("--stop-after", type=positive_int, default=None, help="save a checkpoint and exit after this step")
    args = p.parse_args(argv)
    if args.reward == "rm" and args.max_steps is None:
        args.max_steps = RM_MAX_STEPS.get(args.preset)
    runtime.apply_preset(args, PRESETS)
    if args.kl_coef is None:
        args.kl_coef = RM_KL_COEF if args.reward == "rm" else 0.0
    if args.reward == "rm" and not args.rm:
        p.error("--reward rm needs --rm DIR (a train_rm.py run directory)")
    if args.rm and args.reward != "rm":
        p.error("--rm is read only with --reward rm; add --reward rm, or drop --rm")
    if args.algo == "ei" and args.reward == "rm":
        p.error("--algo ei keeps the samples the verifier marks correct; it has no use for --reward rm")
    if args.prefs and args.algo not in ("dpo", "sft"):
        p.error(f"--prefs is read only by --algo dpo and sft, not {args.algo}")
    if args.sft_format and (args.algo != "sft" or args.prefs or args.prompts):
        p.error("--sft-format renders the synthetic world's reference solutions: it is the data of --algo sft, "
                "without --prefs or --prompts")
    offline_data = args.prefs or args.sft_format
    if args.samples < 2 and (args.algo in ("grpo", "online_dpo") or args.algo in ("dpo", "sft") and not offline_data):
        p.error(f"--samples {args.samples}: --algo {args.algo} compares the responses to each prompt (GRPO's group "
                f"advantages, preference pairs), so it needs --samples 2 or more")
    if args.min_difficulty > args.max_difficulty:
        p.error("--min-difficulty is larger than --max-difficulty")
    return args


# flags a --resume may change: the learning rate is constant, so more steps extend a run, and the
# rest changes memory, checkpoints or evaluations only
RESUME_MAY_CHANGE = rundir.RESUME_MAY_CHANGE | {"ckpt_every", "max_steps", "micro_batch", "eval_every", "compile"}


def rl_config(args) -> algos.RLConfig:
    """The update's settings: every RLConfig field that is a flag (gamma and grad_clip are not)."""
    names = [f.name for f in dataclasses.fields(algos.RLConfig) if hasattr(args, f.name)]
    return algos.RLConfig(**{name: getattr(args, name) for name in names})


@dataclasses.dataclass
class Run:
    """The models, data and sampler of one fine-tuning run: what a step reads and a checkpoint saves."""
    policy: torch.nn.Module         # trained; the reference is a frozen copy of its start
    ref: torch.nn.Module
    value: torch.nn.Module | None   # PPO's value model
    reward_model: torch.nn.Module | None  # --reward rm; None: the verifier's reward
    optimizer: torch.optim.Optimizer
    tokenizer: object
    init_config: dict
    eval_problems: list
    pool: list                      # training problems
    pairs: list[Pair] | None        # dpo / sft data
    sampler: torch.Generator
    base_state: dict | None         # the initial weights, for EI --ei-restart only
    ei_kept: list = dataclasses.field(default_factory=list)  # EI --ei-restart: every sample kept so far


def fitting(items: list, lengths: list[int], room: int, what: str, noun: str, leaves: str, fix: str, info) -> list:
    """The items whose length fits in `room` tokens; the rest are skipped, and said so (none fitting: RunError)."""
    kept = [item for item, n in zip(items, lengths) if n <= room]
    if not kept:
        raise RunError(f"{what}: none of its {len(items)} {noun} fits the context: the shortest is {min(lengths)} "
                       f"tokens, and {leaves} room for {room}; {fix}")
    if len(kept) < len(items):
        print0(f"{what}: skipped {len(items) - len(kept)} of {len(items)} {noun} longer than the {room} tokens "
               f"{leaves} (the longest has {max(lengths)})", info=info)
    return kept


def training_prompts(args, tokenizer, room: int, info) -> list:
    """The training problems whose prompt fits in `room` tokens, the room --max-new-tokens leaves."""
    if args.prompts:
        source, problems = f"--prompts {args.prompts}", tasks.read_gsm8k(args.prompts)
    else:
        difficulties = range(args.min_difficulty, args.max_difficulty + 1)
        source, problems = "synthetic pool", tasks.problem_set("train", args.n_train_prompts, args.seed, difficulties)
    return fitting(problems, tasks.prompt_lengths(tokenizer, problems), room, source, "prompts",
                   f"--max-new-tokens {args.max_new_tokens} leaves", "lower --max-new-tokens or give shorter prompts",
                   info)


def load_run(args, info, device) -> Run:
    """Loads and checks every input (--init, --rm, --prompts, --prefs) and writes nothing."""
    policy, tokenizer, init_config = rundir.load_policy(args.init, "--init", device)
    ref = copy.deepcopy(policy).requires_grad_(False)
    reward_model = None
    if args.reward == "rm":
        reward_model, _, _ = rundir.load_reward_model(args.rm, "--rm", device, like=tokenizer)
        if reward_model.config.block_size < policy.config.block_size:
            raise RunError(f"--rm {args.rm} has a shorter context than --init {args.init}; train the reward model "
                           "from the same pretrained run")
        reward_model.requires_grad_(False)
    value = value_model(policy, reward_model) if args.algo == "ppo" else None
    params = list(policy.parameters()) + (list(value.parameters()) if value is not None else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, eps=1e-5, weight_decay=0.0)
    eval_problems = tasks.problem_set("test", args.n_eval, seed=args.seed,
                                      difficulties=range(1, args.eval_max_difficulty + 1))
    # prompt tokens left in the policy's context (a reward model's is no shorter)
    room = tasks.prompt_room(tokenizer, eval_problems, args.max_new_tokens, policy.config.block_size,
                             f"--init {args.init}'s context")
    pool = training_prompts(args, tokenizer, room, info)
    block = policy.config.block_size
    if args.sft_format:  # the reference solutions of the training problems, with their prompt
        pairs = reference_pairs(pool, args.sft_format, tokenizer)
        pairs = fitting(pairs, [len(p.prompt) + len(p.chosen) for p in pairs], block, f"--sft-format {args.sft_format}",
                        "reference solutions", "the context leaves", "use a model with a longer context", info)
    else:
        pairs = read_preferences(args.prefs, tokenizer, block) if args.prefs else None
    sampler = torch.Generator(device=device).manual_seed(args.seed * 1000 + info.rank)
    return Run(policy, ref, value, reward_model, optimizer, tokenizer, init_config, eval_problems, pool, pairs,
               sampler, copy.deepcopy(policy.state_dict()) if args.ei_restart else None)


def step_problems(pool, step, args, info):
    """This rank's share of the step's prompts (or offline pairs), from a seeded pass over the pool."""
    per_epoch = max(1, len(pool) // args.prompts_per_step)
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed + epoch)).tolist()
    ids = order[offset * args.prompts_per_step:(offset + 1) * args.prompts_per_step][info.rank::info.world_size]
    return ids, [pool[i] for i in ids]


def sample(run: Run, args, problems) -> algos.Rollout:
    """args.samples responses to each problem, decoded and verified (EI samples at temperature 1)."""
    return algos.rollout(run.policy, run.tokenizer, problems, n_samples=args.samples,
                         temperature=1.0 if args.algo == "ei" else args.temperature,
                         max_new_tokens=args.max_new_tokens, generator=run.sampler)


def gold_stats(run: Run, args, batch, problems, info) -> dict:
    """--reward rm: the gold reward of the samples the RM scored, and sqrt(KL) of the policy that drew
    them, before this step's update (the over-optimisation curve; a real user has no gold reward)."""
    gold = evals.rollout_gold(batch, problems, args.max_new_tokens, args.quality_coef, args.gold)
    return evals.overoptimisation_stats(gold, algos.sequence_kl(run.policy, run.ref, batch), info)


def offline_update(run: Run, args, step: int, train_policy, cfg, info) -> dict:
    """dpo / sft: one update on this step's share of fixed pairs (--prefs, --sft-format, or sampled once)."""
    if run.pairs is None:
        run.pairs = algos.sampled_pairs(run.policy, run.tokenizer, run.pool, args, run.sampler, run.reward_model)
    _, rows = step_problems(run.pairs, step, args, info)  # a seeded pass over the pairs
    prompts, ids = [p.prompt for p in rows], dict(eos_id=run.tokenizer.eos_id, pad_id=run.tokenizer.pad_id,
                                                  device=run.sampler.device)
    chosen = pack(prompts, [p.chosen for p in rows], **ids)
    if args.algo == "sft":
        return {**algos.sft_step(train_policy, run.optimizer, chosen, cfg), "n_pairs": len(run.pairs)}
    rejected = pack(prompts, [p.rejected for p in rows], **ids)
    return {**algos.dpo_step(train_policy, run.ref, run.optimizer, chosen, rejected, cfg), "n_pairs": len(run.pairs)}


def held_out(run: Run, args, device, dtype, judge: bool = False) -> dict:
    """pass@1 / pass@k / maj@k on the held-out problems; with `judge`, also the win-rate against the
    initial policy and the gold reward."""
    with runtime.autocast(device, dtype):
        result = evals.held_out_metrics(run.policy, run.tokenizer, run.eval_problems, n_samples=args.eval_samples,
                                        temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                        seed=args.seed)
        if judge:
            result.update(evals.win_rate(run.policy, run.ref, run.tokenizer, run.eval_problems,
                                         temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                         quality_coef=args.quality_coef, judge_temperature=args.judge_temperature,
                                         gold_kind=args.gold, seed=args.seed + 7))
    return result


def save(run: Run, args, step: int, info):
    """ckpt.pt with every rank's sampler and RNG state (written by rank 0) and model.pt."""
    ranks = runtime.gather_objects({"sampler": run.sampler.get_state(), "rng": runtime.rng_state()}, info)
    if info.is_main:
        runtime.save_checkpoint(os.path.join(args.out, "ckpt.pt"), {
            "policy": run.policy.state_dict(), "value": run.value.state_dict() if run.value else None,
            "optimizer": run.optimizer.state_dict(), "step": step, "rank_states": ranks, "ei_kept": run.ei_kept,
            "pairs": None if run.pairs is None else [dataclasses.asdict(p) for p in run.pairs]})  # plain types
        runtime.save_checkpoint(os.path.join(args.out, "model.pt"), run.policy.state_dict())


def load(run: Run, ckpt: dict, info) -> int:
    run.policy.load_state_dict(ckpt["policy"])
    if run.value is not None:
        run.value.load_state_dict(ckpt["value"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.sampler.set_state(ckpt["rank_states"][info.rank]["sampler"])
    runtime.set_rng_state(ckpt["rank_states"][info.rank]["rng"])
    run.ei_kept = ckpt["ei_kept"]
    run.pairs = None if ckpt["pairs"] is None else [Pair(**p) for p in ckpt["pairs"]]
    return ckpt["step"]


def start(args, run: Run, info, device, dtype):
    """Make --out (rank 0 writes), then resume the run there or evaluate the initial policy.
    Returns (first step, held-out results before training, metrics log)."""
    if info.is_main:
        rundir.prepare_out(args.out, [args.init, args.rm, args.prompts, args.prefs], args.resume, args.overwrite)
    runtime.barrier(info)
    if args.resume:  # on every rank: all stop with the same one-line error
        rundir.check_resume(args.out, "policy", args, RESUME_MAY_CHANGE, world_size=info.world_size,
                            lock=info.is_main)
    log = runtime.MetricsLog(os.path.join(args.out, "metrics.jsonl"), info.is_main, truncate=not args.resume)
    if args.resume:
        first = load(run, runtime.load_checkpoint(os.path.join(args.out, "ckpt.pt")), info)
        log.drop_after(first)
        print0(f"resuming from step {first}", info=info)
        return first, runtime.read_json(os.path.join(args.out, "eval_before.json")), log
    before = None
    if info.is_main:
        config = {"script": "train_ppo.py", "init": args.init, "rm": args.rm, "args": vars(args),
                  "model": run.init_config["model"], "world_size": info.world_size}
        rundir.write_config(args.out, config, "policy")
        run.tokenizer.save(os.path.join(args.out, "tokenizer.json"))
        print0(f"evaluating the initial policy on {len(run.eval_problems)} held-out problems ...")
        before = held_out(run, args, device, dtype, judge=True)
        runtime.write_json(os.path.join(args.out, "eval_before.json"), before)
        log.write({"step": 0, **evals.eval_record(before)})
    runtime.barrier(info)
    return 0, before, log


def finish(args, run: Run, before: dict, device, dtype):
    """The held-out evaluation after training, eval.json, the plots and the before/after lines."""
    after = held_out(run, args, device, dtype, judge=True)
    runtime.write_json(os.path.join(args.out, "eval.json"), {"before": before, "after": after})
    evals.write_plots(args, [record for _, record in runtime.iter_jsonl(os.path.join(args.out, "metrics.jsonl"))],
                      before, after)
    for name, result in (("before", before), ("after", after)):
        k = result["k"]
        line = {"pass@1": result["pass@1"], f"pass@{k}": result["pass@k"], f"maj@{k}": result["maj@k"],
                "win-rate": result["win_rate"], "gold": result["gold_reward"]}
        print0(f"{name:>6}: {runtime.format_line(line)} | shares {runtime.format_line(result['sampled_format_share'])}")
    print0(f"wrote {args.out}/ (eval.json, metrics.jsonl, *.png)")


def main(argv=None):
    args = parse_args(argv)
    device, dtype, info = runtime.setup(args, f" | algo {args.algo} | reward {args.reward}", distributed=True)
    if info.enabled and args.algo not in ("ppo", "grpo"):
        raise RunError(f"--algo {args.algo} runs in one process; use ppo or grpo under torchrun")
    if info.enabled and args.prompts_per_step % info.world_size:
        raise RunError(f"--prompts-per-step {args.prompts_per_step} must divide evenly over {info.world_size} ranks")
    run, cfg = load_run(args, info, device), rl_config(args)
    first, before, log = start(args, run, info, device, dtype)
    # DDP averages gradients over ranks; the updates sum their statistics over ranks with all_reduce
    policy = DDP(run.policy) if info.enabled else run.policy
    value = DDP(run.value) if info.enabled and run.value is not None else run.value
    if args.compile:  # the updates' forward passes; sampling stays eager (its KV cache changes shape)
        policy, value = torch.compile(policy), value and torch.compile(value)
    world, all_reduce = info.world_size, lambda t: runtime.all_reduce_sum(t, info)

    bar = tqdm(range(first, args.max_steps), initial=first, total=args.max_steps, desc=args.algo,
               disable=not info.is_main, dynamic_ncols=True)
    with runtime.CtrlC() as ctrl_c:
        for step in bar:
            t0 = time.perf_counter()
            with runtime.autocast(device, dtype):
                if args.algo in ("dpo", "sft"):  # offline: no sampling, an update on fixed pairs
                    batch, stats = None, offline_update(run, args, step, policy, cfg, info)
                else:
                    ids, problems = step_problems(run.pool, step, args, info)
                    # 1. sample, and 2. reward: the verifier's 1/0, or the reward model's score
                    batch = sample(run, args, problems)
                    batch.scores = batch.correct if run.reward_model is None else score(run.reward_model, batch.gen)
                    stats = gold_stats(run, args, batch, problems, info) if run.reward_model is not None else {}
                    # 3. update
                    if args.algo == "ppo":
                        stats |= algos.ppo_step(policy, run.ref, value, run.optimizer, batch, cfg, world, all_reduce)
                    elif args.algo == "grpo":
                        stats |= algos.grpo_step(policy, run.ref, run.optimizer, batch, cfg, world, all_reduce)
                    elif args.algo == "ei":
                        stats |= algos.ei_step(policy, run.optimizer, batch, ids, cfg, run.tokenizer,
                                               (run.ei_kept, run.base_state) if args.ei_restart else None)
                    else:
                        stats |= algos.online_dpo_step(policy, run.ref, run.optimizer, batch, cfg)
            record = {"step": step + 1, **(evals.rollout_stats(batch, info) if batch is not None else {}), **stats,
                      "time": time.perf_counter() - t0}
            if (step + 1) % args.eval_every == 0 or step + 1 == args.max_steps:
                # beta = 0 updates do not log the KL to the reference: measure it here
                record |= evaluation_record(run, args, None if "kl_ref" in record else batch, device, dtype, info,
                                            all_reduce)
            log.write(record)
            if info.is_main:
                bar.write(runtime.format_line({k: v for k, v in record.items() if not k.startswith("eval/share")}))
            runtime.after_step(step + 1, args, ctrl_c, info, device, lambda done: save(run, args, done, info),
                               args.ckpt_every)
    save(run, args, args.max_steps, info)
    if info.is_main:
        finish(args, run, before, device, dtype)
    runtime.barrier(info)  # ranks leave together: a rank that destroys the group early can abort another
    runtime.shutdown_distributed(info)


def evaluation_record(run: Run, args, batch, device, dtype, info, all_reduce) -> dict:
    """An evaluation step's extra fields: the KL of `batch` to the reference, and the held-out metrics (rank 0)."""
    record = {}
    if batch is not None:
        with runtime.autocast(device, dtype):
            kl = {"kl_ref": algos.kl_to_reference(run.ref, batch)}
        record |= algos.rank_mean(kl, info.world_size, all_reduce)
    if info.is_main:
        record |= evals.eval_record(held_out(run, args, device, dtype))
    runtime.barrier(info)
    return record


if __name__ == "__main__":
    runtime.run_cli(main)
