"""One update function per algorithm, each reading top to bottom; the maths lives in rl.py.

    ppo_step         k1 KL folded into per-token rewards, score at EOS, GAE, whitening, then
                     epochs x minibatches of clipped policy + clipped value losses
    grpo_step        group-normalised advantages, clipped token objective + k3 KL in the loss
    ei_step          keep the verified-correct, de-duplicated samples, then SFT on them
    online_dpo_step  DPO on the best vs the worst sample of each prompt
    dpo_step         sigmoid / IPO loss on (chosen, rejected) rows against the frozen reference
    sft_step         cross-entropy on the response tokens only

The ratio's old logprobs are the sampler's own (equal to a recompute in fp32, tested), so the ratio
starts at exactly 1; under bf16 autocast they are recomputed. With beta = 0 no reference forward
runs. Under DDP every statistic an update normalises by is all-reduced; logged stats are rank means.
"""

from dataclasses import dataclass

import torch
from tqdm import tqdm

from nanorl import rl, verifier
from nanorl.engine import Generation, generate, pack, token_logprobs
from nanorl.reward import Pair, score
from nanorl.runtime import RunError
from nanorl.tasks import encode_prompts


@dataclass
class Rollout:
    gen: Generation
    texts: list[str]
    formats: list[str]
    correct: torch.Tensor   # (N,) float 1/0 by the verifier
    group_size: int
    temperature: float      # the sampling temperature (gen.logprobs are of that distribution)
    scores: torch.Tensor | None = None  # (N,) the reward the algorithm optimises, set by the caller


@dataclass
class RLConfig:
    temperature: float = 0.7
    kl_coef: float = 0.0
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    epochs: int = 2
    minibatches: int = 2
    micro_batch: int = 64
    ei_batch: int = 64
    grad_clip: float = 1.0
    missing_eos_penalty: float = 1.0
    aggregation: str = "dapo"
    dpo_beta: float = 0.1
    dpo_kind: str = "sigmoid"


def rollout(policy, tokenizer, problems, *, n_samples, temperature, max_new_tokens, generator) -> Rollout:
    """Sample n_samples responses per problem (adjacent rows), decode and verify them."""
    gen = generate(policy, encode_prompts(tokenizer, [p.question for p in problems]), max_new_tokens,
                   eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, n_samples=n_samples,
                   temperature=temperature, generator=generator)
    texts = tokenizer.decode_batch(gen.responses())
    extracted = [verifier.extract_answer(t) for t in texts]
    golds = [p.answer for p in problems for _ in range(n_samples)]
    correct = torch.tensor([float(ans == gold) for (_, ans), gold in zip(extracted, golds)],
                           device=gen.tokens.device)
    return Rollout(gen, texts, [fmt for fmt, _ in extracted], correct, n_samples, temperature)


def old_logprobs(policy, gen: Generation, temperature: float) -> torch.Tensor:
    """Logprobs of the sampling policy: the sampler's own in fp32 (exact, tested); under autocast a recompute
    the way the training forward will, so that every update starts at ratio exactly 1."""
    if not torch.is_autocast_enabled(gen.tokens.device.type):
        return gen.logprobs
    with torch.no_grad():
        return token_logprobs(policy, gen, temperature)


def _minibatches(n: int, count: int, generator=None):
    order = torch.randperm(n, generator=generator)
    return [chunk for chunk in order.chunk(count) if len(chunk)]


def _values(value_model, gen: Generation) -> torch.Tensor:
    """V(s_t) for each response token t: the value head read at the position before token t."""
    P = gen.prompt.size(1)
    return torch.where(gen.mask, value_model(*gen.sequences())[:, P - 1:-1], 0.0)


def _step(optimizer, params, grad_clip) -> float:
    """Clip, step, zero; returns the gradient norm before clipping. A NaN or infinite gradient stops
    the run before it reaches the weights (the next rollout would fail far from the cause)."""
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if not torch.isfinite(norm):
        raise RunError(f"the update's gradient norm is {float(norm)}: training diverged; start again "
                       f"(--overwrite) with a lower --lr")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def mean_stats(records: list[dict]) -> dict:
    return {k: sum(r[k] for r in records) / len(records) for k in records[0]}


