"""Step ``recommend``: learn from feedback, answer each rec_request with a slate.

Pure apart from the model state it owns (per worker, fed by this worker's partitions).
Idempotent by event_id: an event seen before (redelivery after a crash, a duplicate send)
neither updates the model twice nor yields a second slate. The slate for a request is a
function of the request and the model state: its rec_id is derived from the request's
event_id and its random draw is seeded by it, so consumers can de-duplicate by rec_id.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from datetime import datetime

import numpy as np

from online_models.catalogue import Catalogue
from online_models.context import ListeningContext
from online_models.popularity import ContextPopularity
from schemas.events import Interaction, Kind, Recommendation, SlateItem

STEP = "recommend"
REC_NAMESPACE = uuid.UUID("5f0c1c34-7b0e-4d53-9b0f-2f1f7e6c9a10")
RECENT_PER_USER = 50


class RecentIds:
    """A bounded memory of event ids (oldest forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[uuid.UUID, None] = OrderedDict()

    def add(self, event_id: uuid.UUID) -> bool:
        """True if new; False if already seen."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)


def listening_context(event: Interaction) -> ListeningContext:
    ctx = event.context
    hour, weekday = ctx.local_hour, ctx.weekday
    if hour is None or weekday is None:
        local = event.local_time()
        hour = local.hour if hour is None else hour
        weekday = local.weekday() if weekday is None else weekday
    return ListeningContext(str(ctx.activity), hour, weekday, str(ctx.device))


class Recommender:
    def __init__(self, catalogue: Catalogue, policy: ContextPopularity, *, slate_size: int,
                 dedupe_window: int, seed: int = 0) -> None:
        self.catalogue = catalogue
        self.policy = policy
        self.slate_size = slate_size
        self.seed = seed
        self.seen = RecentIds(dedupe_window)
        self.recent: dict[str, deque[int]] = {}
        self.duplicates = 0
        self.unknown_tracks = 0

    def process(self, events: list[Interaction], now: datetime) -> list[Recommendation]:
        slates = []
        for event in events:
            if not self.seen.add(event.event_id):
                self.duplicates += 1
                continue
            if event.kind == Kind.REC_REQUEST:
                slates.append(self.answer(event, now))
            else:
                self.learn(event)
        return slates

    def learn(self, event: Interaction) -> None:
        idx = self.catalogue.index.get(event.track_id or "")
        if idx is None:
            if event.track_id is not None:
                self.unknown_tracks += 1
            return
        if event.kind in (Kind.PLAY_START, Kind.SKIP, Kind.PLAY_END):
            recent = self.recent.setdefault(event.user_id, deque(maxlen=RECENT_PER_USER))
            if not recent or recent[-1] != idx:
                recent.append(idx)
        self.policy.learn(str(event.kind), idx, listening_context(event), event.rating)

    def answer(self, request: Interaction, now: datetime) -> Recommendation:
        ctx = listening_context(request)
        rng = np.random.default_rng([self.seed, request.event_id.int >> 64, request.event_id.int & (2**64 - 1)])
        recent = self.recent.get(request.user_id)
        exclude = np.fromiter(recent, dtype=np.int64) if recent else None
        slate = self.policy.recommend(ctx, request.slate_size or self.slate_size, rng, exclude)
        items = [
            SlateItem(track_id=self.catalogue.track_ids[p.track_idx], position=pos, score=p.score,
                      propensity=p.propensity, source=p.source, explanation=p.explanation)
            for pos, p in enumerate(slate.picks)
        ]
        return Recommendation(
            rec_id=uuid.uuid5(REC_NAMESPACE, f"{slate.policy_id}:{request.event_id}"),
            request_id=request.event_id, user_id=request.user_id, session_id=request.session_id,
            items=items, slate_propensity=slate.slate_propensity, policy_id=slate.policy_id,
            policy_version=slate.policy_version, context=request.context, created_at=now,
        )
