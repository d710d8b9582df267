"""The Encore worker: one Faust app with the ingest -> recommend pipeline.

Run: ``python -m agents.worker`` (settings from ENCORE_* environment variables).
Each batch taken from the events topic is decoded (bad records -> DLQ), fed to the
recommender, and its outputs are delivered before the batch's offsets are acknowledged
(at-least-once; every effect is idempotent by event_id).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import numpy as np
import redis
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agents.gamify import Rules, effect_for
from agents.http_api import register_api
from agents.ingest import RawRecord, dead_letter, ingest
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
from agents.recommend import Learned, Recommender
from online_models.catalogue import Catalogue
from online_models.linear import LinearBandit
from online_models.policy import HybridPolicy, make_policy
from online_models.reward import RewardJoin, RewardMapping
from online_models.rl import SessionDQN
from online_models.slate import SlateRules
from schemas.events import GamificationEvent, Kind
from schemas.wire import SchemaCatalogue, Serde
from sinks.clickhouse import AnalyticsSink, ClickHouseStore, offsets_token
from sinks.gamification import GamificationStore
from sinks.slate_cache import SlateCache
from streams.app import create_app
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


class Metrics:
    """Domain metrics; Faust's own sensor adds the stream-level ones to the same registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("encore_events_total", "Valid interactions ingested", ["kind"], registry=registry)
        self.records = Counter("encore_records_total", "Records read from the events topic", registry=registry)
        self.dead = Counter("encore_dead_letters_total", "Records sent to the DLQ", ["reason"], registry=registry)
        self.slates = Counter("encore_recommendations_total", "Slates published", ["policy"], registry=registry)
        self.duplicates = Counter("encore_duplicate_events_total", "Events skipped as already seen", registry=registry)
        self.batch = Histogram("encore_batch_records", "Records per processed batch", registry=registry,
                               buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000))
        self.karma = Counter("encore_karma_events_total", "Events applied to gamification state, by outcome",
                             ["outcome"], registry=registry)
        self.gamification_out = Counter("encore_gamification_events_total", "GamificationEvents published",
                                        registry=registry)
        self.sink_rows = Counter("encore_sink_rows_total", "Rows written to ClickHouse", ["table"], registry=registry)
        self.sink_seconds = Histogram("encore_sink_flush_seconds", "ClickHouse flush time per batch",
                                      registry=registry)
        self.step_failures = Counter("encore_step_failures_total", "Side-effect attempts that failed and were "
                                     "retried (the batch waits)", ["step"], registry=registry)
        self.sink_batch = Histogram("encore_sink_batch_rows", "Rows per ClickHouse flush (all tables)",
                                    registry=registry, buckets=(10, 100, 1000, 5000, 10000, 25000, 50000, 100000))
        self.sink_failures = Counter("encore_sink_failures_total", "ClickHouse flushes that failed", registry=registry)
        self.latency = Histogram("encore_recommendation_latency_seconds",
                                 "From a rec_request reaching the broker to its slate being delivered",
                                 registry=registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
        self.feedback = Counter("encore_policy_feedback_total",
                                "Feedback on recommended tracks, by policy and outcome (reward rate = "
                                "completed / (completed + skipped))", ["policy", "outcome"], registry=registry)
        self.slate_items = Counter("encore_slate_items_total",
                                   "Slate items by policy and candidate source (exploration share = "
                                   "discovery sources (artist, gems, explore, popularity:prior) over all)",
                                   ["policy", "source"], registry=registry)
        self.lag = Gauge("encore_consumer_lag_messages", "Records not yet read, per events partition",
                         ["partition"], registry=registry)
        self.batch_seconds = Histogram("encore_batch_seconds", "Time to process and deliver one batch",
                                       registry=registry)
        self.rewards = Counter("encore_reward_items_total", "Slate items learned from, by policy and reward sign",
                               ["policy", "sign"], registry=registry)
        self.reward = Histogram("encore_reward", "Joined reward per slate item the listener reached, by policy",
                                ["policy"], registry=registry, buckets=(-1.0, -0.5, -0.1, 0.0, 0.5, 1.0, 1.5, 2.0))
        # a histogram with negative buckets exposes no _sum, so the running sum is a gauge:
        # mean reward = encore_reward_accumulated / encore_reward_count
        self.reward_sum = Gauge("encore_reward_accumulated", "Sum of joined rewards, by policy", ["policy"],
                                registry=registry)
        self.join = Gauge("encore_reward_join", "Reward join counters (decisions, feedback, duplicates, late, "
                          "early, orphaned, closed) and open decisions", ["what"], registry=registry)
        self.deltas = Counter("encore_model_deltas_total", "Model deltas published to / merged from other workers",
                              ["direction"], registry=registry)
        self.snapshot_seconds = Histogram("encore_model_snapshot_seconds", "Time to write a model snapshot",
                                          registry=registry)
        self.rl_loss = Gauge("encore_rl_td_loss", "Session DQN's last TD loss", registry=registry)
        self.model_rows = Gauge("encore_model_rows", "Slate items the served model has learned from, its own and "
                                "merged from other workers", ["policy"], registry=registry)
        self.replayed = Counter("encore_replayed_records_total", "Event records replayed after a snapshot restore",
                                registry=registry)


async def until_done(step: str, metrics: Metrics, records: list[RawRecord], fn: Any, *args: Any) -> Any:
    """Run a side effect (in a thread) until it succeeds. The batch stays unacknowledged and its
    partitions wait meanwhile: nothing is skipped, lag grows and alerts fire; every effect is
    idempotent, so the retries are safe. Waits 1, 2, 4 ... 30 s between attempts."""
    delay = 1.0
    while True:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception:
            metrics.step_failures.labels(step).inc()
            if step == "analytics":
                metrics.sink_failures.inc()
            log.exception("%s failed; retrying the batch in %.0f s", step, delay,
                          extra={"step": step, "partition": records[0].partition,
                                 "offset": records[0].offset, "last_offset": records[-1].offset})
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)


