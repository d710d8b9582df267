"""Sampling a ranked slate with exact propensities (Plackett-Luce via the Gumbel top-k trick)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampledSlate:
    indices: np.ndarray  # candidate indices, best first
    propensities: np.ndarray  # P(item at this position | the items placed above it)
    slate_propensity: float  # product of the above: P(this exact ranking)


def plackett_luce(
    logits: np.ndarray, k: int, rng: np.random.Generator, allowed: np.ndarray | None = None
) -> SampledSlate:
    """Draw ``k`` distinct items, position by position, with P(i) ∝ exp(logit_i) among the
    items not yet placed. Adding Gumbel noise and taking the top k draws exactly that ranking
    distribution in one vectorised step; the propensities are then computed in closed form.

    ``allowed`` (bool mask) removes items from the draw (they get probability 0).
    """
    if logits.ndim != 1:
        raise ValueError("logits must be one-dimensional")
    z = logits.astype(np.float64, copy=True)
    if allowed is not None:
        z[~allowed] = -np.inf
    n_ok = int(np.isfinite(z).sum())
    k = min(k, n_ok)
    if k <= 0:
        return SampledSlate(np.empty(0, dtype=np.int64), np.empty(0), 1.0)
    keys = z + rng.gumbel(size=z.shape[0])
    top = np.argpartition(-keys, k - 1)[:k]
    order = top[np.argsort(-keys[top], kind="stable")]
    w = np.exp(z - z[np.isfinite(z)].max())  # exp(-inf) = 0 for removed items
    remaining = w.sum() - np.concatenate(([0.0], np.cumsum(w[order])[:-1]))
    props = np.clip(w[order] / remaining, 0.0, 1.0)
    return SampledSlate(order.astype(np.int64), props, float(np.prod(props)))
