"""Contextual linear bandits that re-rank candidates into a slate, vectorised with numpy.

One shared linear model over candidate feature vectors x (user x track x context features,
built by the caller): reward ~ x . theta. Sufficient statistics are A = I*l2 + sum x x^T and
b = sum r x; A's inverse is kept up to date with Sherman-Morrison (O(d^2) per update), so a slate
of k from n candidates costs one (n x d) @ (d x d) product.

- LinUCB:      score = x.theta + alpha * sqrt(x^T A^-1 x); deterministic top-k (propensity 1).
- LinTS:       score = x.theta~ with theta~ ~ N(theta, v^2 A^-1); propensities estimated by
               re-drawing ``propensity_draws`` times (Thompson sampling has no closed form).
- EpsGreedy:   each position: the best remaining candidate with prob 1-eps, else uniform among
               the remaining; exact propensities.

Statistics are additive, so workers can exchange ``delta()``s and ``merge()`` them. Models are
pure: no I/O, no clock, randomness only from the generator passed in.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranked:
    indices: np.ndarray  # candidate rows, best first
    scores: np.ndarray  # the score each had when placed
    propensities: np.ndarray  # P(this candidate at this position | the ones above it)
    exact: bool  # False when propensities are Monte-Carlo estimates


class LinearBandit:
    policy_id = "linear"
    policy_version = "1"

    def __init__(self, n_features: int, *, l2: float = 1.0) -> None:
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.d = n_features
        self.l2 = l2
        self.A_inv = np.eye(n_features) / l2
        self.b = np.zeros(n_features)
        self._delta_A = np.zeros((n_features, n_features))
        self._delta_b = np.zeros(n_features)
        self.n_updates = 0

    @property
    def theta(self) -> np.ndarray:
        return self.A_inv @ self.b

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.d:
            raise ValueError(f"features must be (n_candidates, {self.d}), got {X.shape}")
        return X

    def update(self, X: np.ndarray, rewards: np.ndarray) -> None:
        """Learn from shown items' features and their rewards (one row per item)."""
        X = self._check(X)
        rewards = np.asarray(rewards, dtype=float)
        for x, r in zip(X, rewards, strict=True):
            Ax = self.A_inv @ x
            self.A_inv -= np.outer(Ax, Ax) / (1.0 + x @ Ax)
            self.b += r * x
            self._delta_A += np.outer(x, x)
            self._delta_b += r * x
            self.n_updates += 1

    def delta(self) -> tuple[np.ndarray, np.ndarray]:
        """The statistics learned since the last call (to publish to other workers)."""
        out = (self._delta_A.copy(), self._delta_b.copy())
        self._delta_A[:] = 0
        self._delta_b[:] = 0
        return out

    def merge(self, delta: tuple[np.ndarray, np.ndarray]) -> None:
        """Add another worker's statistics (A += dA, b += db)."""
        dA, db = delta
        A = np.linalg.inv(self.A_inv) + dA
        self.A_inv = np.linalg.inv(A)
        self.b = self.b + db

    def rank(self, X: np.ndarray, k: int, rng: np.random.Generator) -> Ranked:
        raise NotImplementedError

    def snapshot(self) -> bytes:
        return pickle.dumps(self.__dict__)

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        if state.get("d") != self.d:
            raise ValueError(f"snapshot has {state.get('d')} features, this model {self.d}")
        self.__dict__.update(state)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return top[np.lexsort((top, -scores[top]))]  # ties: lower row first


class LinUCB(LinearBandit):
    policy_id = "linucb"

    def __init__(self, n_features: int, *, alpha: float = 1.0, l2: float = 1.0) -> None:
        super().__init__(n_features, l2=l2)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def rank(self, X: np.ndarray, k: int, rng: np.random.Generator) -> Ranked:
        X = self._check(X)
        bonus = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", X, self.A_inv, X), 0.0))
        scores = X @ self.theta + self.alpha * bonus
        order = _top_k(scores, k)
        return Ranked(order, scores[order], np.ones(len(order)), exact=True)


class LinTS(LinearBandit):
    policy_id = "lints"

    def __init__(self, n_features: int, *, v: float = 0.5, l2: float = 1.0, propensity_draws: int = 100) -> None:
        super().__init__(n_features, l2=l2)
        if v <= 0:
            raise ValueError(f"v must be > 0, got {v}")
        if propensity_draws < 1:
            raise ValueError("propensity_draws must be >= 1")
        self.v = v
        self.propensity_draws = propensity_draws

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cov = self.v**2 * (self.A_inv + self.A_inv.T) / 2
        L = np.linalg.cholesky(cov + 1e-12 * np.eye(self.d))
        return self.theta + rng.standard_normal((n, self.d)) @ L.T

    def rank(self, X: np.ndarray, k: int, rng: np.random.Generator) -> Ranked:
        X = self._check(X)
        thetas = self._draw(rng, 1 + self.propensity_draws)
        all_scores = X @ thetas.T  # (n_candidates, draws)
        order = _top_k(all_scores[:, 0], k)
        # estimate P(item at position j | items above) from the extra draws
        props = np.empty(len(order))
        alive = np.ones(all_scores.shape[1] - 1, dtype=bool)
        extra = all_scores[:, 1:]
        remaining = np.ones(len(X), dtype=bool)
        for j, i in enumerate(order):
            masked = np.where(remaining[:, None], extra, -np.inf)
            winners = masked.argmax(axis=0)
            hits = (winners == i) & alive
            props[j] = max(hits.sum(), 1) / max(alive.sum(), 1)
            remaining[i] = False
        return Ranked(order, all_scores[order, 0], np.clip(props, 1e-6, 1.0), exact=False)


class EpsilonGreedyLinear(LinearBandit):
    policy_id = "eps-greedy"

    def __init__(self, n_features: int, *, epsilon: float = 0.1, l2: float = 1.0) -> None:
        super().__init__(n_features, l2=l2)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def rank(self, X: np.ndarray, k: int, rng: np.random.Generator) -> Ranked:
        X = self._check(X)
        scores = X @ self.theta
        remaining = list(np.argsort(-scores, kind="stable"))  # best first
        order, props = [], []
        for _ in range(min(k, len(X))):
            m = len(remaining)
            if rng.random() < self.epsilon:
                pick = int(rng.integers(m))
            else:
                pick = 0
            i = remaining.pop(pick)
            props.append((1 - self.epsilon) * (pick == 0) + self.epsilon / m)
            order.append(i)
        order_a = np.array(order, dtype=np.int64)
        return Ranked(order_a, scores[order_a], np.array(props), exact=True)


MODELS = {m.policy_id: m for m in (LinUCB, LinTS, EpsilonGreedyLinear)}
