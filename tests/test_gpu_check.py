"""The GPU check (recipes/gpu_check.sh) on a CPU: without a GPU it says so in one error line; with
--device cpu its checks' logic runs and each row of its table passes."""

import pytest
import torch

from conftest import run_script
from nanorl import gpu_check


def test_without_a_gpu_it_says_so():
    if torch.cuda.is_available():
        return
    proc = run_script("-m", "nanorl.gpu_check", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: no CUDA GPU on this machine: nothing to check (--device cpu runs the "
                                   "checks' logic here)")


def test_the_checks_pass_on_the_cpu(tmp_path, capsys):
    rows = gpu_check.main(["--device", "cpu", "--checks", "engine,logprobs,resume", "--out", str(tmp_path)])
    assert [(name, status) for name, status, _, _ in rows] == [("engine", "ok"), ("logprobs", "ok"), ("resume", "ok")]
    assert rows[0][2].startswith("equal tokens") and rows[1][2].startswith("ratio exactly 1")
    table = capsys.readouterr().out.split("\n| check (CPU")[1].splitlines()
    assert table[2].startswith("| engine | ok | equal tokens") and len(table) == 5


def test_a_failing_check_is_a_fail_row_and_exit_code_1(tmp_path, capsys, monkeypatch):
    def broken(args, work):
        raise gpu_check.RunError("engine and naive sampler differ at temperature 1.0")
    monkeypatch.setattr(gpu_check, "check_engine", broken)
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--device", "cpu", "--checks", "engine", "--out", str(tmp_path)])
    assert stop.value.code == 1
    assert "| engine | FAIL | engine and naive sampler differ at temperature 1.0 |" in capsys.readouterr().out
