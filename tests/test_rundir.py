"""Tests for nanorl/rundir.py: kinds (also of directories written before kinds existed), loaders
that name what they were given, and the --out rules."""

import json
import shutil

import pytest
import torch

from nanorl import rundir, runtime
from nanorl.runtime import RunError


def copy_run(src, dst, **config_changes):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data", "ckpt.pt"))
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return dst


def test_pretraining_writes_its_kind_and_format(pretrained_run):
    config = json.loads((pretrained_run / "config.json").read_text())
    assert (config["kind"], config["format"]) == ("pretrain", rundir.FORMAT)


def test_a_run_without_a_kind_is_refused(pretrained_run, tmp_path):
    old = copy_run(pretrained_run, tmp_path / "old", kind=None, format=None)
    with pytest.raises(RunError, match="of unknown kind"):
        rundir.load_policy(str(old))


def test_loaders_say_what_they_got_and_what_they_need(pretrained_run, tmp_path):
    rm = copy_run(pretrained_run, tmp_path / "rm", kind="rm")
    with pytest.raises(RunError, match=r"^--init .*/rm is a reward-model run \(kind rm\); --init needs a "
                                       r"pretraining run \(kind pretrain\) or a fine-tuned policy run"):
        rundir.load_policy(str(rm))
    unknown = copy_run(pretrained_run, tmp_path / "unknown", kind="mystery", script="other.py")
    with pytest.raises(RunError, match="of unknown kind"):
        rundir.load_policy(str(unknown))


def test_weights_of_another_shape_are_one_clear_error(pretrained_run, tmp_path):
    run = copy_run(pretrained_run, tmp_path / "run")
    state = torch.load(run / "model.pt", weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, run / "model.pt")
    with pytest.raises(RunError, match="does not match the model in config.json"):
        rundir.load_policy(str(run))


def test_prepare_out_rules(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_text("weights")
    for out in (run, run / "inner", tmp_path):  # equal to, inside, or holding an input run
        with pytest.raises(RunError, match="overlaps the input run"):
            rundir.prepare_out(str(out), [str(run)], overwrite=True)
    with pytest.raises(RunError, match="already holds a run; pass --resume to continue it, --overwrite"):
        rundir.prepare_out(str(run), [])
    with pytest.raises(RunError, match="ckpt.pt not found"):
        rundir.prepare_out(str(run), [], resume=True)
    (run / "ckpt.pt").write_text("state")
    rundir.prepare_out(str(run), [], resume=True)
    assert (run / "model.pt").read_text() == "weights"  # resuming keeps everything
    rundir.prepare_out(str(run), [], overwrite=True)
    assert [p.name for p in run.iterdir()] == [rundir.LOCK]  # overwriting starts empty, but for the writer's lock
    rundir.prepare_out(str(tmp_path / "new" / "deeper"), [])
    assert (tmp_path / "new" / "deeper").is_dir()


def test_overwrite_never_deletes_a_folder_of_runs_or_the_working_directory(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "config.json").write_text("{}")
    with pytest.raises(RunError, match=r"which holds the run directory .*runs/a"):
        rundir.prepare_out(str(runs), [], overwrite=True)
    monkeypatch.chdir(runs / "a")
    with pytest.raises(RunError, match="holds the working directory"):
        rundir.prepare_out(str(runs / "a"), [], overwrite=True)
    assert (runs / "a" / "config.json").read_text() == "{}"
    monkeypatch.chdir(tmp_path)
    rundir.prepare_out(str(runs / "a"), [], overwrite=True)  # one run's own directory: replaced
    assert [p.name for p in (runs / "a").iterdir()] == [rundir.LOCK]


def test_resume_checks_kind_flags_and_world_size(tmp_path):
    from types import SimpleNamespace
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_text("state")
    rundir.write_config(str(run), {"args": {"lr": 0.1, "seed": 1, "log_every": 5}, "world_size": 2}, "policy")
    args = SimpleNamespace(lr=0.1, seed=1, log_every=1)  # --log-every may change
    assert rundir.check_resume(str(run), "policy", args, world_size=2)["world_size"] == 2
    with pytest.raises(RunError, match="needs a pretraining run"):
        rundir.check_resume(str(run), "pretrain", args)
    with pytest.raises(RunError, match="ran on 2 processes, not 1"):
        rundir.check_resume(str(run), "policy", args, world_size=1)
    with pytest.raises(RunError, match="was started with --lr 0.1, --seed 1; pass the same flags"):
        rundir.check_resume(str(run), "policy", SimpleNamespace(lr=0.2, seed=2, log_every=5))
    rundir.write_config(str(run), {"args": {"prompts": None, "ei_restart": True, "evidence": [0.0, 0.5]}}, "policy")
    with pytest.raises(RunError, match=r"started with --ei-restart, --evidence 0.0,0.5, without --prompts;"):
        rundir.check_resume(str(run), "policy", SimpleNamespace(prompts="p.jsonl", ei_restart=False, evidence=[0.1]))


def test_checkpoints_load_safely_with_every_rng_state(tmp_path):
    import random

    import numpy as np
    runtime.seed_everything(3)
    path = str(tmp_path / "ckpt.pt")
    runtime.save_checkpoint(path, {"rng": runtime.rng_state(), "step": 7})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    runtime.seed_everything(99)
    state = runtime.load_checkpoint(path)  # weights_only=True inside
    runtime.set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected and state["step"] == 7
    (tmp_path / "ckpt.pt").write_bytes(b"garbage")
    with pytest.raises(RunError, match="unreadable, truncated or corrupt"):
        runtime.load_checkpoint(path)


def test_jsonl_with_byte_order_mark_and_crlf_loads(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    assert [row for _, row in runtime.iter_jsonl(str(path))] == [{"a": 1}, {"a": 2}]
