"""Reward Learning on Policy (RLP, arXiv 2403.19279): retrain the reward model on the RL policy's own
samples (docs/rlp/README.md).

UML (multi-view information bottleneck, Federici et al. 2020). Views v1, v2: two responses to one
prompt. Two heads on the RM's final hidden state at the last token give the mean and softplus std
of a factorised Gaussian p(z | v); z1 ~ p(z | v1), z2 ~ p(z | v2) (reparameterised):

    L_M = -I_JS(z1; z2) + beta * (KL(p(z|v1) || p(z|v2)) + KL(p(z|v2) || p(z|v1))) / 2
    I_JS = E_joint[-softplus(-T(z1, z2))] - E_marginal[softplus(T(z1, z2'))]

T: an MLP critic on concat(z1, z2); z2': the batch rolled by one. beta grows log-linearly from 1e-3 to 1.

SPG (self-consistency): a prompt's n responses are clustered by final answer; confidence =
|largest cluster| / n. Kept if confidence >= gamma, that cluster is strictly largest and some response
is outside it: chosen = its member the RM scores highest, rejected = a seeded random outsider.

RM objective: Bradley-Terry over the original pairs D plus the synthetic pairs, + lambda L_M.
"""

import random
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanorl.engine import Generation, positions_of
from nanorl.reward import ScalarModel
from nanorl.rl import last_index


class MultiViewHeads(nn.Module):
    """Mean and std heads that encode a hidden state as a Gaussian over z, and the MI critic."""

    def __init__(self, n_embd: int, z_dim: int = 32, hidden: int = 128):
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(n_embd, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.std = nn.Sequential(nn.Linear(n_embd, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.critic = nn.Sequential(nn.Linear(2 * z_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), F.softplus(self.std(h)) + 1e-6

    def critic_scores(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([z1, z2], -1)).squeeze(-1)


def js_mutual_information(critic_scores_joint: torch.Tensor, critic_scores_marginal: torch.Tensor) -> torch.Tensor:
    """The Jensen-Shannon lower bound on I(z1; z2) from critic scores of joint and shuffled pairs."""
    return (-F.softplus(-critic_scores_joint)).mean() - F.softplus(critic_scores_marginal).mean()


def gaussian_kl(mu1, std1, mu2, std2) -> torch.Tensor:
    """KL(N(mu1, std1^2) || N(mu2, std2^2)) of factorised Gaussians, summed over z, per row."""
    return (torch.log(std2 / std1) + (std1 ** 2 + (mu1 - mu2) ** 2) / (2 * std2 ** 2) - 0.5).sum(-1)


def symmetric_kl(mu1, std1, mu2, std2) -> torch.Tensor:
    """(KL(p1 || p2) + KL(p2 || p1)) / 2, per row."""
    return (gaussian_kl(mu1, std1, mu2, std2) + gaussian_kl(mu2, std2, mu1, std1)) / 2


def kl_beta(step: int, total: int, start: float = 1e-3, end: float = 1.0) -> float:
    """beta grows log-linearly from `start` at step 0 to `end` at the last step."""
    return start * (end / start) ** (step / max(1, total - 1))


def last_hidden(model: ScalarModel, gen: Generation) -> torch.Tensor:
    """(N, n_embd) the RM backbone's final hidden state at each row's last real token (where r is read)."""
    seq, valid = gen.sequences()
    hidden = model.backbone.hidden_states(seq, positions=positions_of(valid), valid=valid)
    return hidden[torch.arange(len(hidden), device=hidden.device), last_index(valid)]


def uml_loss(heads: MultiViewHeads, h1: torch.Tensor, h2: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """L_M for a batch of view pairs (row i of h1 and of h2: two responses to prompt i)."""
    (mu1, std1), (mu2, std2) = heads.encode(h1), heads.encode(h2)
    z1, z2 = mu1 + std1 * torch.randn_like(std1), mu2 + std2 * torch.randn_like(std2)
    mi = js_mutual_information(heads.critic_scores(z1, z2), heads.critic_scores(z1, z2.roll(1, 0)))
    skl = symmetric_kl(mu1, std1, mu2, std2).mean()
    return -mi + beta * skl, {"mi_js": mi.item(), "skl": skl.item(), "beta": beta}


def answer_clusters(answers: list) -> dict:
    """{answer: [indices]} of the responses that gave an answer, in order of first appearance."""
    clusters = defaultdict(list)
    for i, answer in enumerate(answers):
        if answer is not None:
            clusters[answer].append(i)
    return dict(clusters)


def largest_cluster(answers: list) -> tuple[list[int], float]:
    """(members, confidence = size / n) of the strictly largest answer cluster; ([], 0) on a tie or none."""
    sizes = sorted((len(members) for members in answer_clusters(answers).values()), reverse=True)
    if not sizes or (len(sizes) > 1 and sizes[0] == sizes[1]):
        return [], 0.0
    members = next(m for m in answer_clusters(answers).values() if len(m) == sizes[0])
    return members, sizes[0] / len(answers)


def synthetic_pair(answers: list, scores: list[float], gamma: float, rng: random.Random) -> tuple[int, int] | None:
    """(chosen, rejected) indices among one prompt's n responses, or None when the prompt is not kept."""
    members, confidence = largest_cluster(answers)
    outside = [i for i in range(len(answers)) if i not in members]
    if not members or confidence < gamma or not outside:
        return None
    return max(members, key=lambda i: scores[i]), rng.choice(outside)


def confidence_histogram(confidences: list[float], gammas=(0.0, 0.3, 0.5, 0.7)) -> dict:
    """Share of prompts whose confidence reaches each gamma (what a gamma sweep keeps)."""
    return {str(g): sum(c >= g for c in confidences) / max(1, len(confidences)) for g in gammas}