def build(settings: Settings, registry: CollectorRegistry | None = None) -> faust.App:
    """The app with its agents and web pages registered (explicitly, no autodiscovery)."""
    app = create_app(settings)
    registry = registry or CollectorRegistry()
    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")
    metrics = Metrics(registry)
    serde = Serde(SchemaCatalogue(settings.schema_registry_url))
    catalogue = load_catalogue(settings.catalogue)
    rules = SlateRules(artist_cap=settings.artist_cap, discovery_share=settings.discovery_share)
    params = {"temperature": settings.popularity_temperature} if settings.policy == "popularity" else {}
    policy = make_policy(settings.policy, catalogue, rules=rules, n_candidates=settings.n_candidates, **params)
    join = RewardJoin(RewardMapping.from_toml(settings.rewards_file), window_s=settings.reward_window_s)
    recommender = Recommender(catalogue, policy, slate_size=settings.slate_size,
                              dedupe_window=settings.dedupe_window, join=join)
    ranker = policy.ranker if isinstance(policy, HybridPolicy) else None
    worker_id = settings.worker_id or f"{socket.gethostname()}:{settings.web_port}"
    snapshots = SnapshotStore(settings.state_dir / "models",
                              re.sub(r"[^A-Za-z0-9_.-]", "_", f"{settings.app_id}-{settings.policy}-{worker_id}"))
    merger = DeltaMerger(worker_id)
    learning = {"events_offsets": {}, "seq": 0, "last_snapshot": time.monotonic(), "last_batch": time.monotonic(),
                "reader": None, "trained_at": 0}
    metrics.replayed.inc(restore_and_replay(settings, recommender, serde, snapshots, merger, learning))

    def model_rows() -> float:
        if isinstance(ranker, LinearBandit):
            return float(np.linalg.inv(ranker.A_inv)[0, 0] - ranker.l2)  # feature 0 is the bias: a row count
        return float(getattr(ranker, "n_updates", 0))

    metrics.model_rows.labels(policy.policy_id).set(model_rows())
    redis_client = redis.Redis.from_url(settings.redis_url)
    slate_cache = SlateCache(redis_client, prefix=settings.redis_prefix)
    store = None
    if settings.gamification_enabled:
        rules = Rules.from_toml(settings.gamification_rules)
        store = GamificationStore(redis_client, rules, prefix=settings.redis_prefix)
    analytics = None
    if settings.analytics_enabled:
        clickhouse = ClickHouseStore(settings.clickhouse_dsn)
        for name in clickhouse.migrate():
            log.info("clickhouse migration applied: %s", name)
        analytics = AnalyticsSink(clickhouse, catalogue)
        board_snapshots = AnalyticsSink(clickhouse)  # its own buffer: the timer runs beside the agent
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    events_topic = app.topic(settings.topic(EVENTS.name), partitions=settings.partitions, **raw)
    dlq_topic = app.topic(settings.topic(DLQ.name), partitions=settings.partitions, **raw)
    recs_topic = app.topic(settings.topic(RECOMMENDATIONS.name), partitions=settings.partitions, **raw)
    game_topic = app.topic(settings.topic(GAMIFICATION.name), partitions=settings.partitions, **raw)
    rewards_topic = app.topic(settings.topic(REWARDS.name), partitions=settings.partitions, **raw)
    models_topic = app.topic(settings.topic(MODELS.name), partitions=1, **raw)
    state = {"batches": 0, "duplicates": 0}

    @app.agent(events_topic, name="ingest")
    async def ingest_agent(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.take_max, within=settings.take_within_s):
            started = time.perf_counter()
            now = datetime.now(UTC)
            records = [
                RawRecord(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
                for e in batch
            ]
            result = ingest(records, serde, max_bytes=settings.max_record_bytes,
                            max_events=settings.max_batch_events, now=now)
            try:
                slates = recommender.process(result.events, now)
                learned = recommender.close(now)  # step reward-join: decisions whose window passed
                # before any await: a snapshot (taken by a timer) never splits the model from its offsets
                for r in records:
                    learning["events_offsets"][r.partition] = max(learning["events_offsets"].get(r.partition, 0),
                                                                  r.offset + 1)
            except Exception as exc:  # a bug must not stop the stream: park the batch, say why
                log.exception("recommend step failed; batch parked in the DLQ",
                              extra={"step": "recommend", "partition": records[0].partition,
                                     "offset": records[0].offset, "last_offset": records[-1].offset})
                slates, learned = [], Learned()
                result.dead.extend(
                    dead_letter(r, "recommend", "processing_error", f"{type(exc).__name__}: {exc}",
                                r.value or b"", now) for r in records
                )
            rewards = []
            if store is not None:
                effects = [f for f in (effect_for(e, store.rules, catalogue) for e in result.events) if f]
                applied = await until_done("gamify", metrics, records, store.apply, effects, now)
                rewards = applied.outputs
                metrics.karma.labels("applied").inc(applied.applied)
                metrics.karma.labels("duplicate").inc(applied.duplicates)
                metrics.karma.labels("stale").inc(applied.stale)
            if analytics is not None:
                analytics.add_events(result.events, now)
                analytics.add_recommendations(slates)
                analytics.add_gamification(rewards, result.events)
                token = offsets_token((r.topic, r.partition, r.offset) for r in records)
                flushed = await until_done("analytics", metrics, records, analytics.flush, token)
                metrics.sink_seconds.observe(flushed.seconds)
                metrics.sink_batch.observe(sum(flushed.rows.values()))
                for table, n in flushed.rows.items():
                    metrics.sink_rows.labels(table).inc(n)
            pending = []
            for out in rewards:
                value = serde.encode_fields(GamificationEvent, out)
                pending.append(await game_topic.send(key=out["user_id"].encode(), value=value))
            metrics.gamification_out.inc(len(rewards))
            for letter in result.dead:
                metrics.dead.labels(letter.reason).inc()
                pending.append(await dlq_topic.send(key=letter.key, value=serde.encode(letter)))
            for slate in slates:
                pending.append(await recs_topic.send(key=slate.user_id.encode(), value=serde.encode(slate)))
                metrics.slates.labels(slate.policy_id).inc()
            pending.extend(await publish_rewards(learned))
            await asyncio.to_thread(slate_cache.put_many, slates)
            await asyncio.gather(*pending)  # delivered before this batch's offsets are acked
            if slates:  # latency: from the request's record reaching the broker to delivery
                record_of = {ev.event_id: i for ev, i in zip(result.events, result.origin, strict=True)}
                done = time.time()
                for slate in slates:
                    for item in slate.items:
                        metrics.slate_items.labels(slate.policy_id, item.source).inc()
                    i = record_of.get(slate.request_id)
                    if i is not None and batch[i].message.timestamp:
                        metrics.latency.observe(max(0.0, done - batch[i].message.timestamp))
            for event in result.events:
                if event.rec_id is not None and event.kind in (Kind.PLAY_END, Kind.SKIP):
                    outcome = "completed" if event.kind == Kind.PLAY_END else "skipped"
                    metrics.feedback.labels(recommender.policy.policy_id, outcome).inc()
            for event in result.events:
                metrics.events.labels(str(event.kind)).inc()
            metrics.records.inc(len(records))
            metrics.duplicates.inc(recommender.duplicates - state["duplicates"])
            state["duplicates"] = recommender.duplicates
            metrics.batch.observe(len(records))
            metrics.batch_seconds.observe(time.perf_counter() - started)
            state["batches"] += 1
            learning["last_batch"] = time.monotonic()

    async def publish_rewards(learned: Learned) -> list[Any]:
        pending = []
        for rec in learned.records:
            pending.append(await rewards_topic.send(key=rec.user_id.encode(), value=serde.encode(rec)))
            for item in rec.items:
                if item.reward is not None:
                    metrics.rewards.labels(rec.policy_id, "+" if item.reward > 0 else "-" if item.reward < 0
                                           else "0").inc()
                    metrics.reward.labels(rec.policy_id).observe(item.reward)
                    metrics.reward_sum.labels(rec.policy_id).inc(item.reward)
        for what, value in vars(recommender.join.stats).items():
            metrics.join.labels(what).set(value)
        metrics.join.labels("open").set(len(recommender.join.open))
        return pending

    @app.timer(1.0)
    async def reward_windows() -> None:
        """Close decisions whose window passed in processing time (their listener went quiet), and
        train the session DQN off the stream."""
        if recommender.join.open:
            await asyncio.gather(*await publish_rewards(recommender.close(datetime.now(UTC))))
        if isinstance(ranker, SessionDQN) and settings.rl_train_steps and ranker.n_updates > learning["trained_at"]:
            learning["trained_at"] = ranker.n_updates
            loss = await asyncio.to_thread(ranker.train, settings.rl_train_steps)
            if loss == loss:
                metrics.rl_loss.set(loss)

    @app.task
    async def start_model_sync() -> None:
        if isinstance(ranker, LinearBandit):
            learning["reader"] = await asyncio.to_thread(
                DeltaReader, settings, models_topic.get_topic_name(), worker_id, dict(merger.offsets))
            learning["reader"].start()

    @app.timer(settings.model_sync_interval_s)
    async def sync_models() -> None:
        """Publish this worker's delta, merge the others', and snapshot right after a publish."""
        if isinstance(ranker, LinearBandit):
            dA, db = ranker.delta()
            if dA.any() or db.any():
                learning["seq"] += 1
                delta = ModelDelta(worker_id, learning["seq"], ranker.policy_id, dA, db)
                await (await models_topic.send(key=worker_id.encode(), value=delta.encode()))
                metrics.deltas.labels("published").inc()
            if learning["reader"] is not None:
                metrics.deltas.labels("merged").inc(merger.merge(ranker, learning["reader"]))
        metrics.model_rows.labels(policy.policy_id).set(model_rows())
        if time.monotonic() - learning["last_snapshot"] >= settings.model_snapshot_interval_s:
            take_snapshot()

    def take_snapshot() -> None:
        started = time.perf_counter()
        snapshots.save(Snapshot(recommender.snapshot(), dict(learning["events_offsets"]), dict(merger.offsets),
                                dict(merger.last_seq), learning["seq"], time.time()))
        learning["last_snapshot"] = time.monotonic()
        metrics.snapshot_seconds.observe(time.perf_counter() - started)

    @app.on_before_shutdown.connect
    def _final_snapshot(app: faust.App, **kwargs: Any) -> None:
        take_snapshot()
        if learning["reader"] is not None:
            learning["reader"].close()

    if analytics is not None and store is not None:

        @app.timer(settings.snapshot_interval_s)
        async def snapshot_leaderboard() -> None:
            taken = datetime.now(UTC)
            top = await asyncio.to_thread(store.top, "global", 20)
            board_snapshots.add_snapshot("global", top, taken)
            await asyncio.to_thread(board_snapshots.flush, f"snapshot:{taken:%Y%m%d%H%M%S}")

    if analytics is not None:
        from dashboard.web import register_dashboard

        register_dashboard(app, analytics.store, store)

    def readiness() -> dict[str, object]:
        assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == events_topic.get_topic_name())
        return {"ready": bool(assigned) and not app.rebalancing, "partitions": assigned, "batches": state["batches"]}

    register_api(app, settings, events_topic=events_topic, serde=serde, slates=slate_cache,
                 gamification=store, readiness=readiness)

    @app.timer(5.0)
    async def measure_lag() -> None:
        """Lag per partition = the log end reported in fetch responses (high watermark) minus the
        next offset this worker will read. Not from ListOffsets, which tansu answers wrongly."""
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic != events_topic.get_topic_name():
                continue
            high = consumer.highwater(tp)
            position = await consumer.position(tp)
            if high is not None and position is not None:
                metrics.lag.labels(str(tp.partition)).set(max(0, high - position))

    return app


def restore_and_replay(settings: Settings, recommender: Recommender, serde: Serde, snapshots: SnapshotStore,
                       merger: DeltaMerger, learning: dict[str, Any]) -> int:
    """Restore the last snapshot, then replay the events it does not cover (see agents.learn).
    Returns the number of records replayed."""
    snap = snapshots.load()
    if snap is None:
        return 0
    recommender.restore(snap.recommender)
    merger.offsets, merger.last_seq = dict(snap.models_offsets), dict(snap.merger_seq)
    learning["seq"], learning["events_offsets"] = snap.publish_seq, dict(snap.events_offsets)
    topic = settings.topic(EVENTS.name)
    stop = committed_offsets(settings, topic, sorted(snap.events_offsets))
    n = replay(settings, topic, recommender, serde, snap.events_offsets, stop)
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
