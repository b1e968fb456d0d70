"""Run directories: the only interface between the scripts, and the rules every script keeps
(docs/rundir/README.md has them in full).

A run directory holds config.json (with "kind" and "format"), tokenizer.json and model.pt, plus
what its script writes besides. The kinds are in KINDS. A loader per role checks the kind first;
a missing, corrupt or mismatched file is one RunError line naming it. `prepare_out` refuses an --out
that overlaps an input run, or already holds a run without --resume or --overwrite.
"""

import fcntl
import os
import shutil
import sys

import torch

from nanorl import runtime
from nanorl.gpt import GPT, GPTConfig
from nanorl.reward import ScalarModel
from nanorl.runtime import RunError
from nanorl.tokenizer import Tokenizer

FORMAT = 1  # bump when the layout of a run directory changes
KINDS = {  # kind: (the script that writes it, how a message names it)
    "pretrain": ("train_pretrain.py", "a pretraining run"),
    "rm": ("train_rm.py", "a reward-model run"),
    "policy": ("train_ppo.py", "a fine-tuned policy run"),
    "mdl": ("probe_mdl.py", "an extractability (MDL) run"),
}
MODEL_FILES = ("config.json", "tokenizer.json", "model.pt")


def kind_of(config: dict) -> str | None:
    return config.get("kind") if config.get("kind") in KINDS else None


def check_run(path: str, flag: str, kinds: tuple[str, ...], files=MODEL_FILES) -> dict:
    """The config of run directory `path` (given as `flag`), after checking it is one of `kinds` and holds `files`."""
    script, _ = KINDS[kinds[0]]
    if not os.path.exists(path):
        raise RunError(f"{flag} {path}: no such run directory; make one with `python {script} --out {path}`")
    if not os.path.isdir(path):
        raise RunError(f"{flag} {path} is a file, not a run directory")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise RunError(f"{flag} {path} has no config.json: not a run directory, or its run did not finish")
    try:
        config = runtime.read_json(os.path.join(path, "config.json"))
    except (OSError, ValueError) as err:
        raise RunError(f"{flag} {path}: config.json is unreadable ({err}); the run did not finish writing it, "
                       f"or it was edited by hand") from None
    kind = kind_of(config)
    if kind not in kinds:
        what = f"{KINDS[kind][1]} (kind {kind})" if kind else "a run directory of unknown kind"
        wanted = " or ".join(f"{KINDS[k][1]} (kind {k})" for k in kinds)
        raise RunError(f"{flag} {path} is {what}; {flag} needs {wanted}")
    missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
    if missing:
        raise RunError(f"{flag} {path} lacks {', '.join(missing)}; was `{KINDS[kind][0]}` run to completion there?")
    return config


def load_tokenizer(path: str, flag: str) -> Tokenizer:
    try:
        return Tokenizer.load(os.path.join(path, "tokenizer.json"))
    except Exception as err:  # the tokenizers library raises its own exception types
        raise RunError(f"{flag} {path}: tokenizer.json is unreadable ({str(err)[:120]}); copy it back from "
                       f"the run it came from, or re-run that script") from None


def load_policy(path: str, flag: str = "--init", device: str = "cpu", like: Tokenizer | None = None):
    """(GPT, tokenizer, config) of a pretrain or policy run, in eval mode; its tokenizer must be `like`, if given."""
    return _load(GPT, ("pretrain", "policy"), path, flag, device, like)


def load_reward_model(path: str, flag: str = "--rm", device: str = "cpu", like: Tokenizer | None = None):
    """(ScalarModel, tokenizer, config) of a reward-model run, in eval mode (`like`: as above)."""
    return _load(ScalarModel, ("rm",), path, flag, device, like)


def _load(model_class, kinds: tuple[str, ...], path: str, flag: str, device: str, like: Tokenizer | None):
    config = check_run(path, flag, kinds)
    tokenizer = load_tokenizer(path, flag)
    try:
        model_config = GPTConfig(**config["model"])
    except (KeyError, TypeError) as err:
        raise RunError(f"{flag} {path}: config.json has no valid \"model\" entry ({err})") from None
    if model_config.vocab_size != tokenizer.vocab_size:
        raise RunError(f"{flag} {path}: tokenizer.json has {tokenizer.vocab_size} tokens but the model expects "
                       f"{model_config.vocab_size}; tokenizer.json and model.pt come from different runs")
    if like is not None and tokenizer.to_json() != like.to_json():
        raise RunError(f"{flag} {path} uses another tokenizer than the run it is used with; train both from the "
                       f"same pretraining run")
    model = model_class(model_config)
    try:  # weights_only: model.pt can hold tensors only, never code
        state = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    except Exception as err:  # torch's zip reader and unpickler raise many types
        raise RunError(f"{flag} {path}: model.pt is unreadable, truncated or corrupt ({str(err)[:120]}); "
                       f"re-run the script that wrote it") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).splitlines()[0][:160]
        raise RunError(f"{flag} {path}: model.pt does not match the model in config.json ({first}); "
                       f"the two files come from different runs") from None
    return model.to(device).eval(), tokenizer, config


