"""The plumbing every script shares: input checks (numeric flags, JSONL files), device and
dtype, seeding, torchrun/DDP, checkpoints, JSON files, logs and timing (run directories: rundir.py).

- Dtype: bf16 autocast on CUDA; fp32 on CPU, where autocast is many times slower without native
  bf16 matmuls (`python -m nanorl.bench --dtype bf16`). No fp16: it would need loss scaling.
- Checkpoints: written to a temporary file and renamed into place (atomic), loaded with weights_only=True.
"""

import argparse
import contextlib
import errno
import json
import math
import os
import random
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


class ArgumentParser(argparse.ArgumentParser):
    """argparse in the project's error style: a bad flag is one `error: ...` line and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class RunError(RuntimeError):
    """A problem with the user's inputs: printed as one clear line, no traceback needed."""


def run_cli(main):
    """Run a script's main(): a RunError exits 2 and an unhandled Ctrl-C exits 130, each with one line."""
    try:
        main()
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


class CtrlC:
    """Ctrl-C (SIGINT), or the SIGTERM a scheduler sends before it kills a job (SLURM preemption, a time
    limit, a Kubernetes eviction), only sets `pressed`: training stops after the step in progress, so the
    checkpoint holds whole steps. A second Ctrl-C stops at once. `requested` all-reduces so that
    torchrun's ranks agree on the step."""

    def __enter__(self):
        self.pressed, self.signal = False, None
        self.previous = {s: signal.signal(s, self._press) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _press(self, signum, frame):
        self.pressed, self.signal = True, signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        os.write(sys.stderr.fileno(), f"\n{self.signal}: stopping after this step and saving a checkpoint\n".encode())

    def requested(self, info: "Dist", device: str) -> bool:
        return all_reduce_sum(torch.tensor(float(self.pressed), device=device), info).item() > 0

    @property
    def exit_code(self) -> int:
        return 143 if self.signal == "SIGTERM" else 130  # 128 + the signal's number, as a shell reports it


def after_step(done: int, args, ctrl_c: CtrlC, info: "Dist", device: str, save, every: int | None = None):
    """After step `done`: save(done) every `every` steps, at --stop-after or a Ctrl-C, then exit at either."""
    stop = ctrl_c.requested(info, device)
    if (every and done % every == 0) or done == args.stop_after or stop:
        save(done)
    if stop:
        print0(f"interrupted ({ctrl_c.signal or 'another rank'}): saved {args.out}/ckpt.pt at step {done}; "
               f"continue with --resume", info=info)
        sys.exit(ctrl_c.exit_code)
    if done == args.stop_after:
        print0(f"stopped after step {done} (--stop-after); continue with --resume", info=info)
        sys.exit(0)


def lr_at(step: int, total: int, lr: float, warmup: int, decay: str = "cosine", min_frac: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then cosine or linear decay to min_frac * lr at step `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if decay == "linear":
        return lr * max(0.0, (total - step) / max(1, total - warmup))
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def apply_preset(args, presets: dict):
    """Fill every flag left at None with the value of the chosen --preset (explicit flags win)."""
    for key, value in presets[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


# argparse types: a bad count or rate is a one-line usage error (exit 2), not a traceback later

def _flag_value(text: str, kind, is_valid, what: str):
    value = kind(text)  # a ValueError here is reported by argparse as "invalid <helper> value"
    if not is_valid(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _flag_value(text, int, lambda v: v > 0, "a positive integer")


def non_negative_int(text: str) -> int:
    return _flag_value(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _flag_value(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    return _flag_value(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def check_heads(n_embd: int, n_head: int):
    """--n-embd must split into --n-head heads of an even size: rotary embeddings rotate pairs."""
    if n_embd % n_head or n_embd // n_head % 2:
        raise RunError(f"--n-embd {n_embd} does not split into --n-head {n_head} heads of an even size; "
                       f"e.g. --n-embd {n_head * 2 * max(1, round(n_embd / n_head / 2))}")


class DataError(RunError, ValueError):
    """A bad input file or data spec; the message names what and where (file and line)."""


def iter_jsonl(path: str):
    """Yield (where = "path, line N", row) per non-blank line; a line not UTF-8 or not JSON is a DataError."""
    try:
        f = open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}, line {lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is fine
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not valid UTF-8 ({e})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield where, row


def pick_device(name: str = "auto") -> str:
    """`name` after checking this machine has it; "auto" picks cuda, then mps, then cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RunError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices that torch can "
                       f"use; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RunError(f"--device {name}: MPS is not available here; use auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise RunError(f"--device {name}: nanorl runs on cpu, cuda or mps")
    return name


def pick_dtype(device: str, name: str = "auto") -> tuple[torch.dtype, str]:
    table = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if name != "auto":
        if name not in table:
            raise RunError(f"--dtype must be one of auto, {', '.join(table)}; got {name!r}")
        return table[name], "set by --dtype"
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16, "CUDA with bf16 support: bf16 autocast"
    return torch.float32, "fp32 on CPU/MPS: bf16 autocast is slower without native bf16 matmuls"


def autocast(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> tuple[Dist, str]:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA), if any; returns (Dist, this rank's device)."""
    if "RANK" not in os.environ:
        return Dist(), device
    info = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(device)
    # rank 0 evaluates alone while the others wait in a barrier: allow longer than the defaults (nccl 10 min)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=2))
    return info, device


def setup(args, note: str = "", distributed: bool = False) -> tuple[str, torch.dtype, Dist]:
    """A script's start: device (joining torchrun's group if `distributed`), dtype and seeds, said in one line."""
    device = pick_device(args.device)
    info, device = init_distributed(device) if distributed else (Dist(), device)
    dtype, why = pick_dtype(device, args.dtype)
    seed_everything(args.seed)
    print0(f"device {device} x{info.world_size} | dtype {str(dtype).replace('torch.', '')} ({why}){note}", info=info)
    return device, dtype, info


def barrier(info: Dist):
    if info.enabled:
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, info: Dist) -> torch.Tensor:
    """The sum over ranks, on value's device (nccl reduces CUDA tensors only: a CPU value goes via the GPU)."""
    if not info.enabled:
        return value
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else value.device
    total = value.to(on, copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(value.device)


def all_reduce_mean(value: torch.Tensor, info: Dist) -> torch.Tensor:
    """Mean over ranks (SUM then divide: gloo has no AVG)."""
    return all_reduce_sum(value, info) / info.world_size


def gather_objects(obj, info: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (e.g. each rank's RNG state for a checkpoint)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown_distributed(info: Dist):
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, info: Dist | None = None, **kwargs):
    if info is None or info.is_main:
        print(*args, **kwargs, flush=True)


def write_atomically(path: str, write):
    """write(tmp), then rename tmp to `path`, so that `path` is always whole: a crash leaves the previous
    version. An OSError (a full disk, a lost mount, no permission) removes tmp and is one RunError."""
    tmp = f"{path}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise write_error(path, err) from None


def write_error(path: str, err: OSError) -> RunError:
    return RunError(f"cannot write {path} ({err.strerror or err}); free space or fix the path, then continue "
                    f"with --resume from the last checkpoint")


def write_text(path: str, text: str):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    write_atomically(path, write)


def write_json(path: str, obj):
    write_text(path, json.dumps(obj, indent=2))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (main rank only)."""

    def __init__(self, path: str, enabled: bool = True, truncate: bool = True):
        self.path, self.enabled = path, enabled
        if enabled and truncate:
            write_text(path, "")

    def write(self, record: dict):
        if self.enabled:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as err:
                raise write_error(self.path, err) from None

    def drop_after(self, step: int):
        """Forget records past `step` (a resumed run logs them again) and a last line a kill cut short."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            lines = f.read().split("\n")
        kept = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                if i < len(lines) - 1:  # only the last line can be torn by a kill
                    raise DataError(f"{self.path}, line {i + 1}: invalid JSON") from None
                continue
            if record is not None and record.get("step", 0) <= step:
                kept.append(record)
        write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))


def format_line(record: dict) -> str:
    """A fixed-field log line: `step 120 | loss 1.2345 | lr 3.0e-04 | ...`."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.2e}"
        return str(v)
    return " | ".join(f"{k} {fmt(v)}" for k, v in record.items())


def rng_state() -> dict:
    """Every RNG's state, in types that torch.load(weights_only=True) accepts (lists, tensors)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, state: dict):
    def save(tmp):
        with open(tmp, "wb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as err:  # torch's zip writer reports a short write (a full disk) as its own error
                f.write(b"\0")
                f.flush()  # the OSError behind it, with its cause, if the disk is full
                raise OSError(errno.EIO, f"torch.save failed: {err}") from None
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a power cut leaves the old or the new file
    write_atomically(path, save)


def load_checkpoint(path: str) -> dict:
    """A checkpoint on the CPU (RNG states must be CPU byte tensors); weights_only, so it cannot run code."""
    if not os.path.exists(path):
        raise RunError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's zip reader and safe unpickler raise many types
        raise RunError(f"{path} is unreadable, truncated or corrupt ({str(err)[:120]}); "
                       f"start again with --overwrite") from None


def sync(device: str):
    """Wait for queued kernels, so wall-clock time covers the work and not just its launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)  # this device's queue, not the current one's (--device cuda:1)
    elif device == "mps":
        torch.mps.synchronize()


def timed(fn, device: str) -> float:
    import time
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure_peak_flops(device: str, dtype: torch.dtype, n: int | None = None, reps: int = 10) -> float:
    """Best FLOP/s of n x n matmuls (2 n^3 FLOPs each): the denominator of MFU on this machine."""
    n = n or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):  # warm-up: allocation and kernel selection
        a @ b
    return 2 * n ** 3 / min(timed(lambda: a @ b, device) for _ in range(reps))
