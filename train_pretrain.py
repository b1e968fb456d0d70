"""Stage 1: tokenizer + open-mixture corpus + GPT pretraining from scratch.

    python train_pretrain.py                          # tiny preset, on a CPU
    python train_pretrain.py --preset small --mixture "tinygsm=1,omi1=4,omi2=1,finemath=1"
    torchrun --nproc_per_node=2 train_pretrain.py     # DDP (gloo on CPU, nccl on CUDA)

Objective: next-token cross-entropy on documents `[BOS] question "\\n\\n" solution [EOS]`;
AdamW, linear warm-up to --lr, then cosine decay to --lr * --min-lr-frac.
Writes a run directory of kind "pretrain" (docs/rundir/README.md). Details: docs/pretrain/README.md.
"""

import argparse
import contextlib
import math
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from nanorl import data, evals, plots, rundir, runtime
from nanorl.gpt import GPT, GPTConfig, adamw
from nanorl.runtime import (RunError, non_negative_float, non_negative_int, positive_float, positive_int,
                            print0)
from nanorl.tasks import problem_set, prompt_room
from nanorl.tokenizer import MIN_VOCAB, Tokenizer

PRESETS = {
    # ~0.9M parameters; minutes on a 2-core CPU, evaluation included (docs/pretrain/README.md)
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=1024, batch_size=16,
                 max_steps=900, lr=3e-3, warmup_steps=100, docs_per_source=10000, max_new_tokens=128,
                 n_eval=300, eval_samples=4, eval_every=150),
    # ~5M parameters; for a laptop with patience or a small GPU
    "small": dict(n_layer=6, n_head=8, n_embd=256, block_size=256, vocab_size=2048, batch_size=32,
                  max_steps=5000, lr=2e-3, warmup_steps=200, docs_per_source=60000, max_new_tokens=128,
                  n_eval=800, eval_samples=8, eval_every=500),
    # the paper's 150M shape (d=768, 12 layers, 12 heads); for one GPU
    "gpu-150m": dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=8192, batch_size=64,
                     max_steps=20000, lr=6e-4, warmup_steps=1000, docs_per_source=400000, max_new_tokens=128,
                     n_eval=2000, eval_samples=16, eval_every=1000),
    # seconds; for the smoke tests
    "test": dict(n_layer=2, n_head=2, n_embd=32, block_size=256, vocab_size=300, batch_size=4, max_new_tokens=32,
                 max_steps=6, lr=1e-3, warmup_steps=2, docs_per_source=60, n_eval=8, eval_samples=4,
                 eval_every=3),
}


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=PRESETS, help="named size; other flags override it")
    p.add_argument("--out", default="runs/pretrain", help="run directory to write")
    p.add_argument("--mixture", default="tinygsm=1,omi1=1,omi2=1,finemath=1",
                   help="sources and repeat counts, e.g. 'tinygsm=1,omi1=4' or 'omi2=data/omi2.jsonl:2'")
    p.add_argument("--docs-per-source", type=positive_int, help="documents per unit weight of a synthetic source")
    p.add_argument("--vocab-size", type=positive_int, help="BPE vocabulary size (incl. bytes and special tokens)")
    p.add_argument("--n-layer", type=positive_int, help="transformer blocks")
    p.add_argument("--n-head", type=positive_int, help="attention heads")
    p.add_argument("--n-embd", type=positive_int, help="model width")
    p.add_argument("--block-size", type=positive_int, help="context length in tokens")
    p.add_argument("--batch-size", type=positive_int, help="sequences per micro-batch per rank")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps")
    p.add_argument("--lr", type=positive_float, help="peak learning rate")
    p.add_argument("--min-lr-frac", type=non_negative_float, default=0.1, help="final lr as a fraction of the peak")
    p.add_argument("--warmup-steps", type=non_negative_int, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.1, help="AdamW weight decay on matrices")
    p.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="max global gradient norm (0 = off)")
    p.add_argument("--eval-every", type=positive_int, help="steps between validation-loss evaluations")
    p.add_argument("--val-batches", type=positive_int, default=8, help="batches per source for validation loss")
    p.add_argument("--n-eval", type=positive_int, help="held-out problems for the final evaluation")
    p.add_argument("--eval-samples", type=positive_int, help="samples per problem for pass@k / sampled shares")
    p.add_argument("--eval-temperature", type=non_negative_float, default=0.7, help="temperature of sampled evaluation")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="longest generated solution")
    p.add_argument("--log-every", type=positive_int, default=1, help="steps between printed log lines")
    p.add_argument("--ckpt-every", type=positive_int, default=500, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=1337, help="seed for data, init and sampling")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 (autocast)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (static shapes)")
    p.add_argument("--resume", action="store_true", help="continue from --out/ckpt.pt exactly")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a run")
    p.add_argument("--stop-after", type=positive_int, default=None, help="save a checkpoint and exit after this step")
    args = p.parse_args(argv)
    runtime.apply_preset(args, PRESETS)
    runtime.check_heads(args.n_embd, args.n_head)
    if not MIN_VOCAB <= args.vocab_size < 2 ** 16:
        raise RunError(f"--vocab-size {args.vocab_size} must be at least {MIN_VOCAB} (3 special tokens and 256 "
                       f"bytes) and below 65536 (the token files hold uint16)")
    return args


