"""Tests for nanorl/runtime.py: the numeric argparse types, iter_jsonl, checkpoint loading and device sync."""

import argparse

import pytest
import torch

from nanorl import bench, runtime
from nanorl.runtime import DataError, iter_jsonl, non_negative_float, non_negative_int, positive_float, positive_int


@pytest.mark.parametrize("helper, text, expected", [
    (positive_int, "3", 3), (non_negative_int, "0", 0), (non_negative_int, "7", 7),
    (positive_float, "3e-4", 3e-4), (positive_float, "2", 2.0),
    (non_negative_float, "0", 0.0), (non_negative_float, "0.5", 0.5),
])
def test_numeric_flag_types_accept(helper, text, expected):
    assert helper(text) == expected and type(helper(text)) is type(expected)


@pytest.mark.parametrize("helper, text, why", [
    (positive_int, "0", "a positive integer"), (positive_int, "-2", "a positive integer"),
    (non_negative_int, "-1", "an integer >= 0"),
    (positive_float, "0", "a finite number > 0"), (positive_float, "-1e-3", "a finite number > 0"),
    (positive_float, "inf", "a finite number > 0"), (positive_float, "nan", "a finite number > 0"),
    (non_negative_float, "-0.1", "a finite number >= 0"), (non_negative_float, "nan", "a finite number >= 0"),
])
def test_numeric_flag_types_reject_with_a_message(helper, text, why):
    with pytest.raises(argparse.ArgumentTypeError, match=f"must be {why}, got {text}"):
        helper(text)


def test_numeric_flag_types_leave_non_numbers_to_argparse():
    # argparse turns a ValueError from a type into "invalid positive_int value: 'abc'"
    with pytest.raises(ValueError):
        positive_int("abc")
    with pytest.raises(ValueError):
        positive_int("1.5")


def test_bench_flags_use_them(capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--batch", "0"])
    assert e.value.code == 2
    assert "argument --batch: must be a positive integer, got 0" in capsys.readouterr().err
    assert bench.parse_args(["--matmul-size", "0"]).matmul_size == 0


def test_iter_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n[2]\n{"a": oops}\n')
    rows = iter_jsonl(str(path))
    assert next(rows) == (f"{path}, line 1", {"a": 1})
    assert next(rows) == (f"{path}, line 3", [2])  # blank lines are skipped
    with pytest.raises(DataError, match=f"{path}, line 4: invalid JSON"):
        next(rows)
    assert issubclass(DataError, runtime.RunError) and issubclass(DataError, ValueError)


def test_checkpoints_load_on_the_cpu_whatever_the_run_device(tmp_path, monkeypatch):
    """RNG and generator states must come back as CPU byte tensors (set_state refuses CUDA ones);
    load_state_dict moves weights to the model's device itself."""
    path = str(tmp_path / "ckpt.pt")
    generator = torch.Generator().manual_seed(5)
    runtime.save_checkpoint(path, {"rng": runtime.rng_state(), "generator": generator.get_state(), "w": torch.ones(2)})
    seen = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k["map_location"]) or load(*a, **k))
    state = runtime.load_checkpoint(path)
    assert seen == ["cpu"] and state["generator"].device.type == "cpu"
    expected = torch.rand(3, generator=generator)
    restored = torch.Generator()
    restored.set_state(state["generator"])
    assert torch.equal(torch.rand(3, generator=restored), expected)


def test_sync_waits_on_the_device_it_is_given(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    runtime.sync("cuda:1")
    runtime.sync("cpu")
    assert waited == ["cuda:1"]
