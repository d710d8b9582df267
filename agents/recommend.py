"""Step ``recommend``: answer each rec_request with a slate, learn from every feedback event,
and hand decisions and feedback to the reward join.

Pure apart from the state it owns (per worker, fed by this worker's partitions, shared with
other workers through model deltas). Idempotent by event_id: an event seen before (redelivery
after a crash, a duplicate send) neither updates the model twice nor yields a second slate.
The slate for a request is a function of the request and the model state: its rec_id is derived
from the policy and the request's event_id and its random draw is seeded by the event_id, so
consumers can de-duplicate by rec_id and a replay reproduces the same decisions.
"""

from __future__ import annotations

import pickle
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from online_models.candidates import FriendTracks
from online_models.catalogue import Catalogue
from online_models.context import ListeningContext
from online_models.policy import Decided, HybridPolicy, RandomPolicy
from online_models.reward import Closed, Decision, Feedback, RecentIds, RewardJoin
from schemas.events import (
    ARTIST_KINDS,
    Interaction,
    Kind,
    Network,
    Recommendation,
    RewardItem,
    RewardRecord,
    SlateItem,
)

STEP = "recommend"
REC_NAMESPACE = uuid.UUID("5f0c1c34-7b0e-4d53-9b0f-2f1f7e6c9a10")
RECENT_PER_USER = 50
SNAPSHOT_IDS = 200_000  # recent event ids kept in a snapshot (duplicates across a restart)
Policy = RandomPolicy | HybridPolicy


def listening_context(event: Interaction) -> ListeningContext:
    ctx = event.context
    hour, weekday = ctx.local_hour, ctx.weekday
    if hour is None or weekday is None:
        local = event.local_time()
        hour = local.hour if hour is None else hour
        weekday = local.weekday() if weekday is None else weekday
    return ListeningContext(str(ctx.activity), hour, weekday, str(ctx.device))


@dataclass
class Learned:
    """What one batch (or tick) taught the policy."""

    records: list[RewardRecord] = field(default_factory=list)
    items: int = 0


