"""Many train_ppo.py run directories -> one table with mean ± std over seeds (cleanrl-style).

Runs whose config.json "args" are equal but for NOT_EXPERIMENT are seeds of one group, named by
the flags that differ between groups ("algo=grpo kl_coef=0.1"); NAME=RUN[,RUN...] names a group.
Per run, the metrics of eval.json and metrics.jsonl (run_values); per group, each metric's mean and
sample std (ddof=1) over the seeds that have it. Writes DIR/summary.json, DIR/summary.md (also
printed), DIR/win_rate.png, DIR/<group>_format_share.png (mean over seeds, min-max band) and, for
--reward rm runs, DIR/gold_vs_kl.png and DIR/proxy_vs_kl.png.
"""

import argparse
import json
import os
import re
import statistics
from collections import Counter

from nanorl import evals, plots, rundir, runtime, verifier
from nanorl.runtime import RunError

# micro_batch, ckpt_every and eval_every change memory and bookkeeping, not results (see train_ppo.py --help)
NOT_EXPERIMENT = ("seed", "out", "resume", "overwrite", "stop_after", "device", "micro_batch", "ckpt_every",
                  "eval_every")
COLLAPSE_FORMAT, COLLAPSE_BELOW = "omi2", 0.05  # the inaccurate format whose exit is the Echo Chamber's first sign
LAST_STEPS = 10


def parse_group(text: str) -> tuple[str, list[str]]:
    """argparse type of NAME=RUN[,RUN...]: a named group of run directories (seeds)."""
    name, sep, paths = text.partition("=")
    if not sep or not name or not paths or "" in paths.split(","):
        raise argparse.ArgumentTypeError(f"expected NAME=RUN[,RUN...], got {text!r}")
    return name, paths.split(",")


def read_metrics(path: str) -> list[dict]:
    """One record per step, sorted; a --resume re-logs the steps after its checkpoint, the later record wins."""
    by_step = {}
    for where, record in runtime.iter_jsonl(path):
        if "step" not in record:
            raise RunError(f"{where}: no \"step\"; is this a train_ppo.py metrics.jsonl?")
        by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def read_run(path: str) -> dict:
    config = rundir.check_run(path, "RUN", ("policy",), files=("config.json", "metrics.jsonl", "eval.json"))
    metrics = read_metrics(os.path.join(path, "metrics.jsonl"))
    return {"dir": path, "args": config["args"], "eval": runtime.read_json(os.path.join(path, "eval.json")),
            "metrics": metrics, "rollouts": [m for m in metrics if f"share/{verifier.NO_FORMAT}" in m]}


def experiment(args: dict) -> dict:
    return {k: v for k, v in args.items() if k not in NOT_EXPERIMENT}


def group_runs(runs: list[dict]) -> list[list[dict]]:
    groups = {}
    for run in runs:
        groups.setdefault(json.dumps(experiment(run["args"]), sort_keys=True), []).append(run)
    check_seeds(groups.values())
    for members in groups.values():
        members.sort(key=lambda r: r["args"]["seed"])
    return list(groups.values())


def check_seeds(groups):
    """Averaging a duplicate would shrink the std: a seed appears at most once per group."""
    for members in groups:
        seeds = Counter(r["args"]["seed"] for r in members)
        if max(seeds.values()) > 1:
            dirs = [r["dir"] for r in members if seeds[r["args"]["seed"]] > 1]
            raise RunError(f"{', '.join(dirs)} are the same experiment with the same seed; pass only one of them")


def group_names(groups: list[list[dict]]) -> list[str]:
    configs = [experiment(g[0]["args"]) for g in groups]
    flags = dict.fromkeys(k for c in configs for k in c)  # argparse order
    differing = [k for k in flags if len({json.dumps(c.get(k)) for c in configs}) > 1] or ["algo"]
    return [" ".join(f"{k}={c.get(k)}" for k in differing) for c in configs]


def formats_seen(runs: list[dict]) -> list[str]:
    """The formats some run produced; the others (all shares zero or absent) are left out everywhere."""
    def shares(run, fmt):
        evals = [run["eval"][when][key] for when in ("before", "after")
                 for key in ("format_share", "sampled_format_share")]
        return [e.get(fmt, 0.0) for e in evals] + [m.get(f"share/{fmt}", 0.0) for m in run["rollouts"]]
    return [fmt for fmt in verifier.ALL_FORMATS if any(any(shares(run, fmt)) for run in runs)]


