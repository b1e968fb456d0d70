"""The maths of policy fine-tuning, as pure tensor functions: KL, advantages, and the losses of
PPO, GRPO, DPO / IPO, online DPO and Expert Iteration. No models and no optimisers live here:
the training script samples with nanorl.engine, recomputes logprobs, and calls these.

Conventions. N rows (responses), T response columns. Per-token tensors are (N, T) and come with
a bool `mask`, True on the response tokens up to and including EOS (the prompt is never in it;
columns after EOS are padding). Sequence-level tensors are (N,). Samples of one prompt are
consecutive rows: a "group" is a block of `group_size` rows.

    rho_t   = exp(logp_theta(y_t) - logp_old(y_t))                      probability ratio
    logr_t  = logp_ref(y_t) - logp_theta(y_t)
    k1      = -logr_t          k3 = exp(logr_t) - 1 - logr_t >= 0        KL(theta || ref) estimators

PPO (RLHF style, Ouyang et al. 2022; "N implementation details of RLHF with PPO")
    r_t     = -beta * k1_t  (+ score on the last response token)
    delta_t = r_t + gamma V_{t+1} - V_t,   V after the last token = 0
    A_t     = sum_l (gamma lambda)^l delta_{t+l},    R_t = A_t + V_t,   A <- whiten(A)
    L_pi    = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1-eps, 1+eps))
    L_V     = 0.5 mean_t max((V_t - R_t)^2, (clip(V_t, V_old-eps_v, V_old+eps_v) - R_t)^2)

GRPO (Shao et al. 2024, DeepSeekMath), G samples per prompt, a scalar reward R_i each
    A_i     = (R_i - mean_G R) / (std_G R + eps)               the same for every token of y_i
    L       = agg_t [ -min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) + beta k3_t ]

DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023), y_c preferred to y_r
    logp(y|x) = sum_t logp(y_t | x, y_<t)                      response tokens only
    h       = (logp(y_c) - logp_ref(y_c)) - (logp(y_r) - logp_ref(y_r))
    L_DPO   = -log sigmoid(beta h)           L_IPO = (h' - 1/(2 beta))^2
    where h' uses per-token AVERAGED log-ratios (each log-ratio divided by its response length)

Expert Iteration (Anthony et al. 2017; STaR): keep verifier-correct, de-duplicated samples, then
    L_SFT   = -mean over response tokens of logp(y_t | x, y_<t)

Deviations from the papers
- Missing EOS: we subtract a penalty from the score of truncated responses (TRL's
  `missing_eos_penalty`); the details study replaces the score with -1 instead.
- GRPO's loss aggregation defaults to "dapo" (token sum / active tokens of the whole batch), not
  the paper's per-sequence mean; see `aggregate`. `group_advantages(..., scale=False)` gives
  Dr. GRPO's unscaled advantages R_i - mean_G R.
- IPO: the per-token averaged log-ratios follow TRL's implementation.

Implementation details that matter (numbered as in the cleanrl docs)
1. Tokens after EOS count nowhere. Every function masks its inputs with torch.where BEFORE any
   exp or product, so garbage in padded slots (even inf) reaches neither a loss nor a gradient.
   The mask of a row is a prefix of its columns (the response starts at column 0).
2. The score is added at the LAST masked token of each row: the EOS, or the last sampled token
   when the response was truncated (and then penalised, see `missing_eos_penalty`).
3. Two KL estimators: PPO puts k1 (unbiased, may be negative per token) into the reward; GRPO puts
   k3 (>= 0, lower variance) into the loss. Both are per token, summed or averaged over the mask.
4. GAE: V beyond the last response token is 0 (the episode ends there); gamma = 1 by default.
   Returns are A + V computed BEFORE whitening; whitening uses the masked mean and the unbiased
   masked variance (as TRL) and leaves padding at 0.
5. Logprobs are recomputed at the sampling temperature (and top-k / top-p), or rho != 1 before the
   first update (the classic "negative KL" report). In bf16 the KV-cache sampler and the full
   forward differ slightly: there old logprobs come from a no-grad recompute.
6. With one pass per batch rho is exactly 1 and the logged loss is ~0 (advantages are centred)
   although its gradient is not: watch the gradient norm.
7. Clipping stats: `clipfrac` is the share of tokens whose clipped term is the active one (their
   gradient is zero); `approx_kl` is k3 between the old (sampling) and the new policy, the
   estimate of KL(old || new) from samples of old.
8. Value clipping around the old values, with its own eps; explained variance 1 - Var(R - V) /
   Var(R) tells whether the value head is learning.
9. Groups whose G rewards are all equal get advantage EXACTLY 0 (not 0 / eps rounding noise):
   no policy gradient from them, only the KL term.
10. Loss aggregation: see `aggregate`; pass the token count of the WHOLE batch as `total_tokens`.
11. DPO sums response logprobs (a sum is the sequence's log-likelihood); IPO averages them.
12. Online DPO pairs the best and the worst sample of each group and skips groups with no
    preference (all scores equal).
"""

