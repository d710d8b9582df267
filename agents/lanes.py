"""Lanes: one recommender per learner, each listener routed to theirs (experiments/config.py).

A lane is a whole :class:`~agents.recommend.Recommender` (policy, listener profiles, reward join,
open decisions) built for one arm of a running experiment, one policy rolled out by flag, or the
default. A listener's events go to their lane only, so an arm's model learns from its own arm's
feedback and nothing else; model deltas between workers carry the lane and are merged into the
same lane only. The event-id window is shared (an event is new or not, whatever its lane).

:class:`Lanes` has the recommender's interface (``process``, ``close``, ``rec_id_of``,
snapshots, partition hand-offs), so the batch step and the worker do not care how many lanes
there are. Routing is cached per listener and reset when the control state changes.

Exposures: a listener in an experiment is *exposed* when they first receive their arm's
treatment: their first slate from the arm's lane or, in an experiment whose arms differ in
gamification, their first event. One row per (experiment, listener, event) goes to ClickHouse
(``experiment_exposures``); the analysis takes the earliest, so a row produced again after a
restart changes nothing.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from agents.recommend import Learned, Recommender
from experiments.config import DEFAULT_LANE, Control, Lane
from online_models.candidates import FriendTracks
from online_models.embeddings import TrackEmbeddings
from schemas.events import Interaction, Kind, Recommendation

MakeRecommender = Callable[[Lane], Recommender]


class Lanes:
    def __init__(self, make: MakeRecommender, control: Control | None = None) -> None:
        self._make = make
        self.control = control or Control()
        self.default = make(Lane(DEFAULT_LANE, None))
        self.lanes: dict[str, Recommender] = {DEFAULT_LANE: self.default}
        self.specs: dict[str, Lane] = {DEFAULT_LANE: Lane(DEFAULT_LANE, None)}
        self._route: dict[str, Lane] = {}  # listener -> lane, for this control version
        self._exposed: set[tuple[str, str]] = set()  # (experiment, listener) exposures sent by this process
        self.embeddings: TrackEmbeddings | None = None  # the published version every lane serves

    def set_embeddings(self, emb: TrackEmbeddings | None) -> None:
        """Every lane's policy serves this embedding version (lanes made later too). Safe to call
        from a thread: each policy prepares it aside and swaps it in with one assignment."""
        self.embeddings = emb
        for rec in list(self.lanes.values()):
            rec.policy.set_embeddings(emb)

    # --- routing ------------------------------------------------------------------------------
    def set_control(self, control: Control) -> bool:
        """Take a new control state; True if it changed anything (the routing is recomputed)."""
        if control == self.control:
            return False
        self.control, self._route = control, {}
        return True

    def lane_of(self, user_id: str) -> Lane:
        lane = self._route.get(user_id)
        if lane is None:
            lane = self._route[user_id] = self.control.lane_of(user_id)
        return lane

    def recommender(self, lane: Lane) -> Recommender:
        rec = self.lanes.get(lane.key)
        if rec is None:
            rec = self.lanes[lane.key] = self._make(lane)
            if self.embeddings is not None:
                rec.policy.set_embeddings(self.embeddings)
            rec.seen = self.default.seen  # one event-id window for the worker
            self.specs[lane.key] = lane
        return rec

    def spec_of(self, key: str) -> Lane | None:
        """The lane with this key: one served already, or an arm of a declared experiment."""
        if key in self.specs:
            return self.specs[key]
        for exp in self.control.experiments:
            for arm in exp.arms:
                lane = self.control.arm_lane(exp, arm)
                if lane.key == key:
                    return lane
        return None

    def gamified(self, user_id: str) -> bool:
        return self.lane_of(user_id).gamification

    # --- the step -----------------------------------------------------------------------------
    def process(self, events: list[Interaction], now: datetime, partitions: list[int] | None = None,
                known: Mapping[uuid.UUID, Recommendation] | None = None,
                social: Mapping[str, FriendTracks] | None = None) -> list[Recommendation]:
        """Each lane processes its listeners' events, in order; slates come back in request order."""
        if not self.control.active:  # the common case: everyone in the default lane
            return self.default.process(events, now, partitions, known, social)
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            groups.setdefault(self.lane_of(e.user_id).key, []).append(i)
        slates: dict[int, Recommendation] = {}
        for idx in groups.values():
            rec = self.recommender(self.lane_of(events[idx[0]].user_id))
            sub = [events[i] for i in idx]
            got = rec.process(sub, now, [partitions[i] for i in idx] if partitions is not None else None, known,
                              social)
            requests = [i for i in idx if events[i].kind == Kind.REC_REQUEST]
            slates.update(zip(requests, got, strict=True))
        return [slates[i] for i in sorted(slates)]

    def holder(self, user_id: str) -> Recommender:
        """The recommender (lane) that serves this listener."""
        return self.lanes.get(self.lane_of(user_id).key, self.default)

    def rec_id_of(self, request: Interaction) -> uuid.UUID:
        return self.recommender(self.lane_of(request.user_id)).rec_id_of(request)

    def close(self, now: datetime, *, all_open: bool = False) -> Learned:
        out = Learned()
        for rec in self.lanes.values():
            got = rec.close(now, all_open=all_open)
            out.records += got.records
            out.items += got.items
        return out

    def forget(self, user: str) -> bool:
        held = False
        for rec in self.lanes.values():
            held |= rec.forget(user)
        return held

    def delivered(self, rec_ids: list[uuid.UUID]) -> None:
        for rec in self.lanes.values():
            rec.delivered(rec_ids)

    def exposures(self, events: list[Interaction]) -> list[list[Any]]:
        """``experiment_exposures`` rows for listeners first treated in this batch."""
        rows = []
        for e in events:
            lane = self.lane_of(e.user_id)
            if lane.experiment is None or (lane.experiment, e.user_id) in self._exposed:
                continue
            exp = next((x for x in self.control.experiments if x.name == lane.experiment), None)
            if e.kind == Kind.REC_REQUEST or (exp is not None and exp.varies_gamification):
                self._exposed.add((lane.experiment, e.user_id))
                rows.append([e.event_id, lane.experiment, lane.arm or "", e.user_id, e.occurred_at])
        return rows

    # --- what the worker reads ------------------------------------------------------------------
    @property
    def duplicates(self) -> int:
        return sum(r.duplicates for r in self.lanes.values())

    @property
    def open_decisions(self) -> int:
        return sum(len(r.join.open) for r in self.lanes.values())

    def join_stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.lanes.values():
            for k, v in vars(rec.join.stats).items():
                out[k] = out.get(k, 0) + v
        return out

    def listener(self, user_id: str) -> dict[str, Any] | None:
        lane = self.lane_of(user_id)
        got = self.lanes.get(lane.key, self.default).listener(user_id)
        if got is not None:
            got = {**got, "lane": lane.key, "experiment": lane.experiment, "arm": lane.arm}
        return got

    # --- state that moves and persists ----------------------------------------------------------
    def export_partition(self, partition: int) -> bytes:
        return pickle.dumps({"lanes": {k: (self.specs[k], r.export_partition(partition)) for k, r in self.lanes.items()}})

    def import_partition(self, partition: int, blob: bytes, now: datetime) -> int:
        state = pickle.loads(blob)
        if "lanes" not in state:  # a hand-off from a worker without lanes
            return self.default.import_partition(partition, blob, now)
        n = 0
        for spec, part in state["lanes"].values():
            n = max(n, self.recommender(spec).import_partition(partition, part, now))
        return n

    def snapshot(self) -> bytes:
        return pickle.dumps({"lanes": {k: (self.specs[k], r.snapshot()) for k, r in self.lanes.items()}})

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        if "lanes" not in state:  # a snapshot from before lanes: it is the default lane
            self.default.restore(blob)
            return
        lanes = state["lanes"]
        if DEFAULT_LANE in lanes:  # first: its event-id window is the one every lane shares
            self.default.restore(lanes[DEFAULT_LANE][1])
        for key, (spec, part) in lanes.items():
            if key != DEFAULT_LANE:
                self.recommender(spec).restore(part)
        for rec in self.lanes.values():
            rec.seen = self.default.seen
