"""The online-vs-offline pieces: the preference file a reward-model run leaves for offline DPO,
the "target" gold reward, problems of one difficulty, SFT on reference solutions, and DPO's
implicit reward model against the global one (nanorl/implicit_rm.py)."""

import argparse
import json

import pytest
import torch

from conftest import run_script, sharp_gpt
from nanorl import implicit_rm, reward, rundir, runtime, tasks
from nanorl.reward import (Pair, gold_reward, pair_rows, read_preferences, reference_pairs, target_format,
                           write_preferences)
from nanorl.runtime import DataError
from train_ppo import step_problems
from train_rm import problem_slices

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dpo_setup(tmp_path_factory, pretrained_run):
    """A reward model on one-step problems and offline DPO on the very pairs it saw."""
    root = tmp_path_factory.mktemp("oo")
    rm, dpo = root / "rm", root / "dpo"
    run_script("train_rm.py", "--preset", "test", "--init", str(pretrained_run), "--out", str(rm),
               "--max-difficulty", "1", env=ONE_THREAD)
    run_script("train_ppo.py", "--preset", "test", "--init", str(pretrained_run), "--algo", "dpo",
               "--prefs", str(rm / "prefs.jsonl"), "--dpo-beta", "0.2", "--out", str(dpo), env=ONE_THREAD)
    return rm, dpo


def test_target_gold_asks_for_the_questions_format():
    problem = tasks.problem_set("test", 1, seed=3)[0]
    assert target_format(problem.question) == target_format(problem.question) in ("tinygsm", "omi1", "omi2")
    shares = {f: 0 for f in ("tinygsm", "omi1", "omi2")}
    for p in tasks.problem_set("train", 300, seed=0):
        shares[target_format(p.question)] += 1
    assert min(shares.values()) > 60  # every format is somebody's target
    target = target_format(problem.question)
    other = next(f for f in ("tinygsm", "omi1", "omi2") if f != target)
    for fmt, expected in ((target, 1.0), (other, 0.0)):
        text = tasks.render(problem, fmt)
        assert gold_reward(text, problem, 50, True, 100, 0.1, "target") == pytest.approx(expected + 0.05)
        assert gold_reward(text, problem, 50, True, 100, 0.1, "answer") == pytest.approx(1.05)
    assert gold_reward("The answer is \\boxed{-1}.", problem, 50, False, 100, 0.1) == 0.0  # wrong, truncated


def test_difficulty_flags_choose_the_problems():
    args = argparse.Namespace(n_prompts=12, n_calib_prompts=4, n_eval_prompts=8, seed=1, min_difficulty=1,
                              max_difficulty=1)
    train, calib, test = problem_slices(args)
    assert {p.difficulty for p in train + calib + test} == {1}
    assert (len(train), len(calib), len(test)) == (12, 4, 8)
    args.min_difficulty, args.max_difficulty = 1, 4  # the defaults: the problems of before the flags existed
    assert problem_slices(args)[0] == tasks.problem_set("train", 16, seed=1)[:12]


def test_preference_files_round_trip_exactly(tmp_path, pretrained_run):
    _, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    prompt = [tokenizer.bos_id] + tokenizer.encode("Tom has 3 pens.\n\n")
    invalid_utf8 = [tokenizer.encode("é")[0]]  # one byte of a two-byte character: decodes to U+FFFD
    pairs = [Pair(prompt, tokenizer.encode("pens = 3") + [tokenizer.eos_id], tokenizer.encode("pens = 3 +")),
             Pair(prompt, invalid_utf8, tokenizer.encode("yes") + [tokenizer.eos_id])]
    write_preferences(str(tmp_path / "p.jsonl"), pairs, tokenizer)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == ("Tom has 3 pens.\n\n", "pens = 3", "pens = 3 +")
    back = read_preferences(str(tmp_path / "p.jsonl"), tokenizer, 256)
    assert [(p.prompt, p.chosen, p.rejected) for p in back] == [(p.prompt, p.chosen, p.rejected) for p in pairs]
    del rows[0]["ids"]  # texts alone: encoded again, EOS appended
    (tmp_path / "texts.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert read_preferences(str(tmp_path / "texts.jsonl"), tokenizer, 256)[0].rejected == \
        tokenizer.encode("pens = 3 +") + [tokenizer.eos_id]
    for bad in ({"prompt": [1], "chosen": [2]}, {**rows[1]["ids"], "chosen": [10 ** 6]},
                {**rows[1]["ids"], "rejected": []}, {**rows[1]["ids"], "chosen": ["a"]}):
        (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[1], "ids": bad}) + "\n")
        with pytest.raises(DataError, match='"ids" must map'):
            read_preferences(str(tmp_path / "bad.jsonl"), tokenizer, 256)


