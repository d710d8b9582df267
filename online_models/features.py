"""Feature vectors for (listener, context, candidate track): what the bandits and the RL policy see.

One row per candidate, ``N_FEATURES`` columns (names in ``FEATURE_NAMES``):

- bias; the track's audio features and their squares (a learned quadratic "sound" preference);
- activity one-hot x audio features (what each activity asks of the music);
- popularity prior (log) and popularity in this context (from the popularity generator);
- the listener's measured affinity to the track's genre and artist, and distance to the
  listener's taste in this activity (user x track interactions); how the track leans the way
  this session's mood leans from that taste (``mood_match``, :mod:`mood`); whether finishing
  it advances a gamification goal the listener has open (``challenge_advance``, :mod:`challenges`);
- co-listen and artist-neighbourhood scores; which generator proposed the track;
- the collaborative scores: the track's, its genre's and its artist's embedding . the
  listener's (learned from everyone, see :mod:`embeddings`; 0 until a version is published).

Pure: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from online_models import challenges
from online_models.candidates import SOURCES, CandidateGenerator, Candidates, ListenerProfile
from online_models.catalogue import FEATURES
from online_models.context import ACTIVITIES, ListeningContext

FEATURE_NAMES: tuple[str, ...] = (
    ("bias",)
    + FEATURES
    + tuple(f"{f}^2" for f in FEATURES)
    + tuple(f"{a}*{f}" for a in ACTIVITIES for f in FEATURES)
    + ("log_popularity", "context_popularity", "genre_affinity", "peer_genre", "artist_affinity", "taste_distance", "genre_unexplored", "genre_residual", "artist_residual", "track_rate", "track_known",
       "co_listen", "artist_neighbour", "cf_track", "cf_genre", "cf_artist", "mood_match",
       "challenge_advance")
    + tuple(f"source={s}" for s in SOURCES)
)
N_FEATURES = len(FEATURE_NAMES)


COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}
_N_STATIC = 1 + 2 * len(FEATURES) + len(ACTIVITIES) * len(FEATURES) + 1  # up to log_popularity


def _activity(ctx: ListeningContext) -> int:
    return ACTIVITIES.index(ctx.activity) if ctx.activity in ACTIVITIES else 0


def listener_columns(gen: CandidateGenerator, prof: ListenerProfile, ctx: ListeningContext,
                     cands: Candidates) -> dict[str, np.ndarray]:
    """The columns that depend on the listener and the candidate set, by name."""
    cat = gen.catalogue
    idx = cands.idx
    f = cat.features[idx]
    g = cat.genre_idx[idx]
    arts = gen.artist_of[idx]
    pop = cands.scores["popularity"]
    a_pos, a_shown, a_res, a_res_n = prof.artist_arrays(len(gen.artists))
    usual = prof.usual_sound(_activity(ctx), gen.mean_sound)
    prior = gen.genre_prior_of(prof)  # what the listener's taste cluster finishes, per genre
    cols = {
        "context_popularity": pop - pop.max() if len(idx) else pop,
        "genre_affinity": np.log(prof.genre_rate(prior, gen.prior_strength()))[g],
        "artist_affinity": np.log((a_pos[arts] + 0.5) / (a_shown[arts] + 1.0)),
        "taste_distance": ((f - usual) ** 2).sum(axis=1),
        "genre_unexplored": 1.0 / np.sqrt(1.0 + prof.genre_shown[g]),
        "genre_residual": prof.genre_res[g] / (prof.genre_res_n[g] + 1.0),
        "artist_residual": a_res[arts] / (a_res_n[arts] + 1.0),
        "track_rate": cands.scores["again"],
        "track_known": cands.scores["known"],
        "co_listen": cands.scores["co-listen"],
        "artist_neighbour": cands.scores["artist"],
    }
    if gen.goals:  # gamification goals a finish of the candidate would advance (online_models.challenges)
        cols["challenge_advance"] = challenges.advance(gen.goals, len(prof.artist_pos), prof.genre_pos,
                                                       a_pos[arts] == 0, g)
    if gen.use_mood and prof.mood is not None and prof.mood.n:  # this session's lean (online_models.mood)
        cols["mood_match"] = (f - usual) @ prof.mood.offset
    # what is learned from everyone: only with a served embedding version (the columns stay 0
    # otherwise, and a request pays nothing for them)
    if gen.served is not None:
        if gen.served.aligned.mixture is not None:
            cols["peer_genre"] = np.log(prior)[g]
        if prof.track_pos:
            cols.update(zip(("cf_track", "cf_genre", "cf_artist"), gen.cf_scores(prof, idx), strict=True))
    return cols


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
    start = 1 + 2 * nf + _activity(ctx) * nf
    X[:, start:start + nf] = f
    X[:, COLUMN["log_popularity"]] = np.log(cat.popularity[idx] + 0.01)
    for name, values in listener_columns(gen, prof, ctx, cands).items():
        X[:, COLUMN[name]] = values
    X[np.arange(n), COLUMN[f"source={SOURCES[0]}"] + cands.source] = 1.0
    return X


class LinearScorer:
    """``build_features(...) @ theta`` for a whole catalogue without building the matrix.

    The columns that depend only on the track and the activity (bias, sound, its squares, the
    activity's sound block, log popularity) give one score per (activity, track): computed with
    one matrix product per activity each time theta changes, shared by every request of a
    batch. The listener's columns are added per request, one vector each."""

    def __init__(self, gen: CandidateGenerator) -> None:
        cat = gen.catalogue
        nf = len(FEATURES)
        self.gen = gen
        f = cat.features
        self._static = []  # per activity: the (n_tracks, _N_STATIC) static block
        for a in range(len(ACTIVITIES)):
            X = np.zeros((len(cat), _N_STATIC))
            X[:, 0] = 1.0
            X[:, 1:1 + nf] = f
            X[:, 1 + nf:1 + 2 * nf] = f * f
            X[:, 1 + 2 * nf + a * nf:1 + 2 * nf + (a + 1) * nf] = f
            X[:, -1] = np.log(cat.popularity + 0.01)
            self._static.append(X)
        self._theta = b""
        self._scores: dict[int, np.ndarray] = {}

    def static(self, theta: np.ndarray, activity: int) -> np.ndarray:
        key = theta.tobytes()
        if key != self._theta:
            self._theta, self._scores = key, {}
        got = self._scores.get(activity)
        if got is None:
            got = self._scores[activity] = self._static[activity] @ theta[:_N_STATIC]
        return got

    def scores(self, theta: np.ndarray, prof: ListenerProfile, ctx: ListeningContext,
               cands: Candidates) -> np.ndarray:
        out = self.static(theta, _activity(ctx))[cands.idx]
        for name, values in listener_columns(self.gen, prof, ctx, cands).items():
            out = out + theta[COLUMN[name]] * values
        return out + theta[COLUMN[f"source={SOURCES[0]}"] + cands.source]


assert N_FEATURES == 1 + 2 * len(FEATURES) + len(ACTIVITIES) * len(FEATURES) + 18 + len(SOURCES)
