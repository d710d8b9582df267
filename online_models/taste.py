"""Taste clusters: a latent-class model of what listeners finish, per genre.

Each listener belongs to one of ``k`` hidden clusters; a cluster finishes genre g's tracks with
probability ``rate[c, g]``; a listener's (finished, played) counts per genre are binomial draws
from their cluster's rates. Fitted by EM (a few random restarts, the best likelihood kept) in
the embedding job over every listener's counts; served by folding a listener in: the posterior
over clusters given *their own* counts, which is cheap (k x genres) and current to the last
event. The posterior-weighted rates are the listener's genre prior: what listeners like them
finish, so a genre they were never shown starts at their cluster's rate, not at a global 0.5,
and a new listener starts at the population's mix.

Pure numpy / scipy: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp


@dataclass(frozen=True)
class GenreMixture:
    rate: np.ndarray  # (clusters, genres): P(finish | cluster, genre)
    weight: np.ndarray  # (clusters,): share of listeners in each cluster

    def __post_init__(self) -> None:  # the logs, once: the posterior is computed per request
        object.__setattr__(self, "_logs", (np.log(self.rate).T, np.log1p(-self.rate).T, np.log(self.weight)))

    def log_posterior(self, finished: np.ndarray, played: np.ndarray) -> np.ndarray:
        """log P(cluster | counts), for one listener (1-D counts) or many (2-D, one row each)."""
        log_rate, log_miss, log_weight = self._logs
        ll = finished @ log_rate + (played - finished) @ log_miss + log_weight
        top = ll.max(axis=-1, keepdims=True)  # log-sum-exp by hand: scipy's costs ~100 us a call
        return ll - top - np.log(np.exp(ll - top).sum(axis=-1, keepdims=True))

    def prior(self, finished: np.ndarray, played: np.ndarray) -> np.ndarray:
        """The listener's expected finish rate per genre under their cluster posterior."""
        return np.exp(self.log_posterior(finished, played)) @ self.rate

    def cluster(self, finished: np.ndarray, played: np.ndarray) -> int:
        return int(np.argmax(self.log_posterior(finished, played)))


def fit_mixture(finished: np.ndarray, played: np.ndarray, k: int = 16, *, iters: int = 60, restarts: int = 3,
                seed: int = 0) -> GenreMixture:
    """EM for the binomial mixture; ``finished`` / ``played``: (listeners, genres) counts.
    Rates carry a Beta(1, 1) prior so an empty cluster or genre stays at 0.5."""
    finished = np.asarray(finished, dtype=float)
    played = np.asarray(played, dtype=float)
    if finished.shape != played.shape or finished.ndim != 2:
        raise ValueError(f"finished and played must be (listeners, genres) of one shape, got {finished.shape}, {played.shape}")
    if np.any(finished > played) or np.any(finished < 0):
        raise ValueError("finished counts must be between 0 and the played counts")
    n = len(finished)
    k = max(1, min(k, n))
    best: tuple[float, GenreMixture] | None = None
    for r in range(restarts):
        resp = np.random.default_rng([seed, r]).dirichlet(np.ones(k), size=n)
        for _ in range(iters):
            model = GenreMixture((resp.T @ finished + 1.0) / (resp.T @ played + 2.0),
                                 (resp.sum(axis=0) + 1e-3) / (n + 1e-3 * k))
            ll = (finished @ np.log(model.rate).T + (played - finished) @ np.log1p(-model.rate).T
                  + np.log(model.weight))
            total = logsumexp(ll, axis=1, keepdims=True)
            resp = np.exp(ll - total)
        score = float(total.sum())
        if best is None or score > best[0]:
            best = (score, model)
    assert best is not None
    return best[1]
