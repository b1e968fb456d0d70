"""One command that checks the GPU path end to end and prints one table (recipes/gpu_check.sh,
docs/engine/README.md#gpu): about 5 minutes on one GPU.

    engine      the KV-cache engine equals naive_generate token for token (fp32; greedy and sampled)
    logprobs    under bf16 autocast, the recomputed old logprobs equal the update's forward (ratio 1)
    resume      pretraining stopped at step 2 and resumed equals the uninterrupted run
    bench       python -m nanorl.bench with --compile off and on: decode tokens/s and MFU
    bf16        a short tiny-preset pretraining, then 10 GRPO steps, in bf16 with --compile
    torchrun    GRPO under torchrun with nccl on 2 processes (skipped with fewer than 2 GPUs)

    python -m nanorl.gpu_check                          # on a machine with a CUDA GPU
    python -m nanorl.gpu_check --device cpu --checks engine,logprobs,resume   # the logic, on a CPU
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from nanorl import algos, runtime
from nanorl.engine import generate, naive_generate, token_logprobs
from nanorl.gpt import GPT, GPTConfig
from nanorl.runtime import RunError

CHECKS = ("engine", "logprobs", "resume", "bench", "bf16", "torchrun")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N; cpu runs the checks' logic without a GPU")
    p.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.add_argument("--out", default=None, help="directory for the runs (default: a temporary one)")
    args = p.parse_args(argv)
    args.checks = args.checks.split(",")
    if unknown := set(args.checks) - set(CHECKS):
        p.error(f"--checks: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CHECKS)}")
    return args


def script(*argv, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    if proc.returncode:
        last = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise RunError(f"{' '.join(argv[:2])} failed: {last[-1]}")
    return proc


def small_model(device) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=96, n_layer=2, n_head=2, n_embd=32)).to(device).eval()


def check_engine(args, work) -> str:
    model, prompts = small_model(args.device), [[1, 5, 9, 3], [2, 7], [4, 4, 4, 8, 1, 6]]
    for temperature in (0.0, 1.0):
        runs = [sampler(model, prompts, 48, eos_id=-1, pad_id=0, temperature=temperature,
                        generator=torch.Generator(device=args.device).manual_seed(1))
                for sampler in (generate, naive_generate)]
        if not torch.equal(runs[0].tokens, runs[1].tokens):
            raise RunError(f"engine and naive sampler differ at temperature {temperature}")
    gap = (runs[0].logprobs - runs[1].logprobs).abs().max().item()
    return f"equal tokens, greedy and sampled; logprobs within {gap:.1e}"


def check_logprobs(args, work) -> str:
    model = small_model(args.device)
    with runtime.autocast(args.device, torch.bfloat16):
        gen = generate(model, [[1, 5, 9, 3], [2, 7]], 32, eos_id=-1, pad_id=0, n_samples=4,
                       generator=torch.Generator(device=args.device).manual_seed(1))
        old = algos.old_logprobs(model, gen, 1.0)
        new = token_logprobs(model, gen, 1.0)
    if not torch.equal(old, new):
        raise RunError(f"bf16 recomputed logprobs differ from the update's by {(old - new).abs().max().item():.1e}")
    return f"ratio exactly 1; the sampler's own differ by {(gen.logprobs - old).abs().max().item():.1e}"


def check_resume(args, work) -> str:
    common = ["train_pretrain.py", "--preset", "test", "--device", args.device]
    script(*common, "--out", f"{work}/whole")
    script(*common, "--out", f"{work}/parts", "--stop-after", "2")
    script(*common, "--out", f"{work}/parts", "--resume")
    losses = [[r["loss"] for _, r in runtime.iter_jsonl(f"{work}/{run}/metrics.jsonl")] for run in ("whole", "parts")]
    if losses[0] != losses[1]:
        raise RunError(f"resumed losses {losses[1]} differ from {losses[0]}")
    return f"{len(losses[0])} losses equal to the uninterrupted run's"


def check_bench(args, work) -> str:
    cells = []
    for flags in ([], ["--compile"]):
        script("-m", "nanorl.bench", "--device", args.device, "--out", f"{work}/bench.json", *flags)
        result = json.load(open(f"{work}/bench.json"))
        cells.append(f"{'compiled' if flags else 'eager'}: decode {result['sample_tokens_per_s']:,.0f} tok/s, "
                     f"MFU {100 * result['mfu']:.1f}% (sampling {100 * result['sample_mfu']:.1f}%)")
    return "; ".join(cells)


def check_bf16(args, work) -> str:
    flags = ["--device", args.device, "--dtype", "bf16"]
    script("train_pretrain.py", "--max-steps", "200", "--compile", *flags, "--out", f"{work}/pretrain")
    script("train_ppo.py", "--init", f"{work}/pretrain", "--algo", "grpo", "--max-steps", "10", "--eval-every", "10",
           "--compile", *flags, "--out", f"{work}/grpo")
    result = json.load(open(f"{work}/grpo/eval.json"))
    return f"greedy pass@1 {result['before']['pass@1']:.3f} -> {result['after']['pass@1']:.3f}"


def check_torchrun(args, work) -> str:
    if torch.cuda.device_count() < 2:
        return "skipped: fewer than 2 GPUs"
    script("train_pretrain.py", "--preset", "test", "--device", "cuda", "--out", f"{work}/pre2")
    script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_ppo.py", "--preset", "test",
           "--init", f"{work}/pre2", "--algo", "grpo", "--device", "cuda", "--out", f"{work}/ddp")
    return "2 ranks, nccl: finished"


def main(argv=None) -> list[tuple[str, str, str, float]]:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("no CUDA GPU on this machine: nothing to check (--device cpu runs the checks' logic here)")
    work = args.out or tempfile.mkdtemp(prefix="gpu_check_")
    rows = []
    for name in args.checks:
        t0 = time.perf_counter()
        try:
            status, detail = "ok", globals()[f"check_{name}"](args, work)
        except (RunError, RuntimeError, AssertionError) as err:
            status, detail = "FAIL", str(err).splitlines()[0]
        rows.append((name, status, detail, time.perf_counter() - t0))
        print(f"{name}: {status} ({rows[-1][3]:.0f} s)", flush=True)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"\n| check ({name}, torch {torch.__version__}) | result | detail | seconds |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]:.0f} |")
    if any(status == "FAIL" for _, status, _, _ in rows):
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    runtime.run_cli(main)
