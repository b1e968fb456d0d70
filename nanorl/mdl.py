"""Online-code minimum description length (Voita & Titov 2020), in bits: how extractable a label is
from a frozen representation.

N examples (x_i, y_i), K classes, are sent in blocks ending at 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25,
12.5, 25, 50 and 100 % of N (`block_ends`). The first block is sent with the uniform code; every
later block with a FRESH probe trained on all the examples before it:

    MDL = t_1 log2 K  +  sum_{i >= 1}  sum_{j in block i+1}  -log2 p_i(y_j | x_j)
    uniform codelength = N log2 K,   compression = uniform / MDL

A label the representation determines is cheap to send once a few examples are seen (high
compression); a label with nothing to learn from costs ~N log2 K bits (compression ~1), which is
what the random-label control must show. Relative MDL = MDL(spurious) / MDL(target): above 1, the
target is the MORE extractable feature.

Details that matter:
1. Bits, not nats: cross-entropy is in nats, so it is divided by ln 2 (the paper's reference code
   mixes the two).
2. Examples are ordered so that each class is spread evenly through the sequence
   (`interleave_classes`): the first, tiny blocks then hold both classes.
3. Each probe early-stops on a held-out slice of its own training prefix (every 10th example),
   never on the block it is about to encode.
4. Probes: "mlp" (one hidden ReLU layer, the default) or "linear", on the inputs as given.
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
    """An order of the examples in which every class is spread evenly: within a class the order is
    random, and its j-th member of n_c sits at relative position (j + 0.5) / n_c."""
    key = np.empty(len(y))
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        key[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.argsort(key, kind="stable")


def make_probe(kind: str, dim: int, num_classes: int, hidden: int = 64) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def codelength_bits(probe: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """sum_j -log2 p(y_j | x_j) under the probe."""
    with torch.no_grad():
        return F.cross_entropy(probe(x), y, reduction="sum").item() / math.log(2)


def fit_probe(kind: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, *, lr: float = 1e-3,
              batch_size: int = 64, max_epochs: int = 200, patience: int = 10) -> nn.Module:
    """A fresh probe trained with Adam on (x, y); the epoch with the lowest loss on the held-out
    slice (every 10th example; with one example, the example itself) is the one kept."""
    torch.manual_seed(seed)
    held_out = torch.arange(len(y)) % 10 == 9
    if not held_out.any() or held_out.all():
        held_out = torch.zeros(len(y), dtype=torch.bool)
        held_out[-1] = True
    train = ~held_out if (~held_out).any() else held_out
    x_train, y_train, x_val, y_val = x[train], y[train], x[held_out], y[held_out]
    probe = make_probe(kind, x.size(1), num_classes)
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
    """The online code of labels y (N,) given inputs x (N, dim); see the module docstring."""
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
    """Mean and standard error of the mean (0 for one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def spearman(x: list[float], y: list[float], permutations: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Spearman's rho (Pearson correlation of average ranks) and its two-sided permutation p-value,
    (1 + #{|rho_perm| >= |rho|}) / (1 + permutations). rho is nan when either side is constant."""
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