def test_reward_model_run_leaves_its_exact_pairs_for_offline_dpo(dpo_setup, pretrained_run):
    rm, dpo = dpo_setup
    _, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    data = runtime.load_checkpoint(str(rm / "ckpt.pt"))["data"]
    for name, key in (("prefs.jsonl", "pairs"), ("prefs_held_out.jsonl", "held_out")):
        read = read_preferences(str(rm / name), tokenizer, 256)
        assert [(p.prompt, p.chosen, p.rejected) for p in read] == \
               [(p["prompt"], p["chosen"], p["rejected"]) for p in data[key]], name
    questions = [tokenizer.decode(p.prompt[1:]) for p in read_preferences(str(rm / "prefs.jsonl"), tokenizer, 256)]
    assert all(q.count(".") == 2 for q in questions)  # --max-difficulty 1: the start and one step
    metrics = [json.loads(line) for line in (dpo / "metrics.jsonl").read_text().splitlines()]
    assert metrics[1]["n_pairs"] == len(data["pairs"])


def test_sft_format_learns_the_reference_solutions(pretrained_run, tmp_path):
    _, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    problems = tasks.problem_set("train", 3, seed=0)
    pairs = reference_pairs(problems, "omi2", tokenizer)
    for problem, pair in zip(problems, pairs):
        assert tokenizer.decode(pair.prompt[1:]) == tasks.prompt_text(problem.question)
        assert pair.chosen == tokenizer.encode(tasks.render(problem, "omi2")) + [tokenizer.eos_id]
    out = tmp_path / "sft"
    run_script("train_ppo.py", "--preset", "test", "--init", str(pretrained_run), "--algo", "sft",
               "--sft-format", "tinygsm", "--samples", "1", "--gold", "target", "--out", str(out), env=ONE_THREAD)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    pool = tasks.problem_set("train", 20, seed=1337)  # the test preset's prompt pool; the test model's context is short
    fits = [len(p.prompt) + len(p.chosen) <= 256 for p in reference_pairs(pool, "tinygsm", tokenizer)]
    assert 0 < metrics[1]["n_pairs"] == sum(fits)
    assert json.loads((out / "config.json").read_text())["args"]["gold"] == "target"
    for flags in (["--algo", "dpo", "--sft-format", "omi2"], ["--algo", "sft", "--sft-format", "omi2", "--prefs", "x"]):
        proc = run_script("train_ppo.py", "--init", str(pretrained_run), "--out", str(tmp_path / "x"), *flags,
                          check=False)
        assert proc.returncode == 2 and "--sft-format" in proc.stderr


def naive_implicit_reward(policy, ref, prompt, response, beta):
    """beta * (log pi - log pi_ref) of one unpadded sequence, token by token."""
    seq = torch.tensor([prompt + response])
    total = 0.0
    for model, sign in ((policy, 1.0), (ref, -1.0)):
        logprobs = torch.log_softmax(model(seq)[0, len(prompt) - 1:-1], -1)
        total += sign * logprobs.gather(-1, torch.tensor(response)[:, None]).sum().item()
    return beta * total


