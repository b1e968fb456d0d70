"""The README's two commands, and the recipes behind every table in docs/: each recipe line is one script
call with flags its parser accepts, and every run it reads is the --out of an earlier line of that recipe."""

import importlib
import os
import re
import shlex

import pytest

from conftest import ROOT

SCRIPTS = {"train_pretrain.py", "train_rm.py", "train_ppo.py", "rlp.py", "probe_mdl.py"}
RECIPES = sorted(name for name in os.listdir(os.path.join(ROOT, "recipes")) if name.endswith(".sh"))


def recipe_calls(name: str) -> list[tuple[str, list[str]]]:
    """(module, argv) of each `python script.py ...` or `python -m nanorl.x ...` line of a recipe."""
    calls = []
    for line in open(os.path.join(ROOT, "recipes", name)).read().splitlines():
        if line.startswith("python "):
            words = shlex.split(line)[1:]
            module, argv = (words[1], words[2:]) if words[0] == "-m" else (words[0][:-len(".py")], words[1:])
            calls.append((module, argv))
    return calls


def inputs(args) -> list[str]:
    """The run directories (or files inside them) a parsed call reads."""
    paths = []
    for flag in ("init", "rm", "policy", "shift_init", "shift", "prefs", "run"):
        value = getattr(args, flag, None)
        for item in value if isinstance(value, list) else [value]:
            paths += item[1] if isinstance(item, tuple) else [item] if item else []
    if getattr(args, "runs", None):  # nanorl.compare
        paths += [p for _, group in args.named for p in group] if args.named else args.runs
    return paths


def test_readme_has_the_two_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("<!-- pipeline command -->")[1].split("```bash")[1].split("```")[0]
    assert block.strip() == "pip install torch==2.13.0 -e . && bash recipes/pipeline.sh"
    block = text.split("<!-- test command -->")[1].split("```bash")[1].split("```")[0]
    assert block.strip() == 'pip install torch==2.13.0 -e ".[test]" && python -m pytest'
    assert len(text.splitlines()) <= 250 and not re.search(r"\b[0-9a-f]{7,40}\b", text)  # no commit hashes


def test_pipeline_runs_every_script():
    assert {module + ".py" for module, _ in recipe_calls("pipeline.sh")} == SCRIPTS


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_lines_parse_and_read_only_earlier_outputs(name):
    calls = recipe_calls(name)
    assert calls, f"{name} calls no script"
    written, prefix = [], "runs/" if name == "pipeline.sh" else f"runs/{name[:-len('.sh')]}/"
    for module, argv in calls:
        args = importlib.import_module(module).parse_args(argv)  # a bad flag exits
        for path in inputs(args):
            assert any(path == out or path.startswith(out + "/") for out in written), \
                f"{name}: {module} reads {path}, which no earlier line of the recipe writes"
        out = os.path.normpath(args.out)
        if not out.startswith("docs/"):  # results pages are written under docs/, runs under the recipe's prefix
            assert out.startswith(prefix), f"{name}: {module} writes {out}, outside {prefix}"
            written.append(out)


def test_every_docs_table_names_its_recipe():
    """Each experiment page links the recipe that makes its tables, and that recipe exists."""
    for page in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        path = os.path.join(ROOT, "docs", page, "README.md")
        if not os.path.exists(path) or page == "rundir":
            continue
        text = open(path).read()
        named = set(re.findall(r"recipes/([a-z_]+\.sh)", text))
        assert named, f"docs/{page} names no recipe"
        assert named <= set(RECIPES), f"docs/{page} names a recipe that does not exist: {named - set(RECIPES)}"
