"""Feature vectors for (listener, context, candidate track): what the bandits and the RL policy see.

One row per candidate, ``N_FEATURES`` columns (names in ``FEATURE_NAMES``):

- bias; the track's audio features and their squares (a learned quadratic "sound" preference);
- activity one-hot x audio features (what each activity asks of the music);
- popularity prior (log) and popularity in this context (from the popularity generator);
- the listener's measured affinity to the track's genre and artist, and distance to the
  listener's taste in this activity (user x track interactions);
- co-listen and artist-neighbourhood scores; which generator proposed the track.

Pure: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from online_models.candidates import SOURCES, CandidateGenerator, Candidates, ListenerProfile
from online_models.catalogue import FEATURES
from online_models.context import ACTIVITIES, ListeningContext

FEATURE_NAMES: tuple[str, ...] = (
    ("bias",)
    + FEATURES
    + tuple(f"{f}^2" for f in FEATURES)
    + tuple(f"{a}*{f}" for a in ACTIVITIES for f in FEATURES)
    + ("log_popularity", "context_popularity", "genre_affinity", "artist_affinity", "taste_distance", "genre_unexplored", "genre_residual", "artist_residual", "track_rate", "track_known",
       "co_listen", "artist_neighbour")
    + tuple(f"source={s}" for s in SOURCES)
)
N_FEATURES = len(FEATURE_NAMES)


def build_features(gen: CandidateGenerator, prof: ListenerProfile, ctx: ListeningContext,
                   cands: Candidates) -> np.ndarray:
    cat = gen.catalogue
    idx = cands.idx
    n, nf = len(idx), len(FEATURES)
    f = cat.features[idx]
    X = np.zeros((n, N_FEATURES))
    X[:, 0] = 1.0
    X[:, 1:1 + nf] = f
    X[:, 1 + nf:1 + 2 * nf] = f * f
    act = ACTIVITIES.index(ctx.activity) if ctx.activity in ACTIVITIES else 0
    start = 1 + 2 * nf + act * nf
    X[:, start:start + nf] = f
    col = 1 + 2 * nf + len(ACTIVITIES) * nf
    pop = cands.scores["popularity"]
    X[:, col] = np.log(cat.popularity[idx] + 0.01)
    X[:, col + 1] = pop - pop.max() if n else pop
    X[:, col + 2] = np.log(prof.genre_rate(gen.genre_prior))[cat.genre_idx[idx]]
    arts = gen.artist_of[idx]
    a_pos, a_shown, a_res, a_res_n = prof.artist_arrays(len(gen.artists))
    X[:, col + 3] = np.log((a_pos[arts] + 0.5) / (a_shown[arts] + 1.0))
    n_all = prof.taste_n.sum()
    overall = prof.taste_sum.sum(axis=0) / n_all if n_all else gen.mean_sound
    X[:, col + 4] = ((f - prof.taste(act, overall)) ** 2).sum(axis=1)
    X[:, col + 5] = 1.0 / np.sqrt(1.0 + prof.genre_shown[cat.genre_idx[idx]])
    g = cat.genre_idx[idx]
    X[:, col + 6] = prof.genre_res[g] / (prof.genre_res_n[g] + 1.0)
    X[:, col + 7] = a_res[arts] / (a_res_n[arts] + 1.0)
    X[:, col + 8] = cands.scores["again"]
    X[:, col + 9] = cands.scores["known"]
    X[:, col + 10] = cands.scores["co-listen"]
    X[:, col + 11] = cands.scores["artist"]
    X[np.arange(n), col + 12 + cands.source] = 1.0
    return X


assert N_FEATURES == 1 + 2 * len(FEATURES) + len(ACTIVITIES) * len(FEATURES) + 12 + len(SOURCES)