import torch
import torch.nn.functional as F

AGGREGATIONS = ("dapo", "grpo", "dr_grpo")


# ----------------------------------------------------------------------------- masked statistics

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the True entries of mask (all of them, or along `dim`). Empty -> 0."""
    x = torch.where(mask, x, 0.0)
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries of x (Bessel-corrected, like TRL)."""
    centred = torch.where(mask, x - masked_mean(x, mask), 0.0)
    return centred.pow(2).sum() / (mask.sum() - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  all_reduce=lambda t: t) -> torch.Tensor:
    """(x - mean) / std over the masked entries, padding left at 0; shift_mean=False only rescales (as TRL
    does for rewards). Under DDP pass a summing all_reduce: the statistics span every rank's tokens."""
    count = all_reduce(mask.sum().to(x.dtype))
    mean = all_reduce(torch.where(mask, x, 0.0).sum()) / count.clamp(min=1)
    var = all_reduce(torch.where(mask, x - mean, 0.0).pow(2).sum()) / (count - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


# ----------------------------------------------------------------------------- KL estimators

def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logp - logp_ref per token (unbiased estimate of KL(policy || ref), can be < 0)."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(r) - 1 - r with r = logp_ref - logp per token (unbiased and always >= 0)."""
    r = ref_logprobs - logprobs
    return torch.exp(r) - 1 - r


# ----------------------------------------------------------------------------- PPO

def last_index(mask: torch.Tensor) -> torch.Tensor:
    """(N,) column of the last True entry of each row of mask (N, T); 0 for an empty row."""
    columns = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    return torch.where(mask, columns, 0).max(dim=1).values


def missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """(N,) scores, minus `penalty` for the rows that were truncated before emitting EOS."""
    return torch.where(ended, scores, scores - penalty)


def ppo_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(N, T) rewards: -kl_coef * k1 on each response token, + the (N,) score at the last one."""
    kl = kl_k1(torch.where(mask, logprobs, 0.0), torch.where(mask, ref_logprobs, 0.0))
    rewards = -kl_coef * kl
    score = torch.where(mask.any(1), scores.to(rewards.dtype), 0.0)
    return rewards.scatter_add(1, last_index(mask)[:, None], score[:, None])


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) (N, T), 0 off the mask, by GAE backwards over the T columns; returns = A + V.
    V beyond a row's last response token is 0. No gradient: these are targets."""
    rewards, values = torch.where(mask, rewards, 0.0), torch.where(mask, values, 0.0)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(mask[:, t], delta + gamma * lam * running, 0.0)
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, torch.where(mask, advantages + values, 0.0)


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token -min(rho A, clip(rho) A) (N, T), 0 off the mask; also rho and where clipping is active.
    advantages: (N, T), or anything that broadcasts to it, e.g. (N, 1)."""
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0)
    advantages = torch.where(mask, advantages, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    per_token = torch.where(mask, torch.maximum(unclipped, clipped), 0.0)
    return per_token, ratio, mask & (clipped > unclipped)


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2,
                    total_tokens: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped policy loss: masked mean of max(-A rho, -A clip(rho, 1-eps, 1+eps)). All (N, T).

    The mean divides by total_tokens (default: this batch's), as in "dapo": pass the whole
    minibatch's count over micro-batches and ranks to make the gradient split-invariant."""
    per_token, ratio, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip)
    loss = aggregate(per_token, mask, "dapo", total_tokens=total_tokens)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean(clipped.float(), mask).item(),
                 "approx_kl": masked_mean(kl_k3(torch.where(mask, old_logprobs, 0.0),
                                                torch.where(mask, logprobs, 0.0)), mask).item(),
                 "ratio_mean": masked_mean(ratio, mask).item()}
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float = 0.2,
                   total_tokens: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss 0.5 * masked mean of max((V-R)^2, (clip(V, V_old +- eps) - R)^2). All (N, T).
    total_tokens as in ppo_policy_loss."""
    values = torch.where(mask, values, 0.0)
    old_values, returns = torch.where(mask, old_values, 0.0), torch.where(mask, returns, 0.0)
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_loss, clipped_loss = (values - returns).pow(2), (clipped_values - returns).pow(2)
    loss = 0.5 * aggregate(torch.maximum(unclipped_loss, clipped_loss), mask, "dapo", total_tokens=total_tokens)
    with torch.no_grad():
        residual_var = masked_var(returns - values, mask)
        stats = {"vf_clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask).item(),
                 "explained_variance": (1 - residual_var / masked_var(returns, mask).clamp(min=1e-8)).item()}
    return loss, stats


# ----------------------------------------------------------------------------- GRPO

def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4,
                     scale: bool = True) -> torch.Tensor:
    """(N,) advantages (R - mean_G) / (std_G + eps) over groups of group_size consecutive rows; std unbiased
    (as TRL); scale=False gives Dr. GRPO's R - mean_G."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    advantages = groups - groups.mean(1, keepdim=True)
    if scale:
        advantages = advantages / (groups.std(1, keepdim=True) + eps)
    all_equal = (groups == groups[:, :1]).all(1, keepdim=True)
    return torch.where(all_equal, 0.0, advantages).view(-1)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "dapo",
              total_tokens: int | torch.Tensor | None = None, max_len: int | None = None,
              total_seqs: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss (N, T) to a scalar. The three known choices:

    "dapo"    sum_{i,t} l_it / total_tokens. total_tokens defaults to mask.sum() of this batch; pass
              the token count of the WHOLE batch (all micro-batches, all ranks) and the summed
              micro-batch losses equal the whole-batch loss: invariant to how the batch is split.
              Every token weighs the same.
    "grpo"    (1 / total_seqs) sum_i (1/|y_i|) sum_t l_it, the GRPO paper's formula (total_seqs
              defaults to N). Length-biased: a token of a long response weighs less, so long wrong
              answers are penalised less per token (Dr. GRPO, Liu et al. 2025). It is split-
              invariant only if total_seqs of the whole batch is passed and no row is split.
    "dr_grpo" sum_{i,t} l_it / (total_seqs * max_len): a constant normaliser (max_len defaults to
              T, total_seqs to N); unbiased, but the loss scale depends on max_len.

    Normalising by each micro-batch's own token count (as TRL once did) makes the gradient depend on
    gradient accumulation and world size; "dapo" with the whole batch's count does not.
    """
    per_token = torch.where(mask, per_token, 0.0)
    if mode == "dapo":
        denominator = mask.sum().clamp(min=1) if total_tokens is None else total_tokens
        return per_token.sum() / denominator
    if mode == "grpo":
        return masked_mean(per_token, mask, dim=1).sum() / (total_seqs or mask.size(0))
    if mode == "dr_grpo":
        return per_token.sum() / ((total_seqs or mask.size(0)) * (max_len or mask.size(1)))
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2, kl_coef: float = 0.0,
              aggregation: str = "dapo", total_tokens: int | torch.Tensor | None = None,
              total_seqs: int | None = None, max_len: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss: per token -min(rho A, clip(rho) A) + kl_coef * k3(logp, logp_ref), aggregated.
    advantages: (N,), broadcast over tokens; ref_logprobs may be None when kl_coef == 0."""
    if kl_coef and ref_logprobs is None:
        raise ValueError("grpo_loss: kl_coef > 0 needs ref_logprobs (the reference model's logprobs)")
    per_token, ratio, clipped = clipped_surrogate(logprobs, old_logprobs, advantages[:, None], mask, clip)
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None:
        kl = torch.where(mask, kl_k3(torch.where(mask, logprobs, 0.0), torch.where(mask, ref_logprobs, 0.0)), 0.0)
    if kl_coef:
        per_token = per_token + kl_coef * kl
    loss = aggregate(per_token, mask, aggregation, total_tokens=total_tokens, max_len=max_len, total_seqs=total_seqs)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean(clipped.float(), mask).item(),
                 "kl": masked_mean(kl, mask).item(),
                 "approx_kl": masked_mean(kl_k3(torch.where(mask, old_logprobs, 0.0),
                                                torch.where(mask, logprobs, 0.0)), mask).item()}
    return loss, stats


