"""The README's pipeline command runs recipes/pipeline.sh: every top-level script, each with flags its
parser accepts, in an order where every input run is an earlier step's --out."""

import importlib
import os
import shlex

from conftest import ROOT

SCRIPTS = {"train_pretrain.py", "train_rm.py", "train_ppo.py", "rlp.py", "probe_mdl.py"}


def pipeline_steps() -> list[list[str]]:
    text = open(os.path.join(ROOT, "recipes", "pipeline.sh")).read()
    return [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("python ")]


def test_readme_runs_the_pipeline_recipe():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("<!-- pipeline command -->")[1].split("```bash")[1].split("```")[0]
    assert block.strip() == "pip install torch==2.13.0 -e . && bash recipes/pipeline.sh"


def test_pipeline_runs_every_script_with_valid_flags_in_order():
    steps = pipeline_steps()
    assert {script for script, *_ in steps} == SCRIPTS
    written = set()
    for script, *argv in steps:
        args = importlib.import_module(script[:-len(".py")]).parse_args(argv)  # a bad flag exits
        for flag in ("init", "rm", "policy"):
            given = getattr(args, flag, None)
            if given is not None and f"--{flag}" in argv:
                assert given in written, f"{script} --{flag} {given} is not written by an earlier step"
        written.add(args.out)


def test_every_recipe_line_parses():
    """Each recipe is one script call per line: every flag is one its script's parser accepts."""
    recipes = sorted(os.listdir(os.path.join(ROOT, "recipes")))
    assert "overoptimisation.sh" in recipes
    for name in recipes:
        lines = open(os.path.join(ROOT, "recipes", name)).read().splitlines()
        calls = [shlex.split(line)[1:] for line in lines if line.startswith("python ") and ".py " in line]
        assert calls, name
        for script, *argv in calls:
            importlib.import_module(script[:-len(".py")]).parse_args(argv)
