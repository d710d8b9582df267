"""From feedback to reward, and joining rewards to the decision that caused them.

Reward mapping (documented in README "Rewards"): each feedback kind on a recommended track adds
to that item's reward; the sum is clipped to ``[clip_low, clip_high]``.

======================  =======  ============================================
feedback                default  why
======================  =======  ============================================
skip before 30 s         -0.5    the listener rejected it
skip after 30 s          -0.1    heard some, moved on: mildly negative
play_end (completion)    +1.0    the main success signal
like                     +1.0    explicit taste
replay                   +0.5
playlist_add             +1.0
thumbs_up                +0.5
thumbs_down              -1.0    strongly negative
no feedback by deadline   0.0    ``default`` (only for items the listener reached, see below)
======================  =======  ============================================

The join (:class:`RewardJoin`) keeps open decisions by ``rec_id``. Feedback carrying a rec_id
adds to its item; a decision closes ``window_s`` after it was made (on its listener's event
clock, or on processing time if the listener goes quiet) and then yields one reward per item. Items below
the deepest position that got any feedback are treated as not seen (the cascade assumption)
and yield nothing; items above it with no feedback get ``default``. Feedback that arrives
before its decision (out of order) waits up to ``window_s`` for it; feedback for a closed
decision is counted as late and dropped; a repeated event_id (on the same decision, open or
waiting) is counted as a duplicate. Ids are remembered per decision, so memory is bounded by the
decisions in flight; closed rec_ids are kept in a fixed-size :class:`RecentIds` window.
Pure: no clock, no I/O; time comes in as arguments.
"""

from __future__ import annotations

import pickle
import tomllib
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

EARLY_SKIP_MS = 30_000


@dataclass(frozen=True)
class RewardMapping:
    early_skip: float = -0.5
    late_skip: float = -0.1
    completion: float = 1.0
    like: float = 1.0
    replay: float = 0.5
    playlist_add: float = 1.0
    thumbs_up: float = 0.5
    thumbs_down: float = -1.0
    default: float = 0.0
    clip_low: float = -1.0
    clip_high: float = 2.0
    early_skip_ms: int = EARLY_SKIP_MS

    def __post_init__(self) -> None:
        if self.clip_low > self.clip_high:
            raise ValueError(f"clip_low {self.clip_low} > clip_high {self.clip_high}")
        if self.early_skip_ms < 0:
            raise ValueError("early_skip_ms must be >= 0")

    @classmethod
    def from_toml(cls, path: Path) -> RewardMapping:
        if not path.exists():
            raise FileNotFoundError(f"reward mapping {path} not found; set ENCORE_REWARDS_FILE to a TOML file "
                                    "(see deploy/config/rewards.toml)")
        with path.open("rb") as f:
            return cls.from_dict(tomllib.load(f))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RewardMapping:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown reward keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def of(self, kind: str, listened_ms: int | None = None) -> float | None:
        """The reward one feedback event adds, or None when the kind is not feedback."""
        if kind == "skip":
            early = listened_ms is None or listened_ms < self.early_skip_ms
            return self.early_skip if early else self.late_skip
        return {
            "play_end": self.completion, "like": self.like, "replay": self.replay,
            "playlist_add": self.playlist_add, "thumbs_up": self.thumbs_up, "thumbs_down": self.thumbs_down,
        }.get(kind)

    def clip(self, total: float) -> float:
        return min(self.clip_high, max(self.clip_low, total))


