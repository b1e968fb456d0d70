"""Online-code MDL (nanorl/mdl.py), the toy feature world (nanorl/toyworld.py) and probe_mdl.py."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import run_script
from nanorl import mdl, toyworld as tw
from nanorl.tokenizer import Tokenizer


def test_block_ends_are_exact():
    assert mdl.block_ends(10000) == [10, 20, 40, 80, 160, 320, 625, 1250, 2500, 5000, 10000]
    assert mdl.block_ends(1000) == [1, 2, 4, 8, 16, 32, 62, 125, 250, 500, 1000]
    assert mdl.block_ends(100) == [1, 3, 6, 12, 25, 50, 100]  # empty and repeated blocks dropped


def test_codelength_is_in_bits():
    probe = torch.nn.Linear(3, 4)
    torch.nn.init.zeros_(probe.weight), torch.nn.init.zeros_(probe.bias)  # uniform over 4 classes: 2 bits each
    assert mdl.codelength_bits(probe, torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])) == pytest.approx(10.0)
    code = mdl.online_codelength(torch.zeros(200, 3), np.arange(200) % 4, 4, seed=0)
    assert code["uniform_bits"] == pytest.approx(400.0)
    assert code["block_bits"][0] == pytest.approx(code["block_ends"][0] * 2.0)
    assert sum(code["block_bits"]) == pytest.approx(code["mdl_bits"])


def test_determined_label_costs_far_less_than_uniform():
    y = np.arange(1000) % 2
    x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.from_numpy(4.0 * y - 2.0) + 0.5 * x[:, 0]  # the label, with a margin, in one coordinate
    code = mdl.online_codelength(x, y, 2, seed=0)
    assert code["compression"] > 4.0


def test_random_labels_cost_the_uniform_code():
    rng = np.random.default_rng(0)
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    code = mdl.online_codelength(x, rng.integers(0, 2, 2000), 2, seed=0)
    assert code["mdl_bits"] == pytest.approx(2000.0, rel=0.05)


def test_interleave_spreads_each_class_evenly():
    y = np.r_[np.ones(100, dtype=int), np.zeros(900, dtype=int)]
    order = mdl.interleave_classes(y, np.random.default_rng(0))
    assert sorted(order) == list(range(1000))
    assert [y[order[10 * i:10 * i + 10]].sum() for i in range(100)] == [1] * 100


def test_mean_stderr_and_spearman_on_known_cases():
    assert mdl.mean_stderr([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0 / math.sqrt(3)))
    rho, p = mdl.spearman([1, 2, 3, 4], [1, 3, 2, 4], permutations=2000)
    assert rho == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    rho, p = mdl.spearman([1, 2, 3, 4, 5, 6], [2, 4, 6, 8, 10, 12], permutations=5000)
    assert rho == pytest.approx(1.0) and p < 0.01  # exact two-sided p is 2/720
    rho, _ = mdl.spearman([1, 2, 2, 3], [1, 2, 3, 4])  # ties take their average rank 1.5
    ranks = np.array([0, 1.5, 1.5, 3])
    assert rho == pytest.approx(np.corrcoef(ranks, np.arange(4))[0, 1])
    assert math.isnan(mdl.spearman([1, 1, 1], [1, 2, 3])[0])


def test_features_on_hand_made_prompts():
    x = np.array([[1, 1, 3, 4, 5, 6, 7, 8, 9, 0],    # prefix dup, contains 1, adjacent dup
                  [3, 4, 5, 6, 7, 8, 9, 0, 5, 3],    # first == last, contains first
                  [0, 9, 0, 9, 0, 9, 0, 9, 0, 2]])   # contains first, contains 2
    expect = {"contains_1": [1, 0, 0], "prefix_duplicate": [1, 0, 0], "first_last": [0, 1, 0],
              "adjacent_duplicate": [1, 0, 0], "contains_first": [1, 1, 1]}
    for name, values in expect.items():
        assert tw.TARGETS[name](x).tolist() == [bool(v) for v in values], name
    assert tw.spurious(x).tolist() == [False, False, True]
    assert tw.section_of(x, "contains_1").tolist() == ["t_only", "neither", "s_only"]


def test_training_set_has_exactly_ceil_pn_counterexamples():
    assert tw.evidence_counts(0.1, 100) == (10, 45, 45)  # not 11: 0.1 * 100 is 10.000000000000002 in floats
    assert tw.evidence_counts(0.001, 1000) == (1, 500, 499)
    assert tw.evidence_counts(0.0, 7) == (0, 4, 3)
    for target in ("prefix_duplicate", "first_last"):
        x = tw.training_set(np.random.default_rng(0), target, 0.05, 300)
        sections = tw.section_of(x, target)
        assert len(x) == 300 and (sections == "s_only").sum() == 15 and (sections == "t_only").sum() == 0
        assert (sections == "both").sum() == 143 and (sections == "neither").sum() == 142
    sample = tw.sample_section(np.random.default_rng(1), "first_last", "t_only", 50)
    assert sample.shape == (50, 10) and (tw.section_of(sample, "first_last") == "t_only").all()


def test_rewards_on_hand_made_sequences():
    digits = torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [1, 2, 2, 3, 4], [1, -1, 2, 3, 4], [3, 5, 9, 8, 9]])
    up = torch.ones(5, dtype=torch.bool)
    assert tw.reward(digits, up, "run").tolist() == [1.0, 0.0, 0.25, 0.0, 0.5]
    assert tw.reward(digits, ~up, "run").tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    first = torch.tensor([[7], [7], [3], [-1]])
    assert tw.reward(first, torch.tensor([True, False, False, False]), "token").tolist() == [1.0, 0.0, 1.0, 0.0]


def test_digit_vocab_of_a_project_tokenizer(pretrained_run):
    tok = Tokenizer.load(str(pretrained_run / "tokenizer.json"))
    vocab = tw.tokenizer_vocab(tok)
    prompts = vocab.encode(np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]))
    assert prompts[0][0] == tok.bos_id and tok.decode(prompts[0][1:]) == "0123456789"
    assert vocab.digits(torch.tensor(prompts[0])).tolist() == [-1] + list(range(10))


def test_representations_are_the_last_hidden_state():
    model = tw.scratch_policy(1, 32, 2, seed=0)
    x = np.random.default_rng(0).integers(0, 10, (7, 10))
    reps = tw.representations(model, tw.SCRATCH_VOCAB, x, batch_size=3)
    full = model.hidden_states(torch.tensor(tw.SCRATCH_VOCAB.encode(x)))[:, -1]
    assert reps.shape == (7, 32) and torch.allclose(reps, full, atol=1e-6)


def test_ppo_learns_the_easy_toy_reward():
    policy = tw.scratch_policy(2, 64, 4, seed=1)
    x = tw.training_set(np.random.default_rng(0), "contains_1", 0.0, 500)
    rewards = tw.train_policy(policy, tw.SCRATCH_VOCAB, x, "contains_1", "token", iterations=25, batch_size=64,
                              lr=1e-3, seed=1)
    assert rewards[0] < 0.6 and np.mean(rewards[-5:]) > 0.85  # 5 of 13 tokens pay at first; s alone then suffices
    sections = tw.section_rewards(policy, tw.SCRATCH_VOCAB, "contains_1", "token", 64, seed=3)
    assert sections["both"] > 0.8 and sections["neither"] > 0.8


def test_probe_mdl_smoke_and_resume(tmp_path):
    out = tmp_path / "mdl"
    run_script("probe_mdl.py", "--preset", "smoke", "--out", str(out))
    result = json.loads((out / "eval.json").read_text())
    assert set(result["features"]) == {"contains_1", "prefix_duplicate", "random"}
    for name, row in result["features"].items():
        for field in ("mdl_bits", "uniform_bits", "compression"):
            assert math.isfinite(row[field]) and row[field + "_stderr"] >= 0
        assert row["uniform_bits"] == pytest.approx(200.0)
        assert ("relative_mdl" in row) == (name != "random")
    assert set(result["spurious"]["by_target"]) == {"contains_1", "prefix_duplicate"}
    assert set(result["evidence"]["prefix_duplicate"]) == {"0.0", "0.5"}
    assert set(result["evidence"]["contains_1"]["0.0"]) == set(tw.SECTIONS)
    assert set(result["spearman"]) == {"rho", "p_value", "n_points"} and result["spearman"]["n_points"] == 2
    assert json.loads((out / "config.json").read_text())["kind"] == "mdl"
    for name in ("mdl_table.md", "reward_vs_evidence.png", "reward_vs_relative_mdl.png"):
        assert (out / name).stat().st_size > 0
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 + 2 * 2  # probe seeds x targets + targets x p x seeds
    # an interrupted experiment (the last 3 records lost) resumes to the same records
    (out / "runs.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    run_script("probe_mdl.py", "--preset", "smoke", "--out", str(out), "--resume")
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]
    assert strip((out / "runs.jsonl").read_text().splitlines()) == strip(lines)