# flags a --resume may change: they touch neither the weights nor the training loss, only evaluations
RESUME_MAY_CHANGE = rundir.RESUME_MAY_CHANGE | {"compile", "ckpt_every", "eval_every", "val_batches", "n_eval",
                                                "eval_samples", "eval_temperature", "max_new_tokens"}


def prepare_data(args, docs, info):
    """Tokenizer and token cache, built by rank 0 and reused by the others."""
    tok_path = os.path.join(args.out, "tokenizer.json")
    if info.is_main and not (args.resume and os.path.exists(tok_path)):
        sample = [d for texts in docs.values() for d in texts[:2000]]
        Tokenizer.train(sample, args.vocab_size).save(tok_path)
    runtime.barrier(info)
    tokenizer = Tokenizer.load(tok_path)
    if info.is_main:
        tokens = data.build_token_cache(docs, tokenizer, os.path.join(args.out, "data"), seed=args.seed)
    runtime.barrier(info)
    if not info.is_main:
        tokens = data.build_token_cache(docs, tokenizer, os.path.join(args.out, "data"), seed=args.seed)
    return tokenizer, tokens


def check_evaluable(args, tokenizer, tokens):
    """Fail before training, not after it, where the evaluations could not run."""
    again = "" if args.resume else f" ({args.out} holds this attempt's tokenizer: add --overwrite)"
    if not any(len(val) > args.block_size for val in tokens.val.values()):
        raise RunError(f"no source has more than --block-size {args.block_size} validation tokens to measure the "
                       f"loss on; raise --docs-per-source or lower --block-size{again}")
    prompt_room(tokenizer, problem_set("test", args.n_eval, seed=args.seed), args.max_new_tokens, args.block_size,
                "--block-size", again)


@torch.no_grad()
def val_losses(model, tokens, args, device, dtype) -> dict[str, float]:
    """Mean loss per source on fixed validation windows (same windows at every evaluation)."""
    model.eval()
    out = {}
    for source, val in tokens.val.items():
        if len(val) <= args.block_size:
            continue
        gen = torch.Generator().manual_seed(args.seed)
        losses = []
        for _ in range(args.val_batches):
            x, y = data.get_batch(val, args.batch_size, args.block_size, gen, device)
            with runtime.autocast(device, dtype):
                losses.append(model(x, y)[1].item())
        out[source] = sum(losses) / len(losses)
    model.train()
    return out


def save_state(args, model, optimizer, step, data_gen, info, config):
    """ckpt.pt (everything --resume needs, incl. every rank's RNG) and model.pt (weights only)."""
    states = runtime.gather_objects({"data_gen": data_gen.get_state(), "rng": runtime.rng_state()}, info)
    if info.is_main:
        runtime.save_checkpoint(os.path.join(args.out, "ckpt.pt"), {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "rank_states": states, "config": config})
        runtime.save_checkpoint(os.path.join(args.out, "model.pt"), model.state_dict())


