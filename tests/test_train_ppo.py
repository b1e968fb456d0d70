"""train_ppo.py end to end on the `test` preset: every --algo, the RM reward, resume and Ctrl-C,
the --out rules, prompt files, errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script, snapshot

from nanorl import algos, rundir, runtime, tasks, verifier
from nanorl.reward import gold_reward, score
import train_ppo

ALGOS = ["ppo", "grpo", "ei", "online_dpo", "dpo", "sft"]
LONG_QUESTION = "Tom has 3 apples. " * 100 + "How many apples does Tom have?"  # longer than the test model's context


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
        assert abs(sum(metrics[1][f"share/{f}"] for f in verifier.ALL_FORMATS) - 1) < 1e-9
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
                   "--preset", "test", "--out", str(out), "--max-steps", "2")
        config = json.loads((out / "config.json").read_text())
        assert config["rm"] == str(rm) and config["init"] == str(pretrained_run)
        step_one = read_metrics(out)[1]  # the samples of the initial policy: pi = pi_0
        assert step_one["sqrt_kl"] == 0.0 and step_one["kl_seq"] == 0.0
        assert 0.0 <= step_one["gold_reward"] <= 1.1
        assert (out / "overoptimisation.png").exists()


def test_reward_model_defaults_stop_before_over_optimisation():
    """--reward rm on the tiny preset: beta and steps from docs/rm's experiment; explicit flags win."""
    rm = ["--init", "runs/pretrain", "--reward", "rm", "--rm", "runs/rm"]
    args = train_ppo.parse_args(rm)
    assert (args.kl_coef, args.max_steps) == (0.1, 40)
    args = train_ppo.parse_args([*rm, "--kl-coef", "0", "--max-steps", "60"])
    assert (args.kl_coef, args.max_steps) == (0.0, 60)
    args = train_ppo.parse_args(["--init", "runs/pretrain"])  # the verifier's reward cannot be over-optimised
    assert (args.kl_coef, args.max_steps) == (0.0, 60)
    assert train_ppo.parse_args([*rm, "--preset", "gpu"]).max_steps == train_ppo.PRESETS["gpu"]["max_steps"]


