"""Contextual linear bandits that re-rank candidates into a slate, vectorised with numpy.

One shared linear model over candidate feature vectors x (listener x track x context features,
see :mod:`features`): reward ~ x . theta. Sufficient statistics are A = I*l2 + sum x x^T and
b = sum r x; A's inverse is kept up to date with the Woodbury identity (one k x k solve per
slate of k items), so scoring n candidates costs one (n x d) @ (d x d) product.

- LinUCB:      score = x.theta + alpha * sqrt(x^T A^-1 x); greedy (propensity 1), or with
               ``temperature`` > 0 the top ``explore_positions`` positions are drawn with
               P ∝ exp(score / temperature) among the allowed rows, mixed with a uniform draw
               with probability ``floor``: exact propensities, every candidate possible, so
               the log can score other policies off-policy (:mod:`evaluation`). The positions
               below stay greedy (propensity 1): exploring only where it is measured keeps its
               cost in reward small.
- LinTS:       score = x.theta~ with theta~ ~ N(theta, v^2 A^-1); propensities estimated by
               re-drawing ``propensity_draws`` times (Thompson sampling has no closed form).
- EpsGreedy:   each position: the best allowed candidate with prob 1-eps, else uniform among
               the allowed ones; exact propensities.

A slate is filled position by position (:func:`online_models.slate.fill`) so that slate rules
(artist cap, discovery slots) constrain every policy and each propensity is the probability of
the pick *given the rules and the items above it*.

Statistics are additive, so workers exchange ``delta()``s and ``merge()`` them. Models are
pure: no I/O, no clock, randomness only from the generator passed in.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.slate import Chooser, SlateRules, fill, softmax_chooser


@dataclass(frozen=True)
class Ranked:
    indices: np.ndarray  # candidate rows, best first
    scores: np.ndarray  # the score each had when placed
    propensities: np.ndarray  # P(this candidate at this position | the ones above it)
    exact: bool  # False when propensities are Monte-Carlo estimates


def _argmax(scores: np.ndarray, allowed: np.ndarray) -> int:
    """Best allowed row; ties go to the lower row."""
    return int(np.argmax(np.where(allowed, scores, -np.inf)))


class LinearBandit:
    policy_id = "linear"
    policy_version = "1"
    exact = True
    #: set by the configuration; a snapshot restores what was learned, not these
    HYPERPARAMETERS: tuple[str, ...] = ("alpha", "temperature", "floor", "explore_positions", "v", "propensity_draws", "epsilon")

    def __init__(self, n_features: int, *, l2: float = 1.0, link: str = "identity") -> None:
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        if link not in ("identity", "logit"):
            raise ValueError(f"link must be 'identity' or 'logit', got {link!r}")
        self.d = n_features
        self.l2 = l2
        self.link = link
        self.A_inv = np.eye(n_features) / l2
        self.b = np.zeros(n_features)
        self._delta_A = np.zeros((n_features, n_features))
        self._delta_b = np.zeros(n_features)
        self.n_updates = 0
        self._theta: np.ndarray | None = None  # A_inv @ b, computed once per change of the statistics

    @property
    def theta(self) -> np.ndarray:
        if self._theta is None:
            self._theta = self.A_inv @ self.b
        return self._theta

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.d:
            raise ValueError(f"features must be (n_candidates, {self.d}), got {X.shape}")
        return X

    def update(self, X: np.ndarray, rewards: np.ndarray, offset: np.ndarray | float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
        """Learn from shown items' features and their rewards (one row per item). ``offset``
        is a known per-row part of the prediction (a listener layer's), left out of theta.

        With ``link="logit"`` the reward clipped to [0, 1] is a success probability and the
        update is one iteratively-reweighted least-squares step (weights p(1-p), working
        response x.theta + (y - p) / w): still additive statistics A, b.

        Returns, per row, the residual the model left before this update and its weight (what
        a listener layer learns from)."""
        X = self._check(X)
        rewards = np.asarray(rewards, dtype=float)
        if len(rewards) != len(X):
            raise ValueError(f"{len(X)} feature rows but {len(rewards)} rewards")
        if not len(X):
            return np.zeros(0), np.zeros(0)
        base = X @ self.theta
        if self.link == "logit":
            y = np.clip(rewards, 0.0, 1.0)
            p = 1.0 / (1.0 + np.exp(-(base + offset)))
            w = np.clip(p * (1 - p), 0.01, 0.25)
            target, residual = base + (y - p) / w, y - p
        else:
            w = np.ones(len(X))
            target = rewards - offset
            residual = target - base
        # Woodbury: (A + X^T W X)^-1 = A^-1 - A^-1 Xw^T (I + Xw A^-1 Xw^T)^-1 Xw A^-1, Xw = sqrt(W) X
        Xw = X * np.sqrt(w)[:, None]
        AX = self.A_inv @ Xw.T  # (d, k)
        inner = np.eye(len(X)) + Xw @ AX
        self.A_inv -= AX @ np.linalg.solve(inner, AX.T)
        self.A_inv = (self.A_inv + self.A_inv.T) / 2  # keep it symmetric against rounding
        xr = (w * target) @ X
        self.b += xr
        self._delta_A += Xw.T @ Xw
        self._delta_b += xr
        self.n_updates += len(X)
        self._theta = None
        return residual, w

    def delta(self) -> tuple[np.ndarray, np.ndarray]:
        """The statistics learned since the last call (to publish to other workers)."""
        out = (self._delta_A.copy(), self._delta_b.copy())
        self._delta_A[:] = 0
        self._delta_b[:] = 0
        return out

    def merge(self, delta: tuple[np.ndarray, np.ndarray]) -> None:
        """Add another worker's statistics (A += dA, b += db)."""
        dA, db = delta
        if dA.shape != (self.d, self.d) or db.shape != (self.d,):
            raise ValueError(f"delta shapes {dA.shape}, {db.shape} do not fit a {self.d}-feature model")
        A = np.linalg.inv(self.A_inv) + dA
        self.A_inv = np.linalg.inv(A)
        self.b = self.b + db
        self._theta = None

    # --- the Ranker protocol (online_models.slate) ------------------------------------------
    def exploit_scores(self, features: Callable[[], np.ndarray], linear: Callable[[np.ndarray], np.ndarray],
                       state: Any = None) -> np.ndarray:
        return linear(self.theta)  # x . theta, without building the features

    def chooser(self, X: np.ndarray, rng: np.random.Generator, offset: np.ndarray | None = None,
                spread: np.ndarray | None = None, state: Any = None) -> Chooser:
        """``offset`` adds a per-candidate term to the score (a listener layer's estimate) and
        ``spread`` its uncertainty: LinUCB adds it as a bonus, LinTS draws noise of that scale,
        epsilon-greedy ignores it. ``state`` (the session's) is not used by a linear model."""
        raise NotImplementedError

    def contributions(self, X: np.ndarray) -> np.ndarray:
        return X * self.theta  # the exploit score is exactly their row sums

    def learn_slate(self, X: np.ndarray, rewards: tuple[float | None, ...], state: Any,
                    offset: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        seen = [i for i, r in enumerate(rewards) if r is not None]
        return self.update(X[seen], np.array([rewards[i] for i in seen], dtype=float), offset)

    def rank(self, X: np.ndarray, k: int, rng: np.random.Generator,
             rules: SlateRules | None = None, artists: np.ndarray | None = None,
             discovery: np.ndarray | None = None) -> Ranked:
        X = self._check(X)
        order, props, scores = fill(self.chooser(X, rng), len(X), k, rules, artists, discovery)
        return Ranked(order, scores, props, exact=self.exact)

    def snapshot(self) -> bytes:
        return pickle.dumps({**self.__dict__, "_theta": None})

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        if state.get("d") != self.d:
            raise ValueError(f"snapshot has {state.get('d')} features, this model {self.d}")
        for knob in self.HYPERPARAMETERS:  # the configuration's, never an old snapshot's
            state.pop(knob, None)
        self.__dict__.update(state)
        self._theta = None


class LinUCB(LinearBandit):
    policy_id = "linucb"

    def __init__(self, n_features: int, *, alpha: float = 0.3, l2: float = 1.0, link: str = "identity",
                 temperature: float = 0.0, floor: float = 0.0, explore_positions: int = 1) -> None:
        super().__init__(n_features, l2=l2, link=link)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
        if not 0 <= floor <= 1:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        if floor > 0 and temperature == 0:
            raise ValueError("floor needs temperature > 0 (a greedy ranking with a uniform floor is eps-greedy)")
        if explore_positions < 1:
            raise ValueError(f"explore_positions must be >= 1, got {explore_positions}")
        self.alpha = alpha
        self.temperature = temperature
        self.floor = floor
        self.explore_positions = explore_positions

    def scores(self, X: np.ndarray) -> np.ndarray:
        bonus = np.sqrt(np.maximum(((X @ self.A_inv) * X).sum(axis=1), 0.0))
        return X @ self.theta + self.alpha * bonus

    def chooser(self, X: np.ndarray, rng: np.random.Generator, offset: np.ndarray | None = None,
                spread: np.ndarray | None = None, state: Any = None) -> Chooser:
        scores = self.scores(self._check(X))
        if offset is not None:
            scores = scores + offset + (spread if spread is not None else 0.0)
        draw = softmax_chooser(scores, self.temperature, rng, self.floor) if self.temperature > 0 else None
        placed = [0]

        def choose(allowed: np.ndarray) -> tuple[int, float, float]:
            placed[0] += 1
            if draw is not None and placed[0] <= self.explore_positions:
                return draw(allowed)
            i = _argmax(scores, allowed)
            return i, 1.0, float(scores[i])

        return choose


class LinTS(LinearBandit):
    policy_id = "lints"
    exact = False

    def __init__(self, n_features: int, *, v: float = 0.3, l2: float = 1.0, propensity_draws: int = 100,
                 link: str = "identity") -> None:
        super().__init__(n_features, l2=l2, link=link)
        if v <= 0:
            raise ValueError(f"v must be > 0, got {v}")
        if propensity_draws < 1:
            raise ValueError("propensity_draws must be >= 1")
        self.v = v
        self.propensity_draws = propensity_draws

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cov = self.v**2 * (self.A_inv + self.A_inv.T) / 2
        L = np.linalg.cholesky(cov + 1e-10 * np.eye(self.d))
        return self.theta + rng.standard_normal((n, self.d)) @ L.T

    def chooser(self, X: np.ndarray, rng: np.random.Generator, offset: np.ndarray | None = None,
                spread: np.ndarray | None = None, state: Any = None) -> Chooser:
        X = self._check(X)
        all_scores = X @ self._draw(rng, 1 + self.propensity_draws).T  # (n, draws)
        if offset is not None:
            noise = rng.standard_normal(all_scores.shape) * (spread[:, None] if spread is not None else 0.0)
            all_scores += offset[:, None] + noise
        played, extra = all_scores[:, 0], all_scores[:, 1:]

        def choose(allowed: np.ndarray) -> tuple[int, float, float]:
            i = _argmax(played, allowed)
            winners = np.where(allowed[:, None], extra, -np.inf).argmax(axis=0)
            p = max(int((winners == i).sum()), 1) / extra.shape[1]
            return i, p, float(played[i])

        return choose


class EpsilonGreedyLinear(LinearBandit):
    policy_id = "eps-greedy"

    def __init__(self, n_features: int, *, epsilon: float = 0.1, l2: float = 1.0, link: str = "identity") -> None:
        super().__init__(n_features, l2=l2, link=link)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def chooser(self, X: np.ndarray, rng: np.random.Generator, offset: np.ndarray | None = None,
                spread: np.ndarray | None = None, state: Any = None) -> Chooser:
        scores = self._check(X) @ self.theta
        if offset is not None:
            scores = scores + offset

        def choose(allowed: np.ndarray) -> tuple[int, float, float]:
            best = _argmax(scores, allowed)
            m = int(allowed.sum())
            i = int(rng.choice(np.flatnonzero(allowed))) if rng.random() < self.epsilon else best
            return i, (1 - self.epsilon) * (i == best) + self.epsilon / m, float(scores[i])

        return choose


MODELS = {m.policy_id: m for m in (LinUCB, LinTS, EpsilonGreedyLinear)}
