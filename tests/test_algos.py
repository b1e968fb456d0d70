"""Tests for nanorl/algos.py: whole update steps, checked against the whole-batch, one-process answer.

DDP is simulated with one thread per rank: each rank holds its own copy of the model and its share of
the prompts (whole groups), the update's all_reduce sums tensors across the threads, and the
gradients DDP would produce are the mean of the ranks' gradients.
"""

import copy
import threading

import pytest
import torch

from conftest import sharp_gpt
from nanorl import algos, rl
from nanorl.engine import generate, pack
from nanorl.reward import ScalarModel, value_model
from nanorl.runtime import RunError

EOS, PAD = 2, 0
PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10], [1, 11]]
GROUP = 4


class RecordingOptimizer:
    """Stands in for AdamW: records the gradients at each step instead of applying them (configs
    below set grad_clip=0: clipping each rank's gradient on its own is not what DDP does)."""

    def __init__(self, params):
        self.param_groups = [{"params": list(params)}]
        self.grads = []

    def step(self):
        self.grads.append([p.grad.clone() for p in self.param_groups[0]["params"]])

    def zero_grad(self, set_to_none=True):
        for p in self.param_groups[0]["params"]:
            p.grad = None


class ThreadGroup:
    """all_reduce(sum) across threads that call it in the same order (one thread per simulated rank)."""

    def __init__(self, world_size: int):
        self.barrier, self.slots = threading.Barrier(world_size), [None] * world_size

    def all_reduce(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before everyone has read it
            return total
        return reduce


def make_rollout(model, rows=None) -> algos.Rollout:
    """GROUP samples of each prompt with 0/1 rewards that differ within groups; `rows` selects a subset."""
    gen = generate(model, PROMPTS, 10, eos_id=EOS, pad_id=PAD, n_samples=GROUP, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    n = len(scores)
    rows = torch.arange(n) if rows is None else rows
    return algos.Rollout(gen[rows], [""] * len(rows), ["none"] * len(rows), scores[rows], GROUP, 1.0, scores=scores[rows])


@pytest.fixture(scope="module")
def model():
    return sharp_gpt(vocab_size=40, block_size=64, n_layer=1, n_head=2, n_embd=16)


def grads_close(a, b, rtol=1e-4) -> bool:
    """Each gradient tensor equal up to a relative error of its norm (robust to entries near 0)."""
    return all((x - y).norm() <= rtol * x.norm() + 1e-8 for x, y in zip(a, b, strict=True))


def one_process_grads(model, cfg, algo):
    policy = copy.deepcopy(model)
    value = value_model(policy) if algo == "ppo" else None
    params = list(policy.parameters()) + (list(value.parameters()) if value else [])
    opt = RecordingOptimizer(params)
    batch = make_rollout(model)
    if algo == "ppo":
        algos.ppo_step(policy, model, value, opt, batch, cfg)
    else:
        algos.grpo_step(policy, model, opt, batch, cfg)
    return opt.grads[0]


def simulated_ddp_grads(model, cfg, algo, world_size=2):
    """The gradient DDP would apply: the mean over ranks of each rank's gradient."""
    group, results = ThreadGroup(world_size), [None] * world_size
    per_rank = len(PROMPTS) * GROUP // world_size

    def rank_main(rank):
        policy = copy.deepcopy(model)
        value = value_model(policy) if algo == "ppo" else None
        if value is not None:  # the same random-but-identical value head on every rank
            torch.nn.init.constant_(value.head.weight, 0.05)
        opt = RecordingOptimizer(list(policy.parameters()) + (list(value.parameters()) if value else []))
        batch = make_rollout(model, torch.arange(rank * per_rank, (rank + 1) * per_rank))
        step = algos.ppo_step if algo == "ppo" else algos.grpo_step
        args = (policy, model, value, opt, batch, cfg) if algo == "ppo" else (policy, model, opt, batch, cfg)
        results[rank] = (step(*args, world_size=world_size, all_reduce=group.all_reduce(rank)), opt.grads[0])

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grads = [torch.stack([r[1][i] for r in results]).mean(0) for i in range(len(results[0][1]))]
    return grads, [r[0] for r in results]


@pytest.mark.parametrize("aggregation", rl.AGGREGATIONS)
def test_grpo_gradient_is_the_same_under_simulated_ddp(model, aggregation):
    cfg = algos.RLConfig(grad_clip=0, temperature=1.0, kl_coef=0.05, epochs=1, minibatches=1, aggregation=aggregation)
    whole = one_process_grads(model, cfg, "grpo")
    ddp, stats = simulated_ddp_grads(model, cfg, "grpo")
    assert sum(g.norm() for g in whole) > 1e-3
    assert grads_close(whole, ddp)
    assert stats[0] == stats[1]  # logged stats are rank means, the same on every rank


def test_ppo_gradient_and_whitening_are_the_same_under_simulated_ddp(model):
    cfg = algos.RLConfig(grad_clip=0, temperature=1.0, kl_coef=0.05, epochs=1, minibatches=1)
    torch.manual_seed(0)
    policy = copy.deepcopy(model)
    value = value_model(policy)
    torch.nn.init.constant_(value.head.weight, 0.05)
    opt = RecordingOptimizer(list(policy.parameters()) + list(value.parameters()))
    algos.ppo_step(policy, model, value, opt, make_rollout(model), cfg)
    ddp, stats = simulated_ddp_grads(model, cfg, "ppo")
    assert grads_close(opt.grads[0], ddp)
    assert stats[0] == stats[1]


def test_micro_batch_changes_nothing_in_ppo_and_grpo(model):
    for algo in ("ppo", "grpo"):
        whole = one_process_grads(model, algos.RLConfig(grad_clip=0, temperature=1.0, epochs=1, minibatches=1), algo)
        micro = one_process_grads(model, algos.RLConfig(grad_clip=0, temperature=1.0, epochs=1, minibatches=1, micro_batch=3), algo)
        assert grads_close(whole, micro), algo


def test_dr_grpo_uses_unscaled_advantages(model):
    """dr_grpo = (R - mean_G) / (N max_len): twice the rewards, twice the gradient; grpo/dapo are scale-free."""
    def grads(aggregation, reward_scale):
        policy = copy.deepcopy(model)
        opt = RecordingOptimizer(policy.parameters())
        batch = make_rollout(model)
        batch.scores = batch.scores * reward_scale
        algos.grpo_step(policy, model, opt, batch, algos.RLConfig(grad_clip=0, temperature=1.0, epochs=1, minibatches=1,
                                                                  aggregation=aggregation))
        return opt.grads[0]
    assert grads_close([2 * g for g in grads("dr_grpo", 1.0)], grads("dr_grpo", 2.0))
    assert grads_close(grads("dapo", 1.0), grads("dapo", 2.0), rtol=1e-3)  # up to the eps in std + eps


def test_sft_step_is_independent_of_micro_batch(model):
    prompts = [[1, 5], [1, 6, 7], [1, 8], [1, 9, 10, 11]]
    responses = [[3, 4, EOS], [5, EOS], [6, 7, 8, 9, 10, EOS], [11, 12, 13, EOS]]
    gen = pack(prompts, responses, eos_id=EOS, pad_id=PAD)
    losses, grads = [], []
    for micro in (4, 2, 1):
        policy = copy.deepcopy(model)
        opt = RecordingOptimizer(policy.parameters())
        losses.append(algos.sft_step(policy, opt, gen, algos.RLConfig(grad_clip=0, micro_batch=micro))["sft_loss"])
        grads.append(opt.grads[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) == pytest.approx(losses[2], rel=1e-6)
    assert grads_close(grads[0], grads[1]) and grads_close(grads[0], grads[2])


def test_dpo_step_is_independent_of_micro_batch(model):
    prompts = [[1, 5], [1, 6, 7], [1, 8]]
    chosen = pack(prompts, [[3, 4, EOS], [5, EOS], [6, 7, 8, EOS]], eos_id=EOS, pad_id=PAD)
    rejected = pack(prompts, [[9, EOS], [10, 11, 12, 13, EOS], [14]], eos_id=EOS, pad_id=PAD)
    moved = copy.deepcopy(model)
    torch.manual_seed(0)
    for p in moved.parameters():  # the policy has moved away from the reference: the pairs' ratios differ
        p.data.add_(0.02 * torch.randn_like(p))
    stats, grads = [], []
    for micro in (3, 2, 1):
        policy, rows = copy.deepcopy(moved), []
        policy.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
        opt = RecordingOptimizer(policy.parameters())
        stats.append(algos.dpo_step(policy, model, opt, chosen, rejected, algos.RLConfig(grad_clip=0, micro_batch=micro)))
        grads.append(opt.grads[0])
        assert max(rows) == micro and sum(rows) == 6  # --micro-batch rows per forward, chosen and rejected apart
    assert stats[0]["margin"] != 0
    for key in ("dpo_loss", "reward_accuracy", "margin"):
        assert stats[0][key] == pytest.approx(stats[1][key], rel=1e-5) == pytest.approx(stats[2][key], rel=1e-5)
    assert sum(g.norm() for g in grads[0]) > 1e-4
    assert grads_close(grads[0], grads[1]) and grads_close(grads[0], grads[2])


def test_a_diverged_update_stops_before_it_reaches_the_weights(model):
    prompts, responses = [[1, 5], [1, 6, 7]], [[3, 4, EOS], [5, EOS]]
    policy = copy.deepcopy(model)
    policy.blocks[0].mlp.fc.weight.data[0, 0] = float("nan")  # as if the last step had diverged
    before = [p.detach().clone() for p in policy.parameters()]
    with pytest.raises(RunError, match="gradient norm is nan: training diverged; start again .* lower --lr"):
        algos.sft_step(policy, torch.optim.SGD(policy.parameters(), lr=0.1), pack(prompts, responses, eos_id=EOS,
                                                                                 pad_id=PAD), algos.RLConfig())
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(before, policy.parameters()))  # no step


class CountingModel(torch.nn.Module):
    """Wraps a GPT and counts forward calls (with or without gradient)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.config, self.rope_cos = inner.config, inner.rope_cos

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_beta_zero_grpo_update_is_one_forward_per_minibatch_and_no_reference(model):
    policy, ref = CountingModel(copy.deepcopy(model)), CountingModel(model)
    opt = RecordingOptimizer(policy.parameters())
    cfg = algos.RLConfig(grad_clip=0, temperature=1.0, kl_coef=0.0, epochs=2, minibatches=2)
    stats = algos.grpo_step(policy, ref, opt, make_rollout(model), cfg)
    assert (policy.calls, ref.calls, len(opt.grads)) == (4, 0, 4)
    assert "kl_ref" not in stats
    cfg.kl_coef = 0.1
    algos.grpo_step(policy, ref, opt, make_rollout(model), cfg)
    assert ref.calls == 1


def test_value_model_starts_at_zero_or_at_the_reward_model(model):
    gen = make_rollout(model).gen
    seq, valid = torch.cat([gen.prompt, gen.tokens], 1), torch.cat([gen.prompt_mask, gen.mask], 1)
    assert torch.equal(value_model(model)(seq, valid), torch.zeros(seq.shape))
    rm = ScalarModel.from_gpt(model)  # random head: scores far from 0
    value = value_model(model, rm)
    assert torch.equal(value(seq, valid), rm(seq, valid))
    assert value.head.weight.data_ptr() != rm.head.weight.data_ptr()  # a copy: training it leaves the RM alone
