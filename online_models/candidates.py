"""Candidate generation, updated online from every feedback event.

Five generators propose tracks for a (listener, context) and a hybrid blends them; every
candidate carries the generator that proposed it (its *source*) and an *anchor* (the liked
track or artist it came from) so the slate can explain itself.

- ``for-you``:    the whole catalogue scored by the serving ranker itself (exploit scores, no
  exploration bonus), when the caller passes ``model``: what the current model likes best.
- ``popularity``: popularity by context (activity x daypart), see :mod:`popularity`.
- ``co-listen``:  item-item co-occurrence of positively received tracks within sessions
  (collaborative: "listeners who finished X also finished Y").
- ``content``:    closeness of a track's audio features to the listener's taste in this
  activity, plus the listener's measured genre affinity.
- ``familiar``:   more tracks by the artists the listener finishes most ("more from Y").
- ``again``:      tracks the listener finished before and that have left the recent-plays
  window ("you loved it before").
- ``artist``:     tracks by artists the listener has not played, whose sound and genre are
  close to an artist the listener liked ("new artist close to Y").
- ``gems``:       low popularity (bottom ``gem_quantile``) but high content fit.
- ``explore``:    a few uniform draws so nothing is unreachable.

Pure: no I/O or clock; randomness only from the generator passed in.
"""

from __future__ import annotations

import pickle
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from online_models import mood
from online_models.catalogue import Catalogue
from online_models.challenges import Goal
from online_models.context import ACTIVITIES, ListeningContext
from online_models.embeddings import Aligned
from online_models.mood import SessionMood
from online_models.popularity import ContextPopularity

SOURCES = ("for-you", "again", "friends", "co-listen", "familiar", "content", "artist", "gems", "popularity",
           "explore")  # claim order
DISCOVERY_SOURCES = frozenset({"artist", "gems", "explore"})  # generators that aim at discovery
POSITIVE = {"play_end": 1.0, "like": 1.0, "replay": 0.5, "playlist_add": 1.0, "thumbs_up": 0.5}
NEGATIVE = {"skip": 1.0, "thumbs_down": 1.0, "dislike": 1.0}


