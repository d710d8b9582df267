"""The Encore worker: one Faust app whose agent runs the pure batch step and delivers it.

Run: ``python -m agents.worker`` (settings from ENCORE_* environment variables).

The agent is glue: take a batch of records (:func:`agents.consume.durable_batches`, sized by
load), compute everything with :func:`agents.batch.process_batch`, publish its slates at once
(:meth:`agents.deliver.Delivery.publish`), and hand it to a writer task that applies it
(``Delivery.apply``: Redis) and, every ``commit_interval_s``, checkpoints what it applied
(``Delivery.checkpoint``: ClickHouse, sends confirmed) before acknowledging those batches in
order. A batch is acknowledged only once every effect is durable (at-least-once; every effect
is idempotent by identity).
Timers close reward windows, share model deltas, take snapshots and record leaderboards; each
survives a dependency outage (it logs, counts ``encore_timer_failures_total`` and runs again).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import numpy as np
import redis
from cachetools import TTLCache
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry
from tenacity import AsyncRetrying, RetryCallState, wait_exponential_jitter

from agents.batch import BatchState, Outputs, decode, process_batch, requests
from agents.consume import durable_batches
from agents.deliver import Delivery, Report
from agents.gamify import Rules
from agents.http_api import register_api, register_drills
from agents.ingest import RawRecord
from agents.lanes import Lanes
from agents.learn import (
    DeltaMerger,
    DeltaReader,
    ModelDelta,
    Snapshot,
    SnapshotStore,
    committed_offsets,
    replay,
)
from agents.logs import logging_config
from agents.metrics import Metrics
from agents.recommend import Learned, Recommender
from experiments.config import DEFAULT_LANE, Control, Experiment, Lane, load_experiments
from experiments.control import ControlStore, describe
from listener_app.web import register_listener_app
from online_models.candidates import FriendTracks
from online_models.catalogue import Catalogue
from online_models.challenges import goals_from
from online_models.embeddings import latest_version
from online_models.embeddings import load as load_embeddings
from online_models.journeys import plan as plan_journey
from online_models.journeys import targets as journey_targets
from online_models.linear import LinearBandit
from online_models.lists import REFRESH_S
from online_models.lists import build as build_lists_of
from online_models.policy import HybridPolicy, make_policy
from online_models.reward import RewardJoin, RewardMapping
from online_models.rl import SessionDQN
from online_models.slate import SlateRules
from schemas.events import Kind, Recommendation
from schemas.wire import SchemaCatalogue, Serde
from sinks.clickhouse import AnalyticsSink, ClickHouseStore
from sinks.gamification import GamificationStore
from sinks.handoff import HandoffStore
from sinks.listeners import ListenerStore
from sinks.slate_cache import SlateCache
from streams.app import create_app
from streams.client import AsyncProducer
from streams.settings import Settings, load_settings
from streams.simulator import synthetic_catalogue
from streams.topics import DLQ, EVENTS, GAMIFICATION, MODELS, RECOMMENDATIONS, REWARDS

log = logging.getLogger("encore.worker")


def load_catalogue(spec: str) -> Catalogue:
    """``synthetic:SEED:N`` builds the simulator's catalogue; anything else is a JSONL path."""
    if spec.startswith("synthetic:"):
        _, seed, n = spec.split(":")
        return synthetic_catalogue(int(seed), int(n))
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"catalogue {spec} not found; set ENCORE_CATALOGUE to a JSONL file "
                                "or synthetic:SEED:N")
    return Catalogue.from_jsonl(path)


LISTS_PER_TICK = 50  # listeners whose lists one tick of the schedule may rebuild
ERASE_STORES_WITHIN_S = 3600.0  # a worker (re)starting erases the stores again for requests this recent


@dataclass(frozen=True)
class Erase:
    """A writer-queue item: forget ``users`` (model state); erase ``stores`` of them (Redis, ClickHouse)."""

    users: list[str]
    stores: set[str]


def friend_tracks(pairs: list[tuple[str, str]], catalogue: Catalogue) -> FriendTracks | None:
    """(friend, track id) pairs as catalogue rows with their friend; None when none is known."""
    rows = [(catalogue.index[t], f) for f, t in pairs if t in catalogue.index]
    if not rows:
        return None
    names = tuple(dict.fromkeys(f for _, f in rows))
    at = {f: i for i, f in enumerate(names)}
    return FriendTracks(np.array([r for r, _ in rows], dtype=np.int64), np.array([at[f] for _, f in rows]), names)


def _age_s(iso: str) -> float:
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return 0.0


