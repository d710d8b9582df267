"""Synthetic music world: a catalogue and listeners with hidden tastes (no I/O here).

Listeners have a genre taste, favourite artists, per-activity preferences over audio features,
a daily rhythm, devices and a skip temper. Shown a track in a context, a listener completes it
with probability ``sigmoid(affinity)``; completion brings likes, replays and playlist adds, a
poor fit brings early skips and thumbs down. Because reactions follow the hidden tastes, a
better recommender shows up as more completions. The world knows each listener's oracle (the
track with the best expected reward in a context) for regret measurement.

Everything is seeded: the same seed gives the same catalogue, listeners and reactions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from online_models.catalogue import FEATURES, Catalogue
from online_models.context import ACTIVITIES
from schemas.events import Interaction, Kind

GENRES = (
    "pop", "rock", "hiphop", "electronic", "jazz", "classical", "ambient", "metal",
    "folk", "rnb", "latin", "indie", "country", "soul", "reggae",
)
# a typical genre's (tempo, energy, valence, danceability, acousticness), all 0..1
_GENRE_STYLE = np.array([
    [0.60, 0.70, 0.70, 0.70, 0.20], [0.65, 0.80, 0.50, 0.45, 0.15], [0.50, 0.70, 0.55, 0.80, 0.10],
    [0.75, 0.85, 0.55, 0.85, 0.05], [0.45, 0.35, 0.55, 0.45, 0.70], [0.40, 0.25, 0.45, 0.20, 0.95],
    [0.30, 0.15, 0.40, 0.20, 0.60], [0.80, 0.95, 0.30, 0.35, 0.05], [0.45, 0.35, 0.55, 0.40, 0.85],
    [0.50, 0.55, 0.60, 0.70, 0.25], [0.65, 0.75, 0.80, 0.85, 0.30], [0.55, 0.60, 0.50, 0.50, 0.40],
    [0.55, 0.55, 0.65, 0.55, 0.55], [0.45, 0.50, 0.60, 0.60, 0.45], [0.45, 0.55, 0.75, 0.75, 0.35],
])
# what an activity asks of the music (same feature order)
ACTIVITY_TARGET: dict[str, np.ndarray] = {
    "workout": np.array([0.80, 0.90, 0.65, 0.75, 0.10]),
    "commute": np.array([0.60, 0.65, 0.60, 0.60, 0.30]),
    "study": np.array([0.40, 0.30, 0.50, 0.30, 0.70]),
    "relax": np.array([0.40, 0.30, 0.60, 0.40, 0.65]),
    "sleep": np.array([0.25, 0.10, 0.40, 0.15, 0.85]),
    "party": np.array([0.70, 0.85, 0.80, 0.90, 0.10]),
    "work": np.array([0.50, 0.45, 0.55, 0.45, 0.50]),
}
# how likely each activity is by local hour (rows: 4 dayparts)
_ACTIVITY_BY_DAYPART = {
    0: {"sleep": 5, "relax": 2, "party": 2, "study": 1},
    1: {"workout": 3, "commute": 4, "work": 3, "study": 2},
    2: {"work": 4, "study": 3, "commute": 1, "workout": 1, "relax": 1},
    3: {"relax": 4, "commute": 2, "workout": 2, "party": 2, "sleep": 1},
}
DEVICES = ("mobile", "desktop", "web", "smart_speaker", "car", "tv", "wearable")
ZONES = (
    "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles",
    "Asia/Tokyo", "Australia/Sydney", "America/Sao_Paulo", "Asia/Kolkata",
)
EARLY_SKIP_MS = 30_000


def synthetic_catalogue(seed: int = 7, n_tracks: int = 2000, n_artists: int | None = None) -> Catalogue:
    """Tracks grouped by artists; each artist has a home genre and a sound near its style."""
    if n_tracks < 1:
        raise ValueError("n_tracks must be >= 1")
    rng = np.random.default_rng(seed)
    n_artists = n_artists or max(1, n_tracks // 10)
    artist_genre = rng.integers(0, len(GENRES), n_artists)
    artist_sound = np.clip(_GENRE_STYLE[artist_genre] + rng.normal(0, 0.08, (n_artists, len(FEATURES))), 0, 1)
    artist_fame = rng.pareto(1.2, n_artists) + 0.05
    track_artist = np.sort(rng.integers(0, n_artists, n_tracks))
    feats = np.clip(artist_sound[track_artist] + rng.normal(0, 0.07, (n_tracks, len(FEATURES))), 0, 1)
    raw_pop = artist_fame[track_artist] * rng.lognormal(0, 0.8, n_tracks)
    popularity = raw_pop / raw_pop.max()
    return Catalogue(
        track_ids=tuple(f"t-{i:05d}" for i in range(n_tracks)),
        artist_ids=tuple(f"a-{a:04d}" for a in track_artist),
        genres=GENRES,
        genre_idx=artist_genre[track_artist],
        features=feats,
        popularity=popularity,
        duration_ms=rng.integers(120_000, 330_000, n_tracks),
    )


@dataclass
class Listener:
    """Hidden tastes of one synthetic listener."""

    user_id: str
    genre_taste: np.ndarray  # (n_genres,), sums to n_genres (1 = indifferent)
    sound_shift: np.ndarray  # personal offset to every activity's target sound
    favourite_artists: frozenset[int]
    zone: str
    peak_hour: int
    devices: tuple[str, ...]
    temper: float  # > 0: skips more readily
    rng: np.random.Generator = field(repr=False)
    id_space: uuid.UUID = field(repr=False, default=uuid.NAMESPACE_OID)
    sessions: int = 0


@dataclass(frozen=True)
class Returns:
    """Whether a listener comes back the next day, from what they experienced (experiments'
    retention ground truth). After a day with a session, the probability of a session the next
    day is ``base + per_satisfaction × (completion share − 0.5) + gamification_lift × (earned
    karma that day)``, clipped to [0.02, 0.98]; a listener who does not come back is gone.
    ``gamification_lift`` is the true effect of gamification the experiment should find; a
    better policy raises the completion share, hence returns, by itself."""

    base: float = 0.5
    per_satisfaction: float = 0.6
    gamification_lift: float = 0.0

    def probability(self, completion_share: float, earned_karma: bool) -> float:
        p = self.base + self.per_satisfaction * (completion_share - 0.5) + self.gamification_lift * earned_karma
        return float(min(0.98, max(0.02, p)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class World:
    """The catalogue, the listeners and the rules of how they react."""

    def __init__(self, catalogue: Catalogue, n_listeners: int = 500, seed: int = 11, run_id: str = "",
                 communities: int = 0, mood_sd: float = 0.0) -> None:
        """``run_id`` makes event ids unique to a run (a worker de-duplicates ids it has seen);
        the same seed and run id replay the same events, ids included.

        ``communities`` > 0 groups listeners into that many taste communities: a listener's
        genre taste is drawn around their community's and three of their five favourite
        artists come from the community's eight, so listeners in a community share tastes
        (what collaborative filtering learns from). 0 (the default): every listener's taste
        is drawn independently."""
        if n_listeners < 1:
            raise ValueError("n_listeners must be >= 1")
        if communities < 0:
            raise ValueError(f"communities must be >= 0, got {communities}")
        if mood_sd < 0:
            raise ValueError(f"mood_sd must be >= 0, got {mood_sd}")
        self.mood_sd = mood_sd  # > 0: each session has a hidden mood that moves the sound it wants
        self.run_id = run_id
        id_space = uuid.uuid5(uuid.NAMESPACE_URL, f"encore-sim:{seed}:{run_id}")
        self.catalogue = catalogue
        self.seed = seed
        rng = np.random.default_rng(seed)
        artist_ids = sorted(set(catalogue.artist_ids))
        self._artist_of = np.array([artist_ids.index(a) for a in catalogue.artist_ids]) if len(artist_ids) < 5000 else None
        n_genres = len(catalogue.genres)
        self.listeners: list[Listener] = []
        # communities come from their own generator, so communities=0 draws the same world as before
        c_rng = np.random.default_rng([seed, 1])
        c_taste = c_rng.dirichlet(np.full(n_genres, 0.35), size=communities)
        c_favs = [c_rng.choice(len(artist_ids), size=min(8, len(artist_ids)), replace=False) for _ in range(communities)]
        self.community: list[int] = []
        for u in range(n_listeners):
            taste = rng.dirichlet(np.full(n_genres, 0.35)) * n_genres
            favs = frozenset(int(a) for a in rng.choice(len(artist_ids), size=min(5, len(artist_ids)), replace=False))
            if communities:
                c = int(c_rng.integers(communities))
                taste = c_rng.dirichlet(10.0 * c_taste[c] + 0.02) * n_genres
                shared = c_rng.choice(c_favs[c], size=min(3, len(c_favs[c])), replace=False)
                favs = frozenset(int(a) for a in shared) | frozenset(sorted(favs - set(shared.tolist()))[:2])
                self.community.append(c)
            self.listeners.append(
                Listener(
                    user_id=f"u-{u:05d}",
                    genre_taste=taste,
                    sound_shift=rng.normal(0, 0.07, len(FEATURES)),
                    favourite_artists=favs,
                    zone=ZONES[int(rng.integers(len(ZONES)))],
                    peak_hour=int(rng.choice([8, 13, 18, 21, 23])),
                    devices=tuple(rng.choice(DEVICES, size=2, replace=False, p=_DEVICE_P)),
                    temper=float(rng.normal(0.0, 0.3)),
                    rng=np.random.default_rng([seed, u]),
                    id_space=id_space,
                )
            )
        self.by_id = {listener.user_id: listener for listener in self.listeners}
        self._popularity_pull = 0.6 * np.log(catalogue.popularity + 0.01)

    def shift_tastes(self, share: float, seed: int = 0) -> list[str]:
        """A share of the listeners changes genre taste and favourite artists at once (a move, a
        new job, a new partner): each draws a new taste the way the world drew the first one.
        Returns their ids (the truth a drift detector is checked against)."""
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share}")
        rng = np.random.default_rng([seed, 2])
        n_genres = len(self.catalogue.genres)
        n_artists = int(self._artist_of.max()) + 1 if self._artist_of is not None and len(self._artist_of) else 1
        moved = rng.choice(len(self.listeners), size=int(round(share * len(self.listeners))), replace=False)
        for u in sorted(moved.tolist()):
            listener = self.listeners[u]
            listener.genre_taste = rng.dirichlet(np.full(n_genres, 0.35)) * n_genres
            listener.favourite_artists = frozenset(int(a) for a in rng.choice(n_artists, size=min(5, n_artists),
                                                                               replace=False))
        return [self.listeners[u].user_id for u in sorted(moved.tolist())]

    # --- ground truth ---------------------------------------------------------------------
    def affinity(self, listener: Listener, activity: str, mood: np.ndarray | None = None) -> np.ndarray:
        """Hidden utility of every track for this listener in this activity (and session mood)."""
        return sum(self.affinity_parts(listener, activity, mood).values())

    def affinity_parts(self, listener: Listener, activity: str, mood: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
        """The hidden utility split into its terms (they sum to :meth:`affinity`):

        - ``population``: what holds for every listener: closeness of the sound to what the
          activity asks for, and the pull of popularity;
        - ``sound_shift``: how the listener's own sound preference moves that;
        - ``genre``: the listener's genre taste; ``favourites``: their favourite artists;
        - ``temper``: how readily they skip anything (the same for every track);
        - ``mood``: how the session's mood moves the sound they want today (0 without one).
        """
        cat = self.catalogue
        target = ACTIVITY_TARGET.get(activity, np.full(len(FEATURES), 0.5))
        sound = -6.0 * ((cat.features - target) ** 2).sum(axis=1)
        own_sound = -6.0 * ((cat.features - target - listener.sound_shift) ** 2).sum(axis=1)
        moody = own_sound if mood is None or not mood.any() else \
            -6.0 * ((cat.features - target - listener.sound_shift - mood) ** 2).sum(axis=1)
        fav = np.zeros(len(cat))
        if self._artist_of is not None:
            fav = np.isin(self._artist_of, list(listener.favourite_artists)) * 1.5
        return {
            "population": 1.0 + sound + 0.3 * self._popularity_pull,
            "sound_shift": own_sound - sound,
            "genre": 1.2 * np.log(listener.genre_taste[cat.genre_idx] + 0.05),
            "favourites": fav,
            "temper": np.full(len(cat), -listener.temper),
            "mood": moody - own_sound,
        }

    def completion_prob(self, listener: Listener, activity: str, mood: np.ndarray | None = None) -> np.ndarray:
        return _sigmoid(self.affinity(listener, activity, mood))

    def oracle(self, listener: Listener, activity: str, exclude: np.ndarray | None = None) -> tuple[int, float]:
        """(best track index, its completion probability) for this listener and activity."""
        p = self.completion_prob(listener, activity)
        if exclude is not None and len(exclude):
            p = p.copy()
            p[exclude] = -1
        best = int(np.argmax(p))
        return best, float(p[best])

    # --- behaviour ------------------------------------------------------------------------
    def wants_to_listen(self, listener: Listener, at: datetime) -> bool:
        """Daily rhythm: most likely near the listener's peak local hour, rarely far from it."""
        hour = at.astimezone(ZoneInfo(listener.zone)).hour
        d = min(abs(hour - listener.peak_hour), 24 - abs(hour - listener.peak_hour))
        return bool(listener.rng.random() < 0.1 + 0.9 * np.exp(-(d**2) / 8.0))

    def friend_graph(self, k: int, within: float = 0.8, seed: int = 0) -> dict[str, list[str]]:
        """Whom each listener follows: ``k`` others, a ``within`` share of them from their own taste
        community (people befriend people like them), the rest from anywhere."""
        rng = np.random.default_rng(seed)
        ids = [listener.user_id for listener in self.listeners]
        by_community: dict[int, list[int]] = {}
        for i, c in enumerate(self.community or [0] * len(ids)):
            by_community.setdefault(c, []).append(i)
        out: dict[str, list[str]] = {}
        for i, user in enumerate(ids):
            same = [j for j in by_community[(self.community or [0] * len(ids))[i]] if j != i]
            n_same = min(len(same), int(round(k * within)))
            chosen = set(rng.choice(same, n_same, replace=False).tolist()) if n_same else set()
            while len(chosen) < min(k, len(ids) - 1):
                j = int(rng.integers(len(ids)))
                if j != i:
                    chosen.add(j)
            out[user] = sorted(ids[j] for j in chosen)
        return out

    def start_session(self, listener: Listener, at: datetime) -> Session:
        rng = listener.rng
        local = at.astimezone(ZoneInfo(listener.zone))
        weights = _ACTIVITY_BY_DAYPART[local.hour // 6]
        acts = list(weights)
        p = np.array([weights[a] for a in acts], dtype=float)
        activity = acts[int(rng.choice(len(acts), p=p / p.sum()))]
        listener.sessions += 1
        mood = None
        if self.mood_sd > 0:  # tempo, energy, valence move; the rest of the sound stays
            mood = np.zeros(len(FEATURES))
            mood[:3] = rng.normal(0.0, self.mood_sd, 3)
        return Session(
            mood=mood,
            listener=listener,
            session_id=f"s-{listener.user_id}-{listener.sessions}",
            activity=activity,
            device=listener.devices[int(rng.integers(len(listener.devices)))],
            clock=at,
        )

    def request(self, session: Session, slate_size: int = 10) -> Interaction:
        """The rec_request event that opens (or continues) a session."""
        return session.event(Kind.REC_REQUEST, slate_size=slate_size)

    def react(self, session: Session, rec_id: uuid.UUID, track_ids: list[str]) -> list[Interaction]:
        """What the listener does with a slate, item by item, until they stop listening.

        Ends the session (``session.active = False``) when the listener leaves.
        """
        listener, rng, cat = session.listener, session.listener.rng, self.catalogue
        if session.p_complete is None:
            session.p_complete = self.completion_prob(listener, session.activity, session.mood)
            session.oracle_p = float(session.p_complete.max())
        p_all = session.p_complete
        out: list[Interaction] = []
        for pos, tid in enumerate(track_ids):
            i = cat.index.get(tid)
            if i is None:
                continue
            p = float(p_all[i])
            dur = int(cat.duration_ms[i])
            common = {"track_id": tid, "artist_id": cat.artist_ids[i], "rec_id": rec_id, "position": pos,
                      "track_duration_ms": dur}
            out.append(session.event(Kind.PLAY_START, **common))
            session.reward += p  # expected completion: what regret is measured on
            session.oracle_reward += session.oracle_p
            if rng.random() < p:
                session.clock += timedelta(milliseconds=dur)
                out.append(session.event(Kind.PLAY_END, listened_ms=dur, **common))
                session.completions += 1
                if rng.random() < 0.35 * p * p:
                    out.append(session.event(Kind.LIKE, **common))
                if rng.random() < 0.10 * p:
                    out.append(session.event(Kind.REPLAY, **common))
                if rng.random() < 0.08 * p:
                    out.append(session.event(Kind.PLAYLIST_ADD, playlist_id=f"pl-{listener.user_id}", **common))
                if rng.random() < 0.05:
                    out.append(session.event(Kind.THUMBS_UP, **common))
                keep_going = 0.97
            else:
                early = rng.random() < (1.0 - p)
                listened = int(rng.uniform(2_000, EARLY_SKIP_MS)) if early else int(rng.uniform(EARLY_SKIP_MS, 0.8 * dur))
                session.clock += timedelta(milliseconds=listened)
                out.append(session.event(Kind.SKIP, listened_ms=listened, **common))
                session.skips += 1
                if early and p < 0.15 and rng.random() < 0.15:
                    out.append(session.event(Kind.THUMBS_DOWN, **common))
                keep_going = 0.90
            if rng.random() > keep_going:
                session.active = False
                break
        session.slates += 1
        if session.slates >= 6:
            session.active = False
        return out


_DEVICE_P = np.array([0.45, 0.2, 0.1, 0.1, 0.08, 0.04, 0.03])


@dataclass
class Session:
    listener: Listener
    session_id: str
    activity: str
    device: str
    clock: datetime
    active: bool = True
    slates: int = 0
    completions: int = 0
    skips: int = 0
    reward: float = 0.0
    oracle_reward: float = 0.0
    events: int = 0
    p_complete: np.ndarray | None = field(default=None, repr=False)
    oracle_p: float = 0.0
    mood: np.ndarray | None = field(default=None, repr=False)  # hidden: the offset to the sound wanted today

    def event(self, kind: Kind, **fields: object) -> Interaction:
        rng = self.listener.rng
        self.events += 1
        local = self.clock.astimezone(ZoneInfo(self.listener.zone))
        self.clock += timedelta(milliseconds=int(rng.integers(50, 400)))
        return Interaction(
            event_id=uuid.uuid5(self.listener.id_space, f"{self.session_id}:{self.events}"),
            user_id=self.listener.user_id,
            session_id=self.session_id,
            occurred_at=self.clock,
            kind=kind,
            context={
                "device": self.device,
                "activity": self.activity,
                "local_hour": local.hour,
                "weekday": local.weekday(),
                "timezone": self.listener.zone,
            },
            **fields,
        )


assert set(ACTIVITY_TARGET) <= set(ACTIVITIES)
