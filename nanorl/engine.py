"""Fused batched sampling with a KV cache: the rollout engine of every RL stage.

Many prompts of different lengths are decoded together. Prompts are LEFT-padded to a common
length P so that every row's next token sits in the same column; each row counts its rotary
positions from its own first real token, and the attention mask hides padding. One forward
call per step serves the whole batch; there is no Python loop over rows.

    prefill:  run the P prompt columns once, filling cache slots [0, P)
    step t:   sample x_t ~ softmax(filter(logits / T)), write its keys/values at slot P + t
    stop:     a row is done after its EOS; later columns are padding (mask False, logprob 0)

With the tokens come what RL needs: each token's log-probability under the distribution it was
sampled from (temperature, then top-k / top-p; greedy reports the untempered softmax) and the
response mask (real tokens up to and including EOS). On CUDA shapes are static (torch.compile and
CUDA graphs want that); on CPU the cache grows CPU_CACHE_STEP slots at a time. `naive_generate`
recomputes everything every step: the reference the tests and the benchmark compare against.
"""

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanorl.gpt import GPT, KVCache

CPU_CACHE_STEP = 32  # slots a CPU KV cache grows by: one copy every 32 steps, 30% less read at the bench shape


@dataclass
class Generation:
    prompt: torch.Tensor       # (N, P) left-padded prompt tokens, N = len(prompts) * n_samples
    prompt_mask: torch.Tensor  # (N, P) bool, True on real prompt tokens
    tokens: torch.Tensor       # (N, max_new_tokens) sampled tokens, pad_id after EOS
    logprobs: torch.Tensor     # (N, max_new_tokens) float32 log-probabilities, 0 off the mask
    mask: torch.Tensor         # (N, max_new_tokens) bool, True up to and including EOS
    ended: torch.Tensor        # (N,) bool, True where the row emitted EOS (False: truncated)

    def __getitem__(self, rows) -> "Generation":
        """The Generation of a subset of rows (an index tensor, list or slice)."""
        return Generation(*(getattr(self, f.name)[rows] for f in fields(self)))

    def clone(self) -> "Generation":
        return Generation(*(getattr(self, f.name).clone() for f in fields(self)))

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P + max_new_tokens) prompt + response tokens, and where they are real (not padding)."""
        return torch.cat([self.prompt, self.tokens], 1), torch.cat([self.prompt_mask, self.mask], 1)

    def responses(self) -> list[list[int]]:
        """Each row's response tokens, EOS excluded (for decoding to text)."""
        lengths = (self.mask.sum(1) - self.ended.long()).tolist()
        rows = self.tokens.tolist()
        return [row[:n] for row, n in zip(rows, lengths)]


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature-scaled logits with everything outside top-k / the top-p nucleus set to -inf."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_next(logits, temperature: float, top_k: int, top_p: float, generator):
    """Next tokens (N,) and their log-probabilities under the sampling distribution. Inverse-CDF sampling:
    one uniform per row draws what torch.multinomial draws, without an exponential per vocabulary entry."""
    if temperature == 0:
        logprobs = F.log_softmax(logits.float(), dim=-1)
        tokens = logprobs.argmax(-1)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=total.device, dtype=total.dtype) * total
    # u < total strictly, so the first cdf entry above u exists and has positive probability
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, u, right=True)
    return tokens.squeeze(-1), probs.gather(-1, tokens).log().squeeze(-1)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, P) tokens and (N, P) bool mask, each prompt right-aligned."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    width = max(len(p) for p in prompts)
    tokens = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts], device=device)
    return tokens, mask


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Rotary position of each column: 0 at the row's first real token (padding gets 0 too)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _cache_dtype(model: GPT) -> torch.dtype:
    device_type = model.rope_cos.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return model.wte.weight.dtype


def token_budget(model: GPT, prompts: list[list[int]], max_new_tokens: int) -> int:
    """max_new_tokens, or less where the context leaves less room after the longest prompt."""
    return min(max_new_tokens, model.config.block_size - max(map(len, prompts)))


def _check_lengths(model: GPT, prompt_len: int, max_new_tokens: int):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if prompt_len + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} exceeds the "
                         f"model's block_size {model.config.block_size}; shorten one of them")


