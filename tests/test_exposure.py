"""nanorl/exposure.py: the repetition metrics and excess error on hand-made cases, every model
metric on a model that has memorised its references, and the CLI end to end."""

import json
import math

import pytest
import torch

from conftest import run_script
from nanorl import exposure, rundir
from nanorl.gpt import GPT, GPTConfig
from nanorl.reward import reference_pairs
from nanorl.tasks import problem_set


def test_seq_rep_of_a_constant_sequence_counts_every_repeat():
    # 10 tokens hold 7 four-grams, all the same one: 1 - 1/7, which tends to 1 with the length
    assert exposure.seq_rep([5] * 10, 4) == pytest.approx(1 - 1 / 7)
    assert exposure.seq_rep([5] * 1000, 4) == pytest.approx(1 - 1 / 997)
    assert exposure.seq_rep(list(range(10)), 4) == 0.0
    assert exposure.seq_rep([1, 2, 1, 2, 1], 2) == pytest.approx(1 - 2 / 4)  # (1,2) (2,1) (1,2) (2,1)
    assert exposure.seq_rep([1, 2], 4) is None


def test_distinct_pools_the_ngrams_of_all_samples():
    assert exposure.distinct([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(2 / 4)
    assert exposure.distinct([[1, 2, 3], [3, 2, 1]], 2) == 1.0
    assert exposure.distinct([[1], [2]], 2) is None


def test_ends_in_loop_finds_a_repeated_tail_block():
    assert exposure.ends_in_loop([9, 8] + [1, 2, 3] * 3)
    assert exposure.ends_in_loop([4] * 3)
    assert not exposure.ends_in_loop([9, 8] + [1, 2, 3] * 2)  # two repeats are not a loop yet
    assert not exposure.ends_in_loop(list(range(100)))


def test_excess_error_compares_the_error_rates():
    assert exposure.excess_error(0.8, 0.9) == pytest.approx(100.0)   # twice the predicted error
    assert exposure.excess_error(0.9, 0.9) == pytest.approx(0.0)
    assert exposure.excess_error(0.95, 0.9) == pytest.approx(-50.0)  # half: recovered or another path
    assert exposure.excess_error(1.0, 1.0) is None


def memorising_model(tokenizer, pairs, steps=400):
    """A one-layer GPT trained until greedy decoding reproduces every reference exactly."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    width = max(len(p.prompt) + len(p.chosen) for p in pairs)
    tokens = torch.tensor([p.prompt + p.chosen + [tokenizer.pad_id] * (width - len(p.prompt) - len(p.chosen))
                           for p in pairs])
    targets = torch.tensor([[-1] * (len(p.prompt) - 1) + p.chosen + [-1] * (width - len(p.prompt) - len(p.chosen) + 1)
                            for p in pairs])
    for _ in range(steps):
        _, loss = model(tokens, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 1e-3:
            break
    return model.eval()


def test_a_model_that_copies_its_references_has_no_error_and_full_success(pretrained_run):
    _, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    problems = problem_set("test", 3, seed=0, difficulties=[2])
    model = memorising_model(tokenizer, reference_pairs(problems, "tinygsm", tokenizer))
    result = exposure.measure(model, tokenizer, problems, "tinygsm", max_new_tokens=160, k=2, temperature=0.7,
                              n=4, seed=0)
    assert result["tf_error"] == 0.0 and result["tf_nll"] < 0.05
    assert result["predicted_success"] == 1.0 and result["free_success"] == 1.0
    assert result["excess_error_pct"] is None and result["greedy_loops"] == 0.0
    assert result["seq_rep_4"] == pytest.approx(result["reference_seq_rep_4"])  # greedy output = the references
    assert 0.0 <= result["recovery"] <= result["recovery_answered"] <= 1.0
    assert result["n"] == 3 and result["reference_len"] > 20


def test_teacher_forced_wrong_token_is_never_the_reference_or_special(pretrained_run):
    model, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    pairs = reference_pairs(problem_set("test", 4, seed=1, difficulties=[1, 2]), "omi2", tokenizer)
    errors, nll, mask, wrong = exposure.teacher_forced(model, tokenizer, pairs)
    for i, pair in enumerate(pairs):
        n = len(pair.chosen)
        assert mask[i].sum() == n and not errors[i, n:].any()
        assert all(int(wrong[i, t]) not in (pair.chosen[t], tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id)
                   for t in range(n))
    assert torch.all(nll[mask] >= 0) and torch.all(nll[~mask] == 0)


def test_exposure_cli_writes_the_report(pretrained_run, tmp_path):
    out = tmp_path / "exposure"
    run = str(pretrained_run)
    run_script("-m", "nanorl.exposure", "--run", f"a={run}", "--run", f"b={run},{run}", "--n-per-difficulty", "2",
               "--samples", "2", "--max-new-tokens", "24", "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    report = json.loads((out / "exposure.json").read_text())
    assert list(report["groups"]) == ["a", "b"] and len(report["per_run"]["b"]) == 2
    assert list(report["groups"]["a"]) == ["1", "2", "3", "4"]
    row = report["groups"]["b"]["3"]
    assert row["tf_error"]["std"] == 0.0  # one model twice: same numbers
    assert 0.0 <= row["free_success"]["mean"] <= 1.0 and row["tf_error"]["n"] == 2
    assert math.isclose(report["per_run"]["a"][0]["3"]["tf_error"], row["tf_error"]["mean"])
    for name in ("exposure.md", "success_by_difficulty.png", "excess_error.png"):
        assert (out / name).exists()


def test_exposure_cli_refuses_a_bad_group(pretrained_run, tmp_path):
    proc = run_script("-m", "nanorl.exposure", "--run", str(pretrained_run), "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2 and "NAME=RUN" in proc.stderr
