"""Tests for nanorl/rl.py: each checks a number the maths fixes (see the module docstring)."""

import math

import pytest
import torch

from conftest import sharp_gpt
from nanorl import rl
from nanorl.engine import generate, pack, positions_of, token_logprobs

EOS, PAD = 2, 0


def prefix_mask(lengths: list[int], T: int) -> torch.Tensor:
    """(N, T) bool mask, row i True on its first lengths[i] columns (response tokens up to EOS)."""
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def with_garbage(x: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """x with its padded entries replaced by large random values and +-inf."""
    garbage = 1000 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    garbage.view(-1)[::3] = float("inf")
    garbage.view(-1)[1::3] = float("-inf")
    return torch.where(mask, x, garbage)


@pytest.fixture(scope="module")
def model():
    return sharp_gpt(vocab_size=40, block_size=64, n_layer=1, n_head=2, n_embd=16)


# ----------------------------------------------------------------------------- KL, statistics

def test_kl_estimators():
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(4, 7, generator=g) * 5
    assert torch.equal(rl.kl_k1(logprobs, logprobs), torch.zeros(4, 7))
    assert torch.equal(rl.kl_k3(logprobs, logprobs), torch.zeros(4, 7))
    ref = -torch.rand(4, 7, generator=g) * 5
    assert (rl.kl_k3(logprobs, ref) >= 0).all()
    assert (rl.kl_k1(logprobs, ref) < 0).any()  # k1 is unbiased but can be negative per token
    torch.testing.assert_close(rl.kl_k3(torch.tensor([-1.0]), torch.tensor([-2.0])), torch.tensor([math.exp(-1)]))


def test_whitening_ignores_padding():
    mask = prefix_mask([2, 5, 3], 5)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)) * 3 + 7
    white = rl.masked_whiten(x, mask)
    torch.testing.assert_close(white[mask].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(white[mask].std(), torch.tensor(1.0))  # unbiased, like masked_var
    assert (white[~mask] == 0).all()
    assert torch.equal(rl.masked_whiten(with_garbage(x, mask, 1), mask), white)
    torch.testing.assert_close(rl.masked_var(x, mask), x[mask].var())
    torch.testing.assert_close(rl.masked_mean(x, mask, dim=1), torch.stack([r[m].mean() for r, m in zip(x, mask)]))
    unshifted = rl.masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(unshifted[mask].mean(), x[mask].mean())


# ----------------------------------------------------------------------------- PPO rewards and GAE

def test_score_lands_at_last_masked_token():
    mask = prefix_mask([2, 4, 1], 4)  # row 1 is truncated: its last token is column 3
    g = torch.Generator().manual_seed(0)
    logprobs, ref = -torch.rand(3, 4, generator=g), -torch.rand(3, 4, generator=g)
    scores = torch.tensor([1.0, 2.0, 3.0])
    rewards = rl.ppo_token_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    kl_part = torch.where(mask, -0.1 * (logprobs - ref), 0.0)
    expected_score = torch.zeros(3, 4)
    expected_score[0, 1], expected_score[1, 3], expected_score[2, 0] = 1.0, 2.0, 3.0
    torch.testing.assert_close(rewards, kl_part + expected_score)
    assert (rewards[~mask] == 0).all()
    ended = torch.tensor([True, False, True])
    assert torch.equal(rl.missing_eos_penalty(scores, ended, 1.5), torch.tensor([1.0, 0.5, 3.0]))


def test_gae_terminal_reward_gives_constant_advantage():
    mask = prefix_mask([3, 5, 1], 6)
    rewards = torch.zeros(3, 6)
    rewards[0, 2], rewards[1, 4], rewards[2, 0] = 1.0, -2.0, 0.5
    advantages, returns = rl.gae(rewards, torch.zeros(3, 6), mask, gamma=1.0, lam=1.0)
    expected = torch.where(mask, torch.tensor([1.0, -2.0, 0.5])[:, None], 0.0)
    assert torch.equal(advantages, expected) and torch.equal(returns, expected)


def naive_gae(rewards, values, mask, gamma, lam):
    """Per-row Python loop straight from the definition; V after the last response token is 0."""
    advantages = torch.zeros_like(rewards)
    for i in range(rewards.size(0)):
        length, running = int(mask[i].sum()), 0.0
        for t in reversed(range(length)):
            next_value = values[i, t + 1].item() if t + 1 < length else 0.0
            delta = rewards[i, t].item() + gamma * next_value - values[i, t].item()
            running = delta + gamma * lam * running
            advantages[i, t] = running
    return advantages, torch.where(mask, advantages + values, 0.0)


def test_gae_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    mask = prefix_mask([7, 3, 1, 5], 7)
    rewards, values = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    advantages, returns = rl.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected_adv, expected_ret = naive_gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


# ----------------------------------------------------------------------------- padding counts nowhere

def every_loss(logprobs, old, ref, values, old_values, scores, mask):
    """Every output of rl.py for one batch, plus the gradient w.r.t. logprobs of each loss."""
    logprobs = logprobs.detach().requires_grad_()
    out = {}
    rewards = rl.ppo_token_rewards(scores, old, ref, mask, kl_coef=0.05)
    advantages, returns = rl.gae(rewards, old_values, mask, gamma=0.9, lam=0.95)
    out["rewards"], out["returns"], out["advantages"] = rewards, returns, rl.masked_whiten(advantages, mask)
    advantages = torch.where(mask, advantages, 1e6)  # garbage in the padding here too
    losses = {"ppo": rl.ppo_policy_loss(logprobs, old, advantages, mask),
              "value": rl.ppo_value_loss(values, old_values, returns, mask)}
    for mode in rl.AGGREGATIONS:
        losses[mode] = rl.grpo_loss(logprobs, old, ref, scores, mask, kl_coef=0.1, aggregation=mode)
    losses["sft"] = rl.sft_loss(logprobs, mask), {}
    out["seq"] = rl.sequence_logprob(logprobs, mask)
    for name, (loss, stats) in losses.items():
        out[name], out[name + "_stats"] = loss, stats
        if loss.requires_grad:
            out[name + "_grad"], = torch.autograd.grad(loss, logprobs)
    return out


def test_random_padding_after_eos_changes_nothing():
    g = torch.Generator().manual_seed(0)
    mask = prefix_mask([2, 6, 4, 1], 6)
    logprobs, old, ref = (-torch.rand(4, 6, generator=g) * 3 for _ in range(3))
    values, old_values = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    scores = torch.tensor([1.0, 0.0, 0.5, -1.0])
    clean = every_loss(logprobs, old, ref, values, old_values, scores, mask)
    inputs = [logprobs, old, ref, values, old_values]
    dirty = every_loss(*(with_garbage(x, mask, seed) for seed, x in enumerate(inputs)), scores, mask)
    assert clean.keys() == dirty.keys() and len(clean) == 21
    for key in clean:
        if key.endswith("_stats"):
            assert clean[key] == dirty[key], key
        else:
            assert torch.equal(clean[key], dirty[key]), key
            assert clean[key].isfinite().all(), key
    assert (clean["ppo_grad"][~mask] == 0).all() and (clean["ppo_grad"][mask] != 0).any()


# ----------------------------------------------------------------------------- PPO losses

def test_ppo_clip_zeroes_gradient_outside_the_trust_region():
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1, 0.9]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]])
    old = torch.full((1, 6), -2.0)
    logprobs = (old + ratio.log()).requires_grad_()
    mask = torch.ones(1, 6, dtype=torch.bool)
    loss, stats = rl.ppo_policy_loss(logprobs, old, adv, mask, clip=0.2)
    loss.backward()
    # d/dlogp of -A rho / 6 is -A rho / 6 where unclipped; 0 where the clipped term is active:
    # rho > 1+eps with A > 0 (col 0) and rho < 1-eps with A < 0 (col 3).
    expected = torch.tensor([[0.0, 1.5, -0.5, 0.0, -1.1, 0.9]]) / 6
    torch.testing.assert_close(logprobs.grad, expected)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 1.5 - 0.5 + 0.8 - 1.1 + 0.9) / 6))
    assert stats["clipfrac"] == pytest.approx(2 / 6)
    assert stats["ratio_mean"] == pytest.approx(ratio.mean().item())


