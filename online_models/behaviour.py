"""How a listener behaves, online: session clusters and taste shifts.

- **Session clusters**: when a listener's session ends (their next event carries a new session
  id), its features — skip, replay and like ratios, length, local hour, genre spread, activity —
  update river's streaming k-means (its centres seeded by the first sessions), and the
  listener's behaviour cluster is the one their last session falls in. Shown on the listener model API and the dashboard; the clusters drift with
  the population (k-means with a half-life).
- **Taste shifts**: river's ADWIN watches each listener's completions (1 finished, 0 skipped).
  When it finds a change and the recent completion rate is the lower side, what the system
  learned of the listener has stopped working: :meth:`observe` returns True and the recommender
  fades the listener's profile (:meth:`ListenerProfile.fade`) so that new plays count more.

Per-listener state lives on the listener's profile (so it moves, snapshots and is bounded with
it); the shared k-means lives here. Pure: no I/O or clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from river import cluster, drift

from online_models.context import ACTIVITIES, ListeningContext

SESSION_FEATURES: tuple[str, ...] = (
    "skip_ratio", "replay_ratio", "like_ratio", "length", "hour_sin", "hour_cos", "genre_spread",
    *(f"activity={a}" for a in ACTIVITIES),
)


@dataclass
class SessionStats:
    session_id: str
    hour: int
    activity: str
    plays: int = 0
    skips: int = 0
    replays: int = 0
    likes: int = 0
    genres: set[int] = field(default_factory=set)

    def features(self) -> dict[str, float]:
        n = max(self.plays, 1)
        angle = 2 * math.pi * self.hour / 24
        out = {"skip_ratio": self.skips / n, "replay_ratio": self.replays / n, "like_ratio": self.likes / n,
               "length": math.log1p(self.plays) / 2, "hour_sin": math.sin(angle) / 2, "hour_cos": math.cos(angle) / 2,
               "genre_spread": len(self.genres) / n}
        out |= {f"activity={a}": float(a == self.activity) / 2 for a in ACTIVITIES}
        return out


@dataclass
class ListenerBehaviour:
    """What :class:`Behaviour` keeps per listener (on their profile)."""

    session: SessionStats | None = None
    cluster: int = -1
    sessions: int = 0
    completions: drift.ADWIN = field(default_factory=lambda: drift.ADWIN(delta=0.002, clock=8))
    shifts: int = 0


class Behaviour:
    def __init__(self, n_clusters: int = 6, halflife: float = 0.05, sigma: float = 0.5, delta: float = 0.002,
                 seed: int = 0) -> None:
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.kmeans = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, sigma=sigma, seed=seed)
        self.n_clusters = n_clusters
        self.delta = delta
        self.sizes = [0] * n_clusters  # sessions assigned to each cluster (as they ended)
        self.shifts = 0

    def new_state(self) -> ListenerBehaviour:
        return ListenerBehaviour(completions=drift.ADWIN(delta=self.delta, clock=8))

    def observe(self, state: ListenerBehaviour, session_id: str, kind: str, genre: int,
                ctx: ListeningContext) -> bool:
        """One feedback event of the listener; True when it reveals a taste shift."""
        s = state.session
        if s is None or s.session_id != session_id:
            if s is not None and s.plays:
                self._close(state, s)
            s = state.session = SessionStats(session_id, ctx.local_hour, ctx.activity)
        if kind == "play_start":
            s.plays += 1
            s.genres.add(genre)
        elif kind == "replay":
            s.replays += 1
        elif kind in ("like", "thumbs_up", "playlist_add"):
            s.likes += 1
        elif kind in ("play_end", "skip"):
            s.skips += kind == "skip"
            w = state.completions
            before = w.estimation
            w.update(1.0 if kind == "play_end" else 0.0)
            if w.drift_detected and w.estimation < before:
                state.shifts += 1
                self.shifts += 1
                return True
        return False

    def _close(self, state: ListenerBehaviour, s: SessionStats) -> None:
        x = s.features()
        ended = sum(self.sizes)
        if ended < self.n_clusters:  # the first sessions seed the centres (random ones may never win a point)
            self.kmeans.centers[ended].update(x)
        self.kmeans.learn_one(x)
        state.cluster = int(self.kmeans.predict_one(x))
        state.sessions += 1
        self.sizes[state.cluster] += 1

    def centres(self) -> list[dict[str, float]]:
        """Each cluster's centre over :data:`SESSION_FEATURES` (in the scale they are learned on)."""
        return [{f: round(float(self.kmeans.centers[c].get(f, 0.0)), 4) for f in SESSION_FEATURES}
                for c in range(self.n_clusters)]

    def describe(self, c: int) -> str:
        """A few words on cluster ``c``: its activity, hour, and how its sessions go."""
        if not 0 <= c < self.n_clusters:
            return "not clustered yet (no session has ended)"
        ctr = self.kmeans.centers[c]
        act = max(ACTIVITIES, key=lambda a: ctr.get(f"activity={a}", 0.0))
        hour = round((math.degrees(math.atan2(ctr.get("hour_sin", 0.0), ctr.get("hour_cos", 0.0))) / 15) % 24)
        skips = ctr.get("skip_ratio", 0.0)
        length = math.expm1(2 * max(ctr.get("length", 0.0), 0.0))
        pace = "skips a lot" if skips > 0.5 else "mostly listens through"
        return f"{act} around {hour:02d}:00, ~{length:.0f} tracks a session, {pace}"
