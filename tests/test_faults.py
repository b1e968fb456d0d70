"""Runs survive the ways jobs die on shared machines: SIGTERM (preemption), kill -9, a full disk, and a second
run given the same --out. Each ends in one `error:` line or a checkpoint that --resume continues exactly."""

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_script, snapshot
from nanorl import rundir, runtime
from nanorl.runtime import RunError

PPO = ["--algo", "ppo", "--preset", "test", "--max-steps", "12", "--eval-every", "4", "--prompts-per-step", "4",
       "--samples", "4", "--max-new-tokens", "64", "--ckpt-every", "3"]


def start(out, pretrained_run, *flags) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train_ppo.py", "--init", str(pretrained_run), *PPO, *flags,
                             "--out", str(out)], cwd=ROOT, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert os.path.exists(path), f"{path} never appeared"


def wait_for_step_1(run, proc, seconds=120):
    """Until step 1 is logged: the loop, and its signal handler, has begun."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 2:
            return
        time.sleep(0.02)
    raise AssertionError(f"{run} never logged step 1")


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole_run(pretrained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    run_script("train_ppo.py", "--init", str(pretrained_run), *PPO, "--out", str(out))
    return out


def assert_same_run(whole, resumed):
    expected, got = metrics(whole), metrics(resumed)
    assert [m["step"] for m in got] == list(range(13))
    for a, b in zip(expected, got):
        assert set(a) == set(b)
        assert all(a[k] == pytest.approx(b[k], abs=1e-6) for k in set(a) - {"time"}), a["step"]
    assert json.loads((whole / "eval.json").read_text()) == json.loads((resumed / "eval.json").read_text())


def test_sigterm_saves_a_checkpoint_and_resume_ends_as_an_uninterrupted_run(pretrained_run, whole_run, tmp_path):
    out = tmp_path / "run"
    proc = start(out, pretrained_run)
    wait_for_step_1(out, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    step = runtime.load_checkpoint(str(out / "ckpt.pt"))["step"]
    assert f"interrupted (SIGTERM): saved {out}/ckpt.pt at step {step}; continue with --resume" in stdout
    run_script("train_ppo.py", "--init", str(pretrained_run), *PPO, "--out", str(out), "--resume")
    assert_same_run(whole_run, out)


def test_kill_9_after_the_first_checkpoint_then_resume_ends_as_an_uninterrupted_run(pretrained_run, whole_run,
                                                                                     tmp_path):
    out = tmp_path / "run"
    proc = start(out, pretrained_run)
    wait_for(out / "ckpt.pt", proc)
    proc.kill()
    proc.communicate(timeout=60)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward_mean": 0.')  # the line a kill can cut short
    run_script("train_ppo.py", "--init", str(pretrained_run), *PPO, "--out", str(out), "--resume")
    assert_same_run(whole_run, out)
    assert not list(out.glob("*.tmp"))


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    runtime.save_checkpoint(str(path), {"step": 1})
    before = path.read_bytes()

    def full_disk(state, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RunError, match=rf"^cannot write {path} \(No space left on device\)"):
        runtime.save_checkpoint(str(path), {"step": 2})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pt"]
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(RunError, match="cannot write .*metrics.jsonl"):
        runtime.MetricsLog(str(tmp_path / "metrics.jsonl")).write({"step": 1})


def test_a_full_disk_is_one_error_line_that_names_the_file(pretrained_run, tmp_path):
    """A file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes the checkpoint's write fail with EFBIG, as a
    full disk fails with ENOSPC: the run stops with one error line, no traceback and no *.tmp file."""
    limit = 2 * os.path.getsize(pretrained_run / "model.pt")  # config, logs and plots fit; ckpt.pt does not

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    before, out = snapshot(pretrained_run), tmp_path / "run"
    proc = subprocess.run([sys.executable, "train_ppo.py", "--init", str(pretrained_run), *PPO, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                          preexec_fn=small_disk, timeout=300)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in output, output[-2000:]
    assert errors == [f"error: cannot write {out}/ckpt.pt (File too large); free space or fix the path, then "
                      f"continue with --resume from the last checkpoint"]
    assert not list(out.glob("*.tmp")) and snapshot(pretrained_run) == before


def hold_lock(out) -> subprocess.Popen:
    """Another process that holds out's lock, as a running script does."""
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write('pid 4242: train_ppo.py --out x'); f.flush(); print('locked', flush=True); time.sleep(60)")
    os.makedirs(out, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / rundir.LOCK)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_on_the_same_out_is_refused_and_names_the_first(pretrained_run, tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        before = snapshot(tmp_path)
        proc = run_script("train_ppo.py", "--init", str(pretrained_run), *PPO, "--out", str(out), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip() == (f"error: --out {out} is being written by another run (pid 4242: train_ppo.py "
                                       f"--out x); wait for it to end, or pick a new --out")
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    rundir.prepare_out(str(out), [])  # the holder died: its lock is free (a stale .lock file blocks nothing)
    assert (out / rundir.LOCK).read_text().startswith(f"pid {os.getpid()}: ")


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_sigterm_to_every_rank_under_torchrun_saves_one_checkpoint_at_one_step(pretrained_run, tmp_path):
    """A scheduler signals the whole job: both ranks stop after the same step, rank 0 holds the lock and writes
    one checkpoint with both ranks' states, and --resume under torchrun finishes the run."""
    out = tmp_path / "ddp"
    cmd = ["torchrun", "--standalone", "--nproc_per_node=2", "train_ppo.py", "--init", str(pretrained_run),
           "--algo", "grpo", "--preset", "test", "--max-steps", "30", "--eval-every", "30", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    wait_for_step_1(out, proc)
    assert (out / rundir.LOCK).read_text().startswith("pid ")
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM's scancel does: the launcher and both ranks
    stdout, stderr = proc.communicate(timeout=120)
    step = runtime.load_checkpoint(str(out / "ckpt.pt"))
    assert 1 <= step["step"] < 30 and len(step["rank_states"]) == 2, stderr[-2000:]
    assert f"interrupted (SIGTERM): saved {out}/ckpt.pt at step {step['step']}" in stdout
    done = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [m["step"] for m in metrics(out)] == list(range(31))
