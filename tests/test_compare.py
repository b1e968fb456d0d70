"""nanorl.compare on hand-made run directories: grouping, mean ± std, wins, collapse step, files, errors."""

import json
import math
import os

import pytest

from conftest import run_script
from nanorl import compare, plots
from nanorl.runtime import RunError

STEPS = 12


def shares(tinygsm=0.0, omi1=0.0, omi2=0.0):
    return {"tinygsm": tinygsm, "omi1": omi1, "omi2": omi2, "none": 0.0}


def make_run(root, name, *, seed, algo="grpo", kl_coef=0.0, pass1=0.9, greedy=None, collapse_step=None,
             device="auto", rollouts=True, win_rate=None):
    """A finished run: omi2 holds half of the samples until `collapse_step`, then none; omi1 always 0.1."""
    run = root / name
    run.mkdir()
    args = {"init": "runs/tiny2", "out": str(run), "algo": algo, "kl_coef": kl_coef, "max_steps": STEPS,
            "seed": seed, "device": device}
    (run / "config.json").write_text(json.dumps({"script": "train_ppo.py", "kind": "policy", "init": "runs/tiny2", "args": args}))
    before = {"pass@1": 0.5, "pass@k": 0.9, "maj@k": 0.7, "k": 4, "pass@1_by_difficulty": {"1": 0.6, "2": 0.4},
              "format_share": shares(0.4, 0.1, 0.5), "sampled_format_share": shares(0.3, 0.2, 0.5)}
    after = {**before, "pass@1": pass1, "pass@1_by_difficulty": {"1": 1.0, "2": pass1 - 0.2},
             "format_share": greedy or shares(1.0), "sampled_format_share": greedy or shares(1.0)}
    if win_rate is not None:  # runs written before win-rates existed have none
        after.update(win_rate=win_rate, gold_reward=win_rate + 0.1)
    (run / "eval.json").write_text(json.dumps({"before": before, "after": after}))
    records = [{"step": 0, "eval/pass@1": 0.5}]
    for step in range(1, STEPS + 1):
        omi2 = 0.5 if collapse_step is None or step < collapse_step else 0.0
        sample_shares = {f"share/{f}": v for f, v in shares(0.9 - omi2, 0.1, omi2).items()} if rollouts else {}
        records.append({"step": step, **sample_shares, "reward_mean": 0.5, "time": 2.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(run)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {  # out and device differ between seeds too: neither is part of the experiment
        "grpo_s2": make_run(root, "grpo_s2", seed=2, pass1=0.8, greedy=shares(0.6, 0.4), collapse_step=4,
                            win_rate=0.7),
        "ppo_s1": make_run(root, "ppo_s1", seed=1, algo="ppo", pass1=0.6, collapse_step=6, device="cpu"),
        "grpo_s1": make_run(root, "grpo_s1", seed=1, pass1=0.9, greedy=shares(0.9, 0.1), collapse_step=3,
                            win_rate=0.6),
        "grpo_kl_s1": make_run(root, "grpo_kl_s1", seed=1, kl_coef=0.1, pass1=0.7, collapse_step=2),
        "ppo_s2": make_run(root, "ppo_s2", seed=2, algo="ppo", pass1=0.8, collapse_step=None),
        "grpo_s3": make_run(root, "grpo_s3", seed=3, pass1=0.7, greedy=shares(0.3, 0.7), collapse_step=5,
                            win_rate=0.8),
    }
    out = root / "compare"
    compare.main([*runs.values(), "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    return runs, out, {g["name"]: g for g in summary["groups"]}, summary


def test_groups_runs_that_differ_only_in_seed(compared):
    runs, _, groups, _ = compared
    assert list(groups) == ["algo=grpo kl_coef=0.0", "algo=ppo kl_coef=0.0", "algo=grpo kl_coef=0.1"]
    grpo = groups["algo=grpo kl_coef=0.0"]
    assert grpo["runs"] == [runs["grpo_s1"], runs["grpo_s2"], runs["grpo_s3"]]
    assert (grpo["n"], grpo["seeds"]) == (3, [1, 2, 3])
    assert groups["algo=ppo kl_coef=0.0"]["runs"] == [runs["ppo_s1"], runs["ppo_s2"]]
    assert groups["algo=grpo kl_coef=0.1"]["runs"] == [runs["grpo_kl_s1"]]


def test_mean_and_sample_std_over_seeds(compared):
    _, _, groups, _ = compared
    grpo, ppo = groups["algo=grpo kl_coef=0.0"]["metrics"], groups["algo=ppo kl_coef=0.0"]["metrics"]
    assert grpo["pass@1"]["values"] == [0.9, 0.8, 0.7]
    assert grpo["pass@1"]["mean"] == pytest.approx(0.8) and grpo["pass@1"]["std"] == pytest.approx(0.1)
    assert ppo["pass@1"]["mean"] == pytest.approx(0.7) and ppo["pass@1"]["std"] == pytest.approx(math.sqrt(0.02))
    assert grpo["pass@1 before"]["mean"] == 0.5 and grpo["pass@1 before"]["std"] == 0.0
    assert grpo["pass@1 difficulty 2"]["mean"] == pytest.approx(0.6)
    assert grpo["greedy share tinygsm"]["mean"] == pytest.approx(0.6)
    assert grpo["greedy share tinygsm"]["std"] == pytest.approx(0.3)
    # last 10 of 12 steps: omi2 is 0.5 at steps < collapse step (3, 4, 5): 0, 1 and 2 of those 10 steps
    assert grpo["training share omi2 (last 10 steps)"]["values"] == pytest.approx([0.0, 0.05, 0.1])
    assert grpo["training share omi2 (last 10 steps)"]["std"] == pytest.approx(0.05)
    assert grpo["training share tinygsm (last 10 steps)"]["mean"] == pytest.approx(0.85)
    assert grpo["training time (s)"]["mean"] == pytest.approx(24.0)
    assert grpo["win-rate vs initial"]["mean"] == pytest.approx(0.7) and grpo["gold reward"]["std"] == pytest.approx(0.1)
    assert ppo["win-rate vs initial"]["n"] == 0 and ppo["win-rate vs initial"]["mean"] is None
    single = groups["algo=grpo kl_coef=0.1"]["metrics"]["pass@1"]
    assert (single["mean"], single["std"], single["n"]) == (0.7, None, 1)


def test_wins_and_collapse_step(compared):
    _, _, groups, _ = compared
    grpo, ppo = groups["algo=grpo kl_coef=0.0"], groups["algo=ppo kl_coef=0.0"]
    assert grpo["winners"] == ["tinygsm", "tinygsm", "omi1"]
    assert grpo["wins"] == {"tinygsm": 2, "omi1": 1}
    assert ppo["wins"] == {"tinygsm": 2}
    below = grpo["metrics"]["omi2 below 5% by step"]
    assert below["values"] == [3, 4, 5] and below["mean"] == 4.0 and below["std"] == 1.0
    never = ppo["metrics"]["omi2 below 5% by step"]  # seed 2 keeps omi2 at half of the samples
    assert never["values"] == [6, None] and (never["n"], never["mean"], never["std"]) == (1, 6.0, None)


def test_writes_table_json_and_plots(compared):
    _, out, groups, summary = compared
    assert summary["formats"] == ["tinygsm", "omi1", "omi2"]  # "none" is zero everywhere
    table = (out / "summary.md").read_text()
    assert "| | algo=grpo kl_coef=0.0 | algo=ppo kl_coef=0.0 | algo=grpo kl_coef=0.1 |" in table
    assert "| seeds | n=3 (1, 2, 3) | n=2 (1, 2) | n=1 (1) |" in table
    assert "| wins (greedy format after) | tinygsm 2, omi1 1 | tinygsm 2 | tinygsm 1 |" in table
    assert "| pass@1 | 0.800 ± 0.100 | 0.700 ± 0.141 | 0.700 |" in table
    assert "| omi2 below 5% by step | 4.00 ± 1.00 | 6.00 (1/2) | 2.00 |" in table
    assert "share none" not in table
    for group in groups.values():
        assert (out / group["plot"]).stat().st_size > 1000
    assert groups["algo=grpo kl_coef=0.0"]["plot"] == "algo=grpo_kl_coef=0.0_format_share.png"


def test_offline_runs_have_no_training_shares(tmp_path):
    run = make_run(tmp_path, "dpo_s1", seed=1, algo="dpo", rollouts=False)
    compare.main([run, "--out", str(tmp_path / "compare")])
    (group,) = json.loads((tmp_path / "compare" / "summary.json").read_text())["groups"]
    assert group["plot"] is None
    assert group["metrics"]["omi2 below 5% by step"]["mean"] is None
    assert group["metrics"]["training share tinygsm (last 10 steps)"]["values"] == [None]
    assert "| training share tinygsm (last 10 steps) | - |" in (tmp_path / "compare" / "summary.md").read_text()


def test_resumed_steps_keep_the_later_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "time": 9.0}\n{"step": 2, "time": 1.0}\n{"step": 2, "time": 3.0}\n')
    assert compare.read_metrics(str(path)) == [{"step": 1, "time": 9.0}, {"step": 2, "time": 3.0}]


def test_errors_name_the_file(tmp_path):
    done = make_run(tmp_path, "done", seed=1)
    unfinished = make_run(tmp_path, "unfinished", seed=2)
    (tmp_path / "unfinished" / "eval.json").unlink()
    with pytest.raises(RunError, match="unfinished.* lacks eval.json"):
        compare.main([done, unfinished, "--out", str(tmp_path / "compare")])
    with pytest.raises(RunError, match="same seed"):
        compare.main([done, done, "--out", str(tmp_path / "compare")])
    with open(tmp_path / "done" / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "ti')  # a crash mid-line
    with pytest.raises(RunError, match=r"metrics.jsonl, line 14: invalid JSON"):
        compare.main([done, "--out", str(tmp_path / "compare")])
    proc = run_script("-m", "nanorl.compare", unfinished, "--out", str(tmp_path / "compare"), check=False)
    assert proc.returncode == 2 and "unfinished" in proc.stderr and "eval.json" in proc.stderr


def test_cli_smoke(compared, tmp_path):
    runs, _, _, _ = compared
    out = tmp_path / "cli"
    proc = run_script("-m", "nanorl.compare", *runs.values(), "--out", str(out))
    assert "| pass@1 | 0.800 ± 0.100 | 0.700 ± 0.141 | 0.700 |" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"summary.json", "summary.md", "win_rate.png",
                                                "algo=grpo_kl_coef=0.0_format_share.png",
                                                "algo=ppo_kl_coef=0.0_format_share.png",
                                                "algo=grpo_kl_coef=0.1_format_share.png"}


def test_named_groups_are_taken_as_given(compared, tmp_path):
    runs, _, _, _ = compared
    dirs = list(runs.values())
    out = tmp_path / "named"
    rest = [dirs[2], dirs[4], dirs[5]]  # seeds 1, 2, 3: mixed algorithms, one group because we say so
    compare.main([f"first={dirs[0]},{dirs[1]}", f"rest={','.join(rest)}", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert [g["name"] for g in summary["groups"]] == ["first", "rest"]
    assert [g["runs"] for g in summary["groups"]] == [dirs[:2], rest]
    assert (out / "win_rate.png").exists()
    with pytest.raises(RunError, match="same seed"):
        compare.main([f"twice={dirs[0]},{dirs[0]}", "--out", str(tmp_path / "twice")])
    proc = run_script("-m", "nanorl.compare", f"a={dirs[0]}", dirs[1], "--out", str(tmp_path / "mixed"), check=False)
    assert proc.returncode == 2 and "NAME=RUN" in proc.stderr


def test_overoptimisation_peak_of_reward_model_runs(tmp_path):
    """A hand-made --reward rm curve: sqrt(KL) grows 0.5 a step, gold rises to step 6 and falls, the
    proxy keeps rising. The 7-step centred mean keeps a linear stretch as it is, so the peak is known."""
    runs = []
    for seed, top in ((1, 1.0), (2, 0.8)):
        run = make_run(tmp_path, f"rm_s{seed}", seed=seed, algo="ppo")
        records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        for r in records[1:]:
            r.update(sqrt_kl=0.5 * (r["step"] - 1), gold_reward=top - 0.1 * abs(r["step"] - 6), reward_mean=r["step"])
        open(os.path.join(run, "metrics.jsonl"), "w").write("".join(json.dumps(r) + "\n" for r in records))
        runs.append(run)
    assert plots.smoothed([0, 1, 2, 3, 4, 5, 6], 7) == [1.5, 2, 2.5, 3, 3.5, 4, 4.5]
    compare.main([*runs, "--out", str(tmp_path / "compare")])
    (group,) = json.loads((tmp_path / "compare" / "summary.json").read_text())["groups"]
    metrics = group["metrics"]
    assert metrics["step of the gold peak"]["values"] == [6, 6]
    assert metrics["sqrt KL at the gold peak"]["mean"] == pytest.approx(2.5)
    assert metrics["sample gold reward, peak"]["values"] == pytest.approx([1.0 - 1.2 / 7, 0.8 - 1.2 / 7])
    assert metrics["proxy (RM) reward, end"]["mean"] == pytest.approx(10.5)  # mean of steps 9-12
    assert (tmp_path / "compare" / "gold_vs_kl.png").exists() and (tmp_path / "compare" / "proxy_vs_kl.png").exists()
