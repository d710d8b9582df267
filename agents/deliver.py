"""Delivering one batch's outputs: every write, with one failure policy, offsets last.

Order (slates first: a slate depends on the model, not on karma or ClickHouse):

0. :meth:`Delivery.published`, before the batch is decided: the slates already published for
   its requests (a redelivered request is answered with the same slate: first content wins);
1. :meth:`Delivery.publish`, as soon as the batch is computed: each slate stored under its
   rec_id (``sinks.slate_cache``), then slates, dead letters of decoding and closed decisions
   (``encore.rewards``) handed to the producer;
2. :meth:`Delivery.apply`, which the worker runs in a background writer while it computes the
   next batch: gamification effects to Redis (once per event id), their gamification events to
   the producer, the analytics rows (with the karma history) into the sink's buffer;
3. :meth:`Delivery.checkpoint`, every ``commit_interval_s`` (or when the writer has nothing
   else to do for that long): the buffered rows to ClickHouse in one flush per table, then
   every send of those batches confirmed.

Only when a checkpoint returns may its batches be acknowledged; the worker acknowledges them in
the order it took them. (ClickHouse costs tens of ms per INSERT whatever its size: one flush per
checkpoint instead of one per batch keeps a quiet worker quick and a busy one efficient.)

The failure policy, stated once (:meth:`Delivery.until_done`):

- **transient** (a store or the broker is unreachable, busy, read-only or refuses us for now):
  the batch waits and the step is retried with exponential backoff (tenacity), the events
  partitions are paused meanwhile (memory stays bounded), readiness turns false and
  ``encore_stalled`` reads 1. Nothing is skipped; every effect is idempotent, so retries are
  safe. Cancellation (shutdown) interrupts the wait at once; the batch stays unacknowledged.
- **permanent** (the store refuses these rows / these effects for good): the work is bisected
  down to the offending items, which are dead-lettered with the store's reason; their
  neighbours are written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from agents.batch import Outputs
from agents.gamify import Effect
from agents.ingest import dead_letter
from schemas.events import DeadLetter, GamificationEvent, Recommendation
from schemas.wire import Serde
from sinks.clickhouse import AnalyticsSink, StoreUnavailable, is_transient, slate_rows
from sinks.gamification import Applied, GamificationStore
from sinks.listeners import ListenerStore, Social
from sinks.slate_cache import SlateCache

log = logging.getLogger("encore.deliver")

#: Redis replies that mean "not now" (an outage, a restart, a failover, an ACL change, memory)
_REDIS_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError,
                    redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError,
                    redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)


def transient(exc: BaseException) -> bool:
    """Would the same call succeed later? (Otherwise it is refused for good.)"""
    if isinstance(exc, (*_REDIS_TRANSIENT, StoreUnavailable)):
        return True
    if isinstance(exc, redis.ResponseError):
        return str(exc).startswith(("OOM", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"))
    return is_transient(exc)


CONFIRM_STALL_S = 5.0  # waiting longer than this for the broker's acknowledgements is a stall

#: send(topic, key, value) -> a future that resolves once the broker has the record
Send = Callable[[str, bytes | None, bytes], Awaitable[asyncio.Future[Any]]]
#: a record handed to the producer and the future of its delivery
Pending = tuple[str, bytes | None, bytes, asyncio.Future[Any]]


@dataclass
class Report:
    """What a delivery did, for metrics."""

    applied: Applied = field(default_factory=Applied)
    gamification_events: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    sink_seconds: float = 0.0
    dead: list[DeadLetter] = field(default_factory=list)  # every dead letter sent (decode + stores)


class Delivery:
    def __init__(self, serde: Serde, send: Send, *, gamification: GamificationStore | None,
                 analytics: AnalyticsSink | None, slate_cache: SlateCache | None, metrics: Any,
                 listeners: ListenerStore | None = None,
                 on_stall: Callable[[bool], None] = lambda stalled: None, max_backoff_s: float = 30.0) -> None:
        self.serde = serde
        self.send = send
        self.gamification = gamification
        self.analytics = analytics
        self.slate_cache = slate_cache
        self.listeners = listeners
        self.metrics = metrics
        self.on_stall = on_stall
        self.max_backoff_s = max_backoff_s
        self.stalled_since: float | None = None  # monotonic time the current stall began

    # --- the failure policy -------------------------------------------------------------------
    async def until_done(self, step: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a thread until it succeeds or fails for good (re-raised)."""

        def waiting(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.metrics.step_failures.labels(step).inc()
            if step == "analytics":
                self.metrics.sink_failures.inc()
            if self.stalled_since is None:
                self.stalled_since = time.monotonic()
                self.metrics.stalled.set(1)
                self.on_stall(True)
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s failed (%s: %s); the batch waits, retry %d in %.1f s", step, type(exc).__name__, exc,
                        state.attempt_number, wait, extra={"step": step})

        retrying = AsyncRetrying(retry=retry_if_exception(transient), reraise=True, before_sleep=waiting,
                                 wait=wait_exponential_jitter(initial=0.25, max=self.max_backoff_s, jitter=0.25))
        done = False
        try:
            async for attempt in retrying:
                with attempt:
                    result = await asyncio.to_thread(fn, *args)
            done = True
            return result
        finally:
            if self.stalled_since is not None:
                if done:
                    log.info("%s recovered after %.1f s", step, time.monotonic() - self.stalled_since,
                             extra={"step": step})
                else:  # cancelled (the worker stops) or failed for good: the batch is not delivered
                    log.warning("%s gave up after %.1f s; the batch is not acknowledged and will be processed "
                                "again", step, time.monotonic() - self.stalled_since, extra={"step": step})
                self.stalled_since = None
                self.metrics.stalled.set(0)
                self.on_stall(False)

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        """Hand a record to the producer; a refusal to even queue it is retried like any outage."""
        async for attempt in AsyncRetrying(retry=retry_if_exception(lambda e: isinstance(e, Exception)),
                                           wait=wait_exponential_jitter(initial=0.1, max=self.max_backoff_s),
                                           reraise=True):
            with attempt:
                return await self.send(topic, key, value)
        raise AssertionError("unreachable")

    async def _confirm(self, pending: list[Pending]) -> None:
        """Wait for every send; a send the broker failed is sent again (until it succeeds). A wait
        over ``CONFIRM_STALL_S`` is a stall like any other: visible in the metric and readiness."""
        while pending:
            gathered = asyncio.gather(*(f for *_, f in pending), return_exceptions=True)
            try:
                results = await asyncio.wait_for(asyncio.shield(gathered), CONFIRM_STALL_S)
            except TimeoutError:
                waiting = sum(not f.done() for *_, f in pending)
                log.warning("%d records not yet acknowledged by the broker after %.0f s; the batch waits",
                            waiting, CONFIRM_STALL_S, extra={"step": "publish"})
                self.metrics.step_failures.labels("publish").inc()
                since = time.monotonic() - CONFIRM_STALL_S
                self.stalled_since = self.stalled_since or since
                self.metrics.stalled.set(1)
                try:
                    results = await gathered
                finally:
                    log.info("the broker acknowledged them after %.1f s", time.monotonic() - since,
                             extra={"step": "publish"})
                    self.stalled_since = None
                    self.metrics.stalled.set(0)
            failed = [(t, k, v) for (t, k, v, _), r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
            if not failed:
                return
            self.metrics.step_failures.labels("publish").inc(len(failed))
            log.warning("%d records were not accepted by the broker (%s); sending them again", len(failed),
                        next(r for r in results if isinstance(r, BaseException)))
            await asyncio.sleep(0.5)
            pending = [(t, k, v, await self._send(t, k, v)) for t, k, v in failed]

    # --- delivery -----------------------------------------------------------------------------
    async def published(self, wanted: list[tuple[str, uuid.UUID]]) -> dict[uuid.UUID, Recommendation]:
        """Before a batch is decided: the slates already published for its requests (rec_id ->
        slate), so a redelivered request is answered with the same slate. Waits out a Redis outage."""
        if self.slate_cache is None or not wanted:
            return {}
        raw = await self.until_done("slates", self.slate_cache.published, wanted)
        return {rec_id: self.serde.decode(b, Recommendation) for rec_id, b in raw.items()}

    async def publish(self, out: Outputs, topics: dict[str, str],
                      on_slate_sent: Callable[[Any, asyncio.Future[Any]], None] | None = None) -> list[Pending]:
        """Step 1, at once: slates (each stored under its rec_id first: the first content
        published wins), dead letters of decoding and closed decisions to the producer (not yet
        confirmed). ``on_slate_sent(slate, future)`` sees each slate's delivery (the worker
        measures latency with it)."""
        pending: list[Pending] = []
        encoded = [self.serde.encode(slate) for slate in out.slates]
        if self.slate_cache is not None and out.slates:
            first = await self.until_done("slates", self.slate_cache.claim, list(zip(out.slates, encoded, strict=True)))
            raced = 0
            for i, stored in enumerate(first):
                if stored is not None and stored != encoded[i]:  # published before with other content
                    out.slates[i], encoded[i] = self.serde.decode(stored, Recommendation), stored
                    raced += 1
            if raced:
                self.metrics.slates_again.labels("raced").inc(raced)
                if "recommendations" in out.rows:
                    out.rows["recommendations"] = slate_rows(out.slates)
        for slate, value in zip(out.slates, encoded, strict=True):  # slates first
            fut = await self._queue(pending, topics["recommendations"], slate.user_id.encode(), value)
            if on_slate_sent is not None:
                on_slate_sent(slate, fut)
        for letter in out.dead:
            await self._queue(pending, topics["dlq"], letter.key, self.serde.encode(letter))
        for rec in out.rewards:
            await self._queue(pending, topics["rewards"], rec.user_id.encode(), self.serde.encode(rec))
        return pending

    async def apply(self, out: Outputs, pending: list[Pending], topics: dict[str, str], now: datetime) -> Report:
        """Step 2: gamification to Redis, its events to the producer, the batch's rows into the
        analytics buffer (written by the next :meth:`checkpoint`)."""
        report = Report(dead=list(out.dead))
        refused: dict[str, str] = {}
        if self.gamification is not None and out.effects:
            report.applied = await self._apply(out.effects, now, refused)
        if self.analytics is not None:
            for table, rows in out.rows.items():
                self.analytics.add_rows(table, rows)
            self.analytics.add_gamification(report.applied.outputs, out.events)
        for g in report.applied.outputs:
            await self._queue(pending, topics["gamification"], g["user_id"].encode(),
                              self.serde.encode_fields(GamificationEvent, g))
        report.gamification_events = len(report.applied.outputs)
        if self.listeners is not None:
            unlocked = [(g["user_id"], json.dumps({"kind": "achievement", "achievement": g["achievement_unlocked"]},
                                                  sort_keys=True), int(g["created_at"].timestamp() * 1000))
                        for g in report.applied.outputs if g.get("achievement_unlocked")]  # to their feed
            social = Social(out.social.edges, out.social.completions, out.social.activity + unlocked)
            if social:
                await self.until_done("social", self.listeners.apply, social)
        for letter in self._refused_letters(out, refused, now):
            report.dead.append(letter)
            await self._queue(pending, topics["dlq"], letter.key, self.serde.encode(letter))
        return report

    async def checkpoint(self, done: list[tuple[Outputs, list[Pending], Report]], topics: dict[str, str],
                         now: datetime) -> None:
        """Step 3, for the batches applied since the last checkpoint: their rows to ClickHouse in
        one flush (rows it refuses for good become dead letters), then every send of theirs
        confirmed. When this returns, those batches may be acknowledged."""
        pending = [p for _, pend, _ in done for p in pend]
        if self.analytics is not None and self.analytics.pending():
            flushed = await self.until_done("analytics", self.analytics.flush)
            if done:
                done[-1][2].rows, done[-1][2].sink_seconds = flushed.rows, flushed.seconds
            if flushed.refused:
                refused: dict[str, str] = {}
                for out, _, _ in done:
                    request_of = {str(s.rec_id): str(s.request_id) for s in out.slates}
                    for r in flushed.refused:  # recommendations rows are keyed by rec_id: its request is the event
                        event_id = request_of.get(str(r.identity), str(r.identity))
                        refused.setdefault(event_id, f"clickhouse refused a {r.table} row: {r.error}")
                for out, _, report in done:
                    for letter in self._refused_letters(out, refused, now):
                        report.dead.append(letter)
                        await self._queue(pending, topics["dlq"], letter.key, self.serde.encode(letter))
        await self._confirm(pending)

    async def _queue(self, pending: list[Pending], topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        fut = await self._send(topic, key, value)
        pending.append((topic, key, value, fut))
        return fut

    async def _apply(self, effects: list[Effect], now: datetime, refused: dict[str, str]) -> Applied:
        """Apply effects; effects Redis refuses for good are isolated by bisection (by listener)."""
        try:
            return await self.until_done("gamify", self.gamification.apply, effects, now)  # type: ignore[union-attr]
        except Exception as exc:
            users = sorted({e.user_id for e in effects})
            if len(users) == 1:
                for e in effects:
                    refused[e.event_id] = f"redis refused the gamification effect: {type(exc).__name__}: {exc}"
                log.warning("redis refused the effects of listener %s: %s", users[0], exc)
                return Applied()
            half = set(users[:len(users) // 2])
            total = Applied()
            for part in ([e for e in effects if e.user_id in half], [e for e in effects if e.user_id not in half]):
                got = await self._apply(part, now, refused)
                total.applied += got.applied
                total.duplicates += got.duplicates
                total.stale += got.stale
                total.reemitted += got.reemitted
                total.outputs.extend(got.outputs)
            return total

    @staticmethod
    def _refused_letters(out: Outputs, refused: dict[str, str], now: datetime) -> list[DeadLetter]:
        """One dead letter per event a store refused for good (raw: the event as JSON)."""
        if not refused:
            return []
        letters = []
        for event, i in zip(out.events, out.origin, strict=True):
            reason = refused.get(str(event.event_id))
            if reason is not None:
                letters.append(dead_letter(out.records[i], "deliver", "store_refused", reason,
                                           event.model_dump_json().encode(), now))
        return letters