def test_single_pass_loss_is_zero_but_gradient_is_not():
    g = torch.Generator().manual_seed(0)
    mask = prefix_mask([3, 5, 2], 5)
    old = -torch.rand(3, 5, generator=g) * 3
    advantages = rl.masked_whiten(torch.randn(3, 5, generator=g), mask)
    logprobs = old.clone().requires_grad_()  # mu = 1: the policy has not moved yet, rho = 1
    loss, stats = rl.ppo_policy_loss(logprobs, old, advantages, mask)
    loss.backward()
    assert abs(loss.item()) < 1e-6 and stats["approx_kl"] == 0 and stats["ratio_mean"] == 1
    assert logprobs.grad.norm() > 0.1


def test_value_loss_clipping():
    values, old_values, returns = torch.tensor([[1.0, 0.1]]), torch.zeros(1, 2), torch.tensor([[2.0, 0.5]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = rl.ppo_value_loss(values, old_values, returns, mask, clip=0.2)
    # token 0: max((1-2)^2, (0.2-2)^2) = 3.24 (clipped); token 1: (0.1-0.5)^2 = 0.16 both ways
    torch.testing.assert_close(loss, torch.tensor(0.5 * (3.24 + 0.16) / 2))
    assert stats["vf_clipfrac"] == 0.5
    mask = prefix_mask([3, 2], 3)
    returns = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    _, stats = rl.ppo_value_loss(returns, returns, returns, mask)
    assert stats["explained_variance"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- GRPO

def test_group_advantages():
    adv = rl.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1]), group_size=4)
    std = 0.5  # unbiased std of (1, 0, 0, 0)
    torch.testing.assert_close(adv[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4))  # all equal: exactly 0
    torch.testing.assert_close(rl.group_advantages(torch.tensor([3.0, 1.0]), 2, scale=False), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="groups of 3"):
        rl.group_advantages(torch.zeros(4), group_size=3)


