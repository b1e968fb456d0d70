"""train_rm.py: the --prefs split by prompt, the calibration slice, and the reward-scale normalisation."""

import argparse
import json

import pytest
import torch

from conftest import run_script
from nanorl.reward import read_preferences
from nanorl.runtime import RunError
from nanorl.tasks import problem_set, split_of
from nanorl.tokenizer import Tokenizer
from train_rm import normalise_head, problem_slices, split_by_prompt

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


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


def test_split_by_prompt_needs_two_prompts(tmp_path, pretrained_run):
    tokenizer = Tokenizer.load(str(pretrained_run / "tokenizer.json"))
    path = tmp_path / "prefs.jsonl"
    write_prefs(path, [5])
    pairs = read_preferences(str(path), tokenizer, block_size=256)
    assert split_by_prompt(pairs, val_fraction=0.5, seed=0) == (pairs, [])
    proc = run_script("train_rm.py", "--init", str(pretrained_run), "--out", str(tmp_path / "rm"), "--preset", "test",
                      "--prefs", str(path), check=False, env=ONE_THREAD)
    assert proc.returncode == 2 and "1 distinct prompts" in proc.stderr


def test_calibration_problems_are_training_problems_disjoint_from_evaluation():
    args = argparse.Namespace(n_prompts=384, n_calib_prompts=128, n_eval_prompts=128, seed=1337)
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

def test_train_rm_records_the_normalisation(tmp_path, pretrained_run):
    out = tmp_path / "rm"
    run_script("train_rm.py", "--init", str(pretrained_run), "--out", str(out), "--preset", "test", env=ONE_THREAD)
    result = json.loads((out / "eval.json").read_text())
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
    out = tmp_path / "rm_prefs"
    run_script("train_rm.py", "--init", str(pretrained_run), "--out", str(out), "--preset", "test",
               "--prefs", str(path), "--val-fraction", "0.2", env=ONE_THREAD)
    result = json.loads((out / "eval.json").read_text())
    assert result["n_pairs"] + result["n_eval_pairs"] == 20
    assert 2 <= result["n_eval_pairs"] <= 6  # 2 of the 10 prompts, each with 1 to 3 pairs
    assert result["n_calib_responses"] == 2 * result["n_pairs"]  # chosen and rejected of each training pair
    assert result["calib_score_std"] == pytest.approx(1.0, abs=1e-4)
