"""train_rm.py: the --prefs split by prompt, the calibration slice and the reward-scale normalisation;
end to end on the `test` preset: the run directory it writes, exact resume after Ctrl-C or
--stop-after, the --out rules, and bad inputs as one `error:` line."""

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_rm
from conftest import ROOT, run_script, snapshot
from nanorl import rundir, runtime
from nanorl.reward import ScalarModel, read_preferences
from nanorl.runtime import RunError
from nanorl.tasks import problem_set, split_of
from nanorl.tokenizer import Tokenizer
from nanorl.reward import normalise_head
from train_rm import problem_slices, split_by_prompt

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, pretrained_run):
    """One finished test-preset run (with --shift-init), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("rm") / "rm"
    run_script("train_rm.py", *rm_flags(pretrained_run, out), env=ONE_THREAD)
    return out


def rm_flags(pretrained_run, out, *more):
    return ["--init", str(pretrained_run), "--out", str(out), "--preset", "test",
            "--shift-init", str(pretrained_run), *map(str, more)]


def read_metrics(run_dir):
    return [record for _, record in runtime.iter_jsonl(str(run_dir / "metrics.jsonl"))]


def cli_error(capsys, *argv) -> str:
    """The error line of `python train_rm.py argv`, after checking it exits 2 with that one line."""
    with pytest.raises(SystemExit) as exit_:
        runtime.run_cli(lambda: train_rm.main([str(a) for a in argv]))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


# ----------------------------------------------------------------------------- held-out hygiene

def write_prefs(path, pairs_per_prompt):
    """A JSONL file whose prompt k has pairs_per_prompt[k] pairs, interleaved so repeats are not adjacent."""
    rows = [{"prompt": f"Tom has {k} apples. How many apples does Tom have now?\n\n",
             "chosen": f"\\boxed{{{k}}}", "rejected": f"\\boxed{{{k + i + 1}}}"}
            for i in range(max(pairs_per_prompt)) for k, n in enumerate(pairs_per_prompt) if i < n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_split_by_prompt_keeps_each_prompt_on_one_side(tmp_path, pretrained_run):
    tokenizer = Tokenizer.load(str(pretrained_run / "tokenizer.json"))
    path = tmp_path / "prefs.jsonl"
    write_prefs(path, [3, 1, 2, 4, 2, 3, 1, 4])  # 8 prompts, 20 pairs
    pairs = read_preferences(str(path), tokenizer, block_size=256)
    n_pairs_of = {}
    for p in pairs:
        n_pairs_of[tuple(p.prompt)] = n_pairs_of.get(tuple(p.prompt), 0) + 1
    assert len(pairs) == 20 and len(n_pairs_of) == 8
    for seed in range(5):
        train, held_out = split_by_prompt(pairs, val_fraction=0.25, seed=seed)
        train_prompts, held_out_prompts = {tuple(p.prompt) for p in train}, {tuple(p.prompt) for p in held_out}
        assert not train_prompts & held_out_prompts
        assert len(held_out_prompts) == 2 and len(train_prompts) == 6  # 0.25 of the 8 prompts
        assert len(held_out) == sum(n_pairs_of[q] for q in held_out_prompts)  # with all their pairs
        assert len(train) + len(held_out) == 20
        assert split_by_prompt(pairs, val_fraction=0.25, seed=seed) == (train, held_out)  # seeded
    splits = {tuple(sorted(tuple(p.prompt) for p in split_by_prompt(pairs, 0.25, seed)[1])) for seed in range(5)}
    assert len(splits) > 1  # the seed chooses which prompts are held out


def test_split_by_prompt_needs_two_prompts(tmp_path, pretrained_run, capsys):
    tokenizer = Tokenizer.load(str(pretrained_run / "tokenizer.json"))
    path = tmp_path / "prefs.jsonl"
    write_prefs(path, [5])
    pairs = read_preferences(str(path), tokenizer, block_size=256)
    assert split_by_prompt(pairs, val_fraction=0.5, seed=0) == (pairs, [])
    error = cli_error(capsys, "--init", pretrained_run, "--out", tmp_path / "rm", "--preset", "test", "--prefs", path)
    assert "1 distinct prompts" in error
    assert not (tmp_path / "rm").exists()  # the file is checked before --out is made


def test_calibration_problems_are_training_problems_disjoint_from_evaluation():
    args = argparse.Namespace(n_prompts=384, n_calib_prompts=128, n_eval_prompts=128, seed=1337, min_difficulty=1,
                              max_difficulty=4)
    train, calibration, held_out = problem_slices(args)
    assert (len(train), len(calibration), len(held_out)) == (384, 128, 128)
    assert train == problem_set("train", 384, seed=1337)  # adding calibration leaves the training pairs as they were
    assert all(split_of(p.question) == "train" for p in calibration)
    calib_questions = {p.question for p in calibration}
    assert len(calib_questions) == 128 and not calib_questions & {p.question for p in train}
    ppo_eval = problem_set("test", 1000, seed=1337)  # train_ppo.py evaluates on the first n_eval of these
    assert not calib_questions & ({p.question for p in ppo_eval} | {p.question for p in held_out})


# ----------------------------------------------------------------------------- reward scale

def test_normalise_head_gives_unit_scores_and_keeps_pair_order():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 1)
    with torch.no_grad():
        head.weight.mul_(10.0)  # scores of std ~5, like the trained reward model before normalisation
        head.bias.fill_(3.0)
        hidden = torch.randn(200, 8)
        before = head(hidden).squeeze(-1)
        gain, bias_shift = normalise_head(head, before)
        after = head(hidden).squeeze(-1)
    assert before.std().item() > 3.0 and before.mean().item() > 2.0  # far from unit scale to begin with
    assert gain == pytest.approx(1 / before.std().item(), rel=1e-6)
    assert bias_shift == pytest.approx(-before.mean().item() / before.std().item(), rel=1e-6)
    assert after.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert after.std().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(after, gain * before + bias_shift, atol=1e-5)
    chosen, rejected = torch.arange(0, 100), torch.arange(100, 200)  # 100 pairs
    assert torch.equal(after[chosen] > after[rejected], before[chosen] > before[rejected])
    assert ((after[chosen] - after[rejected]) / (before[chosen] - before[rejected])).sub(gain).abs().max() < 1e-4


def test_normalise_head_refuses_constant_scores():
    head = torch.nn.Linear(4, 1)
    with pytest.raises(RunError, match="all score"):
        normalise_head(head, torch.full((6,), 0.5))


# ----------------------------------------------------------------------------- the script

def with_bom_and_crlf(path):
    """Rewrite a JSONL file as a Windows editor saves it: a UTF-8 byte-order mark and CRLF line ends."""
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))


def test_a_prefs_file_with_bom_and_crlf_reads_like_a_plain_one(tmp_path, pretrained_run):
    tokenizer = Tokenizer.load(str(pretrained_run / "tokenizer.json"))
    plain, windows = tmp_path / "plain.jsonl", tmp_path / "windows.jsonl"
    write_prefs(plain, [2, 1, 3])
    write_prefs(windows, [2, 1, 3])
    with_bom_and_crlf(windows)
    assert windows.read_bytes().startswith(b"\xef\xbb\xbf") and b"\r\n" in windows.read_bytes()
    assert read_preferences(str(windows), tokenizer, 256) == read_preferences(str(plain), tokenizer, 256)


def test_train_rm_writes_a_reward_model_run(rm_run, pretrained_run):
    for name in ("model.pt", "config.json", "tokenizer.json", "eval.json", "metrics.jsonl", "rm_accuracy.png", "ckpt.pt"):
        assert (rm_run / name).exists(), name
    config = json.loads((rm_run / "config.json").read_text())
    assert (config["kind"], config["format"]) == ("rm", rundir.FORMAT)
    assert (config["init"], config["init_kind"]) == (str(pretrained_run), "pretrain")
    model, _, _ = rundir.load_reward_model(str(rm_run))
    assert isinstance(model, ScalarModel)
    result = json.loads((rm_run / "eval.json").read_text())
    assert 0.0 <= result["pair_accuracy"] <= 1.0 and 0.0 <= result["train_pair_accuracy"] <= 1.0
    assert result["n_pairs"] > 0 and result["n_eval_pairs"] > 0 and result["label_noise"] == 0.0
    assert 0.0 <= result["pair_accuracy_shifted"] <= 1.0 and result["n_shifted_pairs"] > 0
    metrics = read_metrics(rm_run)
    assert [m["step"] for m in metrics] == list(range(len(metrics))) and "eval/pair_accuracy" in metrics[-1]
    assert all(math.isfinite(m["loss"]) for m in metrics[1:])
    ckpt = runtime.load_checkpoint(str(rm_run / "ckpt.pt"))  # weights_only: plain types throughout
    assert ckpt["step"] == metrics[-1]["step"]
    assert len(ckpt["data"]["pairs"]) == result["n_pairs"] and len(ckpt["data"]["held_out"]) == result["n_eval_pairs"]
    assert len(ckpt["data"]["calibration"]) == result["n_calib_responses"]
    assert sorted(ckpt["orders"][0]) == list(range(result["n_pairs"]))


def test_train_rm_records_the_normalisation(rm_run):
    result = json.loads((rm_run / "eval.json").read_text())
    assert result["n_calib_responses"] == 8 * 4  # test preset: 8 calibration problems x 4 samples
    assert result["reward_gain"] == pytest.approx(1 / result["score_std_before_normalisation"], rel=1e-6)
    assert result["reward_bias_shift"] == pytest.approx(
        -result["score_mean_before_normalisation"] * result["reward_gain"], rel=1e-6)
    assert result["calib_score_mean"] == pytest.approx(0.0, abs=1e-4)  # re-scored with the saved head
    assert result["calib_score_std"] == pytest.approx(1.0, abs=1e-4)
    assert result["eval_score_std"] > 0 and 0.0 <= result["pair_accuracy"] <= 1.0


def test_train_rm_prefs_calibrates_on_training_pairs(tmp_path, pretrained_run):
    path = tmp_path / "prefs.jsonl"
    write_prefs(path, [2, 1, 3, 2, 1, 2, 2, 1, 3, 3])  # 10 prompts, 20 pairs
    with_bom_and_crlf(path)  # as saved on Windows: must load all the same
    out = tmp_path / "rm_prefs"
    run_script("train_rm.py", "--init", str(pretrained_run), "--out", str(out), "--preset", "test",
               "--prefs", str(path), "--val-fraction", "0.2", env=ONE_THREAD)
    result = json.loads((out / "eval.json").read_text())
    assert result["n_pairs"] + result["n_eval_pairs"] == 20
    assert 2 <= result["n_eval_pairs"] <= 6  # 2 of the 10 prompts, each with 1 to 3 pairs
    assert result["n_calib_responses"] == 2 * result["n_pairs"]  # chosen and rejected of each training pair
    assert result["calib_score_std"] == pytest.approx(1.0, abs=1e-4)


def without_seconds(run_dir) -> dict:
    result = json.loads((run_dir / "eval.json").read_text())
    del result["seconds"]
    return result


def test_stop_after_and_resume_give_the_uninterrupted_run(tmp_path, pretrained_run, rm_run):
    out = tmp_path / "parts"
    out.mkdir()
    (out / "old.txt").write_text("a run to replace")
    proc = run_script("train_rm.py", *rm_flags(pretrained_run, out, "--stop-after", 2, "--overwrite"), env=ONE_THREAD)
    assert "continue with --resume" in proc.stdout and not (out / "old.txt").exists()
    assert [m["step"] for m in read_metrics(out)] == [0, 1, 2] and not (out / "model.pt").exists()
    run_script("train_rm.py", *rm_flags(pretrained_run, out, "--resume"), env=ONE_THREAD)
    assert read_metrics(out) == read_metrics(rm_run)  # exactly: same pairs, batch order and optimizer state
    assert without_seconds(out) == without_seconds(rm_run)
    resumed, whole = (torch.load(run / "model.pt", weights_only=True) for run in (out, rm_run))
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_resume_refuses_other_flags(tmp_path, pretrained_run, rm_run, capsys):
    out = tmp_path / "rm"
    shutil.copytree(rm_run, out)
    before = snapshot(out)
    error = cli_error(capsys, *rm_flags(pretrained_run, out, "--resume", "--lr", "0.5", "--n-prompts", "3"))
    assert "was started with --lr 0.001, --n-prompts 16;" in error and "--overwrite" in error
    assert snapshot(out) == before


def wait_for_step(out, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if any(m["step"] >= step for m in read_metrics(out)):
                return
        except RunError:  # not written yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"training never reached step {step}: {proc.communicate()}")


def test_ctrl_c_saves_and_resume_continues_exactly(tmp_path, pretrained_run):
    """Ctrl-C in the middle of a long run, --resume up to a later step, and the same metrics as a run never stopped."""
    long_run = ("--epochs", 200)  # 1200 steps: still training when the signal comes
    interrupted, whole = tmp_path / "interrupted", tmp_path / "whole"
    proc = subprocess.Popen([sys.executable, "train_rm.py", *rm_flags(pretrained_run, interrupted, *long_run)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, **ONE_THREAD},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(interrupted, 2, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "continue with --resume" in stdout
    stopped_at = runtime.load_checkpoint(str(interrupted / "ckpt.pt"))["step"]
    assert 2 <= stopped_at < 1200 and read_metrics(interrupted)[-1]["step"] == stopped_at  # a whole step, logged
    until = ("--stop-after", stopped_at + 3)
    run_script("train_rm.py", *rm_flags(pretrained_run, interrupted, *long_run, *until, "--resume"), env=ONE_THREAD)
    run_script("train_rm.py", *rm_flags(pretrained_run, whole, *long_run, *until), env=ONE_THREAD)
    assert read_metrics(interrupted) == read_metrics(whole)
    assert [m["step"] for m in read_metrics(whole)] == list(range(stopped_at + 4))


def test_out_rules(tmp_path, pretrained_run, rm_run, capsys):
    before = snapshot(rm_run), snapshot(pretrained_run)
    error = cli_error(capsys, *rm_flags(pretrained_run, rm_run))  # no --resume, no --overwrite
    assert f"--out {rm_run} already holds a run" in error and "--resume" in error and "--overwrite" in error
    inside = pretrained_run / "rm"
    error = cli_error(capsys, *rm_flags(pretrained_run, inside, "--overwrite"))
    assert f"--out {inside} overlaps the input run {pretrained_run}" in error and not inside.exists()
    prefs = tmp_path / "run" / "prefs.jsonl"  # --overwrite would delete the file it reads
    prefs.parent.mkdir()
    write_prefs(prefs, [1, 1, 1])
    error = cli_error(capsys, "--init", pretrained_run, "--out", prefs.parent, "--prefs", prefs, "--overwrite")
    assert "overlaps" in error and prefs.exists()
    assert (snapshot(rm_run), snapshot(pretrained_run)) == before


def test_bad_inputs_stop_before_out_is_made(tmp_path, pretrained_run, rm_run, capsys):
    out = tmp_path / "rm"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\r\n")
    for argv, says in [(["--init", tmp_path / "missing"], "no such run directory"),
                       (["--init", rm_run], "is a reward-model run (kind rm); --init needs a pretraining run"),
                       (["--init", pretrained_run, "--shift-init", rm_run], "--shift-init"),
                       (["--init", pretrained_run, "--prefs", bad], f"{bad}, line 2"),
                       (["--init", pretrained_run, "--prefs", empty], "no preference pairs"),
                       (["--init", pretrained_run, "--max-new-tokens", 256], "--max-new-tokens 256 leaves no room")]:
        assert says in cli_error(capsys, *argv, "--out", out, "--preset", "test")
        assert not out.exists()