@pytest.mark.parametrize("aggregation", rl.AGGREGATIONS)
def test_grpo_equal_rewards_give_zero_gradient(aggregation):
    g = torch.Generator().manual_seed(0)
    rewards = torch.tensor([0.3, 0.3, 0.3, 1.0, 0.0, 1.0])  # group 0 all equal, group 1 not
    advantages = rl.group_advantages(rewards, group_size=3)
    mask = prefix_mask([4, 2, 5, 3, 5, 1], 5)
    old = -torch.rand(6, 5, generator=g) * 3
    logprobs = (old + 0.1 * torch.randn(6, 5, generator=g)).requires_grad_()  # rho != 1
    loss, _ = rl.grpo_loss(logprobs, old, None, advantages, mask, aggregation=aggregation)
    loss.backward()
    assert torch.equal(advantages[:3], torch.zeros(3))
    assert (logprobs.grad[:3] == 0).all()
    assert (logprobs.grad[3:][mask[3:]] != 0).all()


def test_aggregations_by_hand():
    per_token = torch.tensor([[2.0, 9.0, 9.0, 9.0], [1.0, 1.0, 1.0, 9.0]])
    mask = prefix_mask([1, 3], 4)
    assert rl.aggregate(per_token, mask, "dapo").item() == pytest.approx(5 / 4)
    assert rl.aggregate(per_token, mask, "dapo", total_tokens=10).item() == pytest.approx(5 / 10)
    assert rl.aggregate(per_token, mask, "grpo").item() == pytest.approx((2 + 1) / 2)
    assert rl.aggregate(per_token, mask, "grpo", total_seqs=6).item() == pytest.approx((2 + 1) / 6)
    assert rl.aggregate(per_token, mask, "dr_grpo").item() == pytest.approx(5 / (2 * 4))
    assert rl.aggregate(per_token, mask, "dr_grpo", max_len=10, total_seqs=4).item() == pytest.approx(5 / 40)
    with pytest.raises(ValueError, match="unknown aggregation"):
        rl.aggregate(per_token, mask, "mean")
    with pytest.raises(ValueError, match="ref_logprobs"):  # a KL penalty without a reference model
        rl.grpo_loss(per_token, per_token, None, torch.ones(2), mask, kl_coef=0.1)


PROMPTS = [[1, 3, 4], [5, 6], [7, 8, 9, 10, 11], [12], [13, 14, 15, 16], [17, 18]]
RESPONSES = [[20, 21], [22, 23, 24, 25, 26], [27], [28, 29, 30], [31, 32, 33, 34, 35, 36, 37], [38, 39]]
MICRO = [[0, 1], [2, 3, 4], [5]]  # uneven micro-batches, each packed to its own widths