def guarded(name: str, metrics: Metrics) -> Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]]:
    """A timer body that never takes the worker down: a failure is logged and counted, and the
    timer runs again at its next tick (a dependency outage delays it, nothing more)."""

    def wrap(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        @functools.wraps(fn)
        async def run() -> None:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.timer_failures.labels(name).inc()
                log.warning("timer %s failed (%s: %s); it runs again at its next tick", name, type(exc).__name__,
                            exc, extra={"step": name})

        return run

    return wrap


def build(settings: Settings, registry: CollectorRegistry | None = None) -> faust.App:
    """The app with its agents and web pages registered (explicitly, no autodiscovery)."""
    app = create_app(settings)
    registry = registry or CollectorRegistry()
    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")
    metrics = Metrics(registry)
    serde = Serde(SchemaCatalogue(settings.schema_registry_url))
    catalogue = load_catalogue(settings.catalogue)
    rules = SlateRules(artist_cap=settings.artist_cap, discovery_share=settings.discovery_share)
    mapping = RewardMapping.from_toml(settings.rewards_file)
    # gamification goals a slate can advance (new artists, genres): context for the hybrid policies
    goals = goals_from(Rules.from_toml(settings.gamification_rules).achievements) if settings.gamification_enabled else ()

    def make_lane(lane: Lane) -> Recommender:
        """A recommender for one lane: the default, or an experiment arm / flag with its own learner."""
        name = lane.policy or settings.policy
        params: dict[str, Any] = {"temperature": settings.popularity_temperature} if name == "popularity" else {
            "profile_tracks": settings.profile_tracks, "sessions_kept": settings.sessions_kept}
        if name not in ("random", "popularity"):
            params |= {"goals": goals, "challenge_bonus": settings.challenge_bonus}
        if name == "linucb":
            params |= {"temperature": settings.explore_temperature,
                       "floor": settings.explore_floor if settings.explore_temperature > 0 else 0.0}
        lane_policy = make_policy(name, catalogue, rules=rules, n_candidates=settings.n_candidates,  # type: ignore[arg-type]
                                  **{**params, **dict(lane.params)})
        join = RewardJoin(replace(mapping, **dict(lane.rewards)), window_s=settings.reward_window_s,
                          remember_closed=max(10_000, settings.dedupe_window // 5))
        return Recommender(catalogue, lane_policy, slate_size=settings.slate_size, dedupe_window=settings.dedupe_window,
                           join=join, lane=lane.key, offline_window_s=settings.offline_window_s,
                           experiment_arm=f"{lane.experiment}/{lane.arm}" if lane.experiment else None)

    # a socket timeout: a Redis that stops answering is an outage (retried), never a hang
    redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    experiments = load_declared(settings)
    control_store = ControlStore(redis_client, settings.redis_prefix)
    recommender = Lanes(make_lane, read_control(control_store, experiments, settings))
    policy = recommender.default.policy
    ranker = policy.ranker if isinstance(policy, HybridPolicy) else None
    worker_id = settings.worker_id or f"{socket.gethostname()}:{settings.web_port}"
    snapshots = SnapshotStore(settings.state_dir / "models",
                              re.sub(r"[^A-Za-z0-9_.-]", "_", f"{settings.app_id}-{settings.policy}-{worker_id}"))
    merger = DeltaMerger(worker_id)
    learning: dict[str, Any] = {"events_offsets": {}, "seq": 0, "last_snapshot": time.monotonic(), "reader": None,
                                "trained_at": {}}
    slate_cache = SlateCache(redis_client, prefix=settings.redis_prefix, ttl_s=settings.slate_ttl_s)
    metrics.replayed.inc(restore_and_replay(settings, recommender, serde, snapshots, merger, learning, slate_cache))

    def model_rows() -> float:
        if isinstance(ranker, LinearBandit):
            return float(np.linalg.inv(ranker.A_inv)[0, 0] - ranker.l2)  # feature 0 is the bias: a row count
        return float(getattr(ranker, "n_updates", 0))

    metrics.model_rows.labels(policy.policy_id).set(model_rows())
    store = None
    game_rules = None
    if settings.gamification_enabled:
        game_rules = Rules.from_toml(settings.gamification_rules)
        store = GamificationStore(redis_client, game_rules, prefix=settings.redis_prefix)
    analytics = None
    if settings.analytics_enabled:
        clickhouse = ClickHouseStore(settings.clickhouse_dsn)
        for name in clickhouse.migrate():
            log.info("clickhouse migration applied: %s", name)
        analytics = AnalyticsSink(clickhouse, catalogue)
        board_snapshots = AnalyticsSink(clickhouse)  # its own buffer: the timer runs beside the agent
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    events_topic = app.topic(settings.topic(EVENTS.name), partitions=settings.partitions, **raw)
    topics = {name: app.topic(settings.topic(t.name), partitions=settings.partitions, **raw)
              for name, t in (("dlq", DLQ), ("recommendations", RECOMMENDATIONS), ("gamification", GAMIFICATION),
                              ("rewards", REWARDS))}
    topic_names = {name: t.get_topic_name() for name, t in topics.items()}
    models_topic = app.topic(settings.topic(MODELS.name), partitions=1, **raw)
    state = BatchState(serde, catalogue, recommender, game_rules, analytics is not None,
                       settings.max_record_bytes, settings.max_batch_events)
    counters = {"batches": 0}

    producer = AsyncProducer(settings)  # outputs go through librdkafka, not Faust's Python producer

    async def send(topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        return await producer.send(topic, key, value)

    def on_stall(stalled: bool) -> None:
        """Pause fetching from the events partitions while a batch waits (memory stays bounded)."""
        try:
            tps = [tp for tp in app.consumer.assignment() if tp.topic == events_topic.get_topic_name()]
            (app.consumer.pause_partitions if stalled else app.consumer.resume_partitions)(tps)
        except Exception as exc:  # the consumer may be mid-rebalance; the take buffer bounds memory anyway
            log.debug("could not %s partitions: %s", "pause" if stalled else "resume", exc)

    listeners = ListenerStore(redis_client, settings.redis_prefix)
    state.social = settings.friends_enabled
    delivery = Delivery(serde, send, gamification=store, analytics=analytics, slate_cache=slate_cache,
                        metrics=metrics, on_stall=on_stall, listeners=listeners if settings.friends_enabled else None)

    writer_queue: dict[str, asyncio.Queue[Any] | None] = {"q": None}  # the ingest agent's, once it runs
    lists_due: set[str] = set()  # listeners active since their lists were last looked at
    friends_seen: TTLCache[str, FriendTracks | None] = TTLCache(maxsize=200_000, ttl=settings.friends_cache_s)

    friends_asked: set[str] = set()  # listeners whose friends' listening is being read
    friends_tasks: set[asyncio.Task[None]] = set()

    async def read_friends(users: list[str]) -> None:
        try:
            got = await asyncio.to_thread(listeners.friends_listening, users)
        except redis.RedisError as exc:
            metrics.step_failures.labels("friends").inc()
            log.warning("friends' listening not read (%s); slates go without it until Redis answers", exc,
                        extra={"step": "friends"})
            got = {}
        finally:
            friends_asked.difference_update(users)
        for user, pairs in got.items():
            friends_seen[user] = friend_tracks(pairs, catalogue)

    def friends_listening(users: set[str]) -> dict[str, FriendTracks]:
        """What the requesters' friends finished lately, as far as the cache knows now. Listeners
        it does not know are read from the listener store in the background (their next slates
        have it): the friends source is a nicety and never makes a batch wait for Redis."""
        missing = [u for u in users if u not in friends_seen and u not in friends_asked]
        if missing:
            friends_asked.update(missing)
            task = asyncio.ensure_future(read_friends(missing))
            friends_tasks.add(task)
            task.add_done_callback(friends_tasks.discard)
        return {u: t for u in users if (t := friends_seen.get(u)) is not None}

    @app.agent(events_topic, name="ingest")
    async def ingest_agent(stream: faust.StreamT) -> None:
        """Compute a batch and publish its slates at once; its writes go to the writer task, which
        runs them while the next batch is computed and acknowledges batches in order."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.batches_in_flight)
        writer_queue["q"] = queue
        writer = asyncio.create_task(write_batches(stream, queue), name="encore-writer")
        writer.add_done_callback(writer_died)
        try:
            async for batch in durable_batches(stream, settings.take_max, settings.take_within_s):
                started = time.perf_counter()
                now = datetime.now(UTC)
                records = [RawRecord(e.message.topic, e.message.partition, e.message.offset, e.message.key,
                                     e.message.value) for e in batch]
                decoded = decode(records, state, now)
                wanted = requests(decoded, state)
                known = await delivery.published(wanted)  # answered before: same slate
                asking = {user for user, _ in wanted}
                social = friends_listening(asking) if settings.friends_enabled and asking else None
                lists_due.update(asking)
                out = process_batch(records, state, now, decoded, known, social)
                if known:
                    metrics.slates_again.labels("replayed").inc(len(known))
                # before any await: a snapshot (taken by a timer) never splits the model from its offsets
                for p, o in out.offsets().items():
                    learning["events_offsets"][p] = max(learning["events_offsets"].get(p, 0), o)
                pending = await delivery.publish(out, topic_names, slate_latency(batch, out))
                await queue.put((batch, out, pending, now, started))  # waits while the writer is behind
        finally:
            writer.cancel()

    def writer_died(task: asyncio.Task[None]) -> None:
        """A bug killed the writer: say so, and be visibly stalled (readiness false, the alert)."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("the writer task died (%r): nothing more is delivered or acknowledged; restart the worker",
                  task.exception(), extra={"step": "deliver"})
        delivery.stalled_since = delivery.stalled_since or time.monotonic()
        metrics.stalled.set(1)

    async def write_batches(stream: faust.StreamT, queue: asyncio.Queue[Any]) -> None:
        """The batches' durable writes in order: each batch is applied (Redis) as it comes; every
        ``commit_interval_s`` the applied batches are checkpointed (ClickHouse, sends confirmed)
        and only then acknowledged. A failure that is not a store's (a bug) is retried like an
        outage: a batch is never acknowledged before its writes succeed."""
        done: list[tuple[list[Any], Outputs, list[Any], Report, float]] = []
        last = time.monotonic()
        while True:
            wait = max(0.0, settings.commit_interval_s - (time.monotonic() - last)) if done else None
            try:
                item = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                item = None
            if isinstance(item, Erase):  # after every batch decided before it is delivered
                if done:
                    await settle(stream, done)
                    done, last = [], time.monotonic()
                await retried("erase", erase_listeners, item)
                continue
            if item is not None:
                batch, out, pending, now, started = item
                report = await retried("apply", delivery.apply, out, pending, topic_names, now)
                done.append((batch, out, pending, report, started))
            due = time.monotonic() - last >= settings.commit_interval_s
            if done and (item is None or due or sum(len(d[0]) for d in done) >= settings.take_max):
                await settle(stream, done)
                done, last = [], time.monotonic()

    async def settle(stream: faust.StreamT, done: list[tuple[list[Any], Outputs, list[Any], Report, float]]) -> None:
        """Checkpoint the applied batches (ClickHouse, sends confirmed), then acknowledge them."""
        await retried("checkpoint", delivery.checkpoint, [(o, p, r) for _, o, p, r, _ in done], topic_names,
                      datetime.now(UTC))
        for batch, out, _, report, started in done:
            for event in batch:
                await stream.ack(event)
            recommender.delivered([r.rec_id for r in out.rewards])  # out of the outbox
            try:
                observe(out, report, len(batch), time.perf_counter() - started)
            except Exception:  # metrics are not worth a stalled stream; a bug here is logged
                metrics.step_failures.labels("observe").inc()
                log.exception("batch metrics failed; the batch is delivered and acknowledged",
                              extra={"step": "observe"})

    async def retried(step: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """A failure that is not a store's (a bug): logged, counted, retried with the same backoff."""

        def failed(state: RetryCallState) -> None:
            metrics.step_failures.labels(step).inc()
            log.error("%s failed unexpectedly (%s); retrying", step, state.outcome.exception() if state.outcome else "",
                      extra={"step": step})

        async for attempt in AsyncRetrying(wait=wait_exponential_jitter(initial=1, max=30), before_sleep=failed):
            with attempt:
                return await fn(*args)
        raise AssertionError("unreachable")

    def slate_latency(batch: list[Any], out: Outputs) -> Callable[[Any, asyncio.Future[Any]], None]:
        """Latency of a slate: from its request's record reaching the broker to the broker
        acknowledging the slate."""
        record_of = {ev.event_id: i for ev, i in zip(out.events, out.origin, strict=True)}

        def sent(slate: Any, fut: asyncio.Future[Any]) -> None:
            i = record_of.get(slate.request_id)
            stamp = batch[i].message.timestamp if i is not None else None
            if stamp:
                fut.add_done_callback(lambda f: f.cancelled() or f.exception() is not None
                                      or metrics.latency.observe(max(0.0, time.time() - stamp)))

        return sent

    def observe(out: Outputs, report: Report, n_records: int, seconds: float) -> None:
        for letter in report.dead:
            metrics.dead.labels(letter.reason).inc()
        for policy_id, n in Counter(slate.policy_id for slate in out.slates).items():
            metrics.slates.labels(policy_id).inc(n)
        for (policy_id, source), n in Counter((s.policy_id, i.source) for s in out.slates for i in s.items).items():
            metrics.slate_items.labels(policy_id, source).inc(n)
        observe_rewards(out.rewards)
        if out.forgotten:
            metrics.forgotten_dropped.inc(out.forgotten)
        metrics.karma.labels("applied").inc(report.applied.applied)
        metrics.karma.labels("duplicate").inc(report.applied.duplicates)
        metrics.karma.labels("stale").inc(report.applied.stale)
        metrics.karma.labels("reemitted").inc(report.applied.reemitted)
        metrics.gamification_out.inc(report.gamification_events)
        if report.rows:
            metrics.sink_seconds.observe(report.sink_seconds)
            metrics.sink_batch.observe(sum(report.rows.values()))
            for table, n in report.rows.items():
                metrics.sink_rows.labels(table).inc(n)
        kinds = Counter(event.kind for event in out.events)
        for kind, n in kinds.items():
            metrics.events.labels(str(kind)).inc(n)
        feedback = Counter("completed" if e.kind == Kind.PLAY_END else "skipped" for e in out.events
                           if e.rec_id is not None and e.kind in (Kind.PLAY_END, Kind.SKIP))
        for outcome, n in feedback.items():
            metrics.feedback.labels(policy.policy_id, outcome).inc(n)
        metrics.records.inc(n_records)
        metrics.duplicates.inc(out.duplicates)
        metrics.batch.observe(n_records)
        metrics.batch_seconds.observe(seconds)
        counters["batches"] += 1

    def observe_rewards(records: list[Any]) -> None:
        for rec in records:
            for item in rec.items:
                if item.reward is not None:
                    sign = "+" if item.reward > 0 else "-" if item.reward < 0 else "0"
                    metrics.rewards.labels(rec.policy_id, sign).inc()
                    metrics.reward.labels(rec.policy_id).observe(item.reward)
                    metrics.reward_sum.labels(rec.policy_id).inc(item.reward)
        for what, value in recommender.join_stats().items():
            metrics.join.labels(what).set(value)
        metrics.join.labels("open").set(recommender.open_decisions)

    @app.timer(1.0)
    @guarded("reward-windows", metrics)
    async def reward_windows() -> None:
        """Close decisions whose window passed in processing time (their listener went quiet), and
        train the session DQN off the stream."""
        if recommender.open_decisions:
            learned: Learned = recommender.close(datetime.now(UTC))
            observe_rewards(learned.records)
            await asyncio.gather(*[await delivery._send(topic_names["rewards"], r.user_id.encode(), serde.encode(r))
                                   for r in learned.records])
        for key, rec in list(recommender.lanes.items()):  # each lane's DQN trains on its own replay
            dqn = getattr(rec.policy, "ranker", None)
            if not isinstance(dqn, SessionDQN) or not settings.rl_train_steps:
                continue
            if dqn.n_updates > learning["trained_at"].get(key, 0):
                learning["trained_at"][key] = dqn.n_updates
                loss = await asyncio.to_thread(dqn.train, settings.rl_train_steps)
                if loss == loss and key == DEFAULT_LANE:
                    metrics.rl_loss.set(loss)

    @app.task
    async def start_model_sync() -> None:
        if isinstance(ranker, LinearBandit) or any(e.arms for e in experiments):
            try:
                learning["reader"] = await asyncio.to_thread(
                    DeltaReader, settings, models_topic.get_topic_name(), worker_id, dict(merger.offsets))
                learning["reader"].start()
            except Exception as exc:  # the broker is away: deltas from others wait for a restart
                metrics.timer_failures.labels("model-sync-start").inc()
                log.warning("model delta reader not started (%s); this worker learns alone until restarted", exc)

    @app.timer(settings.model_sync_interval_s)
    @guarded("model-sync", metrics)
    async def sync_models() -> None:
        """Publish this worker's delta, merge the others', and snapshot right after a publish."""
        for key, rec in list(recommender.lanes.items()):  # deltas carry their lane: arms never mix
            bandit = getattr(rec.policy, "ranker", None)
            if not isinstance(bandit, LinearBandit):
                continue
            dA, db = bandit.delta()
            if dA.any() or db.any():
                learning["seq"] += 1
                delta = ModelDelta(worker_id, learning["seq"], bandit.policy_id, dA, db, key)
                await (await models_topic.send(key=worker_id.encode(), value=delta.encode()))
                metrics.deltas.labels("published").inc()
        if learning["reader"] is not None:
            metrics.deltas.labels("merged").inc(merger.merge(recommender, learning["reader"]))
        metrics.model_rows.labels(policy.policy_id).set(model_rows())
        if time.monotonic() - learning["last_snapshot"] >= settings.model_snapshot_interval_s:
            take_snapshot()

    def take_snapshot() -> None:
        started = time.perf_counter()
        snapshots.save(Snapshot(recommender.snapshot(), dict(learning["events_offsets"]), dict(merger.offsets),
                                dict(merger.last_seq), learning["seq"], time.time()))
        learning["last_snapshot"] = time.monotonic()
        metrics.snapshot_seconds.observe(time.perf_counter() - started)

    if learning["events_offsets"]:
        # at start, with what the last snapshot and the replay rebuilt: a restart after a kill -9
        # replays from here (open decisions and their feedback come back), never from nothing
        take_snapshot()

    forgetting: dict[str, Any] = {"version": None}

    @app.timer(settings.forget_poll_s)
    @guarded("forget", metrics)
    async def forget_listeners() -> None:
        """Erasure requests (DELETE /v1/users/{user}, ``encore forget``): from now on the
        listener's events are dropped unread; what this worker holds of them is erased once every
        batch decided before is delivered (the writer runs the erasure in its order)."""
        version = await asyncio.to_thread(listeners.forgotten_version)
        if version == forgetting["version"]:
            return
        asked = await asyncio.to_thread(listeners.forgotten)
        forgetting["version"] = version
        new = sorted(set(asked) - state.forgotten)
        if not new:
            return
        state.forgotten.update(new)
        recent = {u for u in new if _age_s(asked[u]) < ERASE_STORES_WITHIN_S}  # older ones were erased then
        queue = writer_queue["q"]
        if queue is None:
            await erase_listeners(Erase(new, recent))
        else:
            await queue.put(Erase(new, recent))

    async def erase_listeners(job: Erase) -> None:
        for user in job.users:
            recommender.forget(user)
        for user in sorted(job.stores):
            keys = await delivery.until_done("forget", listeners.erase, user)
            rows = await delivery.until_done("forget", analytics.store.erase_user, user) if analytics else {}
            metrics.erased.inc()
            log.info("listener %s forgotten: %d Redis keys and board entries, %d ClickHouse rows, model state",
                     user, keys, sum(rows.values()), extra={"step": "forget"})
        take_snapshot()  # the snapshot on disk no longer holds them

    handoffs = HandoffStore(redis_client, settings.redis_prefix, settings.app_id)

    @app.on_partitions_revoked.connect
    async def hand_off(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        """Partitions leaving this worker take their listeners' state with them (Faust calls this
        once the batches in flight are acknowledged)."""
        for tp in revoked:
            if tp.topic != events_topic.get_topic_name():
                continue
            blob = recommender.export_partition(tp.partition)
            offset = learning["events_offsets"].get(tp.partition, 0)
            try:
                await asyncio.to_thread(handoffs.put, tp.partition, blob, offset)
                metrics.handoffs.labels("out").inc()
                log.info("listener state of partition %d handed off (%d bytes, up to offset %d)", tp.partition,
                         len(blob), offset, extra={"partition": tp.partition})
            except Exception as exc:  # Redis away: the new owner starts these listeners cold; say so
                metrics.timer_failures.labels("handoff").inc()
                log.warning("listener state of partition %d not handed off (%s); its listeners start cold on "
                            "their new worker", tp.partition, exc, extra={"partition": tp.partition})

    @app.on_partitions_assigned.connect
    async def take_over(app: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        for tp in assigned:
            if tp.topic != events_topic.get_topic_name():
                continue
            try:
                got = await asyncio.to_thread(handoffs.take, tp.partition)
            except Exception as exc:
                metrics.timer_failures.labels("handoff").inc()
                log.warning("no listener state taken over for partition %d (%s)", tp.partition, exc)
                continue
            if got is None:
                continue
            blob, offset = got
            n = recommender.import_partition(tp.partition, blob, datetime.now(UTC))
            for user in state.forgotten:  # an old hand-off may still carry a forgotten listener
                recommender.forget(user)
            state.learned_below[tp.partition] = offset
            learning["events_offsets"][tp.partition] = max(learning["events_offsets"].get(tp.partition, 0), offset)
            metrics.handoffs.labels("in").inc()
            log.info("took over %d listeners of partition %d (learned up to offset %d)", n, tp.partition, offset,
                     extra={"partition": tp.partition})

    @app.on_before_shutdown.connect
    def _final_snapshot(app: faust.App, **kwargs: Any) -> None:
        take_snapshot()
        # a clean stop hands its partitions' listeners on (Faust sends no revoke while stopping)
        for tp in app.consumer.assignment():
            if tp.topic == events_topic.get_topic_name():
                try:
                    handoffs.put(tp.partition, recommender.export_partition(tp.partition),
                                 learning["events_offsets"].get(tp.partition, 0))
                except Exception as exc:
                    log.warning("listener state of partition %d not handed off at shutdown (%s)", tp.partition, exc)
        left = producer.close()
        if left:
            log.warning("%d output records were not delivered at shutdown; their batches were not acknowledged "
                        "and will be processed again", left)
        if learning["reader"] is not None:
            learning["reader"].close()

    if analytics is not None and store is not None:

        @app.timer(settings.snapshot_interval_s)
        @guarded("leaderboard-snapshot", metrics)
        async def snapshot_leaderboard() -> None:
            taken = datetime.now(UTC)
            top = await asyncio.to_thread(store.top, "global", 20)
            board_snapshots.add_snapshot("global", top, taken)
            await asyncio.to_thread(board_snapshots.flush)

    if store is not None:
        redis_state = {"lost": None}

        @app.task
        async def generation_marker() -> None:
            """A new store gets a marker; an old store without one has lost its state."""
            try:
                fresh = analytics is None or analytics.store.count("karma_history") == 0
                await asyncio.to_thread(store.ensure_generation, fresh)
            except Exception as exc:  # Redis away at start: the check below runs again every 10 s
                log.warning("generation marker not checked at start (%s)", exc)

        @app.timer(10.0)
        @guarded("redis-generation", metrics)
        async def check_redis_state() -> None:
            lost = await asyncio.to_thread(store.check_generation)
            metrics.redis_lost.set(1 if lost else 0)
            if lost and redis_state["lost"] is None:
                log.error("%s: karma, streaks and boards are incomplete. Stop the workers and run "
                          "`encore rebuild-gamification` (README: When Redis lost its state)", lost)
            elif not lost and redis_state["lost"] is not None:
                log.info("the gamification state was rebuilt; Redis generation marker is back")
            redis_state["lost"] = lost

    if analytics is not None and settings.drills_enabled:
        register_drills(app, settings, analytics.store)

    if analytics is not None:
        from dashboard.web import register_dashboard

        register_dashboard(app, analytics.store, store, catalogue, keys=settings.api_key_set(),
                           behaviour=recommender.default.behaviour_summary)

    def readiness() -> dict[str, object]:
        assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == events_topic.get_topic_name())
        stalled = delivery.stalled_since is not None
        return {"ready": bool(assigned) and not app.rebalancing and not stalled, "partitions": assigned,
                "batches": counters["batches"], "stalled_s": round(time.monotonic() - delivery.stalled_since, 1)
                if stalled else 0.0}

    def listener_model(user: str) -> dict[str, Any] | None:
        got = recommender.listener(user)
        return None if got is None else {**got, "worker_id": worker_id}

    lists_built: TTLCache[str, bool] = TTLCache(maxsize=500_000, ttl=min(REFRESH_S.values()))

    async def build_lists(user: str, force: bool = True) -> dict[str, Any] | None:
        """The listener's lists from this worker's model, merged into what is stored: a list is
        rebuilt when ``force`` or its period passed (Discovery Weekly: a week). None when this
        worker does not hold the listener (another owns their partition). Computed on the event
        loop (the model is not shared with threads), a few ms each; Redis in a thread."""
        rec = recommender.holder(user)
        gen = getattr(rec.policy, "gen", None)
        if gen is None or user not in rec.partition_of:
            return None
        fresh = build_lists_of(gen, user)
        stored = await asyncio.to_thread(listeners.get_lists, user) or {"user_id": user, "lists": {}, "built_at": {}}
        now = datetime.now(UTC)
        for name, got in fresh.items():
            at = stored["built_at"].get(name)
            if force or at is None or (now - datetime.fromisoformat(at)).total_seconds() >= REFRESH_S[name]:
                stored["lists"][name], stored["built_at"][name] = got, now.isoformat()
        stored["worker_id"] = worker_id
        await asyncio.to_thread(listeners.put_lists, user, stored)
        lists_built[user] = True
        return stored

    def journey_of(user: str, target: str | None = None, stop: bool = False) -> dict[str, Any] | None:
        """The listener's journey on this worker: start one toward ``target`` (ValueError for an
        unknown target), stop it, or read it. None when another worker holds the listener."""
        rec = recommender.holder(user)
        gen = getattr(rec.policy, "gen", None)
        if gen is None or user not in rec.partition_of:
            return None
        prof = gen.profile(user)
        if stop:
            prof.__dict__.pop("journey", None)
        elif target is not None:
            recent = np.fromiter(rec.recent.get(user, ()), dtype=np.int64)
            prof.__dict__["journey"] = plan_journey(gen, prof, target, recent=recent)
        journey = prof.__dict__.get("journey")
        return {"user_id": user, "journey": journey.to_json(catalogue.track_ids) if journey is not None else None,
                "targets": journey_targets(gen)}

    @app.timer(settings.lists_poll_s)
    @guarded("lists", metrics)
    async def refresh_lists() -> None:
        """The schedule: listeners who asked for slates lately get their lists rebuilt once a
        period (a few per tick)."""
        for user in [u for u in list(lists_due) if u not in lists_built][:LISTS_PER_TICK]:
            lists_due.discard(user)
            if await build_lists(user, False) is not None:
                metrics.lists_built.inc()
        if len(lists_due) > 100_000:  # more active listeners than the schedule keeps up with: the oldest wait
            lists_due.clear()

    register_api(app, settings, events_topic=events_topic, serde=serde, slates=slate_cache,
                 gamification=store, readiness=readiness, listener_model=listener_model, listeners=listeners,
                 catalogue=catalogue, build_lists=build_lists, journey_of=journey_of,
                 rec_id_of=recommender.rec_id_of)
    register_listener_app(app)

    @app.timer(settings.control_poll_s)
    @guarded("control", metrics)
    async def poll_control() -> None:
        """Experiments started / stopped and flags, from Redis: applied within one poll."""
        control = (await asyncio.to_thread(control_store.control, experiments, settings.gamification_enabled))
        if recommender.set_control(control.at(datetime.now(UTC))):
            metrics.control_version.set(control.version)
            log.info("control state v%d applied: %s", control.version, json.dumps(describe(recommender.control)),
                     extra={"step": "control"})

    serving: dict[str, str | None] = {"embeddings": None}

    @app.timer(settings.embeddings_poll_s)
    @guarded("embeddings", metrics)
    async def poll_embeddings() -> None:
        """A new version published by the embedding job: loaded and prepared in a thread, then
        swapped in (the stream never waits for it). A bad file is logged; the old version stays."""
        version = await asyncio.to_thread(latest_version, settings.embeddings_path)
        if version is None or version == serving["embeddings"]:
            return
        serving["embeddings"] = version  # tried once: a broken version is not reloaded every tick
        emb = await asyncio.to_thread(load_embeddings, settings.embeddings_path, version)
        await asyncio.to_thread(recommender.set_embeddings, emb)
        known = int(np.isin(emb.tracks, catalogue.track_ids).sum())
        metrics.embeddings_trained.set(datetime.fromisoformat(emb.trained_at).timestamp())
        metrics.embeddings_tracks.set(known)
        log.info("serving embeddings %s (%s, %d of %d catalogue tracks, %d taste clusters)", version, emb.model,
                 known, len(catalogue), len(emb.cluster_weight), extra={"step": "embeddings"})

    @app.timer(5.0)
    @guarded("measure-lag", metrics)
    async def measure_lag() -> None:
        """Lag per partition = the log end reported in fetch responses (high watermark) minus the
        next offset this worker will read. Not from ListOffsets, which tansu answers wrongly."""
        metrics.taste_shifts.set(sum(getattr(getattr(r.policy, "behaviour", None), "shifts", 0)
                                     for r in list(recommender.lanes.values())))
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic != events_topic.get_topic_name():
                continue
            high = consumer.highwater(tp)
            position = await consumer.position(tp)
            if high is not None and position is not None:
                metrics.lag.labels(str(tp.partition)).set(max(0, high - position))

    return app


def load_declared(settings: Settings) -> tuple[Experiment, ...]:
    """The declared experiments; none (with a warning) when the file is missing or invalid, so a
    bad declaration never stops the stream."""
    try:
        return load_experiments(settings.experiments_file)
    except (OSError, ValueError) as exc:
        log.warning("no experiments loaded (%s); fix the file and restart the workers", exc)
        return ()


def read_control(store: ControlStore, experiments: tuple[Experiment, ...], settings: Settings) -> Control:
    """The control state at start; the declared statuses when Redis is away (polled again later)."""
    try:
        control = store.control(experiments, settings.gamification_enabled)
    except redis.RedisError as exc:
        log.warning("control state not read at start (%s); using the declared statuses until Redis answers", exc)
        control = Control(experiments, gamification_default=settings.gamification_enabled)
    return control.at(datetime.now(UTC))


def restore_and_replay(settings: Settings, recommender: Recommender | Lanes, serde: Serde, snapshots: SnapshotStore,
                       merger: DeltaMerger, learning: dict[str, Any], slates: SlateCache) -> int:
    """Restore the last snapshot, then replay the events it does not cover (see agents.learn);
    replayed requests take the slates published for them. Returns the number of records replayed."""
    snap = snapshots.load()
    topic = settings.topic(EVENTS.name)
    if snap is not None:
        try:
            recommender.restore(snap.recommender)
        except ValueError as exc:  # written by a version with another feature set: models start afresh
            log.warning("model snapshot not restored (%s): the models start empty and learn again (the "
                        "gamification state is not affected)", exc)
            snap = None
    if snap is None:  # a first start: the state covers nothing before the committed offsets
        try:
            committed = committed_offsets(settings, topic, list(range(settings.partitions)))
        except Exception as exc:  # the broker is away: no start snapshot; the timer takes one later
            log.warning("committed offsets not read at start (%s); no start snapshot", exc)
            return 0
        learning["events_offsets"] = {p: committed.get(p, 0) for p in range(settings.partitions)}
        return 0
    merger.offsets, merger.last_seq = dict(snap.models_offsets), dict(snap.merger_seq)
    learning["seq"], learning["events_offsets"] = snap.publish_seq, dict(snap.events_offsets)
    stop = committed_offsets(settings, topic, sorted(snap.events_offsets))

    def published(wanted: list[tuple[str, Any]]) -> dict[Any, Any]:
        try:
            return {r: serde.decode(b, Recommendation) for r, b in slates.published(wanted).items()}
        except redis.RedisError as exc:  # Redis away at start: the replayed decisions are drawn again
            log.warning("published slates not read for the replay (%s); replayed requests are decided again", exc)
            return {}

    n = replay(settings, topic, recommender, serde, snap.events_offsets, stop, published)
    log.info("model snapshot restored (%s) and %d records replayed up to the committed offsets %s",
             snapshots.path, n, stop)
    return n


def main() -> None:
    from faust.worker import Worker

    settings = load_settings()
    app = build(settings)
    extra = {"logging_config": logging_config()} if settings.log_json else {}
    Worker(app, loglevel="info", workdir=str(settings.state_dir), **extra).execute_from_commandline()


if __name__ == "__main__":
    main()
