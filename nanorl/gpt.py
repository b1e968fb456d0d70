"""A small GPT, written out: the one model class every stage of nanorl trains.

    x_0   = wte[tokens]                                  token embedding (tied with the LM head)
    x_l+1 = x_l + Attn(RMSNorm(x_l)) ; x_l+1 += MLP(RMSNorm(x_l+1))     pre-norm residual blocks
    Attn  = softmax(q k^T / sqrt(d_head) + mask) v       with rotary positions (RoPE) on q and k
    logits = RMSNorm(x_L) wte^T

Each token takes an explicit rotary position, so LEFT-PADDED prompts of different lengths decode
together: a row counts positions from its own first real token and a boolean mask hides padding.
The KV cache holds the whole generation; a decode step attends over all its slots with an additive
mask (`decode_attention`), the prompt and training use scaled_dot_product_attention.
`flops_per_token` is PaLM's 6N + 12 L d T (for MFU). Init as GPT-2: N(0, 0.02), residual
projections scaled by 1/sqrt(2L).
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 1024
    block_size: int = 256   # longest sequence (prompt + response) the model ever sees
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 192
    rope_base: float = 10000.0

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer for a batch of rows, with room for up to `max_len` slots.

    `valid[b, j]`: slot j of row b holds a real token; `bias` is the same as an additive mask (0 or
    -inf), the whole mask of a 1-token decode query. Allocated whole by default (static shapes, as
    CUDA graphs and torch.compile want); with `grow_by` it grows in steps, so a CPU decode step,
    bound by reading the cache, reads only slots that are filled or soon will be.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype, grow_by: int | None = None):
        self.max_len, self.grow_by = max_len, grow_by or max_len
        size = min(self.grow_by, max_len)
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, size, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, size, dtype=torch.bool, device=device)
        self.bias = torch.full((batch_size, 1, 1, size), float("-inf"), device=device, dtype=dtype)

    @property
    def size(self) -> int:
        """Slots allocated now: max_len, or fewer while a growing cache has not needed them."""
        return self.valid.size(1)

    def _make_room(self, end: int):
        if end > self.max_len:
            raise ValueError(f"cache slot {end - 1} is past the cache's {self.max_len} slots")
        if end > self.size:
            pad = min(self.max_len, max(end, self.size + self.grow_by)) - self.size
            self.k, self.v = F.pad(self.k, (0, 0, 0, pad)), F.pad(self.v, (0, 0, 0, pad))
            self.valid, self.bias = F.pad(self.valid, (0, pad)), F.pad(self.bias, (0, pad), value=float("-inf"))

    def mark(self, start: int, valid: torch.Tensor | None, T: int):
        """Record which of the slots [start, start + T) hold real tokens (valid: (B, T) or None: all)."""
        self._make_room(start + T)
        valid = torch.ones_like(self.valid[:, start:start + T]) if valid is None else valid
        self.valid[:, start:start + T] = valid
        self.bias[:, 0, 0, start:start + T] = torch.where(valid, 0.0, float("-inf"))


def rotary_tables(config: GPTConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of every position's angles, (block_size, head_dim), laid out for apply_rotary."""
    head_dim = config.n_embd // config.n_head
    inv_freq = 1.0 / config.rope_base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(config.block_size, device=device).float(), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) = (x[i], x[i + D/2]) of each head by the token's angle. x: (..., B, H, T, D).

    (x1 cos - x2 sin, x1 sin + x2 cos) is x * [cos, cos] + [x2, x1] * [-sin, sin]: swapping the halves
    is a roll, so the rotation takes four ops rather than split, four products, two sums and a concat."""
    return (x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin).type_as(x)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + bias) v for a 1-token query q (B, H, 1, D), k and v (B, H, S, D), bias
    (B, 1, 1, S). Scores as k q^T: CPU BLAS runs a matrix-vector product faster than q k^T, and both beat
    scaled_dot_product_attention, whose CPU kernels are built for long queries."""
    scores = torch.matmul(k, q.transpose(-1, -2) * q.size(-1) ** -0.5).transpose(-1, -2) + bias
    return torch.matmul(scores.softmax(-1), v)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int, start: int):
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        (q, k), v = apply_rotary(qkv[:2], cos, sin), qkv[2]  # q and k rotated in one pass
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        else:
            cache.k[layer, :, :, start:start + T] = k
            cache.v[layer, :, :, start:start + T] = v
            if T == 1:
                y = decode_attention(q, cache.k[layer], cache.v[layer], cache.bias)
            else:
                y = F.scaled_dot_product_attention(q, cache.k[layer], cache.v[layer], attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(config.n_embd), nn.RMSNorm(config.n_embd)
        self.attn, self.mlp = CausalSelfAttention(config), MLP(config)

    def forward(self, x, cos, sin, mask, cache, layer, start):
        x = x + self.attn(self.norm1(x), cos, sin, mask, cache, layer, start)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = nn.RMSNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        cos, sin = rotary_tables(config, self.wte.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual outputs: keep the stream's variance flat in depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _mask(self, valid, cache, start, T):
        """Boolean attention mask (B, 1, T, S), or None for the plain causal case."""
        if cache is None and valid is None:
            return None
        device = self.rope_cos.device
        q_pos = start + torch.arange(T, device=device)[:, None]
        if cache is not None:
            keys_valid, S = cache.valid, cache.size
        else:
            keys_valid, S = valid, T
        k_pos = torch.arange(S, device=device)[None, :]
        mask = (k_pos <= q_pos)[None] & keys_valid[:, None, :]
        mask = mask | (k_pos == q_pos)[None]  # a padding query still sees itself: no all-masked row (NaN)
        return mask[:, None]

    def hidden_states(self, idx, positions=None, valid=None, cache: KVCache | None = None, start: int = 0):
        """Final normalised hidden states (B, T, n_embd).

        idx: (B, T) tokens. positions: (B, T) rotary positions (default 0..T-1).
        valid: (B, T) bool, False on padding (default all real).
        cache: write this chunk's keys/values at slots [start, start + T) and attend over the cache.
        """
        B, T = idx.shape
        if positions is None:
            positions = torch.arange(T, device=idx.device).expand(B, T)
        if cache is None and T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        if cache is not None:
            cache.mark(start, valid, T)
        mask = None if cache is not None and T == 1 else self._mask(valid, cache, start, T)  # decode: cache.bias
        cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        x = self.wte(idx)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, layer, start)
        return self.norm_f(x)

    def forward(self, idx, targets=None, logits_from: int = 0, **kwargs):
        """Logits (B, T - logits_from, vocab) of positions logits_from..T-1; with targets also the
        mean cross-entropy (targets -1 are ignored). kwargs go to hidden_states."""
        logits = self.lm_head(self.hidden_states(idx, **kwargs)[:, logits_from:]).float()
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Training FLOPs per token: 6 per parameter (forward + backward) plus attention over seq_len
        tokens; training=False gives the forward alone (a third: decoding, with seq_len the context)."""
        cfg, T = self.config, seq_len or self.config.block_size
        flops = 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * T
        return flops if training else flops / 3


def adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8):
    """AdamW with weight decay on matrices only (not on norms or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=params[0].is_cuda)
