"""train_ppo.py end to end on the `test` preset: every --algo, the RM reward, resume, errors."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, run_script
from nanorl import verifier
import train_ppo

ALGOS = ["ppo", "grpo", "ei", "online_dpo", "dpo", "sft"]


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    """A small local preference file: offline DPO / SFT need pairs an untrained model can't make."""
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    rows = [{"prompt": "Tom has 3 pens. He buys 2 more pens. How many pens does Tom have now?\n\n",
             "chosen": "def simple_math_problem() -> int:\n    pens = 3\n    buys = 2\n    result = pens + buys\n"
                       "    return result\n",
             "rejected": "The answer is \\boxed{6}."}] * 4
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_runs_and_reports(pretrained_run, tmp_path, prefs, algo):
    out = tmp_path / algo
    extra = ["--prefs", str(prefs)] if algo in ("dpo", "sft") else []
    run_script("train_ppo.py", "--init", str(pretrained_run), "--algo", algo, "--preset", "test",
               "--out", str(out), "--max-steps", "2", *extra)
    result = json.loads((out / "eval.json").read_text())
    for side in ("before", "after"):
        for key in ("pass@1", "pass@k", "maj@k", "k", "format_share", "pass@1_by_difficulty"):
            assert key in result[side], (side, key)
        assert abs(sum(result[side]["format_share"].values()) - 1) < 1e-9
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert "eval/pass@1" in metrics[0] and "eval/pass@1" in metrics[-1]
    if algo in ("ppo", "grpo", "ei", "online_dpo"):
        assert 0.0 <= metrics[1]["reward_mean"] <= 1.0
        assert abs(sum(metrics[1][f"share/{f}"] for f in (*verifier.FORMATS, verifier.NO_FORMAT)) - 1) < 1e-9
    if algo == "ppo":
        assert {"vf_loss", "clipfrac", "approx_kl", "kl_ref", "entropy"} <= set(metrics[1])
    for png in ("format_share.png", "pass_at_k.png", "pass_at_1_by_difficulty.png"):
        assert (out / png).exists()
    for name in ("model.pt", "config.json", "tokenizer.json"):
        assert (out / name).exists()


def test_resume_continues_the_same_run(pretrained_run, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = ["--init", str(pretrained_run), "--algo", "grpo", "--preset", "test", "--max-steps", "3"]
    run_script("train_ppo.py", *common, "--out", str(whole))
    run_script("train_ppo.py", *common, "--out", str(parts), "--stop-after", "2")
    run_script("train_ppo.py", *common, "--out", str(parts), "--resume")
    read = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    a, b = read(whole), read(parts)
    assert [m["step"] for m in b] == [0, 1, 2, 3]
    for x, y in zip(a, b):
        for key in ("reward_mean", "response_len", "eval/pass@1"):
            if key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-6), (x["step"], key)


def test_ppo_and_online_dpo_with_a_reward_model(pretrained_run, tmp_path):
    rm = tmp_path / "rm"
    run_script("train_rm.py", "--init", str(pretrained_run), "--out", str(rm), "--preset", "test")
    for algo in ("ppo", "online_dpo"):
        out = tmp_path / f"{algo}_rm"
        run_script("train_ppo.py", "--init", str(pretrained_run), "--algo", algo, "--reward", "rm", "--rm", str(rm),
                   "--preset", "test", "--out", str(out), "--max-steps", "1")
        config = json.loads((out / "config.json").read_text())
        assert config["rm"] == str(rm) and config["init"] == str(pretrained_run)


def test_clear_errors(pretrained_run, tmp_path):
    proc = run_script("train_ppo.py", "--init", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_script("train_ppo.py", "--init", str(pretrained_run), "--reward", "rm", check=False)
    assert proc.returncode == 2 and "--rm" in proc.stderr
    bad = tmp_path / "gsm8k.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": "four"}\n')
    proc = run_script("train_ppo.py", "--init", str(pretrained_run), "--prompts", str(bad), "--preset", "test",
                      "--out", str(tmp_path / "p"), check=False)
    assert proc.returncode == 2 and "gsm8k.jsonl, line 2" in proc.stderr


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_ddp_two_cpu_processes(pretrained_run, tmp_path, algo):
    out = tmp_path / f"ddp_{algo}"
    proc = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "train_ppo.py", "--init", str(pretrained_run),
                           "--algo", algo, "--preset", "test", "--out", str(out), "--max-steps", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    # both ranks' samples are counted: 2 prompts x 2 samples over 2 ranks -> shares in quarters
    assert all(abs(metrics[1][f"share/{f}"] * 4 - round(metrics[1][f"share/{f}"] * 4)) < 1e-9
               for f in ("tinygsm", "omi1", "omi2", "none"))
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("flag,value", [("--lr", "-1"), ("--samples", "0"), ("--temperature", "0"), ("--clip", "-0.1")])
def test_bad_numeric_flag_is_one_clear_error(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        train_ppo.parse_args(["--init", "runs/x", flag, value])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_learned_reward_gets_a_kl_penalty_by_default():
    assert train_ppo.parse_args(["--init", "x"]).kl_coef == 0.0
    assert train_ppo.parse_args(["--init", "x", "--reward", "rm", "--rm", "y"]).kl_coef == train_ppo.RM_KL_COEF > 0
    assert train_ppo.parse_args(["--init", "x", "--reward", "rm", "--rm", "y", "--kl-coef", "0"]).kl_coef == 0.0
