"""Extractability and evidence: does RL fine-tuning learn the feature that is easier to extract?

    python probe_mdl.py --out runs/mdl                          # tiny preset, from scratch, on a CPU
    python probe_mdl.py --init runs/pretrain --out runs/mdl_pre # the policy starts from a pretrained run
    python probe_mdl.py --preset paper --out runs/mdl_paper     # the paper's grid (hours on a CPU)

Per target feature t of the toy world (nanorl/toyworld.py): relative MDL = MDL(s) / MDL(t) of probes
on the starting model (nanorl/mdl.py), and the test reward of PPO runs over a grid of evidence p.
Writes a run directory of kind "mdl" (docs/rundir/README.md). Details: docs/mdl/README.md.
"""

import argparse
import copy
import os
import time

import numpy as np
from tqdm import tqdm

from nanorl import mdl, plots, rundir, runtime, toyworld
from nanorl.runtime import RunError, non_negative_float, positive_float, positive_int

PRESETS = {
    # seconds: the smoke test
    "smoke": dict(targets="contains_1,prefix_duplicate", evidence="0,0.5", seeds=1, probe_seeds=2, probe_n=200,
                  train_n=200, test_n=32, iterations=3, batch_size=16, lr=1e-3, reward="token",
                  n_layer=1, n_embd=32, n_head=2),
    # the default: minutes on a 2-core CPU (docs/mdl/README.md)
    "tiny": dict(targets="contains_1,prefix_duplicate,first_last,adjacent_duplicate", evidence="0,0.01,0.1,0.5",
                 seeds=3, probe_seeds=3, probe_n=2000, train_n=2000, test_n=256, iterations=100, batch_size=64,
                 lr=1e-3, reward="token", n_layer=2, n_embd=64, n_head=4),
    # the paper's grid: 5 targets x 7 evidence values, the 5-token reward, a 4-layer model
    "paper": dict(targets=",".join(toyworld.TARGETS), evidence="0,0.001,0.01,0.05,0.1,0.2,0.5", seeds=5,
                  probe_seeds=5, probe_n=10000, train_n=10000, test_n=500, iterations=100, batch_size=64,
                  lr=1e-4, reward="run", n_layer=4, n_embd=128, n_head=4),
}


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=PRESETS, help="named size; other flags override it")
    p.add_argument("--init", default=None, help="pretrained run directory to start the policy from (default: scratch)")
    p.add_argument("--out", default="runs/mdl", help="run directory to write")
    p.add_argument("--targets", help="comma-separated target features, from: " + ", ".join(toyworld.TARGETS))
    p.add_argument("--evidence", help="comma-separated evidence values p in [0, 1] (share of s_only prompts)")
    p.add_argument("--seeds", type=positive_int, help="RL seeds per (target, p)")
    p.add_argument("--probe-seeds", type=positive_int, help="MDL repeats per feature (for the stderr)")
    p.add_argument("--probe-n", type=positive_int, help="examples per MDL probe set (N)")
    p.add_argument("--probe", default="mlp", choices=mdl.PROBES, help="probe on the frozen hidden state")
    p.add_argument("--train-n", type=positive_int, help="training prompts per RL run")
    p.add_argument("--test-n", type=positive_int, help="test prompts per section")
    p.add_argument("--iterations", type=positive_int, help="PPO iterations per RL run")
    p.add_argument("--batch-size", type=positive_int, help="prompts per PPO iteration")
    p.add_argument("--lr", type=positive_float, help="learning rate (AdamW) of policy and value model")
    p.add_argument("--reward", choices=toyworld.REWARDS, help="run: 5 tokens, increasing/decreasing run; "
                                                              "token: 1 token, upper/lower half")
    p.add_argument("--n-layer", type=positive_int, help="from scratch: layers")
    p.add_argument("--n-embd", type=positive_int, help="from scratch: width")
    p.add_argument("--n-head", type=positive_int, help="from scratch: attention heads")
    p.add_argument("--fail-below", type=non_negative_float, default=0.7,
                   help="flag an RL run whose mean both/neither reward ends below this")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--resume", action="store_true", help="continue --out, skipping the probes and runs it holds")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a run")
    args = p.parse_args(argv)
    runtime.apply_preset(args, PRESETS)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in toyworld.TARGETS]
    if unknown or not names:
        raise RunError(f"--targets {args.targets!r}: unknown feature {', '.join(unknown) or '(none given)'}; "
                       f"choose from {', '.join(toyworld.TARGETS)}")
    args.targets = list(dict.fromkeys(names))
    text = args.evidence
    try:
        args.evidence = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise RunError(f"--evidence {text!r}: give comma-separated numbers, e.g. 0,0.01,0.1") from None
    if not args.evidence or not all(0.0 <= v <= 1.0 for v in args.evidence):
        raise RunError(f"--evidence {text!r}: every p must lie in [0, 1]")
    runtime.check_heads(args.n_embd, args.n_head)
    if args.probe_n < 20:
        raise RunError(f"--probe-n {args.probe_n} is too small for the online code's blocks; use at least 20")
    return args


