"""Online-code minimum description length (Voita & Titov 2020), in bits: how extractable a label is
from a frozen representation.

N examples (x_i, y_i), K classes, are sent in blocks ending at 0.1, 0.2, 0.4, ... 50 and 100 % of N
(`block_ends`): the first with the uniform code, every later one with a FRESH probe trained on all
the examples before it:

    MDL = t_1 log2 K  +  sum_{i >= 1}  sum_{j in block i+1}  -log2 p_i(y_j | x_j)
    uniform codelength = N log2 K,   compression = uniform / MDL

A random label costs ~N log2 K bits (compression ~1). Relative MDL = MDL(spurious) / MDL(target):
above 1, the target is the MORE extractable feature. Bits, not nats (the paper's code mixes them).
"""

import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK_FRACTIONS = ("0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.0625", "0.125", "0.25", "0.5", "1")
PROBES = ("mlp", "linear")


def block_ends(n: int) -> list[int]:
    """End index of each block: floor(f n) for the fractions above, empty and repeated blocks dropped."""
    ends = []
    for fraction in BLOCK_FRACTIONS:
        end = math.floor(Fraction(fraction) * n)
        if end > (ends[-1] if ends else 0):
            ends.append(end)
    return ends


def interleave_classes(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An order spreading each class evenly: its j-th of n_c members (in random order) sits at (j + 0.5) / n_c."""
    key = np.empty(len(y))
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        key[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.argsort(key, kind="stable")


def codelength_bits(probe: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """sum_j -log2 p(y_j | x_j) under the probe."""
    with torch.no_grad():
        return F.cross_entropy(probe(x), y, reduction="sum").item() / math.log(2)


def fit_probe(kind: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, *, lr: float = 1e-3,
              batch_size: int = 64, max_epochs: int = 200, patience: int = 10) -> nn.Module:
    """A fresh probe trained with Adam, kept at its epoch of least loss on every 10th example (or the last)."""
    torch.manual_seed(seed)
    held_out = torch.arange(len(y)) % 10 == 9
    if not held_out.any():  # fewer than 10 examples: hold out the last one
        held_out[-1] = True
    train = ~held_out if (~held_out).any() else held_out
    x_train, y_train, x_val, y_val = x[train], y[train], x[held_out], y[held_out]
    probe = nn.Linear(x.size(1), num_classes) if kind == "linear" else nn.Sequential(
        nn.Linear(x.size(1), 64), nn.ReLU(), nn.Linear(64, num_classes))  # mlp: one hidden layer of 64
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    best, best_state, waited = float("inf"), None, 0
    for _ in range(max_epochs):
        for rows in torch.randperm(len(y_train)).split(batch_size):
            F.cross_entropy(probe(x_train[rows]), y_train[rows]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss = codelength_bits(probe, x_val, y_val)
        if loss < best:
            best, best_state, waited = loss, {k: v.clone() for k, v in probe.state_dict().items()}, 0
        else:
            waited += 1
            if waited >= patience:
                break
    probe.load_state_dict(best_state)
    return probe


def online_codelength(x: torch.Tensor, y: np.ndarray, num_classes: int, seed: int, probe: str = "mlp") -> dict:
    order = interleave_classes(y, np.random.default_rng(seed))
    x, y = x[torch.from_numpy(order)], torch.as_tensor(y[order], dtype=torch.long)
    ends = block_ends(len(y))
    bits = [ends[0] * math.log2(num_classes)]
    for start, end in zip(ends[:-1], ends[1:]):
        model = fit_probe(probe, x[:start], y[:start], num_classes, seed=seed * 1000 + start)
        bits.append(codelength_bits(model, x[start:end], y[start:end]))
    mdl, uniform = sum(bits), len(y) * math.log2(num_classes)
    return {"mdl_bits": mdl, "uniform_bits": uniform, "compression": uniform / mdl, "block_ends": ends,
            "block_bits": bits}


def mean_stderr(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def spearman(x: list[float], y: list[float], permutations: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Spearman's rho and its two-sided permutation p-value, (1 + #{|rho_perm| >= |rho|}) / (1 + permutations)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their average rank
            r[v == value] = r[v == value].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan"), 1.0
    rho = float(np.corrcoef(rx, ry)[0, 1])
    rng = np.random.default_rng(seed)
    null = np.array([np.corrcoef(rx, rng.permutation(ry))[0, 1] for _ in range(permutations)])
    return rho, float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + permutations))