def rank_mean(stats: dict, world_size: int, all_reduce) -> dict:
    """Per-step statistics averaged over ranks (every rank's mean weighs the same)."""
    if world_size == 1:
        return stats
    keys = sorted(stats)
    summed = all_reduce(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64))
    return {k: v / world_size for k, v in zip(keys, summed.tolist())}


def kl_to_reference(ref, batch: Rollout) -> float:
    """Mean k1 KL(sampling policy || reference) over the rollout's tokens: one no-grad forward of ref."""
    gen = batch.gen
    with torch.no_grad():
        ref_lp = token_logprobs(ref, gen, batch.temperature)
    return rl.masked_mean(rl.kl_k1(gen.logprobs, ref_lp), gen.mask).item()


def sequence_kl(policy, ref, batch: Rollout) -> torch.Tensor:
    """(N,) KL(pi || pi_0) of each sampled response: the sum of log pi - log pi_0 over its tokens, both
    recomputed, so it is exactly 0 while the policy equals the reference."""
    gen = batch.gen
    with torch.no_grad():
        return (token_logprobs(policy, gen, batch.temperature) - token_logprobs(ref, gen, batch.temperature)).sum(1)


def ppo_step(policy, ref, value_model, optimizer, batch: Rollout, cfg: RLConfig, world_size: int = 1,
             all_reduce=lambda t: t) -> dict:
    """One rollout's PPO update. Whitening and the loss's token mean span every rank (all_reduce
    sums over ranks; DDP averages gradients, so the loss is scaled back up by world_size)."""
    gen, T = batch.gen, cfg.temperature
    with torch.no_grad():
        old_lp = old_logprobs(policy, gen, T)
        # beta = 0: the KL reward vanishes, so skip the reference forward (k1 of old_lp against itself is 0)
        ref_lp = token_logprobs(ref, gen, T) if cfg.kl_coef else old_lp
        old_values = _values(value_model, gen)
        scores = rl.missing_eos_penalty(batch.scores, gen.ended, cfg.missing_eos_penalty)
        rewards = rl.ppo_token_rewards(scores, old_lp, ref_lp, gen.mask, cfg.kl_coef)
        advantages, returns = rl.gae(rewards, old_values, gen.mask, cfg.gamma, cfg.lam)
        advantages = rl.masked_whiten(advantages, gen.mask, all_reduce=all_reduce)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    records = []
    for _ in range(cfg.epochs):
        for rows in _minibatches(len(batch.scores), cfg.minibatches):
            total_tokens = all_reduce(gen.mask[rows].sum().float())
            stats = []
            for micro in rows.split(cfg.micro_batch):
                sub = gen[micro]
                new_lp, entropy = token_logprobs(policy, sub, T, with_entropy=True)
                pg_loss, pg_stats = rl.ppo_policy_loss(new_lp, old_lp[micro], advantages[micro], sub.mask, cfg.clip,
                                                       total_tokens)
                vf_loss, vf_stats = rl.ppo_value_loss(_values(value_model, sub), old_values[micro], returns[micro],
                                                      sub.mask, cfg.value_clip, total_tokens)
                ((pg_loss + cfg.vf_coef * vf_loss) * world_size).backward()
                stats.append({"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), **pg_stats, **vf_stats,
                              "entropy": rl.masked_mean(entropy.detach(), sub.mask).item()})
            # micro-batch losses are parts of one sum; x world_size so that the rank mean is the whole loss
            summed = {k: world_size * sum(s[k] for s in stats) for k in ("pg_loss", "vf_loss")}
            records.append({**mean_stats(stats), **summed, "grad_norm": _step(optimizer, params, cfg.grad_clip)})
    stats = mean_stats(records)
    if cfg.kl_coef:
        stats["kl_ref"] = rl.masked_mean(rl.kl_k1(old_lp, ref_lp), gen.mask).item()
    return rank_mean(stats, world_size, all_reduce)


