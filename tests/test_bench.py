"""Smoke test for nanorl/bench.py: a tiny run writes every result, positive and finite (no speed thresholds)."""

import json
import math
from pathlib import Path

import pytest

from nanorl import bench
from nanorl.runtime import RunError


TINY = ["--vocab-size", "64", "--block-size", "32", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
        "--batch", "4", "--prompt-len", "8", "--new-tokens", "8", "--train-batch", "2", "--train-steps", "1",
        "--matmul-size", "64", "--device", "cpu", "--seed", "3"]


def test_bench_writes_results(tmp_path, capsys):
    out = tmp_path / "bench.json"
    returned = bench.main(TINY + ["--out", str(out)])
    results = json.loads(out.read_text())
    assert results == returned
    for key in ["sample_tokens_per_s", "naive_tokens_per_s", "speedup", "train_tokens_per_s", "mfu", "peak_flops",
                "sample_mfu", "grpo_step_s", "sample_s", "update_s"]:
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert results["speedup"] == pytest.approx(results["sample_tokens_per_s"] / results["naive_tokens_per_s"])
    decode_flops = 2 * results["num_params"] + 4 * 1 * 16 * (8 + 8 / 2)  # forward + attention over the mean context
    assert results["sample_mfu"] == pytest.approx(results["sample_tokens_per_s"] * decode_flops / results["peak_flops"])
    assert results["sample_s"] + results["update_s"] <= results["grpo_step_s"]
    assert results["device"] == "cpu" and results["dtype"] == "fp32"
    assert results["settings"]["new_tokens"] == 8 and results["model"]["n_embd"] == 16
    assert "| engine speedup" in capsys.readouterr().out


def test_bench_rejects_too_long_sampling(tmp_path):
    with pytest.raises(RunError, match="block-size"):
        bench.main(TINY + ["--new-tokens", "30", "--out", str(tmp_path / "bench.json")])


def test_bench_baseline_times_both_engines_alternating(tmp_path):
    """This checkout against itself: --rounds 4, each ratio this / baseline, their median reported."""
    root = Path(bench.__file__).resolve().parents[1]
    results = bench.main(TINY + ["--baseline", str(root), "--rounds", "4", "--train-steps", "1", "--out", str(tmp_path / "b.json")])
    this, base = results["this_tokens_per_s"], results["baseline_tokens_per_s"]
    assert len(this) == len(base) == 4 and min(this + base) > 0
    assert results["engine_vs_baseline_rounds"] == pytest.approx([t / b for t, b in zip(this, base)])
    middle = sorted(results["engine_vs_baseline_rounds"])[1:3]
    assert results["engine_vs_baseline"] == pytest.approx(sum(middle) / 2)


def test_bench_baseline_must_be_a_checkout_timed_on_the_cpu(tmp_path, monkeypatch):
    with pytest.raises(RunError, match="no nanorl/engine.py"):
        bench.main(TINY + ["--baseline", str(tmp_path), "--out", str(tmp_path / "b.json")])
    root = str(Path(bench.__file__).resolve().parents[1])
    monkeypatch.setattr(bench, "measure_peak_flops", lambda *a, **k: pytest.fail("measured before refusing"))
    with pytest.raises(RunError, match="fp32 on the CPU"):
        bench.main(TINY + ["--baseline", root, "--dtype", "bf16", "--out", str(tmp_path / "b.json")])
    monkeypatch.setattr(bench, "pick_device", lambda choice: "cuda")
    with pytest.raises(RunError, match="fp32 on the CPU"):
        bench.main(TINY + ["--baseline", root, "--out", str(tmp_path / "b.json")])


def test_engine_rate_refuses_a_checkout_that_imports_another_nanorl(tmp_path):
    """An empty "checkout": python imports the installed nanorl instead (or none); either is refused."""
    (tmp_path / "nanorl").mkdir()
    spec = {"model": {"vocab_size": 64, "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
            "threads": 1, "seed": 0, "batch": 2, "prompt_len": 4, "new_tokens": 4}
    with pytest.raises(RunError, match="timing the engine in .*(imported nanorl from|failed)"):
        bench.engine_rate(tmp_path.resolve(), json.dumps(spec))
