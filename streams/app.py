"""The Faust app factory. No module-level app: every process builds its own from settings."""

from __future__ import annotations

import faust

from streams.settings import Settings


def create_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings`` (broker, web bind, timeouts that suit tansu)."""
    datadir = settings.state_dir / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    broker = f"kafka://{settings.kafka_bootstrap.replace(',', ';kafka://')}"
    return faust.App(
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
        producer_linger_ms=5,
        stream_buffer_maxsize=4096,
    )


def _credentials(settings: Settings) -> object | None:
    if not settings.kafka_sasl_mechanism:
        return None
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username or "",
        password=password,
        mechanism=settings.kafka_sasl_mechanism,
    )
