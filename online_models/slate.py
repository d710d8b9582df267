"""Slates: what a policy serves, how it is filled under the product's rules, and the ranker
protocol every policy fills it with.

- :class:`Slate` / :class:`SlatePick`: a served slate and its items (score, exact propensity,
  source, explanation, top feature contributions);
- :func:`fill`: position by position under :class:`SlateRules` (artist cap, discovery slots),
  each pick's propensity given the rules and the items above it;
- :class:`Ranker`: what a hybrid policy needs of its ranker (the linear bandits, the session
  DQN), so the policy never branches on the ranker's type;
- :func:`plackett_luce`, :func:`softmax_chooser`, :func:`uniform_chooser`: sampling with exact
  propensities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class SlatePick:
    track_idx: int
    score: float
    propensity: float
    source: str
    explanation: str
    why: tuple[list[str], list[float]] = ([], [])  # features and their value x weight, largest |share| first


@dataclass(frozen=True)
class Slate:
    picks: tuple[SlatePick, ...]
    slate_propensity: float
    policy_id: str
    policy_version: str


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


# --- position-by-position filling under slate rules -----------------------------------------
#: given the rows still allowed at this position, return (row, P(row | allowed), its score)
Chooser = Callable[[np.ndarray], tuple[int, float, float]]


class Ranker(Protocol):
    """What a hybrid policy asks of the model that ranks its candidates (one row of features per
    candidate; ``state`` is the session's, which only a session-aware ranker reads)."""

    policy_id: str
    policy_version: str

    def exploit_scores(self, features: Callable[[], np.ndarray], linear: Callable[[np.ndarray], np.ndarray],
                       state: Any) -> np.ndarray:
        """Exploit score per candidate. ``linear(theta)`` scores without building the features
        (the fast path a linear model takes); ``features()`` builds them."""
        ...

    def chooser(self, X: np.ndarray, rng: np.random.Generator, offset: np.ndarray | None = None,
                spread: np.ndarray | None = None, state: Any = None) -> Chooser:
        """How each position is drawn; ``offset`` / ``spread``: a listener layer's estimate and
        its uncertainty per candidate."""
        ...

    def contributions(self, X: np.ndarray) -> np.ndarray | None:
        """Per row and feature, its part of the exploit score (None: the score has no such split)."""
        ...

    def learn_slate(self, X: np.ndarray, rewards: tuple[float | None, ...], state: Any,
                    offset: np.ndarray | float) -> tuple[np.ndarray, np.ndarray | None]:
        """Learn from one closed slate (None: a row the listener never reached); returns the
        residual and weight of each reached row (what a listener layer learns from)."""
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, blob: bytes) -> None: ...


@dataclass(frozen=True)
class SlateRules:
    """Diversity rules every policy's slate obeys.

    - ``artist_cap``: at most this many tracks by one artist in a slate;
    - ``discovery_share``: this share of positions (spread evenly, never the first) is filled
      with a discovery for the listener (a track by an artist they have never been played, or
      a hidden gem) when any candidate is one;
    - ``friends_position``: this position (0-based; None: none) is filled with a track a listener
      they follow finished lately, when any candidate is one (the ranker still picks which).
    Recently played tracks never reach the slate: the caller excludes them from the candidates.
    """

    artist_cap: int = 2
    discovery_share: float = 0.2
    friends_position: int | None = 2

    def __post_init__(self) -> None:
        if self.artist_cap < 1:
            raise ValueError(f"artist_cap must be >= 1, got {self.artist_cap}")
        if not 0 <= self.discovery_share <= 1:
            raise ValueError(f"discovery_share must be in [0, 1], got {self.discovery_share}")

    def discovery_positions(self, k: int) -> frozenset[int]:
        m = int(round(self.discovery_share * k))
        if m <= 0 or k <= 1:
            return frozenset()
        m = min(m, k - 1)
        return frozenset(int(round((j + 1) * k / (m + 1))) for j in range(m)) - {0}


def fill(choose: Chooser, n: int, k: int, rules: SlateRules | None = None,
         artists: np.ndarray | None = None, discovery: np.ndarray | None = None,
         friends: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill up to ``k`` positions from ``n`` rows: (rows, propensities, scores).

    At each position the allowed rows are the unplaced ones that keep the artist cap (relaxed
    only when nothing else is left); at a discovery position, only discovery rows if any remain;
    at the friends position, only rows from the friends source if any remain.
    """
    remaining = np.ones(n, dtype=bool)
    capped = np.zeros(n, dtype=bool)  # rows whose artist has reached the cap
    counts: dict[int, int] = {}
    disc_pos = rules.discovery_positions(k) if rules is not None and discovery is not None else frozenset()
    order: list[int] = []
    props: list[float] = []
    scores: list[float] = []
    for pos in range(min(k, n)):
        allowed = remaining & ~capped
        if not allowed.any():  # the cap is relaxed only when nothing else is left
            allowed = remaining.copy()
        if pos in disc_pos:
            ok = allowed & discovery
            allowed = ok if ok.any() else allowed
        elif friends is not None and rules is not None and pos == rules.friends_position:
            ok = allowed & friends
            allowed = ok if ok.any() else allowed
        i, p, s = choose(allowed)
        remaining[i] = False
        if artists is not None:
            a = int(artists[i])
            counts[a] = counts.get(a, 0) + 1
            if rules is not None and counts[a] >= rules.artist_cap:
                capped |= artists == a
        order.append(i)
        props.append(p)
        scores.append(s)
    return np.array(order, dtype=np.int64), np.array(props), np.array(scores)


def softmax_chooser(scores: np.ndarray, temperature: float, rng: np.random.Generator,
                    floor: float = 0.0) -> Chooser:
    """P(row) ∝ exp(score / temperature) among the allowed rows, mixed with a uniform draw with
    probability ``floor`` (so every allowed row keeps at least floor / n_allowed: any other
    policy over these rows can be scored off-policy). Exact propensities."""
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    z = scores / temperature

    def choose(allowed: np.ndarray) -> tuple[int, float, float]:
        zz = np.where(allowed, z, -np.inf)
        w = np.exp(zz - zz.max())
        p = w / w.sum()
        if floor > 0:
            p = (1 - floor) * p + floor * allowed / allowed.sum()
        i = int(rng.choice(len(p), p=p))
        return i, float(p[i]), float(scores[i])

    return choose


def uniform_chooser(rng: np.random.Generator) -> Chooser:
    def choose(allowed: np.ndarray) -> tuple[int, float, float]:
        rows = np.flatnonzero(allowed)
        return int(rng.choice(rows)), 1.0 / len(rows), 0.0

    return choose