def grpo_step(policy, ref, optimizer, batch: Rollout, cfg: RLConfig, world_size: int = 1,
              all_reduce=lambda t: t) -> dict:
    """One rollout's GRPO update. aggregation "dr_grpo" is the whole of Dr. GRPO: a constant normaliser
    AND advantages not divided by the group's std."""
    gen, T = batch.gen, cfg.temperature
    advantages = rl.group_advantages(batch.scores, batch.group_size, scale=cfg.aggregation != "dr_grpo")
    ref_lp = None
    if cfg.kl_coef:  # beta = 0 needs no reference model at all
        with torch.no_grad():
            ref_lp = token_logprobs(ref, gen, T)
    old_lp = old_logprobs(policy, gen, T)
    params = [p for p in policy.parameters() if p.requires_grad]
    records = []
    for _ in range(cfg.epochs):
        for rows in _minibatches(len(batch.scores), cfg.minibatches):
            # the normalisers count the whole minibatch, across micro-batches and ranks;
            # DDP averages gradients over ranks, so scale back up by world_size
            total_tokens = all_reduce(gen.mask[rows].sum().float())
            total_seqs = all_reduce(torch.tensor(float(len(rows))))
            stats = []
            for micro in rows.split(cfg.micro_batch):
                sub = gen[micro]
                new_lp, entropy = token_logprobs(policy, sub, T, with_entropy=True)
                loss, st = rl.grpo_loss(new_lp, old_lp[micro], None if ref_lp is None else ref_lp[micro],
                                        advantages[micro], sub.mask, cfg.clip, cfg.kl_coef, cfg.aggregation,
                                        total_tokens=total_tokens, total_seqs=total_seqs, max_len=gen.mask.size(1))
                (loss * world_size).backward()
                stats.append({**st, "entropy": rl.masked_mean(entropy.detach(), sub.mask).item()})
            records.append({**mean_stats(stats), "grad_norm": _step(optimizer, params, cfg.grad_clip)})
    stats = {**mean_stats(records), "adv_abs": advantages.abs().mean().item()}
    if ref_lp is not None:
        stats["kl_ref"] = rl.masked_mean(rl.kl_k1(old_lp, ref_lp), gen.mask).item()
    else:
        stats.pop("kl", None)  # the loss's k3 is 0 by construction without a reference
    return rank_mean(stats, world_size, all_reduce)


def sft_step(policy, optimizer, gen: Generation, cfg: RLConfig) -> dict:
    """One optimizer step of cross-entropy on the response tokens of `gen`, over micro-batches of
    cfg.micro_batch rows; every token weighs the same however the rows are split."""
    params = [p for p in policy.parameters() if p.requires_grad]
    total_tokens, loss_sum = gen.mask.sum(), 0.0
    for micro in torch.arange(len(gen.ended)).split(cfg.micro_batch):
        sub = gen[micro]
        loss = rl.sft_loss(token_logprobs(policy, sub, 1.0), sub.mask, total_tokens)
        loss.backward()
        loss_sum += loss.item()
    return {"sft_loss": loss_sum, "grad_norm": _step(optimizer, params, cfg.grad_clip)}


def dpo_step(policy, ref, optimizer, chosen: Generation, rejected: Generation, cfg: RLConfig) -> dict:
    """DPO on (chosen, rejected) rows, in micro-batches of cfg.micro_batch pairs, each weighed by its share
    of the pairs, so the gradient is the whole batch's."""
    def logps(model, gen):
        return rl.sequence_logprob(token_logprobs(model, gen, 1.0), gen.mask)
    n_pairs, records = len(chosen.ended), []
    for micro in torch.arange(n_pairs).split(cfg.micro_batch):
        c, r, share = chosen[micro], rejected[micro], len(micro) / n_pairs
        with torch.no_grad():
            ref_c, ref_r = logps(ref, c), logps(ref, r)
        loss, stats = rl.dpo_loss(logps(policy, c), logps(policy, r), ref_c, ref_r, cfg.dpo_beta, cfg.dpo_kind,
                                  c.mask.sum(1), r.mask.sum(1))
        (loss * share).backward()
        records.append({k: v * share for k, v in {"dpo_loss": loss.item(), **stats}.items()})
    params = [p for p in policy.parameters() if p.requires_grad]
    return {k: sum(r[k] for r in records) for k in records[0]} | {"grad_norm": _step(optimizer, params, cfg.grad_clip)}


