"""Every top-level script (and the benchmark) against a table of bad inputs: each must stop with exit code 2 and ONE
line starting with `error:`, print no traceback, and leave every run directory that existed
before byte-for-byte unchanged."""

import json
import os
import shutil

import pytest

from conftest import run_script, snapshot
from nanorl import rundir, runtime
from nanorl.reward import ScalarModel

LONG_QUESTION = "Tom has 3 apples. " * 200  # ~1000 tokens: longer than the test model's 256 context


@pytest.fixture(scope="module")
def world(tmp_path_factory, pretrained_run):
    """Run directories and files, good and broken, that the cases point at."""
    root = tmp_path_factory.mktemp("world")
    pre = root / "pre"
    shutil.copytree(pretrained_run, pre)
    for name in ("rm", "truncated", "no_tokenizer", "mismatch", "existing", "policy"):
        shutil.copytree(pre, root / name, ignore=shutil.ignore_patterns("data", "ckpt.pt"))
    edit_config(root / "rm", kind="rm")
    edit_config(root / "policy", kind="policy")
    shutil.copytree(root / "policy", root / "policy_ckpt")
    (root / "policy_ckpt" / "ckpt.pt").write_bytes((pre / "ckpt.pt").read_bytes())
    shutil.copytree(root / "rm", root / "rm_no_pairs")  # a loadable reward model without train_rm's ckpt.pt
    gpt, _, _ = rundir.load_policy(str(pre))
    runtime.save_checkpoint(str(root / "rm_no_pairs" / "model.pt"), ScalarModel.from_gpt(gpt).state_dict())
    model = (root / "truncated" / "model.pt").read_bytes()
    (root / "truncated" / "model.pt").write_bytes(model[:len(model) // 2])
    (root / "no_tokenizer" / "tokenizer.json").unlink()
    config = json.loads((root / "mismatch" / "config.json").read_text())
    edit_config(root / "mismatch", model={**config["model"], "vocab_size": config["model"]["vocab_size"] + 7})
    (root / "a_file").write_text("not a directory\n")
    (root / "empty.jsonl").write_text("")
    (root / "long.jsonl").write_text(json.dumps({"question": LONG_QUESTION, "answer": "#### 5"}) + "\n")
    (root / "prompts_dir").mkdir()
    return root


def edit_config(run, **changes):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **changes}))


