"""Tests for nanorl/gpt.py: shapes, the loss, weight tying, left padding, the KV cache, FLOPs."""

import pytest
import torch
import torch.nn.functional as F

from nanorl.engine import positions_of
from nanorl.gpt import GPT, GPTConfig, KVCache, apply_rotary, rotary_tables


CONFIG = GPTConfig(vocab_size=60, block_size=64, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def random_tokens(*shape, seed=1):
    return torch.randint(CONFIG.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def test_logits_shape(model):
    assert model(random_tokens(3, 17)).shape == (3, 17, CONFIG.vocab_size)
    assert model.hidden_states(random_tokens(3, 17)).shape == (3, 17, CONFIG.n_embd)


def test_loss_is_cross_entropy(model):
    idx, targets = random_tokens(2, 12), random_tokens(2, 12, seed=2)
    logits, loss = model(idx, targets)
    by_hand = -logits.log_softmax(-1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss, by_hand)


def test_loss_ignores_minus_one(model):
    idx, targets = random_tokens(2, 12), random_tokens(2, 12, seed=2)
    targets[0, :5] = -1
    targets[1, 9:] = -1
    logits, loss = model(idx, targets)
    kept = targets != -1
    torch.testing.assert_close(loss, F.cross_entropy(logits[kept], targets[kept]))


def test_weight_tying(model):
    assert model.lm_head.weight is model.wte.weight
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))


def test_left_padding_matches_unpadded(model):
    rows = [random_tokens(1, 9)[0], random_tokens(1, 16, seed=3)[0]]
    width, pad_id = 16, 7
    padded = torch.stack([F.pad(r, (width - len(r), 0), value=pad_id) for r in rows])
    valid = torch.stack([torch.arange(width) >= width - len(r) for r in rows])
    logits = model(padded, positions=positions_of(valid), valid=valid)
    for i, row in enumerate(rows):
        alone = model(row[None])[0]
        torch.testing.assert_close(logits[i, -1], alone[-1], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[i, width - len(row):], alone, atol=1e-5, rtol=0)


def test_rotary_rotates_each_pair_by_its_angle():
    """Pair (x[i], x[i + D/2]) at position p turns by p * base^(-2i/D), written out for one vector;
    and q.k after rotation depends only on the distance between the two positions."""
    cos, sin = rotary_tables(CONFIG, "cpu")
    D = CONFIG.n_embd // CONFIG.n_head
    x, y, half = torch.randn(D), torch.randn(D), D // 2
    for p in [0, 1, 7]:
        angle = p * CONFIG.rope_base ** (-torch.arange(half).float() * 2 / D)
        x1, x2 = x[:half], x[half:]
        expected = torch.cat([x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos()])
        torch.testing.assert_close(apply_rotary(x, cos[p], sin[p]), expected, atol=1e-5, rtol=0)
    dots = [apply_rotary(x, cos[p + 3], sin[p + 3]) @ apply_rotary(y, cos[p], sin[p]) for p in [0, 5, 20]]
    torch.testing.assert_close(torch.stack(dots), dots[0].expand(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("grow_by", [None, 3])
def test_kv_cache_matches_full_forward(model, grow_by):
    idx, prefill = random_tokens(3, 20), 8
    cache = KVCache(CONFIG, 3, 20, idx.device, torch.float32, grow_by=grow_by)
    chunks, sizes = [model(idx[:, :prefill], cache=cache)], [cache.size]
    for t in range(prefill, 20):  # decoding: one token at a time, each at its own slot and position
        positions = torch.full((3, 1), t)
        chunks.append(model(idx[:, t:t + 1], positions=positions, cache=cache, start=t))
        sizes.append(cache.size)
    torch.testing.assert_close(torch.cat(chunks, 1), model(idx), atol=1e-5, rtol=0)
    # whole from the start, or grown by 3 slots when a write needed them (8 for the prefill)
    assert sizes == ([20] * 13 if grow_by is None else [8, 11, 11, 11, 14, 14, 14, 17, 17, 17, 20, 20, 20])
    with pytest.raises(ValueError, match="past the cache"):
        model(idx[:, :1], cache=cache, start=20)


def test_flops_per_token(model):
    n = model.num_params()
    assert model.flops_per_token(64) == 6 * n + 12 * CONFIG.n_layer * CONFIG.n_embd * 64
    assert model.flops_per_token() == model.flops_per_token(CONFIG.block_size)
    assert model.flops_per_token(64, training=False) == 2 * n + 4 * CONFIG.n_layer * CONFIG.n_embd * 64


def test_block_size_overflow_raises(model):
    model(random_tokens(1, CONFIG.block_size))  # exactly block_size is fine
    with pytest.raises(ValueError, match="block_size"):
        model(random_tokens(1, CONFIG.block_size + 1))
