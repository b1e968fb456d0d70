"""Tests for nanorl/engine.py: the KV-cache sampler against the naive one, logprobs, EOS, filters."""

import pytest
import torch

from nanorl import engine
from nanorl.engine import (Generation, filter_logits, generate, left_pad, naive_generate, sample_next,
                           token_logprobs, token_budget)
from conftest import sharp_gpt


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16]]  # four different lengths
PAD = 0
NEW = 16


@pytest.fixture(scope="module")
def model():
    return sharp_gpt(vocab_size=60, block_size=64, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(autouse=True)
def small_cache_steps(monkeypatch):
    """Grow the KV cache 4 slots at a time, so that every test here crosses several growth steps
    (at these lengths the default step would hold the whole generation from the start)."""
    monkeypatch.setattr(engine, "CPU_CACHE_STEP", 4)


def sample(model, eos_id, seed=0, n_samples=3, **kwargs):
    return generate(model, PROMPTS, NEW, eos_id=eos_id, pad_id=PAD, n_samples=n_samples,
                    generator=torch.Generator().manual_seed(seed), **kwargs)


def eos_emitted(gen: Generation, row: int, step: int) -> int:
    """A token `gen` emits at (row, step), to use as EOS: a rerun then stops that row there."""
    eos_id = int(gen.tokens[row, step])
    assert eos_id != PAD
    return eos_id


def assert_stops_at_eos(gen: Generation, eos_id: int):
    """Mask True up to and including the first EOS; after it pad tokens with logprob 0."""
    assert not gen.mask.all(), "no row ended early: the test would not exercise EOS"
    for tokens, mask, logprobs in zip(gen.tokens, gen.mask, gen.logprobs):
        hits = (tokens == eos_id).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(tokens)
        assert mask[:end].all() and not mask[end:].any()
        assert (tokens[end:] == PAD).all() and (logprobs[end:] == 0).all()


# ----------------------------------------------------------------------------- greedy vs naive

def test_greedy_matches_naive(model):
    eos_id = eos_emitted(generate(model, PROMPTS, NEW, eos_id=-1, pad_id=PAD, temperature=0), row=2, step=3)
    gen = generate(model, PROMPTS, NEW, eos_id=eos_id, pad_id=PAD, temperature=0)
    assert_stops_at_eos(gen, eos_id)
    batch = naive_generate(model, PROMPTS, NEW, eos_id=eos_id, pad_id=PAD)
    assert torch.equal(gen.tokens, batch.tokens) and torch.equal(gen.mask, batch.mask)
    torch.testing.assert_close(gen.logprobs, batch.logprobs, atol=1e-5, rtol=0)
    for i, prompt in enumerate(PROMPTS):
        alone = naive_generate(model, [prompt], NEW, eos_id=eos_id, pad_id=PAD)
        assert torch.equal(gen.tokens[i], alone.tokens[0]) and torch.equal(gen.mask[i], alone.mask[0])
        torch.testing.assert_close(gen.logprobs[i], alone.logprobs[0], atol=1e-5, rtol=0)


def test_top_k_1_is_greedy(model):
    greedy = generate(model, PROMPTS, NEW, eos_id=-1, pad_id=PAD, temperature=0)
    assert torch.equal(sample(model, -1, n_samples=1, top_k=1).tokens, greedy.tokens)


# ----------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 10, 1.0), (1.0, 0, 0.9), (0.0, 0, 1.0)])
def test_logprobs_match_recompute(model, temperature, top_k, top_p):
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    eos_id = eos_emitted(sample(model, -1, **kwargs), row=0, step=4)
    gen = sample(model, eos_id, **kwargs)  # same seed: same samples up to the first EOS
    assert_stops_at_eos(gen, eos_id)
    torch.testing.assert_close(token_logprobs(model, gen, **kwargs), gen.logprobs, atol=1e-5, rtol=0)


def test_sampling_matches_naive_token_for_token(model):
    """Both samplers draw one uniform per row per step from the same generator: same samples."""
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9)]:
        kwargs = dict(temperature=temperature, top_p=top_p)
        gen = generate(model, PROMPTS, NEW, eos_id=-1, pad_id=PAD, generator=torch.Generator().manual_seed(5), **kwargs)
        ref = naive_generate(model, PROMPTS, NEW, eos_id=-1, pad_id=PAD, generator=torch.Generator().manual_seed(5),
                             **kwargs)
        assert torch.equal(gen.tokens, ref.tokens)
        torch.testing.assert_close(gen.logprobs, ref.logprobs, atol=1e-5, rtol=0)