def save_model(path: str, model: torch.nn.Module, tokenizer: Tokenizer, config: dict, kind: str):
    """model.pt, tokenizer.json and config.json (stamped with kind and format) of a finished model."""
    runtime.save_checkpoint(os.path.join(path, "model.pt"), model.state_dict())
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    write_config(path, config, kind)


def write_config(path: str, config: dict, kind: str):
    runtime.write_json(os.path.join(path, "config.json"), {**config, "kind": kind, "format": FORMAT})


RESUME_MAY_CHANGE = {"out", "resume", "overwrite", "stop_after", "log_every", "device", "dtype"}


def check_resume(out: str, kind: str, args, may_change=RESUME_MAY_CHANGE, resume_file: str = "ckpt.pt",
                 world_size: int | None = None, lock: bool = True) -> dict:
    """The config of the run --resume continues, after checking it is a `kind` run holding `resume_file`,
    started with the flags `args` has now (but `may_change`) and on `world_size` processes, where given;
    then takes the run's lock (`lock`: under torchrun, rank 0 only)."""
    config = check_run(out, "--out", (kind,), files=(resume_file,))
    if world_size is not None and config.get("world_size", 1) != world_size:
        raise RunError(f"--resume: {out} ran on {config.get('world_size', 1)} processes, not {world_size}; "
                       f"resume it on as many")
    saved, now = config.get("args", {}), vars(args)
    changed = sorted(k for k in saved if k not in may_change and now.get(k) != saved[k])
    if changed:
        was = ", ".join(_as_flag(k, saved[k]) for k in changed)
        raise RunError(f"--resume: {out} was started with {was}; pass the same flags to resume it, or --overwrite "
                       f"to start again")
    if lock:
        _lock(out)
    return config


def _as_flag(name: str, value) -> str:
    """A saved flag as it is typed: "--lr 0.001", "--ei-restart", "without --prompts", "--evidence 0,0.5"."""
    flag = "--" + name.replace("_", "-")
    if value is None or value is False:
        return f"without {flag}"
    if value is True:
        return flag
    return f"{flag} {','.join(map(str, value)) if isinstance(value, list) else value}"


def _inside(inner: str, outer: str) -> bool:
    inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


LOCK = ".lock"  # flock'ed by the one process writing a run directory; the kernel frees it when that process ends
_held = []  # this process's locks: an open file holds its lock for the life of the process


def _refuse_if_locked(out: str):
    """One writer per run directory: a live process holding out/.lock is a RunError that names it. A lock
    left by a process that died (kill -9 included) is free again, so --resume is never blocked by it."""
    path = os.path.join(out, LOCK)
    if not os.path.exists(path) or any(f.name == path for f in _held):
        return
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"--out {out} is being written by another run ({f.read().strip() or 'a live process'}); "
                           f"wait for it to end, or pick a new --out") from None


def _lock(out: str):
    path = os.path.join(out, LOCK)
    if any(f.name == path and not f.closed for f in _held):
        return
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another run took it since _refuse_if_locked
        f.close()
        _refuse_if_locked(out)
        raise
    f.truncate(0)
    f.write(f"pid {os.getpid()}: {' '.join(sys.argv)}")
    f.flush()
    _held.append(f)


def prepare_out(out: str, inputs: list[str | None], resume: bool = False, overwrite: bool = False,
                resume_file: str = "ckpt.pt"):
    """Create --out and take its lock (--resume: check_resume takes it), after refusing every way it could destroy a
    run (docs/rundir/README.md)."""
    for run in filter(None, inputs):
        if _inside(out, run) or _inside(run, out):
            raise RunError(f"--out {out} overlaps the input run {run}; a script never writes into a run it "
                           f"reads: pick a new --out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"--out {out} is an existing file; give a directory path")
    if resume and overwrite:
        raise RunError("--resume continues --out and --overwrite replaces it: pass one of them")
    _refuse_if_locked(out)
    if resume and not os.path.exists(os.path.join(out, resume_file)):
        raise RunError(f"--resume: {out}/{resume_file} not found; start without --resume")
    if not resume and os.path.isdir(out) and set(os.listdir(out)) - {LOCK}:
        if not overwrite:
            raise RunError(f"--out {out} already holds a run; pass --resume to continue it, --overwrite to "
                           f"replace it, or pick a new --out")
        # --overwrite replaces one run's directory: never the working directory or a folder of runs
        if _inside(os.getcwd(), out):
            raise RunError(f"--overwrite would delete {out}, which holds the working directory; pick a new --out")
        for folder, _, files in os.walk(out):
            if folder != out and "config.json" in files:
                raise RunError(f"--overwrite would delete {out}, which holds the run directory {folder}; give the "
                               f"run's own directory as --out, or pick a new one")
        shutil.rmtree(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise RunError(f"--out {out} cannot be created ({err.strerror}); pick a writable path") from None
    if not resume:  # a resumed run is locked once check_resume has seen it is the right run
        _lock(out)