@torch.inference_mode()  # lighter than no_grad: no version counters, no view tracking
def generate(model: GPT, prompts: list[list[int]], max_new_tokens: int, *, eos_id: int, pad_id: int,
             n_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None) -> Generation:
    """Sample `n_samples` responses for each prompt (adjacent rows); temperature 0 is greedy, and a seeded
    `generator` on the model's device makes sampling reproducible."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    device = model.rope_cos.device
    rows = [p for p in prompts for _ in range(n_samples)]
    prompt, prompt_mask = left_pad(rows, pad_id, device)
    N, P = prompt.shape
    _check_lengths(model, P, max_new_tokens)
    grow_by = CPU_CACHE_STEP if device.type == "cpu" else None
    cache = KVCache(model.config, N, P + max_new_tokens, device, _cache_dtype(model), grow_by)
    positions = positions_of(prompt_mask)
    hidden = model.hidden_states(prompt, positions=positions, valid=prompt_mask, cache=cache)
    logits = model.lm_head(hidden[:, -1])
    position = positions[:, -1]

    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(N, max_new_tokens, device=device)
    mask = torch.zeros(N, max_new_tokens, dtype=torch.bool, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        token, logprob = sample_next(logits, temperature, top_k, top_p, generator)
        alive = ~done
        tokens[:, t] = torch.where(alive, token, pad_id)
        logprobs[:, t] = torch.where(alive, logprob, 0.0)
        mask[:, t] = alive
        done = done | (token == eos_id)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        position = position + 1
        hidden = model.hidden_states(tokens[:, t:t + 1], positions=position[:, None], valid=alive[:, None],
                                     cache=cache, start=P + t)
        logits = model.lm_head(hidden[:, -1])
    with torch.inference_mode(False):  # plain tensors: an RL update saves some of them for its backward
        return Generation(prompt, prompt_mask, tokens, logprobs, mask, done).clone()


def generate_batches(model: GPT, prompts: list[list[int]], max_new_tokens: int, batch_size: int, *, eos_id: int,
                     pad_id: int, n_samples: int = 1, temperature: float = 1.0, generator=None, desc=None):
    """Yield (start, Generation) for each batch of `batch_size` prompts from `start` on, with a progress
    bar when `desc` is given. A batch gets at most what the context leaves after its longest prompt."""
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=desc is None, leave=False,
                      dynamic_ncols=True):
        batch = prompts[start:start + batch_size]
        yield start, generate(model, batch, token_budget(model, batch, max_new_tokens), eos_id=eos_id, pad_id=pad_id,
                              n_samples=n_samples, temperature=temperature, generator=generator)


@torch.no_grad()
def naive_generate(model: GPT, prompts: list[list[int]], max_new_tokens: int, *, eos_id: int, pad_id: int,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   generator: torch.Generator | None = None) -> Generation:
    """Reference sampler: no cache, the whole (prompt + response so far) is recomputed every step."""
    device = model.rope_cos.device
    prompt, prompt_mask = left_pad(prompts, pad_id, device)
    N, P = prompt.shape
    _check_lengths(model, P, max_new_tokens)
    seq, seq_mask = prompt, prompt_mask
    done = torch.zeros(N, dtype=torch.bool, device=device)
    out_tokens, out_logprobs, out_mask = [], [], []
    for _ in range(max_new_tokens):
        logits = model(seq, positions=positions_of(seq_mask), valid=seq_mask)[:, -1]
        token, logprob = sample_next(logits, temperature, top_k, top_p, generator)
        alive = ~done
        token = torch.where(alive, token, pad_id)
        out_tokens.append(token), out_logprobs.append(torch.where(alive, logprob, 0.0)), out_mask.append(alive)
        done = done | (token == eos_id)
        if bool(done.all()):
            break
        seq, seq_mask = torch.cat([seq, token[:, None]], 1), torch.cat([seq_mask, alive[:, None]], 1)
    pad = max_new_tokens - len(out_tokens)
    tokens = F.pad(torch.stack(out_tokens, 1), (0, pad), value=pad_id)
    logprobs = F.pad(torch.stack(out_logprobs, 1), (0, pad))
    mask = F.pad(torch.stack(out_mask, 1), (0, pad), value=False)
    return Generation(prompt, prompt_mask, tokens, logprobs, mask, done)


def pack(prompts: list[list[int]], responses: list[list[int]], *, eos_id: int, pad_id: int, device="cpu") -> Generation:
    """A Generation from token lists (SFT targets, preference pairs, kept samples); a response that does
    not end in EOS counts as truncated."""
    if not responses or any(len(r) == 0 for r in responses):
        raise ValueError("pack needs at least one response, each with at least one token")
    prompt, prompt_mask = left_pad(prompts, pad_id, device)
    width = max(len(r) for r in responses)
    tokens = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in responses], device=device)
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in responses], device=device)
    ended = torch.tensor([r[-1] == eos_id for r in responses], device=device)
    return Generation(prompt, prompt_mask, tokens, torch.zeros(tokens.shape, device=device), mask, ended)


def response_logits(model: GPT, gen: Generation) -> torch.Tensor:
    """(N, max_new, vocab) logits that predict each response token, from one full forward pass."""
    seq, seq_mask = gen.sequences()
    # logits only where they predict response tokens; through forward() so DDP's hooks run
    return model(seq, positions=positions_of(seq_mask), valid=seq_mask, logits_from=gen.prompt.size(1) - 1)[:, :-1]


def token_logprobs(model: GPT, gen: Generation, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, with_entropy: bool = False):
    """Differentiable log-probabilities (N, max_new) of `gen.tokens` under `model`, 0 off the mask, with the
    sampler's temperature and filtering, so the sampling model reproduces `gen.logprobs`; with_entropy
    also returns each token's entropy."""
    logits = response_logits(model, gen)
    if temperature == 0:
        logprobs = F.log_softmax(logits.float(), dim=-1)
    else:
        logprobs = F.log_softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    picked = torch.where(gen.mask, logprobs.gather(-1, gen.tokens[..., None]).squeeze(-1), 0.0)
    if not with_entropy:
        return picked
    entropy = -(logprobs.exp() * logprobs.nan_to_num(neginf=0.0)).sum(-1)
    return picked, torch.where(gen.mask, entropy, 0.0)
