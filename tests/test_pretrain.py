"""train_pretrain.py end to end on the `test` preset: outputs, exact resume, DDP, clear errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script
from nanorl import rundir, runtime


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_smoke_writes_contract_files(pretrained_run):
    for name in ("model.pt", "config.json", "tokenizer.json", "metrics.jsonl", "eval.json", "ckpt.pt"):
        assert os.path.exists(pretrained_run / name), name
    assert list(pretrained_run.glob("*.png"))
    result = json.loads((pretrained_run / "eval.json").read_text())
    for key in ("val_loss", "pass@1", "pass@1_by_format", "pass@1_by_difficulty", "format_share", "n_eval"):
        assert key in result
    assert result["n_eval"] == 8
    assert set(result["pass@1_by_difficulty"]) == {"1", "2", "3", "4"}
    assert abs(sum(result["format_share"].values()) - 1.0) < 1e-9
    assert 0.0 <= result["pass@1"] <= result["pass@k"] <= 1.0
    metrics = read_metrics(pretrained_run)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert "val/omi1" in metrics[2] and "val/omi1" in metrics[5]


def test_load_run_gives_the_trained_model(pretrained_run):
    model, tokenizer, config = rundir.load_policy(str(pretrained_run))
    assert model.config.vocab_size == tokenizer.vocab_size == config["model"]["vocab_size"]
    assert config["args"]["preset"] == "test"


def test_resume_continues_with_the_same_losses(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_script("train_pretrain.py", "--preset", "test", "--out", str(whole), "--n-eval", "4")
    run_script("train_pretrain.py", "--preset", "test", "--out", str(parts), "--stop-after", "3")
    assert [m["step"] for m in read_metrics(parts)] == [1, 2, 3]
    run_script("train_pretrain.py", "--preset", "test", "--out", str(parts), "--resume", "--n-eval", "4")
    expected, got = read_metrics(whole), read_metrics(parts)
    assert [m["step"] for m in got] == list(range(1, 7))
    for a, b in zip(expected, got):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6), a["step"]


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "train_pretrain.py", "--preset", "test", "--out", str(out),
                             "--max-steps", "100000", "--eval-every", "100000"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not read_metrics_safe(out) and time.time() < deadline:  # wait until training is under way
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in stdout
    ckpt = runtime.load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["step"] >= 1


def read_metrics_safe(out):
    try:
        return read_metrics(out)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_ddp_two_cpu_processes_run_a_step(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "train_pretrain.py", "--preset", "test",
                           "--out", str(out), "--max-steps", "2", "--n-eval", "2", "--eval-samples", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    ckpt = runtime.load_checkpoint(str(out / "ckpt.pt"))
    assert len(ckpt["rank_states"]) == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    proc = run_script("train_pretrain.py", "--preset", "test", "--out", str(tmp_path / "empty"), "--resume", check=False)
    assert proc.returncode == 2
    assert "ckpt.pt not found" in proc.stderr


def test_malformed_jsonl_line_is_a_clear_error(tmp_path):
    bad = tmp_path / "omi2.jsonl"
    bad.write_text('{"problem": "1+1?", "generated_solution": "\\\\boxed{2}"}\n{"problem": oops}\n')
    proc = run_script("train_pretrain.py", "--preset", "test", "--out", str(tmp_path / "run"),
                      "--mixture", f"omi2={bad}:1", check=False)
    assert proc.returncode == 2
    assert "omi2.jsonl" in proc.stderr and "line 2" in proc.stderr


def test_missing_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(runtime.RunError, match="no such run directory"):
        rundir.load_policy(str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    with pytest.raises(runtime.RunError, match="has no config.json"):
        rundir.load_policy(str(tmp_path / "half"))


@pytest.mark.parametrize("flag, value, why", [
    ("--lr", "-1", "must be a finite number > 0, got -1"),
    ("--batch-size", "0", "must be a positive integer, got 0"),
    ("--grad-clip", "-0.5", "must be a finite number >= 0, got -0.5"),
])
def test_bad_numeric_flag_is_a_usage_error(capsys, monkeypatch, flag, value, why):
    monkeypatch.syspath_prepend(ROOT)  # the script lives at the repo root
    import train_pretrain
    with pytest.raises(SystemExit) as e:
        train_pretrain.parse_args([flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: {why}" in capsys.readouterr().err
    assert train_pretrain.parse_args(["--grad-clip", "0", "--warmup-steps", "0"]).grad_clip == 0.0
