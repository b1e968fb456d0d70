"""Tests for nanorl/runtime.py's input checks: the numeric argparse types and iter_jsonl."""

import argparse

import pytest

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