def test_implicit_rewards_match_a_naive_reference_and_vanish_for_the_reference_itself():
    policy = sharp_gpt(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)
    ref = sharp_gpt(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)
    with torch.no_grad():
        ref.lm_head.weight.mul_(0.5)
    tokenizer = argparse.Namespace(eos_id=1, pad_id=0)
    responses = [([2, 3, 4], [5, 6, 1]), ([7, 8], [9, 10, 11, 12, 1]), ([2], [3])]
    ref_logps = implicit_rm.log_likelihoods(ref, responses, tokenizer, batch_size=2)
    got = implicit_rm.implicit_rewards(policy, ref_logps, responses, tokenizer, beta=0.3, batch_size=2)
    want = [naive_implicit_reward(policy, ref, p, r, 0.3) for p, r in responses]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    per_token = implicit_rm.implicit_rewards(policy, ref_logps, responses, tokenizer, beta=0.3, per_token=True)
    assert per_token.tolist() == pytest.approx([w / len(r) for w, (_, r) in zip(want, responses)], abs=1e-4)  # IPO
    policy_logps = implicit_rm.log_likelihoods(policy, responses, tokenizer)
    assert implicit_rm.implicit_rewards(policy, policy_logps, responses, tokenizer, beta=0.3).abs().max() == 0.0
    pairs = [Pair(p, r, r) for p, r in responses]
    ref_pair_logps = implicit_rm.log_likelihoods(ref, pair_rows(pairs), tokenizer)
    assert implicit_rm.implicit_accuracy(policy, ref_pair_logps, pairs, tokenizer, 0.3) == 0.0  # a tie is not a win


def test_implicit_rm_cli_scores_both_reward_models(dpo_setup, tmp_path):
    rm, dpo = dpo_setup
    out = tmp_path / "implicit"
    proc = run_script("-m", "nanorl.implicit_rm", "--rm", str(rm), "--policy", f"dpo={dpo},{dpo}", "--shift", str(dpo),
                      "--n-prompts", "4", "--max-new-tokens", "24", "--out", str(out), env=ONE_THREAD)
    report = json.loads((out / "implicit_rm.json").read_text())
    assert set(report["accuracy"]) == {"global RM", "dpo (implicit)"}
    n_held_out = len(read_preferences(str(rm / "prefs_held_out.jsonl"),
                                      rundir.load_tokenizer(str(rm), "--rm"), 256))
    assert report["n_pairs"]["in distribution"] == n_held_out
    rm_eval = json.loads((rm / "eval.json").read_text())
    assert report["accuracy"]["global RM"]["in distribution"]["mean"] == pytest.approx(rm_eval["pair_accuracy"])
    implicit = report["accuracy"]["dpo (implicit)"]["in distribution"]
    assert implicit["std"] == 0.0 and 0.0 <= implicit["mean"] <= 1.0
    assert "| global RM |" in proc.stdout


def test_shifted_pairs_are_sampled_as_the_reward_model_run_sampled_its_own(dpo_setup, monkeypatch):
    rm, dpo = dpo_setup
    rm_args = json.loads((rm / "config.json").read_text())["args"]
    seen = {}
    monkeypatch.setattr(reward, "sample_pairs", lambda *a: seen.update(problems=a[2], settings=a[3]) or (["pair"], {}))
    tokenizer = rundir.load_tokenizer(str(rm), "--rm")
    args = argparse.Namespace(n_prompts=2, seed=0, max_new_tokens=None, rm=str(rm))
    implicit_rm.shifted_pairs(str(dpo), tokenizer, dict(rm_args, samples_per_prompt=3, gold="target"), args, "cpu")
    settings = vars(seen["settings"])
    assert [p.difficulty for p in seen["problems"]] == [1, 1]  # the RM's one-step problems (--max-difficulty 1)
    assert settings["samples_per_prompt"] == 3 and settings["gold"] == "target"
    assert settings["max_new_tokens"] == rm_args["max_new_tokens"]
    assert all(settings[k] == rm_args[k] for k in ("pairs_per_prompt", "sample_batch", "temperature", "quality_coef"))
    monkeypatch.setattr(reward, "sample_pairs", lambda *a: ([], {}))  # every sample of a prompt tied
    with pytest.raises(runtime.RunError, match="all its samples of each prompt got the same gold reward"):
        implicit_rm.shifted_pairs(str(dpo), tokenizer, rm_args, args, "cpu")


def test_offline_pairs_are_visited_in_an_order_the_seed_chooses():
    info, pairs = argparse.Namespace(rank=0, world_size=1), list(range(10))
    def epoch(seed):
        args = argparse.Namespace(prompts_per_step=4, seed=seed)
        return [x for step in range(2) for x in step_problems(pairs, step, args, info)[1]]
    assert len(set(epoch(1))) == 8  # two steps of 4 distinct pairs: no pair twice within an epoch
    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)  # seeds are seeds: DPO "seeds" are not copies