class Start:
    """The policy every probe and RL run starts from: a copy of --init, or a fresh scratch model."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        if args.init:
            self.model, tokenizer, config = rundir.load_policy(args.init, "--init", device)
            try:
                self.vocab = toyworld.tokenizer_vocab(tokenizer)
            except ValueError as err:
                raise RunError(f"--init {args.init}: {err}") from None
            if self.model.config.block_size < 1 + toyworld.SEQ_LEN + toyworld.REWARDS[args.reward]:
                raise RunError(f"--init {args.init}: its context is too short for the toy prompts")
            self.kind = rundir.kind_of(config)
        else:
            self.model, self.vocab, self.kind = None, toyworld.SCRATCH_VOCAB, "scratch"

    def policy(self, seed: int):
        if self.model is not None:
            return copy.deepcopy(self.model)
        a = self.args
        return toyworld.scratch_policy(a.n_layer, a.n_embd, a.n_head, seed).to(self.device)


def probe_sets(target: str, n: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(prompts, labels) of probe sets "t" (both vs s_only), "s" (s_only vs neither) and "random" (control)."""
    rng = np.random.default_rng([seed, list(toyworld.TARGETS).index(target)])
    def two(pos, neg):
        x = np.concatenate([toyworld.sample_section(rng, target, pos, n // 2),
                            toyworld.sample_section(rng, target, neg, n - n // 2)])
        return x, np.r_[np.ones(n // 2, dtype=int), np.zeros(n - n // 2, dtype=int)]
    uniform = rng.integers(0, 10, size=(n, toyworld.SEQ_LEN))
    return {"t": two("both", "s_only"), "s": two("s_only", "neither"), "random": (uniform, rng.integers(0, 2, n))}


def measure_mdl(start: Start, args, target: str, seed: int) -> dict:
    model = start.policy(seed)
    out = {}
    for name, (x, y) in probe_sets(target, args.probe_n, seed).items():
        code = mdl.online_codelength(toyworld.representations(model, start.vocab, x), y, 2, seed, args.probe)
        out[name] = {k: code[k] for k in ("mdl_bits", "uniform_bits", "compression")}
    return {"kind": "mdl", "target": target, "seed": seed, **out,
            "relative_mdl": out["s"]["mdl_bits"] / out["t"]["mdl_bits"]}


def rl_run(start: Start, args, target: str, p: float, seed: int, bar) -> dict:
    policy = start.policy(seed)
    rng = np.random.default_rng([seed, list(toyworld.TARGETS).index(target), round(p * 10 ** 6)])
    prompts = toyworld.training_set(rng, target, p, args.train_n)
    t0 = time.time()
    rewards = toyworld.train_policy(policy, start.vocab, prompts, target, args.reward, iterations=args.iterations,
                                    batch_size=args.batch_size, lr=args.lr, seed=seed, progress=lambda: bar.update())
    sections = toyworld.section_rewards(policy, start.vocab, target, args.reward, args.test_n, seed=10 ** 6 + seed)
    failed = (sections["both"] + sections["neither"]) / 2 < args.fail_below
    return {"kind": "rl", "target": target, "p": p, "seed": seed, "sections": sections, "failed": bool(failed),
            "train_reward_last": float(np.mean(rewards[-10:])), "seconds": round(time.time() - t0, 1)}


def summarise(stat_records: list[dict], key: str) -> dict:
    """mdl_bits, uniform_bits and compression of probe set `key`: mean and _stderr over records."""
    out = {}
    for field in ("mdl_bits", "uniform_bits", "compression"):
        out[field], out[field + "_stderr"] = mdl.mean_stderr([r[key][field] for r in stat_records])
    return out


def evaluation(args, records: list[dict]) -> dict:
    mdls = [r for r in records if r["kind"] == "mdl"]
    runs = [r for r in records if r["kind"] == "rl"]
    features, by_target = {}, {}
    for target in args.targets:
        mine = [r for r in mdls if r["target"] == target]
        features[target] = summarise(mine, "t")
        rel, rel_err = mdl.mean_stderr([r["relative_mdl"] for r in mine])
        features[target].update(relative_mdl=rel, relative_mdl_stderr=rel_err)
        by_target[target] = summarise(mine, "s")
    features["random"] = summarise(mdls, "random")
    spurious = {**summarise(mdls, "s"), "by_target": by_target}  # pooled over the targets' probe sets
    evidence = {t: {str(p): {s: dict(zip(("mean", "stderr"), mdl.mean_stderr(
        [r["sections"][s] for r in runs if r["target"] == t and r["p"] == p]))) for s in toyworld.SECTIONS}
        for p in args.evidence} for t in args.targets}
    points = [(features[r["target"]]["relative_mdl"], (r["sections"]["s_only"] + r["sections"]["t_only"]) / 2)
              for r in runs if r["p"] == 0.0]
    rho, p_value = mdl.spearman(*zip(*points)) if len(points) > 1 else (float("nan"), 1.0)
    return {"features": features, "spurious": spurious, "evidence": evidence,
            "spearman": {"rho": None if np.isnan(rho) else rho, "p_value": p_value, "n_points": len(points)},
            "failed_runs": [{k: r[k] for k in ("target", "p", "seed")} for r in runs if r["failed"]],
            "config": {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite")}}


def mdl_table(result: dict) -> str:
    f, s = result["features"], result["spurious"]["by_target"]
    lines = ["| feature | MDL(t) bits | compression | MDL(s) bits | relative MDL s/t | reward p=0: s_only / t_only |",
             "|---|---|---|---|---|---|"]
    for name, row in f.items():
        if name == "random":
            continue
        zero = result["evidence"][name].get("0.0")
        reward = f"{zero['s_only']['mean']:.2f} / {zero['t_only']['mean']:.2f}" if zero else "-"
        lines.append(f"| {name} | {row['mdl_bits']:.0f} ± {row['mdl_bits_stderr']:.0f} | {row['compression']:.2f} ± "
                     f"{row['compression_stderr']:.2f} | {s[name]['mdl_bits']:.0f} ± {s[name]['mdl_bits_stderr']:.0f} | "
                     f"{row['relative_mdl']:.2f} ± {row['relative_mdl_stderr']:.2f} | {reward} |")
    r = f["random"]
    lines.append(f"| random labels (control) | {r['mdl_bits']:.0f} ± {r['mdl_bits_stderr']:.0f} | "
                 f"{r['compression']:.3f} ± {r['compression_stderr']:.3f} | - | - | - |")
    return "\n".join(lines) + f"\n\nuniform codelength N log2 K = {r['uniform_bits']:.0f} bits; ± is the standard error " \
                              f"over probe seeds.\n"


def plot_reward_vs_evidence(path: str, result: dict):
    """The paper's 4-panel figure: reward vs p per section, a line per target coloured by relative MDL."""
    from matplotlib import cm, colors
    relative = {t: result["features"][t]["relative_mdl"] for t in result["evidence"]}
    norm = colors.LogNorm(min(relative.values()) * 0.95, max(relative.values()) * 1.05)
    # no tight layout: the shared colour bar places itself
    with plots.figure(path, 2, 2, figsize=(10, 7), tight=False, sharex=True, sharey=True) as (fig, axes):
        for ax, section in zip(axes.flat, toyworld.SECTIONS):
            for target, per_p in result["evidence"].items():
                ps = sorted(per_p, key=float)
                ax.errorbar([float(p) for p in ps], [per_p[p][section]["mean"] for p in ps],
                            yerr=[per_p[p][section]["stderr"] for p in ps], color=cm.viridis(norm(relative[target])),
                            marker="o", markersize=4, capsize=2, label=f"{target} ({relative[target]:.2f})")
            positive = [float(p) for p in ps if float(p) > 0]
            ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-3)
            ax.set(title=section, ylim=(-0.05, 1.05))
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("evidence p (share of s_only training prompts)")
        for ax in axes[:, 0]:
            ax.set_ylabel("mean reward")
        axes[0, 0].legend(fontsize=7, title="target (relative MDL)", title_fontsize=7)
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cm.viridis), ax=axes, label="relative MDL = MDL(s) / MDL(t)")


def plot_reward_vs_relative_mdl(path: str, result: dict, records: list[dict]):
    """Reward at p = 0 (mean of s_only and t_only) of each (target, seed) run vs the target's relative MDL."""
    with plots.figure(path) as (_, ax):
        for target in result["evidence"]:
            ys = [(r["sections"]["s_only"] + r["sections"]["t_only"]) / 2 for r in records
                  if r["kind"] == "rl" and r["target"] == target and r["p"] == 0.0]
            ax.scatter([result["features"][target]["relative_mdl"]] * len(ys), ys, label=target, alpha=0.8)
        rho = result["spearman"]["rho"]
        ax.set(xscale="log", xlabel="relative MDL = MDL(s) / MDL(t)  (right: target more extractable)",
               ylabel="reward at p = 0, mean of s_only and t_only",
               title=f"Spearman rho = {'n/a' if rho is None else f'{rho:.2f}'}, "
                     f"permutation p = {result['spearman']['p_value']:.3f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def run_all(args, start: Start, records: list[dict], log: runtime.MetricsLog, ctrl_c) -> bool:
    """Every probe seed of every target, then every RL run; False if Ctrl-C stopped it between two."""
    done = {(r["kind"], r["target"], r.get("p"), r["seed"]) for r in records}
    for target in args.targets:
        for seed in range(1, args.probe_seeds + 1):
            if ("mdl", target, None, seed) in done:
                continue
            record = measure_mdl(start, args, target, seed)
            records.append(record), log.write(record)
            print(f"mdl | {target} | probe seed {seed} | MDL(t) {record['t']['mdl_bits']:.0f} | MDL(s) "
                  f"{record['s']['mdl_bits']:.0f} | relative {record['relative_mdl']:.2f} | random "
                  f"compression {record['random']['compression']:.3f}")
            if ctrl_c.pressed:
                return False
    grid = [(t, p, s) for t in args.targets for p in args.evidence for s in range(1, args.seeds + 1)]
    todo = [g for g in grid if ("rl",) + g not in done]
    bar = tqdm(total=len(grid) * args.iterations, initial=(len(grid) - len(todo)) * args.iterations,
               desc="PPO runs", dynamic_ncols=True)
    for i, (target, p, seed) in enumerate(todo, len(grid) - len(todo) + 1):
        record = rl_run(start, args, target, p, seed, bar)
        records.append(record), log.write(record)
        s = record["sections"]
        tqdm.write(f"run {i}/{len(grid)} | {target} | p {p:g} | seed {seed} | " + " | ".join(
            f"{k} {v:.2f}" for k, v in s.items()) + f" | {record['seconds']:.1f}s" + (
            f" | FAILED: both/neither below {args.fail_below}" if record["failed"] else ""))
        if ctrl_c.pressed:
            bar.close()
            return False
    bar.close()
    return True


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    device = runtime.pick_device(args.device)
    start = Start(args, device)
    rundir.prepare_out(args.out, [args.init], args.resume, args.overwrite, resume_file="runs.jsonl")
    records = []
    if args.resume:  # the records of the interrupted run, after checking it measured the same thing
        rundir.check_resume(args.out, "mdl", args, resume_file="runs.jsonl")
        records = [record for _, record in runtime.iter_jsonl(os.path.join(args.out, "runs.jsonl"))]
    rundir.write_config(args.out, {"script": "probe_mdl.py", "init": args.init, "init_kind": start.kind,
                                   "args": vars(args)}, kind="mdl")
    log = runtime.MetricsLog(os.path.join(args.out, "runs.jsonl"), truncate=not args.resume)
    print(f"device {device} | policy from {args.init or 'scratch'} | targets {', '.join(args.targets)} | "
          f"p {args.evidence} | {args.seeds} seeds | reward {args.reward}")
    with runtime.CtrlC() as ctrl_c:
        finished = run_all(args, start, records, log, ctrl_c)
    if not finished:
        print(f"interrupted ({ctrl_c.signal}): {len(records)} finished probes and runs are in {args.out}/runs.jsonl; "
              f"continue with --resume")
        raise SystemExit(ctrl_c.exit_code)
    result = evaluation(args, records)
    result["seconds"] = round(time.time() - t_start, 1)
    runtime.write_json(os.path.join(args.out, "eval.json"), result)
    table = mdl_table(result)
    runtime.write_text(os.path.join(args.out, "mdl_table.md"), table)
    plot_reward_vs_evidence(os.path.join(args.out, "reward_vs_evidence.png"), result)
    plot_reward_vs_relative_mdl(os.path.join(args.out, "reward_vs_relative_mdl.png"), result, records)
    print(table)
    sp = result["spearman"]
    print(f"spearman rho {sp['rho']} | permutation p {sp['p_value']:.3f} | {sp['n_points']} points | "
          f"{len(result['failed_runs'])} failed runs | {result['seconds']:.0f}s")
    print(f"wrote {args.out}/ (eval.json, mdl_table.md, reward_vs_evidence.png, reward_vs_relative_mdl.png)")


if __name__ == "__main__":
    runtime.run_cli(main)