def accumulated_grads(model, chunks, loss_fn) -> list[torch.Tensor]:
    """Parameter gradients after backward() of loss_fn on each chunk of rows (gradient accumulation)."""
    model.zero_grad()
    for rows in chunks:
        gen = pack([PROMPTS[i] for i in rows], [RESPONSES[i] for i in rows], eos_id=EOS, pad_id=PAD)
        loss_fn(token_logprobs(model, gen), gen.mask, rows).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def rollout(model):
    """Old and reference logprobs (N, T) of the whole batch, nudged so ratios clip, and advantages."""
    g = torch.Generator().manual_seed(0)
    whole = pack(PROMPTS, RESPONSES, eos_id=EOS, pad_id=PAD)
    with torch.no_grad():
        logprobs = token_logprobs(model, whole)
    old = logprobs + 0.3 * torch.randn(logprobs.shape, generator=g)
    ref = logprobs + 0.3 * torch.randn(logprobs.shape, generator=g)
    advantages = rl.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0]), group_size=3)
    return old, ref, advantages, int(whole.mask.sum())


WHOLE = [list(range(6))]


def grpo_fn(rollout, scale: float = 1.0, **kwargs):
    """A micro-batch's GRPO loss (times `scale`) on rows `rows` of the rollout, for accumulated_grads."""
    old, ref, advantages, _ = rollout

    def loss_fn(logprobs, mask, rows):
        T = mask.size(1)  # responses are right-padded: column t is token t in every packing
        loss, _ = rl.grpo_loss(logprobs, old[rows, :T], ref[rows, :T], advantages[rows], mask,
                               kl_coef=0.05, **kwargs)
        return scale * loss
    return loss_fn


def grads_close(a, b) -> bool:
    return all(torch.allclose(x, y, rtol=1e-4, atol=1e-7) for x, y in zip(a, b))


def test_dapo_gradient_is_invariant_to_micro_batching(model, rollout):
    total_tokens = rollout[3]
    whole = accumulated_grads(model, WHOLE, grpo_fn(rollout, aggregation="dapo"))
    micro = accumulated_grads(model, MICRO, grpo_fn(rollout, aggregation="dapo", total_tokens=total_tokens))
    assert sum(g.norm() for g in whole) > 1e-3
    assert grads_close(whole, micro)


def test_grpo_and_local_token_mean_are_not_invariant(model, rollout):
    """The usual gradient-accumulation recipe (each micro-batch normalised by itself, the losses
    averaged over micro-batches) changes the gradient, for "grpo" and for a per-micro-batch token
    mean (the historic bug that "dapo" + total_tokens fixes)."""
    whole = {mode: accumulated_grads(model, WHOLE, grpo_fn(rollout, aggregation=mode)) for mode in ("grpo", "dapo")}
    for mode in ("grpo", "dapo"):
        local = accumulated_grads(model, MICRO, grpo_fn(rollout, 1 / len(MICRO), aggregation=mode))
        assert not grads_close(whole[mode], local), mode
    # "grpo" divides by sequences, not tokens: only the whole batch's total_seqs makes it split-invariant,
    # and even then it weighs tokens differently from "dapo" (a short response's tokens weigh more).
    global_seqs = accumulated_grads(model, MICRO, grpo_fn(rollout, aggregation="grpo", total_seqs=6))
    assert grads_close(whole["grpo"], global_seqs)
    assert not grads_close(whole["grpo"], whole["dapo"])


# ----------------------------------------------------------------------------- temperature

def test_recomputed_logprobs_match_sampler_only_at_its_temperature(model):
    gen = generate(model, PROMPTS, 8, eos_id=EOS, pad_id=PAD, n_samples=2, temperature=0.7,
                   generator=torch.Generator().manual_seed(0))
    at_07, at_10 = token_logprobs(model, gen, 0.7), token_logprobs(model, gen, 1.0)
    torch.testing.assert_close(at_07, gen.logprobs, atol=1e-5, rtol=0)
    assert (at_10 - gen.logprobs)[gen.mask].abs().max() > 0.05
    _, right = rl.ppo_policy_loss(at_07, gen.logprobs, torch.ones_like(at_07), gen.mask)
    _, wrong = rl.ppo_policy_loss(at_10, gen.logprobs, torch.ones_like(at_10), gen.mask)
    assert right["approx_kl"] < 1e-8 and wrong["approx_kl"] > 1e-3  # before any update!