def run_values(run: dict, formats: list[str]) -> dict:
    """Every metric of one run by its table label; None where the run has no value for it."""
    before, after, rollouts = run["eval"]["before"], run["eval"]["after"], run["rollouts"]
    last = rollouts[-LAST_STEPS:]
    values = {"pass@1 before": before["pass@1"], "pass@1": after["pass@1"], "pass@k": after["pass@k"],
              "maj@k": after["maj@k"], "win-rate vs initial": after.get("win_rate"),
              "gold reward": after.get("gold_reward")}
    values.update({f"pass@1 difficulty {d}": v for d, v in after["pass@1_by_difficulty"].items()})
    values.update({f"greedy share {fmt}": after["format_share"].get(fmt, 0.0) for fmt in formats})
    values.update({f"sampled share {fmt}": after["sampled_format_share"].get(fmt, 0.0) for fmt in formats})
    values.update({f"training share {fmt} (last {LAST_STEPS} steps)":
                   statistics.fmean(m.get(f"share/{fmt}", 0.0) for m in last) if last else None for fmt in formats})
    values[f"{COLLAPSE_FORMAT} below {COLLAPSE_BELOW:.0%} by step"] = next(
        (m["step"] for m in rollouts if m.get(f"share/{COLLAPSE_FORMAT}", 0.0) < COLLAPSE_BELOW), None)
    times = [m["time"] for m in run["metrics"] if "time" in m]
    values["training time (s)"] = sum(times) if times else None
    return values | overoptimisation_values(run)


def rm_curves(run: dict) -> dict[str, list]:
    """A --reward rm run's smoothed per-step curves: step, sqrt(KL), gold and proxy reward of the samples."""
    steps = [m for m in run["rollouts"] if "gold_reward" in m]
    return {"step": [m["step"] for m in steps]} | {key: plots.smoothed([m[key] for m in steps], evals.SMOOTH) for key in
                                                   ("sqrt_kl", "gold_reward", "reward_mean")} if steps else {}


def overoptimisation_values(run: dict) -> dict:
    curves = rm_curves(run)
    if not curves:
        return {}
    gold, kl = curves["gold_reward"], curves["sqrt_kl"]
    peak = max(range(len(gold)), key=gold.__getitem__)
    return {"sample gold reward, start": gold[0], "sample gold reward, peak": gold[peak],
            "sample gold reward, end": gold[-1], "step of the gold peak": curves["step"][peak],
            "sqrt KL at the gold peak": kl[peak], "sqrt KL at the end": kl[-1],
            "proxy (RM) reward, start": curves["reward_mean"][0], "proxy (RM) reward, end": curves["reward_mean"][-1]}


def plot_overoptimisation(out: str, groups: list[dict], grouped: list[list[dict]]):
    """Per group, the seeds' mean curve against their mean sqrt(KL), min-max band, at the steps all logged."""
    curves_by_group = {group["name"]: [rm_curves(run) for run in runs] for group, runs in zip(groups, grouped)}
    curves_by_group = {group: curves for group, curves in curves_by_group.items() if all(curves)}  # rm runs only
    for key, name, label in (("gold_reward", "gold_vs_kl.png", "Gold reward"),
                             ("reward_mean", "proxy_vs_kl.png", "Proxy (RM) reward")):
        series = {}
        for group_name, curves in curves_by_group.items():
            n = min(len(c["step"]) for c in curves)
            columns = [[c[key][i] for c in curves] for i in range(n)]
            series[group_name] = ([statistics.fmean(c["sqrt_kl"][i] for c in curves) for i in range(n)],
                                  [statistics.fmean(c) for c in columns], [min(c) for c in columns],
                                  [max(c) for c in columns])
        if series:
            plots.bands(os.path.join(out, name), series, f"{label} of the samples (mean, min-max over seeds)",
                        "sqrt(KL(pi || pi_0)), nats^0.5", f"{label}, {evals.SMOOTH}-step mean")


def stats(values: list) -> dict:
    present = [v for v in values if v is not None]
    return {"values": values, "n": len(present), "mean": statistics.fmean(present) if present else None,
            "std": statistics.stdev(present) if len(present) > 1 else None}


def summarize(name: str, runs: list[dict], formats: list[str]) -> dict:
    per_run = [run_values(run, formats) for run in runs]
    labels = dict.fromkeys(label for values in per_run for label in values)
    # "none" competes too (a collapse onto unparseable text is no win); ties go to the earlier format
    winners = [max(formats, key=lambda f: run["eval"]["after"]["format_share"].get(f, 0.0)) for run in runs]
    return {"name": name, "n": len(runs), "runs": [r["dir"] for r in runs], "seeds": [r["args"]["seed"] for r in runs],
            "plot": plot_name(name) if all(r["rollouts"] for r in runs) else None,  # dpo, sft sample nothing
            "winners": winners, "wins": dict(Counter(winners).most_common()),
            "metrics": {label: stats([values.get(label) for values in per_run]) for label in labels}}