def online_dpo_step(policy, ref, optimizer, batch: Rollout, cfg: RLConfig) -> dict:
    """Online DPO: DPO on the best vs the worst response of each prompt by score (no update if all tie)."""
    chosen, rejected = rl.best_worst_pairs(batch.scores, batch.group_size)
    if len(chosen) == 0:
        return {}
    return dpo_step(policy, ref, optimizer, batch.gen[chosen], batch.gen[rejected], cfg)


def ei_step(policy, optimizer, batch: Rollout, prompt_ids: list[int], cfg: RLConfig, tokenizer,
            restart: tuple[list, dict] | None = None) -> dict:
    """One Expert Iteration round: keep the verified-correct samples (one of each identical response to a
    prompt), then cfg.epochs passes of SFT over them in batches of cfg.ei_batch. restart = (everything kept
    so far, the base weights) (--ei-restart): SFT starts again from the base model on all of it."""
    rows = rl.dedupe_correct([prompt_ids[i // batch.group_size] for i in range(len(batch.texts))],
                             batch.gen.responses(), batch.correct.bool().tolist())
    kept = to_lists(batch, rows)
    if restart is not None:
        history, base_state = restart
        history += kept
        kept = history
        policy.load_state_dict(base_state)
        optimizer.state.clear()
    records = []
    for _ in range(cfg.epochs):
        order = torch.randperm(len(kept)).tolist()
        for chunk in range(0, len(kept), cfg.ei_batch):
            prompts, responses = zip(*[kept[i] for i in order[chunk:chunk + cfg.ei_batch]])
            rows = pack(prompts, responses, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                        device=batch.gen.tokens.device)
            records.append(sft_step(policy, optimizer, rows, cfg))
    return {**(mean_stats(records) if records else {}), "ei_kept": len(kept)}


# ----------------------------------------------------------------------------- data for the offline updates

def to_lists(batch: Rollout, rows) -> list[tuple[list[int], list[int]]]:
    """(prompt tokens, response tokens up to and including EOS) of the given rows, padding removed."""
    gen = batch.gen
    return [(gen.prompt[i][gen.prompt_mask[i]].tolist(), gen.tokens[i][gen.mask[i]].tolist()) for i in rows]


def sampled_pairs(policy, tokenizer, pool, args, generator, reward_model=None) -> list[Pair]:
    """DPO / SFT data without --prefs: pairs sampled once from the initial policy, the best vs the
    worst response of each prompt by reward."""
    pairs = []
    n_prompts = min(len(pool), args.prompts_per_step * args.max_steps)
    for start in tqdm(range(0, n_prompts, args.prompts_per_step), desc="offline pairs", leave=False):
        batch = rollout(policy, tokenizer, pool[start:start + args.prompts_per_step], n_samples=args.samples,
                        temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        generator=generator)
        batch.scores = batch.correct if reward_model is None else score(reward_model, batch.gen)
        chosen, rejected = rl.best_worst_pairs(batch.scores, batch.group_size)
        for (prompt, good), (_, bad) in zip(to_lists(batch, chosen.tolist()), to_lists(batch, rejected.tolist())):
            pairs.append(Pair(prompt, good, bad))
    if not pairs:
        raise RunError("no preference pairs: every prompt's samples got the same reward; raise --samples or "
                       "--temperature, start from a better-trained --init, or give --prefs FILE")
    return pairs