def test_inverse_cdf_sampling_draws_the_distribution():
    """Frequencies of 40,000 draws match the probabilities; filtered-out tokens are never drawn."""
    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.25, 0.05, 0.0])
    logits = probs.log().expand(40_000, -1)
    tokens, logprobs = sample_next(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=len(probs)).float() / len(tokens)
    assert (freq[probs == 0] == 0).all()
    assert (freq - probs).abs().max() < 0.01  # 4 standard errors at p = 0.5
    torch.testing.assert_close(logprobs, probs.log()[tokens])
    ones = torch.tensor([[0.0, -float("inf"), 0.0]])  # the last token of the row is allowed
    assert set(sample_next(ones.expand(1000, -1), 1.0, 0, 1.0, None)[0].tolist()) == {0, 2}


def test_generation_is_usable_in_a_backward(model):
    """generate decodes in inference mode but returns plain tensors: a loss that saves the mask
    for its backward (as every RL loss does) must work on them."""
    gen = sample(model, -1)
    assert not any(t.is_inference() for t in (gen.prompt, gen.tokens, gen.logprobs, gen.mask, gen.ended))
    logprobs = token_logprobs(model, gen)
    torch.where(gen.mask, logprobs - gen.logprobs, 0.0).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_seed_reproducible(model):
    a, b, c = sample(model, -1, seed=1), sample(model, -1, seed=1), sample(model, -1, seed=2)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)


def test_samples_of_a_prompt_are_adjacent(model):
    n = 3
    gen = sample(model, -1, n_samples=n)
    prompt, prompt_mask = left_pad(PROMPTS, PAD, "cpu")
    assert torch.equal(gen.prompt, prompt.repeat_interleave(n, 0))
    assert torch.equal(gen.prompt_mask, prompt_mask.repeat_interleave(n, 0))
    assert not torch.equal(gen.tokens[0], gen.tokens[1])  # copies are sampled independently


def test_responses_strip_eos():
    gen = Generation(prompt=torch.tensor([[1], [1]]), prompt_mask=torch.ones(2, 1, dtype=torch.bool),
                     tokens=torch.tensor([[5, 6, 9, PAD], [5, 6, 7, 8]]),  # EOS is 9
                     logprobs=torch.zeros(2, 4),
                     mask=torch.tensor([[True, True, True, False], [True] * 4]),
                     ended=torch.tensor([True, False]))  # row 1 was truncated, not ended
    assert gen.responses() == [[5, 6], [5, 6, 7, 8]]


# ----------------------------------------------------------------------------- filters

def test_filter_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([0.1, 0.5, 0.05, 0.2, 0.15])
    for top_p, kept in [(0.3, {1}), (0.6, {1, 3}), (0.8, {1, 3, 4}), (0.9, {0, 1, 3, 4}), (1.0, {0, 1, 2, 3, 4})]:
        filtered = filter_logits(probs.log(), temperature=1.0, top_p=top_p)
        assert set(filtered.isfinite().nonzero().flatten().tolist()) == kept, top_p
        torch.testing.assert_close(filtered[filtered.isfinite()], probs.log()[filtered.isfinite()])


def test_filter_top_k_keeps_exactly_k():
    logits = torch.randn(3, 60, generator=torch.Generator().manual_seed(0))
    filtered = filter_logits(logits, temperature=2.0, top_k=5)
    assert (filtered.isfinite().sum(-1) == 5).all()
    kept = filtered.isfinite()
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(5).indices, True))
    torch.testing.assert_close(filtered[kept], logits[kept] / 2.0)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("sampler", [generate, naive_generate])
def test_too_long_raises(model, sampler):
    block = model.config.block_size
    sampler(model, [[1] * (block - 4)], 4, eos_id=-1, pad_id=PAD)  # exactly block_size fits
    with pytest.raises(ValueError, match="block_size"):
        sampler(model, [[1, 2], [1] * (block - 4)], 5, eos_id=-1, pad_id=PAD)


def test_token_budget_is_what_the_longest_prompt_leaves(model):
    block = model.config.block_size  # 64
    assert token_budget(model, [[1] * 3, [1] * 10], 8) == 8
    assert token_budget(model, [[1] * 3, [1] * 60], 8) == 4
    assert token_budget(model, [[1] * 64], 8) == 0  # no room: generate refuses it
    generate(model, [[1] * (block - 4)], token_budget(model, [[1] * (block - 4)], 8), eos_id=-1, pad_id=PAD)


@pytest.mark.parametrize("prompts", [[], [[]], [[1, 2], []]])
@pytest.mark.parametrize("sampler", [generate, naive_generate])
def test_empty_prompt_raises(model, sampler, prompts):
    with pytest.raises(ValueError, match="at least one token"):
        sampler(model, prompts, 4, eos_id=-1, pad_id=PAD)