def plot_name(group_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", group_name) + "_format_share.png"


def plot_format_share(path: str, group: dict, runs: list[dict], formats: list[str]):
    """Mean over seeds and min-max band (with 2-3 seeds it holds every seed's curve), at the steps all logged."""
    by_step = [{m["step"]: m for m in run["rollouts"]} for run in runs]
    steps = sorted(set.intersection(*(set(s) for s in by_step)))
    series = {}
    for fmt in formats:
        columns = [[s[step].get(f"share/{fmt}", 0.0) for s in by_step] for step in steps]
        series[fmt] = (steps, [statistics.fmean(c) for c in columns], [min(c) for c in columns],
                       [max(c) for c in columns])
    title = f"Format of training samples, {group['name']} (mean, min-max over {group['n']} seeds)"
    plots.bands(path, series, title, "step", "share of samples", ylim=(0, 1))


def plot_outcomes(path: str, groups: list[dict]):
    metrics = [m for m in ("win-rate vs initial", "pass@1") if any(g["metrics"][m]["mean"] is not None for g in groups)]
    means = {m: {g["name"]: g["metrics"][m]["mean"] or 0.0 for g in groups} for m in metrics}
    stds = {m: {g["name"]: g["metrics"][m]["std"] or 0.0 for g in groups} for m in metrics}
    plots.bars(path, means, "Outcome by group (mean ± std over seeds)", "value", errors=stds)


def cell(stat: dict | None) -> str:
    if stat is None or stat["mean"] is None:
        return "-"
    digits = 3 if abs(stat["mean"]) <= 1 else 2 if abs(stat["mean"]) < 10 else 1  # steps and seconds: 1
    text = f"{stat['mean']:.{digits}f}" + (f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else "")
    return text + (f" ({stat['n']}/{len(stat['values'])})" if stat["n"] < len(stat["values"]) else "")


def markdown(groups: list[dict]) -> str:
    labels = dict.fromkeys(label for g in groups for label in g["metrics"])
    rows = ["| | " + " | ".join(g["name"] for g in groups) + " |", "|---" * (len(groups) + 1) + "|",
            "| seeds | " + " | ".join(f"n={g['n']} ({', '.join(map(str, g['seeds']))})" for g in groups) + " |",
            "| wins (greedy format after) | " +
            " | ".join(", ".join(f"{f} {n}" for f, n in g["wins"].items()) for g in groups) + " |"]
    rows += [f"| {label} | " + " | ".join(cell(g["metrics"].get(label)) for g in groups) + " |" for label in labels]
    return "\n".join(rows) + "\n"


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="train_ppo.py run directories (finished: with eval.json), grouped by "
                   "their flags; or NAME=RUN[,RUN...] groups named by you")
    p.add_argument("--out", default="runs/compare", help="directory for summary.json, summary.md and the plots")
    args = p.parse_args(argv)
    args.named = None
    if any("=" in item and not os.path.isdir(item) for item in args.runs):  # runs/lr=1e-5 is a run
        try:
            args.named = [parse_group(item) for item in args.runs]
        except argparse.ArgumentTypeError as err:
            p.error(f"{err} (give every group as NAME=RUN[,RUN...], or only run directories)")
    return args


def main(argv=None):
    args = parse_args(argv)
    named = args.named
    paths = [path for _, group in named for path in group] if named else args.runs
    if any(os.path.abspath(args.out) == os.path.abspath(path) for path in paths):
        raise RunError(f"--out {args.out} is one of the runs compared; pick a new directory")
    if named:
        grouped, names = [[read_run(path) for path in group] for _, group in named], [name for name, _ in named]
        check_seeds(grouped)
    else:
        grouped = group_runs([read_run(path) for path in paths])
        names = group_names(grouped)
    os.makedirs(args.out, exist_ok=True)
    formats = formats_seen([run for members in grouped for run in members])
    groups = [summarize(name, members, formats) for name, members in zip(names, grouped)]
    for group, members in zip(groups, grouped):
        if group["plot"]:
            plot_format_share(os.path.join(args.out, group["plot"]), group, members, formats)
    plot_outcomes(os.path.join(args.out, "win_rate.png"), groups)
    plot_overoptimisation(args.out, groups, grouped)
    table = markdown(groups)
    runtime.write_json(os.path.join(args.out, "summary.json"),
                       {"formats": formats, "band": "min-max", "groups": groups})
    runtime.write_text(os.path.join(args.out, "summary.md"),
                       table + "\n" + "".join(f"![{g['name']}]({g['plot']})\n" for g in groups if g["plot"]))
    print(table)
    print(f"wrote {args.out}/ (summary.json, summary.md, win_rate.png, *_format_share.png; --reward rm runs: "
          "gold_vs_kl.png, proxy_vs_kl.png)")


if __name__ == "__main__":
    runtime.run_cli(main)