# ----------------------------------------------------------------------------- DPO, online DPO

def test_dpo_is_log2_when_policy_equals_reference():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = -torch.rand(5, generator=g) * 20, -torch.rand(5, generator=g) * 20
    loss, stats = rl.dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
    torch.testing.assert_close(loss, torch.tensor(math.log(2)))
    assert stats == {"reward_accuracy": 0.0, "margin": 0.0}
    loss, stats = rl.dpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]),
                              torch.tensor([-4.0]), beta=0.5)  # h = 1 - (-1) = 2
    torch.testing.assert_close(loss, torch.tensor(math.log(1 + math.exp(-1.0))))
    assert stats["reward_accuracy"] == 1.0 and stats["margin"] == pytest.approx(1.0)


def test_ipo_by_hand():
    mask_c, mask_r = prefix_mask([4], 5), prefix_mask([3], 5)
    chosen_tokens = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -7.0]])  # last column is padding
    rejected_tokens = torch.tensor([[-3.0, -3.0, -3.0, -7.0, -7.0]])
    chosen, rejected = rl.sequence_logprob(chosen_tokens, mask_c), rl.sequence_logprob(rejected_tokens, mask_r)
    assert chosen.item() == -4.0 and rejected.item() == -9.0
    # log-ratios: chosen -4 - (-6) = 2 over 4 tokens = 0.5; rejected -9 - (-6) = -3 over 3 = -1
    # h' = 1.5, 1 / (2 beta) = 1 for beta = 0.5: loss = (1.5 - 1)^2 = 0.25
    loss, _ = rl.dpo_loss(chosen, rejected, torch.tensor([-6.0]), torch.tensor([-6.0]), beta=0.5, kind="ipo",
                          chosen_len=mask_c.sum(1), rejected_len=mask_r.sum(1))
    torch.testing.assert_close(loss, torch.tensor(0.25))
    with pytest.raises(ValueError, match="chosen_len"):
        rl.dpo_loss(chosen, rejected, chosen, rejected, kind="ipo")


def test_best_worst_pairs():
    chosen, rejected = rl.best_worst_pairs(torch.tensor([0.0, 1.0]), group_size=2)
    assert chosen.tolist() == [1] and rejected.tolist() == [0]  # the second sample scores higher
    scores = torch.tensor([0.1, 0.9, 0.5, 1.0, 1.0, 1.0, 0.3, 0.2, 0.3])
    chosen, rejected = rl.best_worst_pairs(scores, group_size=3)
    assert chosen.tolist() == [1, 6] and rejected.tolist() == [0, 7]  # group 1 skipped; ties: first
    assert chosen.dtype == rejected.dtype == torch.long


# ----------------------------------------------------------------------------- Expert Iteration, SFT

def test_dedupe_correct():
    prompt_ids = [0, 0, 0, 1, 1, 0]
    responses = [[1, 2], [1, 2], [3], [1, 2], [1, 2], [3]]
    correct = [True, True, False, False, True, True]
    assert rl.dedupe_correct(prompt_ids, responses, correct) == [0, 4, 5]


def test_sft_loss_on_response_tokens_only(model):
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(2, 7, generator=g)  # columns 0-2: prompt, 3-6: response
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 3:5], mask[1, 3:7] = True, True
    loss = rl.sft_loss(logprobs, mask)
    torch.testing.assert_close(loss, -logprobs[mask].mean())
    changed = logprobs.clone()
    changed[:, :3] = -50.0
    assert torch.equal(rl.sft_loss(changed, mask), loss)
    # against the model's own cross-entropy with every non-response target ignored
    gen = pack(PROMPTS, RESPONSES, eos_id=EOS, pad_id=PAD)
    seq, seq_mask = torch.cat([gen.prompt, gen.tokens], 1), torch.cat([gen.prompt_mask, gen.mask], 1)
    P = gen.prompt.size(1)
    targets = torch.full_like(seq, -1)
    targets[:, P - 1:-1] = torch.where(gen.mask, gen.tokens, -1)
    _, ce = model(seq, targets, positions=positions_of(seq_mask), valid=seq_mask)
    torch.testing.assert_close(rl.sft_loss(token_logprobs(model, gen), gen.mask), ce)
