"""The Faust app factory. No module-level app: every process builds its own from settings."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust

from streams.settings import Settings


def _fetch_wait(ms: int) -> None:
    """Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to change
    it. Measured on tansu, a fetch parked with that wait is answered ~700 ms after a record
    arrives, so an idle worker answered every request ~0.7 s late. A short wait bounds that;
    under load fetches find data at once and the wait never applies (on real Kafka the broker
    answers a parked fetch as soon as data arrives; a short wait costs only idle round trips)."""
    from faust.transport.drivers import aiokafka as driver

    if getattr(driver.AIOKafkaConsumerThread, "_encore_fetch_wait", None) == ms:
        return
    create = getattr(driver.AIOKafkaConsumerThread, "_encore_create", None) or \
        driver.AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self, transport):  # type: ignore[no-untyped-def]
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = ms  # read when the consumer starts its fetcher
        return consumer

    driver.AIOKafkaConsumerThread._encore_create = create
    driver.AIOKafkaConsumerThread._encore_fetch_wait = ms
    driver.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer


def create_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings`` (broker, web bind, timeouts that suit tansu)."""
    _fetch_wait(settings.fetch_max_wait_ms)
    datadir = settings.state_dir / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    broker = f"kafka://{settings.kafka_bootstrap.replace(',', ';kafka://')}"
    app = faust.App(
        settings.app_id,
        broker=broker,
        broker_credentials=_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,  # topics come from streams.topics, created up front
        processing_guarantee="at_least_once",  # exactly_once fails on tansu; effects are idempotent
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 4),
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        producer_linger_ms=1,  # slates leave at once; a batch's sends are queued together anyway
        stream_buffer_maxsize=4096,
    )
    _bounded_shutdown(app, settings.shutdown_grace_s)
    return app


def _bounded_shutdown(app: faust.App, grace_s: float) -> None:
    """Faust waits, on a rebalance and on shutdown alike, until every record taken is
    acknowledged. A batch waiting out an outage is never acknowledged, so SIGTERM would hang
    until the store came back. On shutdown wait ``grace_s`` at most: what is not acknowledged
    by then is simply delivered again to whoever reads the partition next (at-least-once; every
    effect is idempotent). Rebalances still wait, so a partition's listeners move with what
    their batches taught."""
    wait_all = app._consumer_wait_empty

    async def wait_empty(consumer: Any, logger: Any) -> None:
        if not app.should_stop:
            await wait_all(consumer, logger)
            return
        # (Faust's own wait swallows cancellation, so it cannot be bounded from outside)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            consumer._clean_unacked_messages()
            if not consumer._unacked_messages:
                break
            await asyncio.sleep(0.1)
        else:
            logger.warning("stopping with %d records not acknowledged after %.0f s (a store is away?); they "
                           "are delivered again after the restart", len(consumer._unacked_messages), grace_s)
        try:
            await asyncio.wait_for(consumer.commit(), grace_s)  # what was acknowledged
        except Exception as exc:  # the broker is away: the group resumes from the last commit
            logger.warning("last commit at shutdown failed: %r", exc)

    app._consumer_wait_empty = wait_empty  # type: ignore[method-assign]


def _credentials(settings: Settings) -> object | None:
    if not settings.kafka_sasl_mechanism:
        return None
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username or "",
        password=password,
        mechanism=settings.kafka_sasl_mechanism,
    )
