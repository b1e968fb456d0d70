"""Speed benchmark: sampling with the KV-cache engine vs naive recomputation, and training MFU.

On a randomly initialised GPT, after a warm-up: the machine's matmul peak (measured, so that MFU
means something on any CPU); training tokens/s and MFU = tokens/s * flops_per_token / peak; new
tokens/s of the engine against the naive sampler (EOS never sampled) and sample_mfu, a decode token
costing 2N plus attention over its mean context; one whole GRPO step, with a seeded coin as reward;
with --baseline DIR, this engine and that checkout's in fresh fp32 CPU processes, alternating for
--rounds rounds, engine_vs_baseline being the median ratio. See docs/engine/README.md.
"""

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nanorl import algos, runtime
from nanorl.engine import generate, naive_generate
from nanorl.gpt import GPT, GPTConfig, adamw
from nanorl.runtime import (RunError, autocast as autocast_context, check_heads, measure_peak_flops, non_negative_int,
                            pick_device, pick_dtype, positive_int, sync, timed)


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=positive_int, default=1024, help="model vocabulary (default: the tiny preset)")
    p.add_argument("--block-size", type=positive_int, default=256,
                   help="model context length; also the training length")
    p.add_argument("--n-layer", type=positive_int, default=4, help="transformer blocks")
    p.add_argument("--n-head", type=positive_int, default=4, help="attention heads")
    p.add_argument("--n-embd", type=positive_int, default=128, help="model width")
    p.add_argument("--batch", type=positive_int, default=64, help="prompts sampled together")
    p.add_argument("--prompt-len", type=positive_int, default=32, help="tokens per prompt")
    p.add_argument("--new-tokens", type=positive_int, default=128, help="tokens sampled per prompt")
    p.add_argument("--train-batch", type=positive_int, default=16, help="sequences of block_size per training step")
    p.add_argument("--train-steps", type=positive_int, default=5, help="timed training steps (after 2 warm-up steps)")
    p.add_argument("--grpo-prompts", type=positive_int, default=8, help="prompts per timed GRPO step")
    p.add_argument("--grpo-samples", type=positive_int, default=8, help="samples per prompt in the GRPO step")
    p.add_argument("--matmul-size", type=non_negative_int, default=0,
                   help="n of the n x n peak matmuls (0: 1024 on CPU, 8192 on GPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (auto: cuda > mps > cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 elsewhere")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward (training and sampling)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the random tokens and the sampler")
    p.add_argument("--baseline", default=None,
                   help="another nanorl checkout whose engine to time against this one, side by side (CPU)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="with --baseline: rounds of the side-by-side timing (more give a steadier median)")
    p.add_argument("--out", default="bench.json", help="where to write the results as JSON")
    return p.parse_args(argv)


def measure_train(model: GPT, args, device: str, autocast) -> float:
    model.train()
    optimizer = adamw(model, lr=1e-4, weight_decay=0.1)
    T = model.config.block_size
    x = torch.randint(model.config.vocab_size, (args.train_batch, T), device=device)
    y = torch.randint(model.config.vocab_size, (args.train_batch, T), device=device)

    def steps(n):
        for _ in range(n):
            with autocast:
                _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    steps(2)
    seconds = timed(lambda: steps(args.train_steps), device)
    model.eval()
    return args.train_steps * args.train_batch * T / seconds


def measure_sampling(model: GPT, args, device: str, autocast) -> tuple[float, float]:
    g = torch.Generator(device=device).manual_seed(args.seed)
    prompts = torch.randint(model.config.vocab_size, (args.batch, args.prompt_len), generator=g, device=device).tolist()
    settings = dict(eos_id=-1, pad_id=0, temperature=1.0)

    def run(sampler, new_tokens):
        generator = torch.Generator(device=device).manual_seed(args.seed)
        with autocast:
            return timed(lambda: sampler(model, prompts, new_tokens, generator=generator, **settings), device)

    rates = []
    for name, sampler, repeats in [("engine", generate, 3), ("naive", naive_generate, 1)]:
        run(sampler, 4)  # warm-up: a few steps are enough to allocate and pick kernels
        print(f"sampling with {name} ...", flush=True)
        rates.append(args.batch * args.new_tokens / min(run(sampler, args.new_tokens) for _ in range(repeats)))
    return rates[0], rates[1]


# Times the engine of whatever nanorl is importable from the working directory. It uses only what
# every version has had (GPT, GPTConfig, generate), so that it runs in an older checkout too.
ENGINE_TIMER = """
import json, sys, time, torch
import nanorl
from nanorl.engine import generate
from nanorl.gpt import GPT, GPTConfig
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(a["seed"])
model = GPT(GPTConfig(**a["model"])).eval()
prompts = torch.randint(a["model"]["vocab_size"], (a["batch"], a["prompt_len"])).tolist()
def seconds(new_tokens):
    generator = torch.Generator().manual_seed(a["seed"])
    start = time.perf_counter()
    generate(model, prompts, new_tokens, eos_id=-1, pad_id=0, temperature=1.0, generator=generator)
    return time.perf_counter() - start
seconds(4)
print(nanorl.__file__)
print(a["batch"] * a["new_tokens"] / min(seconds(a["new_tokens"]) for _ in range(3)))
"""


def engine_rate(root: Path, spec: str) -> float:
    out = subprocess.run([sys.executable, "-c", ENGINE_TIMER, spec], cwd=root, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 2:
        raise RunError(f"timing the engine in {root} failed:\n{out.stderr.strip() or out.stdout.strip()}")
    if not Path(lines[0]).resolve().is_relative_to(root):
        raise RunError(f"timing the engine in {root} imported nanorl from {lines[0]} instead")
    return float(lines[1])


def compare_with_baseline(args, config: GPTConfig) -> dict:
    spec = json.dumps(dict(model=config.to_dict(), threads=torch.get_num_threads(), seed=args.seed,
                           batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens))
    checkouts = {"this": Path(__file__).resolve().parents[1], "baseline": Path(args.baseline).resolve()}
    rates = {name: [] for name in checkouts}
    order = list(checkouts.items())
    for round_ in range(args.rounds):
        for name, root in order[::-1] if round_ % 2 else order:  # turn the order: no first-mover bias
            rates[name].append(engine_rate(root, spec))
    ratios = [this / base for this, base in zip(rates["this"], rates["baseline"])]
    return {"baseline": str(checkouts["baseline"]), "engine_vs_baseline": statistics.median(ratios),
            "engine_vs_baseline_rounds": ratios, "baseline_tokens_per_s": rates["baseline"],
            "this_tokens_per_s": rates["this"]}


def measure_grpo_step(model: GPT, args, device: str, autocast) -> dict:
    g = torch.Generator(device=device).manual_seed(args.seed)
    prompts = torch.randint(model.config.vocab_size, (args.grpo_prompts, args.prompt_len), generator=g,
                            device=device).tolist()
    policy = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    cfg = algos.RLConfig(temperature=1.0)

    def step():
        t0 = time.perf_counter()
        with autocast:
            gen = generate(policy, prompts, args.new_tokens, eos_id=-1, pad_id=0, n_samples=args.grpo_samples,
                           temperature=cfg.temperature, generator=g)
        t1 = time.perf_counter()
        correct = torch.randint(2, gen.ended.shape, generator=g, device=device).float()
        batch = algos.Rollout(gen, [], [], correct, args.grpo_samples, cfg.temperature, scores=correct)
        t2 = time.perf_counter()
        with autocast:
            algos.grpo_step(policy, None, optimizer, batch, cfg)
        sync(device)
        t3 = time.perf_counter()
        return {"sample_s": t1 - t0, "update_s": t3 - t2, "grpo_step_s": t3 - t0}

    step()  # warm-up
    return step()


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_heads(args.n_embd, args.n_head)
    if args.prompt_len + args.new_tokens > args.block_size:
        raise RunError(f"--prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} exceeds "
                       f"--block-size {args.block_size}; shorten one of them")
    device = pick_device(args.device)
    if args.baseline and not (Path(args.baseline) / "nanorl" / "engine.py").is_file():
        raise RunError(f"--baseline {args.baseline}: no nanorl/engine.py there; pass a nanorl checkout")
    if args.baseline and (device != "cpu" or args.dtype == "bf16"):
        raise RunError("--baseline times both engines in fp32 on the CPU; add --device cpu and leave --dtype")
    dtype, reason = pick_dtype(device, args.dtype)
    dtype_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    autocast = autocast_context(device, dtype)  # weights and optimizer state stay fp32, as in training
    print(f"device {device} | dtype {dtype_name} ({reason}) | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()}")

    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(device).eval()
    if args.compile:  # the engine and the training step both run the model through hidden_states
        model.hidden_states = torch.compile(model.hidden_states)

    print("peak: timing square matmuls ...", flush=True)
    peak = measure_peak_flops(device, dtype, args.matmul_size or None)
    print(f"training: {args.train_steps} steps of {args.train_batch}x{config.block_size} ...", flush=True)
    train_rate = measure_train(model, args, device, autocast)
    sample_rate, naive_rate = measure_sampling(model, args, device, autocast)
    print(f"grpo: one step of {args.grpo_prompts}x{args.grpo_samples}x{args.new_tokens} ...", flush=True)
    grpo = measure_grpo_step(model, args, device, autocast)
    decode_flops = model.flops_per_token(args.prompt_len + args.new_tokens / 2, training=False)
    baseline = {}
    if args.baseline:
        print(f"baseline: this engine and {args.baseline}'s, alternating ...", flush=True)
        baseline = compare_with_baseline(args, config)

    flops_per_token = model.flops_per_token(config.block_size)
    results = {
        "sample_tokens_per_s": sample_rate,
        "naive_tokens_per_s": naive_rate,
        "speedup": sample_rate / naive_rate,
        "sample_mfu": sample_rate * decode_flops / peak,
        **grpo,
        **baseline,
        "train_tokens_per_s": train_rate,
        "mfu": train_rate * flops_per_token / peak,
        "peak_flops": peak,
        "flops_per_token": flops_per_token,
        "num_params": model.num_params(),
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
        "dtype": dtype_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": config.to_dict(),
        "settings": vars(args),
    }
    rows = [
        ("params", f"{results['num_params'] / 1e6:.2f}M"),
        ("peak matmul", f"{peak / 1e9:.1f} GFLOP/s"),
        ("train tok/s", f"{train_rate:,.0f}"),
        ("train MFU", f"{100 * results['mfu']:.1f}%"),
        (f"engine tok/s ({args.batch}x{args.new_tokens})", f"{sample_rate:,.0f}"),
        ("naive tok/s", f"{naive_rate:,.0f}"),
        ("engine speedup", f"{results['speedup']:.1f}x"),
        ("sample MFU", f"{100 * results['sample_mfu']:.1f}%"),
        (f"GRPO step ({args.grpo_prompts}x{args.grpo_samples}x{args.new_tokens})", f"{grpo['grpo_step_s']:.2f} s"),
        ("  sampling", f"{grpo['sample_s']:.2f} s"),
        ("  update", f"{grpo['update_s']:.2f} s"),
    ] + ([("engine vs baseline", f"{baseline['engine_vs_baseline']:.2f}x")] if baseline else [])
    width = max(len(name) for name, _ in rows)
    for name, value in [("metric", "value")] + rows:
        print(f"| {name:<{width}} | {value:>14} |")
    runtime.write_json(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    runtime.run_cli(main)