def train(args, info, device, dtype, tokenizer, tokens, config):
    raw_model = GPT(GPTConfig(**config["model"])).to(device)
    optimizer = adamw(raw_model, args.lr, args.weight_decay)
    data_gen = torch.Generator().manual_seed(args.seed * 1000 + info.rank)
    start, log = 0, runtime.MetricsLog(os.path.join(args.out, "metrics.jsonl"), info.is_main, not args.resume)
    if args.resume:
        ckpt = runtime.load_checkpoint(os.path.join(args.out, "ckpt.pt"))  # flags checked in main
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        log.drop_after(start)
        data_gen.set_state(ckpt["rank_states"][info.rank]["data_gen"])
        runtime.set_rng_state(ckpt["rank_states"][info.rank]["rng"])
        print0(f"resuming from step {start}", info=info)
    model = torch.compile(raw_model) if args.compile else raw_model
    if info.enabled:
        model = DDP(model)
    peak = runtime.measure_peak_flops(device, dtype)
    tokens_per_step = args.batch_size * args.block_size * args.grad_accum * info.world_size
    flops_per_step = raw_model.flops_per_token(args.block_size) * tokens_per_step
    print0(f"model: {raw_model.num_params() / 1e6:.2f}M parameters | measured peak {peak / 1e9:.1f} GFLOP/s", info=info)

    bar = tqdm(range(start, args.max_steps), initial=start, total=args.max_steps, disable=not info.is_main,
               desc="pretrain", dynamic_ncols=True)
    with runtime.CtrlC() as ctrl_c:  # Ctrl-C stops between two steps: the checkpoint holds whole steps
        for step in bar:
            t0 = time.perf_counter()
            lr = runtime.lr_at(step, args.max_steps, args.lr, args.warmup_steps, min_frac=args.min_lr_frac)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(args.grad_accum):
                x, y = data.get_batch(tokens.train, args.batch_size, args.block_size, data_gen, device)
                sync = not info.enabled or micro == args.grad_accum - 1
                with (model.no_sync() if not sync else contextlib.nullcontext()), runtime.autocast(device, dtype):
                    loss = model(x, y)[1] / args.grad_accum
                    loss.backward()
                loss_sum += loss.item()
            loss_avg = runtime.all_reduce_mean(torch.tensor(loss_sum), info).item()  # every rank sees a NaN
            if not math.isfinite(loss_avg):
                raise RunError(f"loss became {loss_avg} at step {step}; lower --lr (now {args.lr}) or check the data")
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            record = {"step": step + 1, "loss": loss_avg, "lr": lr, "tok/s": int(tokens_per_step / dt),
                      "mfu": flops_per_step / dt / peak / info.world_size}
            if (step + 1) % args.eval_every == 0 or step + 1 == args.max_steps:
                record.update({f"val/{k}": v for k, v in val_losses(raw_model, tokens, args, device, dtype).items()})
            log.write(record)
            bar.set_postfix(loss=f"{loss_avg:.3f}")
            if (step + 1) % args.log_every == 0 or "val/" in " ".join(record):
                bar.write(runtime.format_line(record)) if info.is_main else None
            runtime.after_step(step + 1, args, ctrl_c, info, device,
                               lambda done: save_state(args, raw_model, optimizer, done, data_gen, info, config),
                               args.ckpt_every)
    save_state(args, raw_model, optimizer, args.max_steps, data_gen, info, config)
    return raw_model