class RecentIds:
    """The last ``capacity`` ids seen, oldest forgotten first: a set and a queue of the ids'
    128-bit integers (about 80 bytes per id, against ~225 for UUID objects in an ordered cache),
    so a window of a million ids costs ~80 MB."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._set: set[int] = set()
        self._order: deque[int] = deque()

    def add(self, id_: uuid.UUID) -> bool:
        """True if new; False if already in the window."""
        n = id_.int
        if n in self._set:
            return False
        self._set.add(n)
        self._order.append(n)
        if len(self._order) > self.capacity:
            self._set.discard(self._order.popleft())
        return True

    def __contains__(self, id_: uuid.UUID) -> bool:
        return id_.int in self._set

    def __len__(self) -> int:
        return len(self._order)

    def to_bytes(self, last: int | None = None) -> bytes:
        """The ``last`` most recent ids (all by default), 16 bytes each."""
        ids = list(self._order)[-last:] if last else self._order
        return b"".join(n.to_bytes(16, "big") for n in ids)

    @classmethod
    def from_bytes(cls, capacity: int, blob: bytes) -> RecentIds:
        out = cls(capacity)
        for i in range(0, len(blob), 16):
            out.add(uuid.UUID(bytes=blob[i:i + 16]))
        return out


@dataclass
class Decision:
    """What a slate decided, kept until its rewards are known. ``payload`` is whatever the
    policy needs to learn from (features per item, session state)."""

    rec_id: uuid.UUID
    user_id: str
    made_at: datetime  # event time of the request
    track_ids: tuple[str, ...]
    policy_id: str
    payload: Any = None
    totals: dict[int, float] = field(default_factory=dict)  # position -> summed reward
    deepest: int = -1
    n_feedback: int = 0
    opened_at: datetime | None = None  # processing time, set by RewardJoin.decide
    seen: set[uuid.UUID] = field(default_factory=set)  # feedback event ids applied (duplicates)
    window: timedelta | None = None  # its own window (an offline pack's plays come back days later)


@dataclass(frozen=True)
class Feedback:
    event_id: uuid.UUID
    rec_id: uuid.UUID
    user_id: str
    track_id: str
    kind: str
    occurred_at: datetime
    listened_ms: int | None = None
    position: int | None = None


@dataclass(frozen=True)
class Closed:
    decision: Decision
    rewards: tuple[float | None, ...]  # per position; None = not seen (no learning)


@dataclass
class JoinStats:
    decisions: int = 0
    feedback: int = 0
    duplicates: int = 0
    late: int = 0
    early: int = 0  # arrived before its decision
    orphaned: int = 0  # waited for a decision that never came
    unmatched_track: int = 0
    closed: int = 0


class RewardJoin:
    """Joins feedback to decisions by rec_id.

    A decision closes when either clock passes its deadline:
    - *event time of its listener*: the listener's latest ``occurred_at`` (from any of their
      requests or feedback) is ``window_s`` past the request's time. Per listener, because
      client clocks differ: one listener's clock running ahead must not close everyone's
      decisions (a single global watermark would);
    - *processing time*: ``window_s`` after the join received the decision (so decisions of a
      listener who went quiet still close).
    """

    def __init__(self, mapping: RewardMapping | None = None, *, window_s: float = 300.0,
                 remember_closed: int = 200_000) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.mapping = mapping or RewardMapping()
        self.window = timedelta(seconds=window_s)
        self.open: OrderedDict[uuid.UUID, Decision] = OrderedDict()  # in processing-time order
        self.by_user: dict[str, list[uuid.UUID]] = {}
        self.user_clock: dict[str, datetime] = {}
        self.waiting: dict[uuid.UUID, list[Feedback]] = {}
        self._waiting_since: OrderedDict[uuid.UUID, datetime] = OrderedDict()
        self._closed = RecentIds(remember_closed)  # a late feedback's decision: closed, not unknown
        self._due: list[uuid.UUID] = []  # closed by their listener's clock, not yet handed out
        self.stats = JoinStats()

    def _tick(self, user_id: str, t: datetime) -> None:
        """Advance a listener's event clock; decisions it passes become due."""
        if user_id in self.user_clock and t <= self.user_clock[user_id]:
            return
        self.user_clock[user_id] = t
        keep = []
        for rec_id in self.by_user.get(user_id, []):
            d = self.open.get(rec_id)
            if d is None:
                continue
            if d.made_at + (d.window or self.window) <= t:
                self._due.append(rec_id)
            else:
                keep.append(rec_id)
        if keep:
            self.by_user[user_id] = keep
        else:
            self.by_user.pop(user_id, None)

    def decide(self, decision: Decision, now: datetime) -> None:
        """Open a decision (idempotent by rec_id) and apply feedback that arrived before it.
        ``now`` is processing time."""
        if decision.rec_id in self.open or decision.rec_id in self._closed:
            return
        self.stats.decisions += 1
        decision.opened_at = now
        self.open[decision.rec_id] = decision
        self.by_user.setdefault(decision.user_id, []).append(decision.rec_id)
        for fb in self.waiting.pop(decision.rec_id, []):
            self._apply(decision, fb)
        self._waiting_since.pop(decision.rec_id, None)
        self._tick(decision.user_id, decision.made_at)

    def feedback(self, fb: Feedback, now: datetime) -> bool:
        """Add one feedback event; False if it was a duplicate, late or not feedback."""
        if self.mapping.of(fb.kind, fb.listened_ms) is None:
            return False
        if fb.rec_id in self._closed:
            self.stats.late += 1
            return False
        decision = self.open.get(fb.rec_id)
        if decision is None:
            waiting = self.waiting.setdefault(fb.rec_id, [])
            if any(w.event_id == fb.event_id for w in waiting):
                self.stats.duplicates += 1
                return False
            self.stats.early += 1
            waiting.append(fb)
            self._waiting_since.setdefault(fb.rec_id, now)
            return True
        if fb.event_id in decision.seen:
            self.stats.duplicates += 1
            return False
        ok = self._apply(decision, fb)
        self._tick(fb.user_id, fb.occurred_at)
        return ok

    def _apply(self, decision: Decision, fb: Feedback) -> bool:
        decision.seen.add(fb.event_id)
        pos = fb.position
        if pos is None or not 0 <= pos < len(decision.track_ids) or decision.track_ids[pos] != fb.track_id:
            pos = decision.track_ids.index(fb.track_id) if fb.track_id in decision.track_ids else None
        if pos is None:
            self.stats.unmatched_track += 1
            return False
        self.stats.feedback += 1
        decision.totals[pos] = decision.totals.get(pos, 0.0) + float(self.mapping.of(fb.kind, fb.listened_ms) or 0.0)
        decision.deepest = max(decision.deepest, pos)
        decision.n_feedback += 1
        return True

    def close_due(self, now: datetime | None = None, *, all_open: bool = False) -> list[Closed]:
        """Close the decisions whose deadline passed on their listener's event clock, and (with
        ``now``, processing time) those received more than a window ago; ``all_open`` closes all."""
        due = list(dict.fromkeys(self._due))
        self._due.clear()
        if all_open:
            due.extend(self.open)
        elif now is not None:
            for rec_id, d in self.open.items():  # in the order received: stop at the first not due
                if d.opened_at is None:
                    break
                if d.opened_at + (d.window or self.window) <= now:
                    due.append(rec_id)
                elif d.window is None:
                    break  # (a longer window of its own is passed over: the ones after it may be due)
        out = [self._close(rec_id) for rec_id in dict.fromkeys(due) if rec_id in self.open]
        while self._waiting_since and now is not None:
            rec_id, since = next(iter(self._waiting_since.items()))
            if not all_open and since + self.window > now:
                break
            self._waiting_since.popitem(last=False)
            self.stats.orphaned += len(self.waiting.pop(rec_id, []))
        return out

    def _close(self, rec_id: uuid.UUID) -> Closed:
        decision = self.open.pop(rec_id)
        self._closed.add(rec_id)
        rewards = tuple(
            self.mapping.clip(decision.totals.get(p, self.mapping.default)) if p <= decision.deepest else None
            for p in range(len(decision.track_ids))
        )
        self.stats.closed += 1
        return Closed(decision, rewards)

    def export_users(self, users: set[str]) -> dict[str, Any]:
        """Remove and return these listeners' open decisions, waiting feedback and clocks (their
        partition moves to another worker, which :meth:`import_users` them)."""
        open_ = {r: d for r, d in self.open.items() if d.user_id in users}
        for r in open_:
            del self.open[r]
        waiting = {r: fbs for r, fbs in self.waiting.items() if fbs and fbs[0].user_id in users}
        for r in waiting:
            del self.waiting[r]
            self._waiting_since.pop(r, None)
        return {"open": open_, "waiting": waiting,
                "by_user": {u: self.by_user.pop(u) for u in users if u in self.by_user},
                "user_clock": {u: self.user_clock.pop(u) for u in users if u in self.user_clock}}

    def import_users(self, state: dict[str, Any], now: datetime) -> None:
        """Take over listeners exported by another worker. Their decisions' processing-time
        deadlines restart from ``now`` (the windows of event time are kept)."""
        for r, d in state["open"].items():
            if r not in self.open and r not in self._closed:
                d.opened_at = now
                self.open[r] = d
        for r, fbs in state["waiting"].items():
            self.waiting.setdefault(r, []).extend(fbs)
            self._waiting_since.setdefault(r, now)
        for u, ids in state["by_user"].items():
            self.by_user[u] = list(dict.fromkeys([*self.by_user.get(u, []), *ids]))
        for u, t in state["user_clock"].items():
            self.user_clock[u] = max(t, self.user_clock.get(u, t))

    def snapshot(self) -> bytes:
        state = dict(self.__dict__)
        state["_closed"] = (self._closed.capacity, self._closed.to_bytes())  # 16 bytes per id
        return pickle.dumps(state)

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        state.pop("_seen", None)  # snapshots before per-decision ids kept one global window
        for name in ("_remember_ids", "_remember_closed"):
            state.pop(name, None)
        closed = state["_closed"]
        capacity, raw = closed if isinstance(closed, tuple) else (self._closed.capacity, closed)
        state["_closed"] = RecentIds.from_bytes(capacity, raw)
        self.__dict__.update(state)
        for d in self.open.values():  # decisions pickled before they kept their feedback ids
            d.__dict__.setdefault("seen", set())
