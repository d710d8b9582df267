"""Baseline policy: popularity by listening context, sampled into a slate with propensities."""

from __future__ import annotations

import pickle

import numpy as np

from online_models.catalogue import Catalogue
from online_models.context import DAYPARTS, N_CONTEXTS, ListeningContext
from online_models.slate import Slate, SlatePick, plackett_luce

#: how much one feedback event moves a track's popularity (positive feedback only counts)
DEFAULT_WEIGHTS: dict[str, float] = {
    "play_end": 1.0,
    "like": 2.0,
    "replay": 1.0,
    "playlist_add": 2.0,
    "thumbs_up": 1.0,
    "share": 1.0,
    "rating": 0.0,  # scaled by the rating below
}


class ContextPopularity:
    """Scores a track by log(prior + global plays + context plays), then samples a
    Plackett-Luce slate: P(track at a position) ∝ exp(score / temperature) among the tracks
    not yet placed, so every item carries the exact probability it had of being put there.

    Pure: no I/O, no clock; randomness only from the generator passed to ``recommend``.
    """

    policy_id = "popularity-ctx"
    policy_version = "1"

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        temperature: float = 0.5,
        prior_weight: float = 20.0,
        context_weight: float = 3.0,
        weights: dict[str, float] | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if prior_weight < 0 or context_weight < 0:
            raise ValueError("prior_weight and context_weight must be >= 0")
        self.catalogue = catalogue
        self.temperature = temperature
        self.prior_weight = prior_weight
        self.context_weight = context_weight
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        n = len(catalogue)
        self.global_counts = np.zeros(n)
        self.context_counts = np.zeros((N_CONTEXTS, n))
        self.n_learned = 0

    def learn(self, kind: str, track_idx: int, ctx: ListeningContext, rating: float | None = None) -> float:
        """Count one feedback event; returns the weight applied (0 if the kind does not count)."""
        w = self.weights.get(kind, 0.0)
        if kind == "rating" and rating is not None:
            w = max(0.0, rating - 2.5) / 2.5
        if w == 0.0 or not 0 <= track_idx < len(self.global_counts):
            return 0.0
        self.global_counts[track_idx] += w
        self.context_counts[ctx.key, track_idx] += w
        self.n_learned += 1
        return w

    def scores(self, ctx: ListeningContext) -> np.ndarray:
        return np.log(
            1e-3
            + self.prior_weight * self.catalogue.popularity
            + self.global_counts
            + self.context_weight * self.context_counts[ctx.key]
        )

    def recommend(
        self,
        ctx: ListeningContext,
        k: int,
        rng: np.random.Generator,
        exclude: np.ndarray | None = None,
    ) -> Slate:
        scores = self.scores(ctx)
        allowed = None
        if exclude is not None and len(exclude):
            allowed = np.ones(len(scores), dtype=bool)
            allowed[exclude] = False
        drawn = plackett_luce(scores / self.temperature, k, rng, allowed)
        picks = tuple(
            SlatePick(int(i), float(scores[i]), float(p), *self._why(int(i), ctx))
            for i, p in zip(drawn.indices, drawn.propensities, strict=True)
        )
        return Slate(picks, drawn.slate_propensity, self.policy_id, self.policy_version)

    def _why(self, i: int, ctx: ListeningContext) -> tuple[str, str]:
        ctx_plays = self.context_counts[ctx.key, i]
        if ctx_plays >= 1 and ctx_plays * self.context_weight >= 0.5 * self.global_counts[i]:
            return "popularity:context", f"popular in {ctx.describe()}"
        if self.global_counts[i] >= 1:
            return "popularity:global", "popular with listeners right now"
        genre = self.catalogue.genre_of(i)
        return "popularity:prior", f"a {genre} pick for the {DAYPARTS[ctx.daypart]}"

    # snapshots: plain pickles of the counts (the catalogue is configuration, not state)
    def snapshot(self) -> bytes:
        return pickle.dumps((self.global_counts, self.context_counts, self.n_learned))

    def restore(self, blob: bytes) -> None:
        self.global_counts, self.context_counts, self.n_learned = pickle.loads(blob)