def write_plots(args, metrics: list[dict], result: dict):
    steps = [m["step"] for m in metrics]
    val = {k[4:]: ([m["step"] for m in metrics if k in m], [m[k] for m in metrics if k in m])
           for k in sorted({k for m in metrics for k in m if k.startswith("val/")})}
    plots.lines(os.path.join(args.out, "loss.png"), {"train": (steps, [m["loss"] for m in metrics])},
                "Pretraining loss", "step", "cross-entropy (nats/token)", logy=True)
    plots.lines(os.path.join(args.out, "val_loss_by_source.png"), val,
                "Validation loss per source", "step", "cross-entropy (nats/token)", logy=True)
    n = result["n_eval"]
    plots.bars(os.path.join(args.out, "format_share.png"),
               {"greedy": result["format_share"], "sampled": result["sampled_format_share"]},
               f"Solution format chosen on {n} held-out problems", "share of answers")
    plots.bars(os.path.join(args.out, "pass_at_1.png"),
               {"greedy": result["pass@1_by_format"], "sampled": result["sampled_pass@1_by_format"]},
               f"Accuracy by solution format ({n} held-out problems)", "fraction correct")
    plots.bars(os.path.join(args.out, "pass_at_1_by_difficulty.png"),
               {"greedy pass@1": result["pass@1_by_difficulty"]},
               "Greedy pass@1 by difficulty (arithmetic steps)", "pass@1")


def main(argv=None):
    args = parse_args(argv)
    device, dtype, info = runtime.setup(args, distributed=True)
    if args.compile and device == "cpu":
        print0("note: --compile on CPU adds minutes of compilation for little gain", info=info)
    if args.max_new_tokens >= args.block_size:
        raise RunError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in --block-size "
                       f"{args.block_size}; lower it")
    docs = data.load_documents(data.parse_mixture(args.mixture), args.docs_per_source, args.seed)  # inputs first
    if info.is_main:
        rundir.prepare_out(args.out, [], args.resume, args.overwrite)
    runtime.barrier(info)
    if args.resume:  # on every rank: all stop with the same one-line error
        rundir.check_resume(args.out, "pretrain", args, RESUME_MAY_CHANGE, world_size=info.world_size,
                            lock=info.is_main)
    tokenizer, tokens = prepare_data(args, docs, info)
    check_evaluable(args, tokenizer, tokens)
    print0(f"corpus: {len(tokens.train):,} train tokens | vocab {tokenizer.vocab_size}", info=info)
    model_cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                          n_head=args.n_head, n_embd=args.n_embd)
    config = {"script": "train_pretrain.py", "args": vars(args), "model": model_cfg.to_dict(),
              "world_size": info.world_size, "data": {k: v for k, v in tokens.meta.items() if k != "key"}}
    if info.is_main:
        rundir.write_config(args.out, config, "pretrain")
    model = train(args, info, device, dtype, tokenizer, tokens, config)
    runtime.barrier(info)
    if not info.is_main:
        runtime.shutdown_distributed(info)
        return
    model.eval()
    val = val_losses(model, tokens, args, device, dtype)
    problems = problem_set("test", args.n_eval, seed=args.seed)
    print0(f"evaluating on {len(problems)} held-out problems ...")
    with runtime.autocast(device, dtype):
        result = evals.held_out_metrics(model, tokenizer, problems, n_samples=args.eval_samples,
                                temperature=args.eval_temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
        samples = evals.sample_completions(model, tokenizer, [p.question for p in problems[:8]],
                                           max_new_tokens=args.max_new_tokens)
    result = {"val_loss": sum(val.values()) / len(val), "val_loss_by_source": val, **result}
    runtime.write_json(os.path.join(args.out, "eval.json"), result)
    runtime.write_text(os.path.join(args.out, "samples.txt"), "".join(
        f"### {problem.question}\n[gold {problem.answer}]\n{text}\n\n" for problem, (text,) in zip(problems, samples)))
    metrics = [record for _, record in runtime.iter_jsonl(os.path.join(args.out, "metrics.jsonl"))]
    write_plots(args, metrics, result)
    print0(runtime.format_line({"val_loss": result["val_loss"], "pass@1": result["pass@1"],
                                f"pass@{result['k']}": result["pass@k"], "n_eval": result["n_eval"]}))
    print0("pass@1 by difficulty: " + runtime.format_line(result["pass@1_by_difficulty"]))
    print0("greedy format share:  " + runtime.format_line(result["format_share"]))
    print0("sampled format share: " + runtime.format_line(result["sampled_format_share"]))
    print0(f"wrote {args.out}/ (eval.json, samples.txt, *.png)")
    runtime.shutdown_distributed(info)


if __name__ == "__main__":
    runtime.run_cli(main)