PPO = ["train_ppo.py", "--preset", "test", "--algo", "grpo"]
RM = ["train_rm.py", "--preset", "test"]
PRE = ["train_pretrain.py", "--preset", "test"]
MDL = ["probe_mdl.py", "--preset", "smoke"]
RLP = ["rlp.py", "--preset", "test"]
BENCH = ["-m", "nanorl.bench"]
CASES = {  # name: (argv with {world paths}; --out defaults to a new directory, what the error line must say)
    "ppo: --out is --init": (PPO + ["--init", "{pre}", "--out", "{pre}"], "overlaps the input run"),
    "ppo: --out inside --init": (PPO + ["--init", "{pre}", "--out", "{pre}/sub"], "overlaps the input run"),
    "ppo: --out holds a run": (PPO + ["--init", "{pre}", "--out", "{existing}"], "--overwrite"),
    "ppo: --out is a file": (PPO + ["--init", "{pre}", "--out", "{a_file}"], "is an existing file"),
    "ppo: --out cannot be created": (PPO + ["--init", "{pre}", "--out", "{a_file}/run"], "cannot be created"),
    "ppo: --init missing": (PPO + ["--init", "{root}/nowhere"], "no such run directory"),
    "ppo: --init is a reward model": (PPO + ["--init", "{rm}"], "is a reward-model run (kind rm)"),
    "ppo: --init model.pt truncated": (PPO + ["--init", "{truncated}"], "model.pt is unreadable"),
    "ppo: --init lacks tokenizer.json": (PPO + ["--init", "{no_tokenizer}"], "lacks tokenizer.json"),
    "ppo: model/tokenizer mismatch": (PPO + ["--init", "{mismatch}"], "come from different runs"),
    "ppo: --rm is a pretrained model": (PPO + ["--init", "{pre}", "--reward", "rm", "--rm", "{pre}"],
                                        "--rm needs a reward-model run"),
    "ppo: --max-new-tokens beyond context": (PPO + ["--init", "{pre}", "--max-new-tokens", "10000"], "10000"),
    "ppo: --samples 1 with grpo": (PPO + ["--init", "{pre}", "--samples", "1"], "--samples"),
    "ppo: --samples 1 with online_dpo": (["train_ppo.py", "--preset", "test", "--algo", "online_dpo", "--init", "{pre}",
                                          "--samples", "1"], "--samples"),
    "ppo: --lr -1": (PPO + ["--init", "{pre}", "--lr", "-1"], "--lr"),
    "ppo: --prompts empty": (PPO + ["--init", "{pre}", "--prompts", "{empty_jsonl}"], "empty.jsonl"),
    "ppo: --prompts missing": (PPO + ["--init", "{pre}", "--prompts", "{root}/nope.jsonl"], "nope.jsonl"),
    "ppo: --prompts is a directory": (PPO + ["--init", "{pre}", "--prompts", "{prompts_dir}"], "prompts_dir"),
    "ppo: no prompt fits the context": (PPO + ["--init", "{pre}", "--prompts", "{long_jsonl}"], "long.jsonl"),
    "ppo: --resume without a checkpoint": (PPO + ["--init", "{pre}", "--resume"], "ckpt.pt not found"),
    "rm: --out is --init": (RM + ["--init", "{pre}", "--out", "{pre}"], "overlaps the input run"),
    "rm: --out holds a run": (RM + ["--init", "{pre}", "--out", "{existing}"], "--overwrite"),
    "rm: --init is a reward model": (RM + ["--init", "{rm}"], "is a reward-model run (kind rm)"),
    "rm: --init model.pt truncated": (RM + ["--init", "{truncated}"], "model.pt is unreadable"),
    "rm: --prefs empty": (RM + ["--init", "{pre}", "--prefs", "{empty_jsonl}"], "empty.jsonl"),
    "rm: --max-new-tokens beyond context": (RM + ["--init", "{pre}", "--max-new-tokens", "10000"], "10000"),
    "rm: --samples-per-prompt 0": (RM + ["--init", "{pre}", "--samples-per-prompt", "0"], "--samples-per-prompt"),
    "pretrain: --out holds a run": (PRE + ["--out", "{existing}"], "--overwrite"),
    "pretrain: --out is a file": (PRE + ["--out", "{a_file}"], "is an existing file"),
    "pretrain: mixture file missing": (PRE + ["--mixture", "omi2={root}/nope.jsonl:1"], "nope.jsonl"),
    "pretrain: --max-new-tokens beyond context": (PRE + ["--max-new-tokens", "300"], "--max-new-tokens"),
    "pretrain: --batch-size 0": (PRE + ["--batch-size", "0"], "--batch-size"),
    "pretrain: --device unknown": (PRE + ["--device", "gpu"], "--device 'gpu' is not a device"),
    "pretrain: --device absent": (PRE + ["--device", "cuda:99"], "--device cuda:99: this machine has"),
    "pretrain: heads of an odd size": (PRE + ["--n-embd", "60", "--n-head", "4"], "--n-embd 60 does not split"),
    "pretrain: --vocab-size below the bytes": (PRE + ["--vocab-size", "200"], "--vocab-size 200 must be at least"),
    "pretrain: prompt + --max-new-tokens beyond context": (PRE + ["--block-size", "64", "--max-new-tokens", "60"],
                                                           "--max-new-tokens 60 does not fit"),
    "pretrain: no validation window": (PRE + ["--block-size", "4096"], "validation tokens"),
    "pretrain: --overwrite a folder of runs": (PRE + ["--out", "{root}", "--overwrite"], "which holds the run directory"),
    "pretrain: --resume a policy run": (PRE + ["--out", "{policy_ckpt}", "--resume"], "--out needs a pretraining run"),
    "pretrain: --resume with other flags": (PRE + ["--out", "{pre}", "--resume", "--lr", "0.5"], "started with --lr 0.001"),
    "ppo: --resume a pretraining run": (PPO + ["--init", "{policy}", "--out", "{pre}", "--resume"],
                                        "--out needs a fine-tuned policy run"),
    "ppo: --sft-format with --prompts": (PPO + ["--init", "{pre}", "--algo", "sft", "--sft-format", "tinygsm",
                                                "--prompts", "{long_jsonl}"], "--sft-format"),
    "ppo: --algo ei with --reward rm": (PPO + ["--init", "{pre}", "--algo", "ei", "--reward", "rm", "--rm", "{rm}"],
                                        "--algo ei"),
    "mdl: --out is --init": (MDL + ["--init", "{pre}", "--out", "{pre}"], "overlaps the input run"),
    "mdl: --out holds a run": (MDL + ["--out", "{existing}"], "--overwrite"),
    "mdl: --init is a reward model": (MDL + ["--init", "{rm}"], "is a reward-model run (kind rm)"),
    "mdl: --init model.pt truncated": (MDL + ["--init", "{truncated}"], "model.pt is unreadable"),
    "mdl: unknown --targets": (MDL + ["--targets", "contains_1,contains_7"], "contains_7"),
    "mdl: --evidence out of range": (MDL + ["--evidence", "0,1.5"], "--evidence"),
    "mdl: --evidence not numbers": (MDL + ["--evidence", "0,lots"], "--evidence"),
    "mdl: --probe-n too small": (MDL + ["--probe-n", "5"], "--probe-n"),
    "mdl: --seeds 0": (MDL + ["--seeds", "0"], "--seeds"),
    "mdl: --resume without runs.jsonl": (MDL + ["--resume"], "runs.jsonl not found"),
    "bench: --device absent": (BENCH + ["--device", "cuda:99"], "--device cuda:99: this machine has"),
    "bench: heads of an odd size": (BENCH + ["--n-embd", "60", "--n-head", "4"], "--n-embd 60 does not split"),
    "bench: --new-tokens beyond context": (BENCH + ["--new-tokens", "300"], "exceeds --block-size 256"),
    "bench: --baseline not a checkout": (BENCH + ["--baseline", "{root}/nowhere"], "no nanorl/engine.py there"),
    "rlp: --init missing": (RLP + ["--init", "{root}/nowhere", "--rm", "{rm}", "--policy", "{policy}"],
                            "no such run directory"),
    "rlp: --policy is a pretraining run": (RLP + ["--init", "{pre}", "--rm", "{rm}", "--policy", "{pre}"],
                                           "--policy needs the RL policy"),
    "rlp: --rm is a pretrained model": (RLP + ["--init", "{pre}", "--rm", "{pre}", "--policy", "{policy}"],
                                        "--rm needs a reward-model run"),
    "rlp: --rm without its training pairs": (RLP + ["--init", "{pre}", "--rm", "{rm_no_pairs}", "--policy", "{policy}"],
                                             "ckpt.pt (the RM's training pairs D) is missing"),
    "rlp: --gamma above 1": (RLP + ["--init", "{pre}", "--rm", "{rm}", "--policy", "{policy}", "--gamma", "1.5"],
                             "--gamma"),
    "rlp: --samples-per-prompt 1": (RLP + ["--init", "{pre}", "--rm", "{rm}", "--policy", "{policy}",
                                           "--samples-per-prompt", "1"], "--samples-per-prompt"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_error_and_changes_nothing(world, tmp_path, case):
    argv, says = CASES[case]
    paths = {name.replace(".", "_"): str(world / name) for name in os.listdir(world)} | {"root": str(world)}
    argv = [arg.format(**paths) for arg in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    before = snapshot(world)
    proc = run_script(*argv, check=False, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], output[-2000:]
    assert snapshot(world) == before