def test_logged_gold_reward_is_the_gold_reward_of_the_samples(pretrained_run, tmp_path):
    """gold_stats' gold_reward is the mean of reward.gold_reward over the very samples the RM scored, and the
    policy that drew them is the reference at step 0 (KL exactly 0), not after updates."""
    rm = tmp_path / "rm"
    run_script("train_rm.py", "--init", str(pretrained_run), "--out", str(rm), "--preset", "test")
    args = train_ppo.parse_args(["--init", str(pretrained_run), "--reward", "rm", "--rm", str(rm), "--preset", "test",
                                 "--out", str(tmp_path / "unused"), "--prompts-per-step", "3", "--samples", "2"])
    info = runtime.Dist()
    run = train_ppo.load_run(args, info, "cpu")
    for step in range(3):
        _, problems = train_ppo.step_problems(run.pool, step, args, info)
        batch = train_ppo.sample(run, args, problems)
        batch.scores = score(run.reward_model, batch.gen)
        stats = train_ppo.gold_stats(run, args, batch, problems, info)
        algos.ppo_step(run.policy, run.ref, run.value, run.optimizer, batch, train_ppo.rl_config(args))
        lengths = batch.gen.mask.sum(1).tolist()
        naive = [gold_reward(text, problems[i // 2], lengths[i], bool(batch.gen.ended[i]), args.max_new_tokens,
                             args.quality_coef) for i, text in enumerate(batch.texts)]
        assert stats["gold_reward"] == pytest.approx(sum(naive) / len(naive), abs=1e-12)
        assert stats["sqrt_kl"] == pytest.approx(max(stats["kl_seq"], 0) ** 0.5)
        if step == 0:
            assert stats["kl_seq"] == 0.0
    assert stats["kl_seq"] != 0.0  # two updates later the policy has moved (a 6-sample estimate may be < 0)


def read_metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def read_metrics_safe(run) -> list[dict]:
    try:
        return read_metrics(run)
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line half-written
        return []


def test_ctrl_c_then_resume_gives_the_uninterrupted_run(pretrained_run, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # PPO (its missing-EOS penalty) changes the policy, value model and optimizer state at every step, so an
    # inexact resume shows; 12 steps of 4 prompts x 4 samples leave seconds to interrupt in, with evaluations
    # on both sides of the interruption
    common = ["--init", str(pretrained_run), "--algo", "ppo", "--preset", "test", "--max-steps", "12",
              "--eval-every", "4", "--prompts-per-step", "4", "--samples", "4", "--max-new-tokens", "64"]
    run_script("train_ppo.py", *common, "--out", str(whole))
    proc = subprocess.Popen([sys.executable, "train_ppo.py", *common, "--out", str(parts)], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(read_metrics_safe(parts)) < 2 and time.time() < deadline:  # wait until step 1 is logged
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    stopped_at = runtime.load_checkpoint(str(parts / "ckpt.pt"))["step"]
    assert 1 <= stopped_at < 12 and f"saved {parts}/ckpt.pt at step {stopped_at}" in stdout
    assert [m["step"] for m in read_metrics(parts)] == list(range(stopped_at + 1))  # whole steps only
    run_script("train_ppo.py", *common, "--out", str(parts), "--resume")
    expected, got = read_metrics(whole), read_metrics(parts)
    assert [m["step"] for m in got] == list(range(13))
    for a, b in zip(expected, got):
        assert set(a) == set(b), a["step"]
        for key in set(a) - {"time"}:
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["step"], key)


def test_out_equal_to_init_is_refused_and_init_stays_unchanged(pretrained_run):
    before = snapshot(pretrained_run)
    proc = run_script("train_ppo.py", "--init", str(pretrained_run), "--out", str(pretrained_run),
                      "--preset", "test", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: --out {pretrained_run} overlaps the input run")
    assert snapshot(pretrained_run) == before


def test_existing_out_needs_resume_or_overwrite(pretrained_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier run\n")
    args = ["train_ppo.py", "--init", str(pretrained_run), "--algo", "grpo", "--preset", "test", "--max-steps", "1",
            "--out", str(out)]
    proc = run_script(*args, check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "--overwrite" in proc.stderr
    assert os.listdir(out) == ["notes.txt"]
    run_script(*args, "--overwrite")
    assert not (out / "notes.txt").exists() and [m["step"] for m in read_metrics(out)] == [0, 1]
    assert json.loads((out / "config.json").read_text())["kind"] == "policy"


def test_init_must_be_a_language_model_run(pretrained_run, tmp_path):
    rm = tmp_path / "rm"
    shutil.copytree(pretrained_run, rm, ignore=shutil.ignore_patterns("data", "ckpt.pt"))
    config = json.loads((rm / "config.json").read_text())
    (rm / "config.json").write_text(json.dumps({**config, "kind": "rm"}))
    proc = run_script("train_ppo.py", "--init", str(rm), "--preset", "test", "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: --init {rm} is a reward-model run (kind rm); --init needs a pretraining run "
                           f"(kind pretrain) or a fine-tuned policy run (kind policy)\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("algo", ["grpo", "online_dpo", "dpo"])
def test_one_sample_per_prompt_is_refused_where_samples_are_compared(capsys, algo):
    with pytest.raises(SystemExit) as exit_info:
        train_ppo.parse_args(["--init", "runs/x", "--algo", algo, "--samples", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: --samples 1: --algo {algo} compares the responses")
    assert train_ppo.parse_args(["--init", "runs/x", "--algo", "ei", "--samples", "1"]).samples == 1


def gsm8k_line(question: str, answer: int) -> str:
    return json.dumps({"question": question, "answer": f"Some working.\n#### {answer}"})


def test_prompts_file_with_bom_and_crlf_loads_and_too_long_prompts_are_skipped(pretrained_run, tmp_path):
    prompts = tmp_path / "gsm8k.jsonl"
    lines = [gsm8k_line("Tom has 3 pens. He buys 2 more pens. How many pens does Tom have now?", 5),
             gsm8k_line(LONG_QUESTION, 3),
             gsm8k_line("Mia has 8 cards. She loses 2 cards. How many cards does Mia have now?", 6)]
    prompts.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    model, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    room = model.config.block_size - train_ppo.PRESETS["test"]["max_new_tokens"]
    args = train_ppo.parse_args(["--init", str(pretrained_run), "--preset", "test", "--prompts", str(prompts)])
    pool = train_ppo.training_prompts(args, tokenizer, room, runtime.Dist())
    assert [(p.question, p.answer) for p in pool] == [
        ("Tom has 3 pens. He buys 2 more pens. How many pens does Tom have now?", 5),
        ("Mia has 8 cards. She loses 2 cards. How many cards does Mia have now?", 6)]
    out = tmp_path / "out"
    proc = run_script("train_ppo.py", "--init", str(pretrained_run), "--algo", "grpo", "--preset", "test",
                      "--max-steps", "1", "--prompts", str(prompts), "--out", str(out))
    longest = len(tasks.encode_prompts(tokenizer, [LONG_QUESTION])[0])
    assert f"skipped 1 of 3 prompts longer than the {room} tokens --max-new-tokens 24 leaves (the longest has " \
           f"{longest})" in proc.stdout
    assert [m["step"] for m in read_metrics(out)] == [0, 1]


def test_no_prompt_that_fits_is_one_error_with_the_numbers(pretrained_run, tmp_path):
    prompts = tmp_path / "long.jsonl"
    prompts.write_text(gsm8k_line(LONG_QUESTION, 3) + "\n" + gsm8k_line(LONG_QUESTION + " Really?", 3) + "\n")
    proc = run_script("train_ppo.py", "--init", str(pretrained_run), "--preset", "test", "--prompts", str(prompts),
                      "--out", str(tmp_path / "out"), check=False)
    model, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    shortest = len(tasks.encode_prompts(tokenizer, [LONG_QUESTION])[0])
    assert proc.returncode == 2
    room = model.config.block_size - train_ppo.PRESETS["test"]["max_new_tokens"]
    assert proc.stderr == (f"error: --prompts {prompts}: none of its 2 prompts fits the context: the shortest is "
                           f"{shortest} tokens, and --max-new-tokens 24 leaves room for {room}; lower "
                           f"--max-new-tokens or give shorter prompts\n")
    assert not (tmp_path / "out").exists()


def test_clear_errors(pretrained_run, tmp_path):
    proc = run_script("train_ppo.py", "--init", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "no such run directory" in proc.stderr
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
