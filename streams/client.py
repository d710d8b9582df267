"""Client SDK: a producer for apps that send events, a consumer for services that read outputs.

Producer::

    from streams.client import EventProducer
    with EventProducer(settings) as producer:
        producer.send(event)          # buffered per listener, sent as one batch record
    # leaving the block flushes everything and waits for the broker's acknowledgements

Consumer::

    from streams.client import RecordConsumer
    with RecordConsumer(settings, ["encore.recommendations"], group_id="my-service") as c:
        for msg in c.poll_decoded(timeout=1.0):
            print(msg.key, msg.value)  # a Recommendation
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from pydantic import BaseModel

from schemas.events import EventBatch, Interaction
from schemas.wire import DecodeError, Serde
from streams.settings import Settings
from streams.topics import EVENTS

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class EventProducer:
    """Sends interactions to the events topic, keyed by user id.

    Events are buffered per listener and sent as one :class:`EventBatch` record when the
    listener has ``batch_events`` waiting or the oldest has waited ``linger_ms``; the worker
    pays its per-record cost once per batch instead of once per event. ``batch_events=1``
    sends every event as its own record. Delivery reports are counted and handed to
    ``on_delivery``; ``flush()`` (also on ``close()`` / leaving a ``with``) waits for all.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        serde: Serde | None = None,
        batch_events: int | None = None,
        linger_ms: int | None = None,
        on_delivery: DeliveryCallback | None = None,
        **librdkafka: Any,
    ) -> None:
        self.settings = settings
        self.topic = settings.topic(EVENTS.name)
        self.serde = serde or Serde()
        self.batch_events = batch_events or settings.producer_batch_events
        self.linger_s = (settings.producer_linger_ms if linger_ms is None else linger_ms) / 1000
        self._on_delivery = on_delivery
        conf = {**settings.kafka_config(), "linger.ms": 5, "enable.idempotence": True,
                "compression.type": "lz4", **librdkafka}
        self._producer = Producer(conf)
        self._buffers: dict[str, list[Interaction]] = defaultdict(list)
        self._oldest: dict[str, float] = {}
        self.delivered = 0  # records acknowledged by the broker
        self.failed = 0
        self.events_sent = 0

    def send(self, event: Interaction) -> None:
        buf = self._buffers[event.user_id]
        if not buf:
            self._oldest[event.user_id] = time.monotonic()
        buf.append(event)
        if len(buf) >= self.batch_events:
            self._send_user(event.user_id)
        self.poll(0)

    def send_many(self, events: Iterable[Interaction]) -> None:
        for event in events:
            self.send(event)

    def send_raw(self, key: bytes | str | None, value: bytes) -> None:
        """Produce bytes as they are (for JSON, replays, and testing the dead-letter path)."""
        self._produce(key, value)

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks and send batches whose linger time has passed."""
        if self._oldest:
            now = time.monotonic()
            for user in [u for u, t in self._oldest.items() if now - t >= self.linger_s]:
                self._send_user(user)
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> int:
        """Send every buffered event and wait for acknowledgements; returns records still queued."""
        for user in list(self._buffers):
            self._send_user(user)
        remaining = self._producer.flush(timeout)
        if remaining:
            raise TimeoutError(
                f"{remaining} records not acknowledged by {self.settings.kafka_bootstrap} after "
                f"{timeout}s; is the broker up? (`make up`)"
            )
        return remaining

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send_user(self, user: str) -> None:
        events = self._buffers.pop(user, [])
        self._oldest.pop(user, None)
        if not events:
            return
        value = self.serde.encode(events[0] if len(events) == 1 else EventBatch(events=events))
        self._produce(user, value)
        self.events_sent += len(events)

    def _produce(self, key: bytes | str | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._delivered)
                return
            except BufferError:  # local queue full: let librdkafka drain it, then retry
                self._producer.poll(0.1)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
        if self._on_delivery is not None:
            self._on_delivery(err, msg)


@dataclass(frozen=True)
class DecodedMessage:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: BaseModel | Any  # a contract object, or parsed JSON / raw bytes when not Avro
    raw: bytes


class RecordConsumer:
    """A confluent-kafka consumer that hands back decoded contract objects."""

    def __init__(
        self,
        settings: Settings,
        topics: list[str],
        *,
        group_id: str,
        from_beginning: bool = True,
        serde: Serde | None = None,
        **librdkafka: Any,
    ) -> None:
        self.serde = serde or Serde()
        conf = {
            **settings.kafka_config(),
            "group.id": group_id,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "enable.auto.commit": True,
            # tansu holds a fetch until fetch.wait.max.ms even when data is there: keep it short
            "fetch.wait.max.ms": 10,
            **librdkafka,
        }
        self._consumer = Consumer(conf)
        self._from_beginning = from_beginning
        self._assigned = False
        self._consumer.subscribe([settings.topic(t) for t in topics], on_assign=self._on_assign)
        self._pending: list[Message] = []

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Resolve "latest" now, at assignment, rather than lazily at the first fetch: a record
        # produced between the two would otherwise be skipped. (tansu may answer a little
        # before the true end: that only re-reads a few old records.)
        if not self._from_beginning:
            for tp in partitions:
                committed = consumer.committed([tp], timeout=10)[0].offset
                if committed < 0:
                    tp.offset = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.assign(partitions)
        self._assigned = True

    def wait_assigned(self, timeout: float = 30.0) -> None:
        """Block until the group has given this consumer its partitions (reads nothing yet)."""
        deadline = time.monotonic() + timeout
        while not self._assigned:
            if time.monotonic() > deadline:
                raise TimeoutError("consumer got no partitions; is the broker up and the topic created?")
            for msg in self._consumer.consume(1, 0.2):
                self._pending.append(msg)

    def poll_decoded(self, timeout: float = 1.0, max_messages: int = 500) -> Iterator[DecodedMessage]:
        msgs, self._pending = self._pending + self._consumer.consume(max_messages, timeout), []
        for msg in msgs:
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"consumer error: {msg.error()}")
            yield decode_message(msg, self.serde)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> RecordConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_message(msg: Message, serde: Serde) -> DecodedMessage:
    raw = msg.value() or b""
    value: Any
    try:
        value = serde.decode_any(raw)
    except DecodeError:
        import json

        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
    key = msg.key()
    return DecodedMessage(
        msg.topic(), msg.partition(), msg.offset(),
        key.decode(errors="replace") if key is not None else None, value, raw,
    )


class AsyncProducer:
    """confluent-kafka's producer for an asyncio service: ``await send(...)`` queues a record
    (librdkafka batches and sends it from its own thread) and returns a future that resolves when
    the broker acknowledges it, or fails with the broker's error. A small thread serves the
    delivery reports. The worker publishes its outputs this way: a record costs a few µs here,
    against ~50 µs through Faust's Python producer."""

    def __init__(self, settings: Settings, **librdkafka: Any) -> None:
        import asyncio
        import threading

        self._asyncio = asyncio
        # a record the broker has not acknowledged in 30 s fails (librdkafka's default is 5 min), and
        # the delivery sends it again: a lost produce request costs seconds, not minutes
        self._producer = Producer({**settings.kafka_config(), "linger.ms": 1, "enable.idempotence": True,
                                   "queue.buffering.max.messages": 500_000, "message.timeout.ms": 30_000,
                                   **librdkafka})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="encore-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        loop = self._asyncio.get_running_loop()
        fut = loop.create_future()

        def report(err: KafkaError | None, msg: Message) -> None:  # in the serving thread
            loop.call_soon_threadsafe(_settle, fut, err)

        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=report)
                return fut
            except BufferError:  # librdkafka's queue is full: let it drain
                await self._asyncio.sleep(0.01)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (up to ``timeout``), stop; returns records left undelivered."""
        left = self._producer.flush(timeout)
        self._stop.set()
        self._thread.join(2)
        return int(left)


def _settle(fut: Any, err: KafkaError | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(RuntimeError(f"broker refused the record: {err}"))
