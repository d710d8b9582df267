"""The closed loop: simulated listeners ask for slates over Kafka and react to what comes back.

Listeners send ``rec_request`` events through the producer SDK, read their slates from the
recommendations topic, and answer with plays, skips, likes... (plus the next request, in the
same batch record) according to their hidden tastes. A small share of malformed records can be
mixed in to exercise the dead-letter path.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from schemas.events import GamificationEvent, Interaction, Kind, Recommendation
from streams.client import EventProducer, RecordConsumer
from streams.settings import Settings
from streams.simulator import Listener, Returns, Session, World
from streams.topics import GAMIFICATION, RECOMMENDATIONS

SIM_START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)

#: malformed records the loop can inject; each must end in the DLQ with this reason
BAD_RECORDS: dict[str, bytes] = {
    "bad_json": b'{"event_id": "oops", ',
    "unknown_kind": json.dumps({"user_id": 42, "kind": "no_such_kind"}).encode(),
    "missing_field": json.dumps({"user_id": "u-x", "kind": "play_start"}).encode(),
    "wrong_type": json.dumps({
        "event_id": "4d1c1b1e-0000-4000-8000-000000000001", "user_id": ["not", "a", "string"],
        "session_id": "s", "occurred_at": "2026-11-24T00:00:00Z", "kind": "like", "track_id": "t-1",
    }).encode(),
    "bad_framing": b"\x00\x01",
}


@dataclass
class LoopStats:
    requests: int = 0
    slates: int = 0
    events: int = 0
    bad_injected: Counter[str] = field(default_factory=Counter)
    unmatched_slates: int = 0
    timed_out: int = 0
    sessions: int = 0
    completions: int = 0
    skips: int = 0
    reward: float = 0.0
    oracle_reward: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    completed_tracks: Counter[str] = field(default_factory=Counter)
    propensity_ok: bool = True
    request_ids: set[uuid.UUID] = field(default_factory=set)
    wall_s: float = 0.0
    active_by_day: list[int] = field(default_factory=list)  # with returns: listeners with a session, per day
    karma_by_day: list[int] = field(default_factory=list)  # of them, told they earned karma that day

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


@dataclass
class _InFlight:
    session: Session
    request: Interaction
    sent: float


class ClosedLoop:
    def __init__(
        self,
        settings: Settings,
        world: World,
        *,
        concurrency: int = 200,
        slate_size: int = 10,
        bad_rate: float = 0.0,
        seed: int = 0,
        request_timeout_s: float = 30.0,
        rate: float = 0.0,
        returns: Returns | None = None,
        days: int = 0,
        friends: dict[str, list[str]] | None = None,
    ) -> None:
        """``rate`` > 0 paces the listeners to at most that many events/s (an open-loop offered
        load the worker can be asked to sustain); 0 lets them go as fast as slates come back.

        With ``returns`` the loop runs ``days`` simulated days: every listener has a session on
        day 0; a listener with a session on day d comes back on day d + 1 with the probability
        ``returns`` gives for what they experienced (their completion share, and whether the
        gamification topic told them they earned karma); one who does not is gone.

        ``friends`` (listener -> whom they follow, e.g. World.friend_graph): a listener's first
        request is preceded by their follow_user events, so their slates can draw on what those
        listeners finish."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.settings = settings
        self.world = world
        self.concurrency = min(concurrency, len(world.listeners))
        self.slate_size = slate_size
        self.bad_rate = bad_rate
        self.rng = random.Random(seed)
        self.request_timeout_s = request_timeout_s
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        self._ready: deque[tuple[Session, list[Interaction]]] = deque()  # requests waiting for the pace
        self._started = 0.0
        self.stats = LoopStats()
        self._idle = deque(world.listeners)
        self.rng.shuffle(self._idle)
        self._in_flight: dict[str, _InFlight] = {}
        self._sim_clock = SIM_START
        self.producer = EventProducer(settings)
        self.returns, self.days = returns, days
        self.friends = friends or {}
        self._followed: set[str] = set()
        self._day = 0
        self._today: deque[Listener] = deque(self._idle) if returns else deque()
        self._visited: dict[str, tuple[Listener, int, int]] = {}  # user -> (listener, completions, plays) today
        self._karma: set[str] = set()  # listeners told they earned karma today
        topics = [RECOMMENDATIONS.name, GAMIFICATION.name] if returns else [RECOMMENDATIONS.name]
        self.consumer = RecordConsumer(
            settings, topics, group_id=f"encore-sim-{uuid.uuid4().hex[:8]}", from_beginning=False,
        )

    def run(self, seconds: float, on_tick: object | None = None, max_events: int | None = None) -> LoopStats:
        """Run for ``seconds`` of wall time (or until ``max_events``), then drain in-flight slates."""
        self.consumer.wait_assigned()
        start = self._started = time.monotonic()
        deadline = start + seconds
        if self.returns:
            self.stats.active_by_day.append(len(self._today))
        while time.monotonic() < deadline and (max_events is None or self.stats.events < max_events):
            self._release()
            if self.returns and not self._today and not self._in_flight and not self._ready and not self._next_day():
                break
            if not self._ready:
                self._fill()
            self._pump()
            if on_tick is not None:
                on_tick(self.stats)  # type: ignore[operator]
        while self._ready:  # paced listeners still waiting: their feedback goes out, no new request
            session, before = self._ready.popleft()
            self._in_flight.pop(session.listener.user_id, None)
            if before:
                self.producer.send_many(before)
                self.stats.events += len(before)
            self._idle.append(session.listener)
        drain_until = time.monotonic() + self.request_timeout_s
        while self._in_flight and time.monotonic() < drain_until:
            self._pump(continue_sessions=False)
        self.stats.timed_out += len(self._in_flight)
        self.producer.flush()
        self.stats.wall_s = time.monotonic() - start
        return self.stats

    def close(self) -> None:
        self.consumer.close()

    # --- internals ----------------------------------------------------------------------
    def _next_day(self) -> bool:
        """End of a simulated day: who comes back tomorrow? False when the run is over."""
        # the worker's karma for today's last events: wait until it has been quiet for 3 s (a
        # loaded worker applies a batch's effects a few seconds after its slates), 60 s at most
        started = time.monotonic()
        quiet_until = started + 3.0
        while time.monotonic() < min(quiet_until, started + 60.0):
            if self._pump_karma():
                quiet_until = max(quiet_until, time.monotonic() + 3.0)
        self.stats.karma_by_day.append(len(self._karma & set(self._visited)))
        back = [listener for listener, done, played in self._visited.values()
                if self.rng.random() < self.returns.probability(done / played if played else 0.0,  # type: ignore[union-attr]
                                                                 listener.user_id in self._karma)]
        self._visited, self._karma = {}, set()
        self._day += 1
        if self._day >= self.days or not back:
            return False
        self.rng.shuffle(back)
        self._today = deque(back)
        self.stats.active_by_day.append(len(back))
        return True

    def _pump_karma(self) -> int:
        n = 0
        for msg in self.consumer.poll_decoded(timeout=0.1, max_messages=1000):
            if isinstance(msg.value, GamificationEvent) and msg.value.karma_delta > 0:
                self._karma.add(msg.value.user_id)
                n += 1
        return n

    def _fill(self) -> None:
        if self.returns:  # today's listeners, at random times of the simulated day
            while len(self._in_flight) < self.concurrency and self._today:
                listener = self._today.popleft()
                at = SIM_START + timedelta(days=self._day, seconds=self.rng.uniform(3600, 82800))
                session = self.world.start_session(listener, at)
                self.stats.sessions += 1
                self._visited[listener.user_id] = (listener, 0, 0)
                self._request(session, [])
            return
        declined = 0
        while len(self._in_flight) < self.concurrency and declined < len(self._idle):
            listener = self._idle.popleft()
            self._sim_clock += timedelta(seconds=self.rng.expovariate(1 / 30))
            if not self.world.wants_to_listen(listener, self._sim_clock):
                self._idle.append(listener)  # not their time of day; ask again later
                declined += 1
                continue
            session = self.world.start_session(listener, self._sim_clock)
            self.stats.sessions += 1
            self._request(session, [])

    def _allowed(self) -> bool:
        """Within the pace (always, without one)?"""
        return not self.rate or self.stats.events < self.rate * (time.monotonic() - self._started)

    def _release(self) -> None:
        while self._ready and self._allowed():
            self._send(*self._ready.popleft())

    def _request(self, session: Session, before: list[Interaction]) -> None:
        if self._ready or not self._allowed():  # over the pace: the listener waits its turn
            self._ready.append((session, before))
            self._in_flight[session.listener.user_id] = _InFlight(session, None, time.monotonic())  # type: ignore[arg-type]
            return
        self._send(session, before)

    def _send(self, session: Session, before: list[Interaction]) -> None:
        user = session.listener.user_id
        if self.friends and user not in self._followed:
            self._followed.add(user)
            at = before[0].occurred_at if before else session.clock
            before = [Interaction(event_id=uuid.uuid5(session.listener.id_space, f"follow:{user}:{f}"), user_id=user,
                                  session_id=session.session_id, occurred_at=at, kind=Kind.FOLLOW_USER, friend_id=f)
                      for f in self.friends.get(user, ())] + before
        request = self.world.request(session, self.slate_size)
        self.producer.send_many([*before, request])
        self._in_flight[session.listener.user_id] = _InFlight(session, request, time.monotonic())
        self.stats.requests += 1
        self.stats.request_ids.add(request.event_id)
        self.stats.events += len(before) + 1
        if self.bad_rate and self.rng.random() < self.bad_rate:
            reason = self.rng.choice(sorted(BAD_RECORDS))
            self.producer.send_raw(session.listener.user_id, BAD_RECORDS[reason])
            self.stats.bad_injected[reason] += 1

    def _pump(self, continue_sessions: bool = True) -> None:
        self.producer.poll(0)
        for msg in self.consumer.poll_decoded(timeout=0.02, max_messages=1000):
            rec = msg.value
            if isinstance(rec, GamificationEvent):
                if rec.karma_delta > 0:
                    self._karma.add(rec.user_id)
                continue
            flight = self._in_flight.get(msg.key or "")
            if (not isinstance(rec, Recommendation) or flight is None or flight.request is None
                    or rec.request_id != flight.request.event_id):
                self.stats.unmatched_slates += 1
                continue
            self._answer(flight, rec, continue_sessions)
        now = time.monotonic()
        for user in [u for u, f in self._in_flight.items() if f.request is not None and now - f.sent > self.request_timeout_s]:
            self.stats.timed_out += 1
            self._idle.append(self._in_flight.pop(user).session.listener)

    def _answer(self, flight: _InFlight, rec: Recommendation, continue_sessions: bool) -> None:
        stats = self.stats
        stats.slates += 1
        stats.latencies_ms.append((time.monotonic() - flight.sent) * 1000)
        if any(not 0 < item.propensity <= 1 for item in rec.items):
            stats.propensity_ok = False
        session = flight.session
        before = (session.reward, session.oracle_reward, session.completions, session.skips)
        events = self.world.react(session, rec.rec_id, [item.track_id for item in rec.items])
        stats.reward += session.reward - before[0]
        stats.oracle_reward += session.oracle_reward - before[1]
        stats.completions += session.completions - before[2]
        stats.skips += session.skips - before[3]
        stats.completed_tracks.update(e.track_id for e in events if e.kind == Kind.PLAY_END)
        user = session.listener.user_id
        if user in self._visited:  # the day's experience, for tomorrow's return
            listener, done, played = self._visited[user]
            self._visited[user] = (listener, done + session.completions - before[2],
                                   played + session.completions - before[2] + session.skips - before[3])
        if session.active and continue_sessions:
            self._request(session, events)
        else:
            del self._in_flight[user]
            self.producer.send_many(events)
            stats.events += len(events)
            if not self.returns:
                self._idle.append(session.listener)