# ----------------------------------------------------------------------------- DPO, online DPO

def sequence_logprob(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) log p(y | x): the SUM of the (N, T) token logprobs over the response tokens."""
    return torch.where(mask, token_logprobs, 0.0).sum(1)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, kind: str = "sigmoid",
             chosen_len: torch.Tensor | None = None,
             rejected_len: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO (kind="sigmoid") or IPO (kind="ipo") loss from (N,) sequence logprobs (sums over tokens); IPO
    divides each log-ratio by its response length (chosen_len, rejected_len). stats: reward_accuracy
    (implicit reward chosen > rejected) and margin (mean beta * h)."""
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif kind == "ipo":
        if chosen_len is None or rejected_len is None:
            raise ValueError("IPO needs chosen_len and rejected_len (response lengths in tokens)")
        chosen_ratio, rejected_ratio = chosen_ratio / chosen_len, rejected_ratio / rejected_len
        losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)).pow(2)
    else:
        raise ValueError(f"unknown DPO loss kind {kind!r}; choose 'sigmoid' or 'ipo'")
    with torch.no_grad():
        margin = beta * (chosen_ratio - rejected_ratio)
        stats = {"reward_accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}
    return losses.mean(), stats


def best_worst_pairs(scores: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Online DPO pairs: (chosen, rejected) row indices, the argmax and argmin (first on ties) of each
    group of group_size consecutive rows whose scores are not all equal."""
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    groups = scores.view(-1, group_size)
    keep = groups.max(1).values != groups.min(1).values
    offset = torch.arange(groups.size(0), device=scores.device) * group_size
    return (offset + groups.argmax(1))[keep], (offset + groups.argmin(1))[keep]


# ----------------------------------------------------------------------------- SFT, Expert Iteration

def sft_loss(token_logprobs: torch.Tensor, mask: torch.Tensor,
             total_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on response tokens only: -(masked mean of the (N, T) token logprobs); pass the whole
    batch's token count as total_tokens, as in "dapo"."""
    return aggregate(-token_logprobs, mask, "dapo", total_tokens=total_tokens)


def dedupe_correct(prompt_ids: list[int], responses: list[list[int]], correct: list[bool]) -> list[int]:
    """Expert Iteration filter: indices of the correct samples, first of each identical (prompt, response)."""
    seen, kept = set(), []
    for i, (prompt_id, response, ok) in enumerate(zip(prompt_ids, responses, correct, strict=True)):
        key = (prompt_id, tuple(response))
        if ok and key not in seen:
            seen.add(key)
            kept.append(i)
    return kept
