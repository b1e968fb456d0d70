"""Shared fixtures: one tiny pretraining run reused by every test that needs a run directory."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

# Tests use tiny tensors: one thread avoids hand-off costs that dominate when the 2 cores are shared.
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args, check=True, timeout=300, env=None):
    """Run a top-level script (or `-m module`) from the repo root; returns the CompletedProcess."""
    cmd = [sys.executable, *args]
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    run_script("train_pretrain.py", "--preset", "test", "--out", str(out))
    return out


def sharp_gpt(**config):
    """A tiny random GPT with weights large enough that its distributions are far from uniform:
    at GPT-2's 0.02 init every distribution is nearly flat, top-k/top-p barely bite and greedy
    decoding just repeats the last token, so tests would prove little."""
    from nanorl.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(**config)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.wte.weight, std=0.5)
        for p in model.blocks.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.3)
    return model


def snapshot(root) -> dict[str, str]:
    """sha256 of every file under root, by relative path: to show that a run left others untouched."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out
