"""Offline evaluation, pure: off-policy estimators over logged propensities, replay, regret, and
ranking metrics. Arrays in, numbers out; no I/O, no clock.

Off-policy estimators score a *target* policy on data a *logging* policy collected, as long as
every logged action carries the probability the logging policy had of taking it:

- IPS:   mean(w * r),                         w = pi_target(a|x) / pi_logging(a|x)
- SNIPS: sum(w * r) / sum(w)                  (self-normalised: lower variance, small bias)
- DR:    mean(sum_a pi_target(a|x) q(x,a) + w * (r - q(x, a_logged)))   (doubly robust)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _weights(target: np.ndarray, propensity: np.ndarray, clip: float | None) -> np.ndarray:
    target = np.asarray(target, dtype=float)
    propensity = np.asarray(propensity, dtype=float)
    if target.shape != propensity.shape:
        raise ValueError("target and logged propensities must have the same length")
    if np.any(propensity <= 0) or np.any(propensity > 1):
        raise ValueError("logged propensities must be in (0, 1]; without them off-policy evaluation is impossible")
    if np.any(target < 0) or np.any(target > 1):
        raise ValueError("target probabilities must be in [0, 1]")
    w = target / propensity
    return np.minimum(w, clip) if clip is not None else w


def ips(reward: np.ndarray, target: np.ndarray, propensity: np.ndarray, clip: float | None = None) -> float:
    """Inverse propensity scoring estimate of the target policy's mean reward."""
    w = _weights(target, propensity, clip)
    return float(np.mean(w * np.asarray(reward, dtype=float))) if len(w) else float("nan")


def snips(reward: np.ndarray, target: np.ndarray, propensity: np.ndarray, clip: float | None = None) -> float:
    """Self-normalised IPS."""
    w = _weights(target, propensity, clip)
    total = w.sum()
    return float(np.sum(w * np.asarray(reward, dtype=float)) / total) if total > 0 else float("nan")


def doubly_robust(reward: np.ndarray, target: np.ndarray, propensity: np.ndarray, q_logged: np.ndarray,
                  q_target: np.ndarray, clip: float | None = None) -> float:
    """Doubly robust estimate. ``q_logged``: the reward model at the logged action;
    ``q_target``: the reward model's expectation under the target policy, sum_a pi(a|x) q(x,a)."""
    w = _weights(target, propensity, clip)
    r = np.asarray(reward, dtype=float)
    return float(np.mean(np.asarray(q_target, dtype=float) + w * (r - np.asarray(q_logged, dtype=float))))


def replay(reward: np.ndarray, logged_action: Sequence[object], chosen_action: Sequence[object]) -> tuple[float, int]:
    """Replay evaluation (Li et al. 2011): the mean reward over the events where the policy
    chose what the (uniformly random) logger did; returns (mean reward, events matched)."""
    r = np.asarray(reward, dtype=float)
    match = np.array([a == b for a, b in zip(logged_action, chosen_action, strict=True)], dtype=bool)
    n = int(match.sum())
    return (float(r[match].mean()) if n else float("nan")), n


def cumulative_regret(oracle_reward: np.ndarray, policy_reward: np.ndarray) -> np.ndarray:
    """Running sum of (oracle's expected reward - policy's expected reward), per step."""
    return np.cumsum(np.asarray(oracle_reward, dtype=float) - np.asarray(policy_reward, dtype=float))


# --- ranking metrics ---------------------------------------------------------------------


def precision_at_k(ranked: Sequence[object], relevant: set[object], k: int) -> float:
    if k <= 0:
        raise ValueError("k must be >= 1")
    return sum(1 for item in ranked[:k] if item in relevant) / k


def recall_at_k(ranked: Sequence[object], relevant: set[object], k: int) -> float:
    if k <= 0:
        raise ValueError("k must be >= 1")
    return sum(1 for item in ranked[:k] if item in relevant) / len(relevant) if relevant else 0.0


def average_precision(ranked: Sequence[object], relevant: set[object], k: int | None = None) -> float:
    """AP@k (MAP is its mean over users): mean of precision at each relevant hit."""
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k] if k else ranked, start=1):
        if item in relevant:
            hits += 1
            total += hits / i
    denom = min(len(relevant), k) if k else len(relevant)
    return total / denom if denom else 0.0


def reciprocal_rank(ranked: Sequence[object], relevant: set[object]) -> float:
    """1 / rank of the first relevant item (MRR is its mean over users)."""
    for i, item in enumerate(ranked, start=1):
        if item in relevant:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranked: Sequence[object], gains: dict[object, float], k: int) -> float:
    """NDCG@k with graded relevance ``gains`` (items absent have gain 0)."""
    if k <= 0:
        raise ValueError("k must be >= 1")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = sum(gains.get(item, 0.0) * d for item, d in zip(ranked[:k], discounts, strict=False))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g * d for g, d in zip(ideal, discounts, strict=False))
    return float(dcg / idcg) if idcg > 0 else 0.0


@dataclass(frozen=True)
class RankingReport:
    precision: float
    recall: float
    map: float
    mrr: float
    ndcg: float
    users: int


def ranking_report(rankings: dict[object, Sequence[object]], truth: dict[object, dict[object, float]],
                   k: int) -> RankingReport:
    """Mean ranking metrics over users that have relevant items in ``truth`` (user -> item -> gain)."""
    rows = []
    for user, gains in truth.items():
        relevant = {i for i, g in gains.items() if g > 0}
        if not relevant:
            continue
        ranked = list(rankings.get(user, ()))
        rows.append((precision_at_k(ranked, relevant, k), recall_at_k(ranked, relevant, k),
                     average_precision(ranked, relevant, k), reciprocal_rank(ranked[:k], relevant),
                     ndcg_at_k(ranked, gains, k)))
    if not rows:
        return RankingReport(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0)
    m = np.mean(np.array(rows), axis=0)
    return RankingReport(*(float(x) for x in m), users=len(rows))
