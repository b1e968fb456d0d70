"""The GPU check (recipes/gpu_check.sh) on a CPU: without a GPU it says so in one error line; with
--device cpu its checks' logic runs and each row of its table passes."""

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