class Recommender:
    def __init__(self, catalogue: Catalogue, policy: Policy, *, slate_size: int, dedupe_window: int,
                 join: RewardJoin | None = None, seed: int = 0, lane: str = "",
                 experiment_arm: str | None = None, offline_window_s: float = 7 * 86_400.0) -> None:
        self.catalogue = catalogue
        self.policy = policy
        self.join = join or RewardJoin()
        self.slate_size = slate_size
        self.seed = seed
        self.lane = lane  # "" for the default; an experiment arm's lane scopes its rec_ids
        self.experiment_arm = experiment_arm  # "experiment/arm", stamped on its slates
        #: an offline pack (a request with network=offline) waits this long for its plays
        self.offline_window = timedelta(seconds=offline_window_s)
        self.seen = RecentIds(dedupe_window)
        self.recent: dict[str, deque[int]] = {}
        self.duplicates = 0
        self.adopted = 0  # published slates re-served to a redelivered request
        self.unknown_tracks = 0
        self.decisions: OrderedDict[uuid.UUID, Recommendation] = OrderedDict()  # open ones, for RewardRecords
        #: closed decisions whose RewardRecord is not yet acknowledged as delivered (an outbox): a
        #: snapshot taken between a batch's decision and its delivery keeps them, and a restart
        #: sends them again (identically), so a reward is never lost with an undelivered batch
        self.unsent: dict[uuid.UUID, RewardRecord] = {}
        self._resend = False  # after a restore: the next close() returns the outbox as well
        self.partition_of: dict[str, int] = {}  # listener -> events partition (whose state moves with it)

    # --- the step --------------------------------------------------------------------------
    def process(self, events: list[Interaction], now: datetime, partitions: list[int] | None = None,
                known: Mapping[uuid.UUID, Recommendation] | None = None,
                social: Mapping[str, FriendTracks] | None = None) -> list[Recommendation]:
        """Answer requests and learn from feedback, in order. Returns the slates to publish.
        ``partitions`` (per event, its events partition) tells whose state moves where.
        ``known`` (rec_id -> slate) holds the slates already published for these requests: a
        request gets its published slate again, never another draw (first content wins). ``social``
        (listener -> FriendTracks) holds what the requesters' friends finished lately. Every
        request gets a slate, a redelivered one included; feedback teaches the model once."""
        if partitions is not None:
            for event, p in zip(events, partitions, strict=True):
                self.partition_of[event.user_id] = p
        gen = getattr(self.policy, "gen", None)
        if gen is not None:  # what the requesters' friends finished lately (a candidate source)
            gen.social = social or {}
        slates = []
        for event in events:
            new = self.seen.add(event.event_id)
            if not new:
                self.duplicates += 1
            if event.kind == Kind.REC_REQUEST:
                stored = known.get(self.rec_id_of(event)) if known else None
                if stored is not None:
                    self.adopt(stored, event, now)
                    slates.append(stored)
                else:  # not published yet (or forgotten): decide it; the join opens a rec_id once
                    slates.append(self.answer(event, now))
            elif new:
                self.observe(event, now)
        return slates

    def rec_id_of(self, request: Interaction) -> uuid.UUID:
        """The rec_id of the slate that answers ``request``: one per (lane, policy, request)."""
        scope = f"{self.lane}:" if self.lane else ""
        return uuid.uuid5(REC_NAMESPACE, f"{scope}{self.policy.policy_id}:{request.event_id}")

    def adopt(self, slate: Recommendation, request: Interaction, now: datetime) -> None:
        """Open the decision of a slate published earlier (by this worker before a crash, or by
        the partition's previous owner), so its feedback joins the tracks the listener saw. The
        model did not compute it, so it joins rewards but teaches nothing (no payload)."""
        if slate.rec_id in self.decisions:
            return
        self.adopted += 1
        self.join.decide(Decision(slate.rec_id, slate.user_id, request.occurred_at,
                                  tuple(i.track_id for i in slate.items), slate.policy_id), now)
        if slate.rec_id in self.join.open:
            self.decisions[slate.rec_id] = slate

    def observe(self, event: Interaction, now: datetime) -> None:
        idx = self.catalogue.index.get(event.track_id or "")
        if event.kind in ARTIST_KINDS:  # follows / unfollows: a vote on the artist (Artists you may like)
            gen = getattr(self.policy, "gen", None)
            artist = gen.artist_index(event.artist_id, idx) if gen is not None else None
            if artist is not None:
                gen.vote_artist(event.user_id, artist, 1.0 if event.kind == Kind.FOLLOW_ARTIST else -1.0)
            return
        if idx is None:
            if event.track_id is not None:
                self.unknown_tracks += 1
            return
        if event.kind in (Kind.PLAY_START, Kind.SKIP, Kind.PLAY_END):
            recent = self.recent.setdefault(event.user_id, deque(maxlen=RECENT_PER_USER))
            if not recent or recent[-1] != idx:
                recent.append(idx)
        self.policy.observe(event.user_id, event.session_id, str(event.kind), idx, listening_context(event),
                            event.rating)
        if event.rec_id is not None:
            self.join.feedback(Feedback(event.event_id, event.rec_id, event.user_id, event.track_id or "",
                                        str(event.kind), event.occurred_at, event.listened_ms, event.position), now)

    def answer(self, request: Interaction, now: datetime) -> Recommendation:
        ctx = listening_context(request)
        rng = np.random.default_rng([self.seed, request.event_id.int >> 64, request.event_id.int & (2**64 - 1)])
        recent = self.recent.get(request.user_id)
        exclude = np.fromiter(recent, dtype=np.int64) if recent else None
        decided: Decided = self.policy.recommend(request.user_id, request.session_id, ctx,
                                                 request.slate_size or self.slate_size, rng, exclude)
        slate = decided.slate
        items = [
            SlateItem(track_id=self.catalogue.track_ids[p.track_idx], position=pos, score=p.score,
                      propensity=p.propensity, source=p.source, explanation=p.explanation,
                      why_features=p.why[0], why_values=p.why[1])
            for pos, p in enumerate(slate.picks)
        ]
        rec = Recommendation(
            rec_id=self.rec_id_of(request),
            request_id=request.event_id, user_id=request.user_id, session_id=request.session_id,
            items=items, slate_propensity=slate.slate_propensity, policy_id=slate.policy_id,
            policy_version=slate.policy_version, experiment_arm=self.experiment_arm, context=request.context,
            created_at=now,
        )
        # event time of the request: the join's windows run on event time, not on this clock
        offline = request.context.network == Network.OFFLINE  # a pack: its plays come back later
        self.join.decide(Decision(rec.rec_id, rec.user_id, request.occurred_at, tuple(i.track_id for i in items),
                                  rec.policy_id, decided.payload, window=self.offline_window if offline else None),
                         now)
        if rec.rec_id in self.join.open:
            self.decisions.setdefault(rec.rec_id, rec)
        return rec

    # --- rewards ---------------------------------------------------------------------------
    def close(self, now: datetime, *, all_open: bool = False) -> Learned:
        """Close the decisions whose window has passed, learn from their rewards."""
        out = Learned()
        if self._resend:
            out.records.extend(self.unsent.values())
            self._resend = False
        for closed in self.join.close_due(now, all_open=all_open):
            if closed.decision.payload is not None:  # adopted decisions join rewards, teach nothing
                out.items += self.policy.learn(closed.decision.payload, closed.rewards)
            rec = self.decisions.pop(closed.decision.rec_id, None)
            if rec is not None:
                record = reward_record(rec, closed, now)
                self.unsent[record.rec_id] = record
                out.records.append(record)
        return out

    def delivered(self, rec_ids: Iterable[uuid.UUID]) -> None:
        """The batch carrying these RewardRecords was delivered and acknowledged."""
        for r in rec_ids:
            self.unsent.pop(r, None)

    # --- listener state follows its partition ------------------------------------------------
    def export_partition(self, partition: int) -> bytes:
        """Remove and return the state of the listeners of one events partition: profiles,
        recent plays, open decisions with their feedback (the partition moves to another worker)."""
        users = {u for u, p in self.partition_of.items() if p == partition}
        join = self.join.export_users(users)
        decisions = {r: self.decisions.pop(r) for r in join["open"] if r in self.decisions}
        for u in users:
            del self.partition_of[u]
        unsent = {r: rec for r, rec in self.unsent.items() if rec.user_id in users}
        return pickle.dumps({"users": users, "policy": self.policy.export_listeners(users), "join": join,
                             "recent": {u: self.recent.pop(u) for u in users if u in self.recent},
                             "decisions": decisions, "unsent": unsent})

    def forget(self, user: str) -> bool:
        """Erase what this recommender holds of one listener (profile, recent plays, open decisions
        and their feedback, unsent rewards). The shared model keeps what it learned from them in
        aggregate (a linear model's sums cannot be split by listener). True if anything was held."""
        profiles = getattr(getattr(self.policy, "gen", None), "profiles", {})
        if not (user in self.partition_of or user in self.recent or user in self.join.by_user or user in profiles
                or any(r.user_id == user for r in self.unsent.values())):
            return False
        users = {user}
        held = any(bool(v) for v in self.policy.export_listeners(users).values())
        join = self.join.export_users(users)
        held |= bool(join["open"] or join["waiting"] or join["by_user"])
        for r in join["open"]:
            self.decisions.pop(r, None)
        for r in [r for r, rec in self.decisions.items() if rec.user_id == user]:
            del self.decisions[r]
        for r in [r for r, rec in self.unsent.items() if rec.user_id == user]:
            del self.unsent[r]
        held |= self.recent.pop(user, None) is not None
        held |= self.partition_of.pop(user, None) is not None
        return held

    def import_partition(self, partition: int, blob: bytes, now: datetime) -> int:
        """Take over a partition's listeners exported by :meth:`export_partition`; returns how many."""
        state = pickle.loads(blob)
        self.policy.import_listeners(state["policy"])
        self.join.import_users(state["join"], now)
        self.recent.update(state["recent"])
        self.decisions.update(state["decisions"])
        if state.get("unsent"):  # rewards its old owner closed but may not have delivered: sent again
            self.unsent.update(state["unsent"])
            self._resend = True
        for u in state["users"]:
            self.partition_of[u] = partition
        return len(state["users"])

    def listener(self, user_id: str) -> dict[str, Any] | None:
        """A summary of what this recommender holds about one listener, or None."""
        prof = getattr(getattr(self.policy, "gen", None), "profiles", {}).get(user_id)
        recent = self.recent.get(user_id)
        if prof is None and recent is None and user_id not in self.partition_of:
            return None
        return {
            "user_id": user_id, "partition": self.partition_of.get(user_id),
            "plays": int(sum(prof.track_shown.values())) if prof is not None else 0,
            "completions": int(sum(prof.track_pos.values())) if prof is not None else 0,
            "recent_tracks": [self.catalogue.track_ids[i] for i in (recent or ())],
            "open_decisions": [str(r) for r in self.join.by_user.get(user_id, []) if r in self.join.open],
            **self._taste(prof),
            **self._behaviour(prof),
        }

    def _behaviour(self, prof: Any) -> dict[str, Any]:
        """The listener's session cluster and taste shifts (policies that keep them)."""
        behaviour = getattr(self.policy, "behaviour", None)
        state = getattr(prof, "behaviour", None)
        if behaviour is None or state is None:
            return {"behaviour_cluster": None}
        return {"behaviour_cluster": state.cluster if state.cluster >= 0 else None,
                "behaviour": behaviour.describe(state.cluster), "sessions_clustered": state.sessions,
                "taste_shifts": state.shifts}

    def behaviour_summary(self, user_id: str | None = None) -> dict[str, Any]:
        """The session clusters this worker learned (centre, sessions, a few words each), the taste
        shifts it flagged, and ``user_id``'s own cluster if it holds them."""
        behaviour = getattr(self.policy, "behaviour", None)
        if behaviour is None:
            raise ValueError(f"the {self.policy.policy_id} policy keeps no session clusters")
        out: dict[str, Any] = {
            "clusters": [{"cluster": c, "sessions": behaviour.sizes[c], "describe": behaviour.describe(c),
                          "centre": centre} for c, centre in enumerate(behaviour.centres())],
            "taste_shifts": behaviour.shifts}
        if user_id is not None:
            prof = getattr(getattr(self.policy, "gen", None), "profiles", {}).get(user_id)
            out["listener"] = {"user_id": user_id, **self._behaviour(prof)}
        return out

    def _taste(self, prof: Any) -> dict[str, Any]:
        """The listener's taste cluster and genre prior under the served embeddings (if any)."""
        gen = getattr(self.policy, "gen", None)
        emb = gen.embeddings if gen is not None else None
        if prof is None or emb is None or emb.mixture is None:
            return {"embeddings": emb.version if emb is not None else None, "taste_cluster": None}
        prior = gen.genre_prior_of(prof)
        top = np.argsort(-prior)[:3]
        return {"embeddings": emb.version,
                "taste_cluster": emb.mixture.cluster(prof.genre_pos, prof.genre_shown),
                "cluster_top_genres": {self.catalogue.genres[g]: round(float(prior[g]), 3) for g in top}}

    # --- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        return pickle.dumps({"policy": self.policy.snapshot(), "join": self.join.snapshot(),
                             "seen": self.seen.to_bytes(SNAPSHOT_IDS), "recent": self.recent,
                             "decisions": self.decisions, "partition_of": self.partition_of,
                             "unsent": self.unsent})

    def restore(self, blob: bytes) -> None:
        state: dict[str, Any] = pickle.loads(blob)
        self.policy.restore(state["policy"])
        self.join.restore(state["join"])
        self.seen = RecentIds.from_bytes(self.seen.capacity, state["seen"])
        self.recent, self.decisions = state["recent"], state["decisions"]
        self.partition_of = state.get("partition_of", {})
        self.unsent = state.get("unsent", {})
        self._resend = bool(self.unsent)


def reward_record(rec: Recommendation, closed: Closed, now: datetime) -> RewardRecord:
    return RewardRecord(
        rec_id=rec.rec_id, user_id=rec.user_id, session_id=rec.session_id, policy_id=rec.policy_id,
        policy_version=rec.policy_version, context=rec.context, decided_at=rec.created_at, closed_at=now,
        feedback_events=closed.decision.n_feedback,
        items=[RewardItem(track_id=i.track_id, position=i.position, propensity=i.propensity, source=i.source,
                          reward=r) for i, r in zip(rec.items, closed.rewards, strict=True)],
    )