@dataclass
class ListenerProfile:
    """What the system has learned about one listener (no hidden truth)."""

    n_genres: int
    n_features: int
    genre_pos: np.ndarray = field(init=False)
    genre_shown: np.ndarray = field(init=False)
    taste_sum: np.ndarray = field(init=False)  # per activity: sum of liked tracks' features
    taste_n: np.ndarray = field(init=False)
    artist_pos: dict[int, float] = field(default_factory=dict)
    artist_shown: dict[int, float] = field(default_factory=dict)
    genre_res: np.ndarray = field(init=False)  # summed reward residuals per genre (see learn_residuals)
    genre_res_n: np.ndarray = field(init=False)
    artist_res: dict[int, tuple[float, int]] = field(default_factory=dict)
    track_pos: dict[int, float] = field(default_factory=dict)
    track_shown: dict[int, float] = field(default_factory=dict)
    liked: deque[int] = field(default_factory=lambda: deque(maxlen=20))
    session_id: str = ""
    session_pos: deque[int] = field(default_factory=lambda: deque(maxlen=10))
    artist_votes: dict[int, float] = field(default_factory=dict)  # follows (+1) and unfollows (-1)
    behaviour: Any = None  # online_models.behaviour.ListenerBehaviour, once they have feedback
    mood: SessionMood | None = None  # this session's lean from their usual sound (online_models.mood)

    def __post_init__(self) -> None:
        self.genre_pos = np.zeros(self.n_genres)
        self.genre_shown = np.zeros(self.n_genres)
        self.taste_sum = np.zeros((len(ACTIVITIES), self.n_features))
        self.taste_n = np.zeros(len(ACTIVITIES))
        self.genre_res = np.zeros(self.n_genres)
        self.genre_res_n = np.zeros(self.n_genres)

    def artist_arrays(self, n_artists: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(finished, shown, residual sum, residual count) per artist, as dense arrays."""
        out = np.zeros((4, n_artists))
        for a, v in self.artist_pos.items():
            out[0, a] = v
        for a, v in self.artist_shown.items():
            out[1, a] = v
        for a, (r, m) in self.artist_res.items():
            out[2, a], out[3, a] = r, m
        return out[0], out[1], out[2], out[3]

    def taste(self, activity: int, fallback: np.ndarray) -> np.ndarray:
        """Mean sound of what the listener liked in this activity, shrunk towards ``fallback``."""
        n = self.taste_n[activity]
        return (self.taste_sum[activity] + 2.0 * fallback) / (n + 2.0)

    def usual_sound(self, activity: int, fallback: np.ndarray) -> np.ndarray:
        """Their usual sound in this activity (the overall mean of what they finished as the
        fallback, ``fallback`` before anything)."""
        n_all = self.taste_n.sum()
        return self.taste(activity, self.taste_sum.sum(axis=0) / n_all if n_all else fallback)

    def fade(self, keep: float) -> None:
        """Keep only ``keep`` of everything counted so far (their taste shifted: what they play
        from now on should outweigh it); what they liked lately is forgotten."""
        for arr in (self.genre_pos, self.genre_shown, self.taste_sum, self.taste_n, self.genre_res, self.genre_res_n):
            arr *= keep
        for d in (self.artist_pos, self.artist_shown, self.track_pos, self.track_shown):
            for k in d:
                d[k] *= keep
        self.artist_res = {a: (r * keep, m * keep) for a, (r, m) in self.artist_res.items()}
        self.liked.clear()

    def genre_rate(self, prior: np.ndarray, strength: float = 2.0) -> np.ndarray:
        """Smoothed share of shown tracks of each genre that the listener received well
        (``prior`` counts as ``strength`` plays)."""
        return (self.genre_pos + strength * prior) / (self.genre_shown + strength)


@dataclass(frozen=True)
class Served:
    """A published embedding version prepared for this catalogue."""

    aligned: Aligned
    genre_vec: np.ndarray  # (genres, dim): mean vector of each genre's tracks
    artist_vec: np.ndarray  # (artists, dim)
    # mean vector and covariance of the track / genre / artist vectors: a listener's scores at each
    # level have mean m.u and sd sqrt(u'Cu), so standardising costs nothing per listener
    track_mean: np.ndarray
    track_cov: np.ndarray
    genre_mean: np.ndarray
    genre_cov: np.ndarray
    artist_mean: np.ndarray
    artist_cov: np.ndarray


@dataclass(frozen=True)
class ListenerVector:
    """A listener folded into one embedding version (kept on their profile)."""

    key: tuple[Any, ...]  # (version, tracks finished, finishes): stale when any moves
    u: np.ndarray
    moments: tuple[float, ...]  # mean and sd of the listener's track, genre and artist scores (6 numbers)


@dataclass(frozen=True)
class Candidates:
    idx: np.ndarray  # catalogue rows
    source: np.ndarray  # index into SOURCES, per candidate
    anchor: np.ndarray  # catalogue row (co-listen) or artist row (artist) the candidate came from, -1 if none
    scores: dict[str, np.ndarray]  # per generator, its score for every candidate (0 if it has none)

    def __len__(self) -> int:
        return len(self.idx)


def _forget(shown: dict[int, float], others: tuple[dict[int, Any], ...], cap: int) -> None:
    """Keep the ``3/4 cap`` most shown keys of ``shown`` (and drop the rest from ``others``):
    amortised O(1) per insert, since the next prune is a quarter of ``cap`` inserts away."""
    keep = set(sorted(shown, key=shown.__getitem__, reverse=True)[: cap * 3 // 4])
    for key in [k for k in shown if k not in keep]:
        del shown[key]
        for d in others:
            d.pop(key, None)


@dataclass(frozen=True)
class FriendTracks:
    """What the listeners someone follows finished lately: track rows, and per row the friend
    (index into ``names``), newest first."""

    idx: np.ndarray
    who: np.ndarray
    names: tuple[str, ...]


class CandidateGenerator:
    def __init__(self, catalogue: Catalogue, *, n_candidates: int = 200,
                 quotas: dict[str, float] | None = None, gem_quantile: float = 0.3,
                 popularity: ContextPopularity | None = None, co_window: int = 5,
                 max_tracks: int = 500, max_artists: int = 200) -> None:
        """``max_tracks`` / ``max_artists``: per listener, the tracks and artists whose counts are
        kept; past it the least shown quarter is forgotten, so a listener's state is bounded
        whatever the catalogue size and the listening history (memory, see docs/operations.md)."""
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        if not 0 < gem_quantile < 1:
            raise ValueError(f"gem_quantile must be in (0, 1), got {gem_quantile}")
        self.quotas = dict(quotas or {"for-you": 0.3, "again": 0.1, "friends": 0.05, "co-listen": 0.1,
                                      "familiar": 0.1, "content": 0.1, "artist": 0.1, "gems": 0.05,
                                      "popularity": 0.1, "explore": 0.05})
        bad = set(self.quotas) - set(SOURCES)
        if bad or any(v < 0 for v in self.quotas.values()):
            raise ValueError(f"quotas must be >= 0 over {SOURCES}, got {self.quotas}")
        self.catalogue = catalogue
        self.n_candidates = min(n_candidates, len(catalogue))
        self.popularity = popularity or ContextPopularity(catalogue)
        self.co_window = co_window
        if max_tracks < 4 or max_artists < 4:
            raise ValueError(f"max_tracks and max_artists must be >= 4, got {max_tracks}, {max_artists}")
        self.max_tracks, self.max_artists = max_tracks, max_artists
        artists = sorted(set(catalogue.artist_ids))
        self.artists = tuple(artists)
        apos = {a: i for i, a in enumerate(artists)}
        self._artist_pos = apos
        self.artist_of = np.array([apos[a] for a in catalogue.artist_ids])
        n_art = len(artists)
        # an artist's sound: mean track features plus its genre mix, unit length for cosine
        genre_1h = np.eye(len(catalogue.genres))[catalogue.genre_idx]
        counts = np.bincount(self.artist_of, minlength=n_art)[:, None]
        sound = np.zeros((n_art, catalogue.features.shape[1] + len(catalogue.genres)))
        np.add.at(sound, self.artist_of, np.hstack([catalogue.features, genre_1h]))
        sound /= np.maximum(counts, 1)
        sound -= sound.mean(axis=0)
        self.artist_vec = sound / np.maximum(np.linalg.norm(sound, axis=1, keepdims=True), 1e-9)
        self.gem = catalogue.popularity <= np.quantile(catalogue.popularity, gem_quantile)
        self.mean_sound = catalogue.features.mean(axis=0)
        self.use_mood = True  # the session mood in content candidates and the mood_match feature
        self.goals: tuple[Goal, ...] = ()  # gamification goals recommendations can advance (challenge_advance)
        self.genre_prior = np.full(len(catalogue.genres), 0.5)
        self.co: dict[int, dict[int, float]] = defaultdict(dict)
        self.profiles: dict[str, ListenerProfile] = {}
        #: per listener asking now: what the listeners they follow finished lately (set per batch
        #: by the worker from the listener store; not part of the model, never snapshotted)
        self.social: Mapping[str, FriendTracks] = {}
        self.served: Served | None = None  # track vectors learned from everyone (set_embeddings)

    def set_embeddings(self, emb: Aligned | None) -> None:
        """Serve these track vectors from now on (a published version, aligned to the catalogue).
        Genre and artist vectors are the means of their known tracks' vectors: the collaborative
        signal at the coarser levels, where a listener's few plays say more. Prepared first and
        swapped in with one assignment, so a thread may call this while requests are served."""
        if emb is None:
            self.served = None
            return
        levels = []
        for groups, n in ((self.catalogue.genre_idx, len(self.catalogue.genres)), (self.artist_of, len(self.artists))):
            sums = np.zeros((n, emb.V.shape[1]))
            np.add.at(sums, groups[emb.known], emb.V[emb.known])
            levels.append(sums / np.maximum(np.bincount(groups[emb.known], minlength=n)[:, None], 1))
        known = emb.V[emb.known]
        self.served = Served(emb, levels[0], levels[1], *_moments(known), *_moments(levels[0]), *_moments(levels[1]))

    @property
    def embeddings(self) -> Aligned | None:
        served = self.served
        return served.aligned if served is not None else None

    def genre_prior_of(self, prof: ListenerProfile) -> np.ndarray:
        """What listeners like this one finish, per genre: their taste clusters' rates weighted
        by the listener's posterior over the clusters (:mod:`taste`); 0.5 without clusters."""
        emb = self.embeddings
        if emb is None or emb.mixture is None:
            return self.genre_prior
        mix = emb.mixture
        key = (emb.version, prof.genre_shown.sum(), prof.genre_pos.sum())
        cached = getattr(prof, "cluster_prior", None)
        if cached is None or cached[0] != key:
            cached = prof.cluster_prior = (key, mix.prior(prof.genre_pos, prof.genre_shown))
        return cached[1]

    def prior_strength(self) -> float:
        """How many plays the genre prior weighs against the listener's own (more with taste
        clusters: their prior is the listener's own kind, not a global 0.5)."""
        return 5.0 if self.embeddings is not None and self.embeddings.mixture is not None else 2.0

    def _listener(self, prof: ListenerProfile, served: Served | None) -> ListenerVector | None:
        """The listener folded into the served version, with what every request of theirs reuses;
        cached on the profile until they finish another track or a new version is served."""
        if served is None or not prof.track_pos:
            return None
        emb = served.aligned
        key = (emb.version, len(prof.track_pos), float(prof.genre_pos.sum()))  # both move with each finish
        cached = getattr(prof, "cf", None)
        if cached is None or cached.key != key:
            rows = np.fromiter(prof.track_pos.keys(), dtype=np.int64, count=len(prof.track_pos))
            weights = np.fromiter(prof.track_pos.values(), dtype=float, count=len(rows))
            u = emb.listener(rows, np.log1p(weights))
            moments = tuple(float(x) for m, c in ((served.track_mean, served.track_cov),
                                                  (served.genre_mean, served.genre_cov),
                                                  (served.artist_mean, served.artist_cov))
                            for x in (m @ u, np.sqrt(max(u @ c @ u, 0.0))))
            cached = prof.cf = ListenerVector(key, u, moments)  # ~40 numbers per listener
        return cached

    def cf_scores(self, prof: ListenerProfile, tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Collaborative scores of each track for this listener, at the track, genre and artist
        level: (track / genre / artist vector) . listener vector, the listener folded in from the
        tracks they finished, standardised over the catalogue's tracks / genres / artists (zeros
        without embeddings or plays)."""
        served = self.served
        lv = self._listener(prof, served)
        if served is None or lv is None:
            z = np.zeros(len(tracks))
            return z, z, z
        tm, ts, gm, gs, am, as_ = lv.moments
        return (_z(served.aligned.V[tracks] @ lv.u, tm, ts),
                _z(served.genre_vec[self.catalogue.genre_idx[tracks]] @ lv.u, gm, gs),
                _z(served.artist_vec[self.artist_of[tracks]] @ lv.u, am, as_))

    # --- learning ---------------------------------------------------------------------------
    def profile(self, user_id: str) -> ListenerProfile:
        p = self.profiles.get(user_id)
        if p is None:
            p = self.profiles[user_id] = ListenerProfile(len(self.catalogue.genres), self.catalogue.features.shape[1])
        return p

    def observe(self, user_id: str, session_id: str, kind: str, track_idx: int, ctx: ListeningContext,
                rating: float | None = None) -> None:
        """Learn from one feedback event on a track."""
        if not 0 <= track_idx < len(self.catalogue):
            return
        self.popularity.learn(kind, track_idx, ctx, rating)
        prof = self.profile(user_id)
        g, a = int(self.catalogue.genre_idx[track_idx]), int(self.artist_of[track_idx])
        if kind == "play_start":
            prof.track_shown[track_idx] = prof.track_shown.get(track_idx, 0.0) + 1
            prof.genre_shown[g] += 1
            prof.artist_shown[a] = prof.artist_shown.get(a, 0.0) + 1
            if len(prof.track_shown) > self.max_tracks:
                _forget(prof.track_shown, (prof.track_pos,), self.max_tracks)
            if len(prof.artist_shown) > self.max_artists:
                _forget(prof.artist_shown, (prof.artist_pos, prof.artist_res), self.max_artists)
            return
        if kind in ("play_end", "skip"):
            prof.mood = mood.observe(prof.mood, session_id, kind, self.catalogue.features[track_idx])
        w = POSITIVE.get(kind, 0.0)
        if kind == "rating" and rating is not None:
            w = max(0.0, rating - 2.5) / 2.5
        if w <= 0:
            return
        if kind == "play_end":  # counts once per play: the rate's numerator
            prof.track_pos[track_idx] = prof.track_pos.get(track_idx, 0.0) + 1
            prof.genre_pos[g] += 1
            prof.artist_pos[a] = prof.artist_pos.get(a, 0.0) + 1
            act = ACTIVITIES.index(ctx.activity) if ctx.activity in ACTIVITIES else 0
            prof.taste_sum[act] += self.catalogue.features[track_idx]
            prof.taste_n[act] += 1
        if kind in ("like", "playlist_add", "replay", "thumbs_up") and (not prof.liked or prof.liked[-1] != track_idx):
            prof.liked.append(track_idx)
        if prof.session_id != session_id:
            prof.session_id, prof.session_pos = session_id, deque(maxlen=self.co_window)
        if track_idx in prof.session_pos:
            return
        for other in prof.session_pos:
            self.co[other][track_idx] = self.co[other].get(track_idx, 0.0) + w
            self.co[track_idx][other] = self.co[track_idx].get(other, 0.0) + w
        prof.session_pos.append(track_idx)

    def artist_index(self, artist_id: str | None, track_idx: int | None = None) -> int | None:
        """The artist's row: by id, else the artist of a catalogue track; None when unknown."""
        if artist_id is not None:
            return self._artist_pos.get(artist_id)
        return int(self.artist_of[track_idx]) if track_idx is not None else None

    def vote_artist(self, user_id: str, artist: int, vote: float) -> None:
        """A follow (+1) or unfollow (-1) of an artist; the latest wins (a follow after an
        unfollow is a follow again)."""
        votes = self.profile(user_id).__dict__.setdefault("artist_votes", {})  # (older snapshots lack it)
        votes[artist] = vote

    def learn_residuals(self, user_id: str, tracks: np.ndarray, residuals: np.ndarray,
                        weights: np.ndarray | None = None, l2: float = 1.0) -> None:
        """What the shared model got wrong for this listener, per genre and artist: the
        listener-specific part of the reward (a per-listener layer on top of the shared model,
        as in hybrid LinUCB), fed back as features.

        ``residuals`` are measured against the full prediction (shared model + this layer), so
        each part is refitted by backfitting: the genre part learns the residual plus its own
        current estimate (what is left once the artist part is taken out), and likewise the
        artist part; ``weights`` are the IRLS weights of a logit link (1 for the identity)."""
        prof = self.profile(user_id)
        genres = self.catalogue.genre_idx[tracks]
        arts = self.artist_of[tracks]
        w = np.ones(len(tracks)) if weights is None else np.asarray(weights, dtype=float)
        g_now, a_now, _ = self._layer_parts(prof, tracks, l2)
        np.add.at(prof.genre_res, genres, residuals + w * g_now)
        np.add.at(prof.genre_res_n, genres, w)
        for a, r, wi in zip(arts, residuals + w * a_now, w, strict=True):
            s, n = prof.artist_res.get(int(a), (0.0, 0))
            prof.artist_res[int(a)] = (s + float(r), n + float(wi))

    def _layer_parts(self, prof: ListenerProfile, tracks: np.ndarray, l2: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per track: the layer's genre part and artist part (ridge means of their residuals),
        and the weight of the genre's observations."""
        g = self.catalogue.genre_idx[tracks]
        n_g = prof.genre_res_n[g]
        _, _, a_sum, a_n = prof.artist_arrays(len(self.artists))
        arts = self.artist_of[tracks]
        return prof.genre_res[g] / (n_g + l2), a_sum[arts] / (a_n[arts] + l2), n_g

    def listener_layer(self, user_id: str, tracks: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: the listener's own reward offset (ridge estimate from the residuals of
        its genre and artist) and its uncertainty (1 / sqrt(l2 + observations))."""
        g_part, a_part, n_g = self._layer_parts(self.profile(user_id), tracks, l2)
        return g_part + a_part, 1.0 / np.sqrt(n_g + l2)

    # --- scoring ----------------------------------------------------------------------------
    def content_scores(self, prof: ListenerProfile, ctx: ListeningContext) -> np.ndarray:
        act = ACTIVITIES.index(ctx.activity) if ctx.activity in ACTIVITIES else 0
        taste = prof.usual_sound(act, self.mean_sound)
        if self.use_mood and prof.mood is not None:  # the sound this session leans to
            taste = taste + prof.mood.offset
        dist = ((self.catalogue.features - taste) ** 2).sum(axis=1)
        return -6.0 * dist + np.log(prof.genre_rate(self.genre_prior_of(prof), self.prior_strength()))[self.catalogue.genre_idx]

    def co_scores(self, prof: ListenerProfile) -> tuple[np.ndarray, np.ndarray]:
        """Sum of co-occurrence weights with the listener's recent positives; and which one gave most."""
        n = len(self.catalogue)
        score, anchor, best = np.zeros(n), np.full(n, -1), np.zeros(n)
        seeds = list(dict.fromkeys(list(prof.session_pos)[::-1] + list(prof.liked)[::-1]))[:10]
        for s in seeds:
            row = self.co.get(s)
            if not row:
                continue
            idx = np.fromiter(row.keys(), dtype=np.int64, count=len(row))
            w = np.fromiter(row.values(), dtype=float, count=len(row))
            score[idx] += w
            better = w > best[idx]
            anchor[idx[better]], best[idx[better]] = s, w[better]
        return np.log1p(score), anchor

    def artist_scores(self, prof: ListenerProfile) -> tuple[np.ndarray, np.ndarray]:
        """Similarity of each track's artist to the listener's best-liked artist, 0 for artists
        already played (this generator is about new artists)."""
        n = len(self.catalogue)
        if not prof.artist_pos:
            return np.zeros(n), np.full(n, -1)
        liked = sorted(prof.artist_pos, key=lambda a: (-prof.artist_pos[a], a))[:5]
        sims = self.artist_vec @ self.artist_vec[liked].T  # (n_artists, n_liked)
        best = sims.argmax(axis=1)
        sim = np.clip(sims.max(axis=1), 0, None)
        played = np.fromiter(prof.artist_shown.keys(), dtype=np.int64, count=len(prof.artist_shown))
        sim[played] = 0.0
        return sim[self.artist_of], np.asarray(liked)[best][self.artist_of]

    def discovery(self, user_id: str, tracks: np.ndarray) -> np.ndarray:
        """Whether each track is a discovery for this listener: by an artist they have never
        been played, or a hidden gem (bottom ``gem_quantile`` of popularity)."""
        _, shown, _, _ = self.profile(user_id).artist_arrays(len(self.artists))
        return (shown[self.artist_of[tracks]] == 0) | self.gem[tracks]

    def familiar_scores(self, prof: ListenerProfile) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed completion rate of each track's artist for this listener; 0 for unplayed artists."""
        n_art = len(self.artists)
        rate = np.zeros(n_art)
        for a, shown in prof.artist_shown.items():
            rate[a] = (prof.artist_pos.get(a, 0.0) + 0.5) / (shown + 1.0)
        return rate[self.artist_of], self.artist_of.copy()

    def track_history(self, prof: ListenerProfile) -> np.ndarray:
        """Smoothed completion rate of every track the listener has played; -inf for the others."""
        out = np.full(len(self.catalogue), -np.inf)
        if prof.track_shown:
            idx = np.fromiter(prof.track_shown.keys(), dtype=np.int64, count=len(prof.track_shown))
            shown = np.fromiter(prof.track_shown.values(), dtype=float, count=len(idx))
            pos = np.array([prof.track_pos.get(int(i), 0.0) for i in idx])
            out[idx] = (pos + 0.5) / (shown + 1.0)
        return out

    def friend_scores(self, user_id: str, content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tracks the listeners ``user_id`` follows finished lately: more friends first, then the
        sound that fits; the anchor is the friend (index into their FriendTracks.names)."""
        n = len(self.catalogue)
        scores, anchor = np.full(n, -np.inf), np.full(n, -1)
        got = self.social.get(user_id)
        if got is None or not len(got.idx):
            return scores, anchor
        counts = np.bincount(got.idx, minlength=n)
        hit = counts > 0
        scores[hit] = counts[hit] + 0.1 * content[hit]
        anchor[got.idx[::-1]] = got.who[::-1]  # the newest friend who finished it
        return scores, anchor

    def generate(self, user_id: str, ctx: ListeningContext, rng: np.random.Generator,
                 exclude: np.ndarray | None = None,
                 model: Callable[[Candidates], np.ndarray] | None = None) -> Candidates:
        """``model`` scores a Candidates holding the whole catalogue (for the ``for-you`` source)."""
        prof = self.profile(user_id)
        n = len(self.catalogue)
        allowed = np.ones(n, dtype=bool)
        if exclude is not None and len(exclude):
            allowed[exclude] = False
        pop = self.popularity.scores(ctx)
        content = self.content_scores(prof, ctx)
        co, co_anchor = self.co_scores(prof)
        art, art_anchor = self.artist_scores(prof)
        fam, fam_anchor = self.familiar_scores(prof)
        again = self.track_history(prof)
        gems = np.where(self.gem, content, -np.inf)
        friends, friend_anchor = self.friend_scores(user_id, content)
        finite = {"popularity": pop, "co-listen": co, "content": content, "artist": art,
                  "again": np.where(np.isfinite(again), again, 0.0), "known": np.isfinite(again).astype(float)}
        every = np.arange(n)
        mine = (model(Candidates(every, np.full(n, SOURCES.index("for-you")), np.full(n, -1), finite))
                if model is not None else np.full(n, -np.inf))
        ranked = {
            "for-you": mine,
            "popularity": pop, "co-listen": np.where(co > 0, co, -np.inf), "content": content,
            "familiar": np.where(fam > 0.5, fam + 0.1 * content, -np.inf),
            "again": np.where(again > 0.5, again, -np.inf), "friends": friends,
            "artist": np.where(art > 0, art + 0.1 * content, -np.inf), "gems": gems,
            "explore": rng.random(n),
        }
        chosen = np.zeros(n, dtype=bool)
        picks: list[np.ndarray] = []
        src: list[np.ndarray] = []
        total = sum(self.quotas.values()) or 1.0
        for s_i, name in enumerate(SOURCES):
            want = int(round(self.n_candidates * self.quotas.get(name, 0.0) / total))
            if want <= 0:
                continue
            sc = np.where(allowed & ~chosen, ranked[name], -np.inf)
            top = _top(sc, want)
            chosen[top] = True
            picks.append(top)
            src.append(np.full(len(top), s_i))
        short = self.n_candidates - int(chosen.sum())
        if short > 0:  # fill with content, the generator that always has an opinion
            top = _top(np.where(allowed & ~chosen, content, -np.inf), short)
            picks.append(top)
            src.append(np.full(len(top), SOURCES.index("content")))
        idx = np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)
        source = np.concatenate(src) if src else np.empty(0, dtype=np.int64)
        anchor = np.full(len(idx), -1)
        for name, rows in (("co-listen", co_anchor), ("artist", art_anchor), ("familiar", fam_anchor),
                           ("friends", friend_anchor)):
            hit = source == SOURCES.index(name)
            anchor[hit] = rows[idx[hit]]
        return Candidates(idx, source, anchor, {k: v[idx] for k, v in finite.items()})

    def snapshot(self) -> bytes:
        return pickle.dumps((self.popularity.snapshot(), dict(self.co), self.profiles))

    def restore(self, blob: bytes) -> None:
        pop, co, self.profiles = pickle.loads(blob)
        self.popularity.restore(pop)
        self.co = defaultdict(dict, co)


def _z(x: np.ndarray, mean: float, sd: float) -> np.ndarray:
    """Standardised: a relative preference, whatever the scale of the listener's vector (which
    grows with how much they played)."""
    return (x - mean) / sd if sd > 1e-12 else np.zeros_like(x)


def _moments(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean vector and covariance of a set of embedding vectors (rows)."""
    if len(vectors) < 2:
        d = vectors.shape[1]
        return (vectors.mean(axis=0) if len(vectors) else np.zeros(d)), np.zeros((d, d))
    return vectors.mean(axis=0), np.cov(vectors, rowvar=False, bias=True)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best finite scores, best first (ties: lower row first)."""
    ok = np.flatnonzero(np.isfinite(scores))
    if len(ok) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    k = min(k, len(ok))
    part = ok[np.argpartition(-scores[ok], k - 1)[:k]] if k < len(ok) else ok
    return part[np.lexsort((part, -scores[part]))].astype(np.int64)
