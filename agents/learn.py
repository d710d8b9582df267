"""Keeping the recommender's learning across workers and restarts.

- **Model deltas** (``encore.models``): every ``model_sync_interval_s`` a worker publishes what
  its linear bandit learned since the last time (A and b increments: sufficient statistics are
  additive) and merges what the other workers published. No parameter server: every worker ends
  up with the sum of everyone's statistics. Each delta carries (worker id, sequence number) and
  is merged at most once.
- **Snapshots**: right after a publish, the worker writes its whole recommender state (model,
  listener profiles, open decisions of the reward join, recent event ids) to
  ``state_dir/models/``, with the events-topic offsets it covers and the models-topic offset it
  has merged up to. On start it restores the snapshot, re-reads ``encore.models`` from that
  offset, and replays ``encore.events`` from the snapshot's offsets up to the consumer group's
  committed offsets through the same recommend step with its outputs discarded. Decisions are
  deterministic (seeded by the request's event_id), so the replay rebuilds the same decisions
  and the same rewards. This does not depend on Faust changelog recovery (see INFRA.md).

The wire format of a delta is a NumPy ``.npz`` (no pickle on the network).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from agents.ingest import RawRecord, ingest
from agents.lanes import Lanes
from agents.recommend import Recommender
from schemas.events import Kind, Recommendation
from schemas.wire import Serde
from streams.settings import Settings

log = logging.getLogger("encore.learn")


@dataclass(frozen=True)
class ModelDelta:
    worker_id: str
    seq: int
    policy_id: str
    dA: np.ndarray
    db: np.ndarray
    lane: str = ""  # the learner it came from: "" (default) or an experiment arm's lane

    def encode(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, worker_id=np.array(self.worker_id), seq=np.array(self.seq),
                 policy_id=np.array(self.policy_id), dA=self.dA, db=self.db, lane=np.array(self.lane))
        return buf.getvalue()

    @classmethod
    def decode(cls, blob: bytes) -> ModelDelta:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            lane = str(z["lane"]) if "lane" in z.files else ""  # deltas from before lanes: the default
            return cls(str(z["worker_id"]), int(z["seq"]), str(z["policy_id"]), z["dA"], z["db"], lane)


class DeltaReader:
    """Reads every partition of the models topic in a thread (not as a consumer-group member:
    every worker must see every delta) and queues the other workers' deltas."""

    def __init__(self, settings: Settings, topic: str, worker_id: str, start: dict[int, int] | None = None) -> None:
        self.worker_id = worker_id
        self.deltas: queue.Queue[tuple[int, int, ModelDelta]] = queue.Queue()
        self._stop = threading.Event()
        self._consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-models-{worker_id}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        meta = self._consumer.list_topics(topic, timeout=15).topics[topic]
        self._consumer.assign([TopicPartition(topic, p, (start or {}).get(p, OFFSET_END))
                               for p in sorted(meta.partitions)])
        self._thread = threading.Thread(target=self._run, name="model-deltas", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("models topic: %s", msg.error())
                continue
            try:
                delta = ModelDelta.decode(msg.value())
            except Exception as exc:
                log.warning("models topic: undecodable delta at %s/%s: %s", msg.partition(), msg.offset(), exc)
                continue
            self.deltas.put((msg.partition(), msg.offset(), delta))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


class DeltaMerger:
    """Merges queued deltas into the same lane's linear bandit, each (worker, seq) once. A delta
    for a lane this worker has not served yet creates it (its listeners may come here later)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.last_seq: dict[str, int] = {}
        self.offsets: dict[int, int] = {}  # models partition -> next offset to read
        self.merged = 0

    def merge(self, lanes: Lanes, reader: DeltaReader) -> int:
        n = 0
        while True:
            try:
                partition, offset, delta = reader.deltas.get_nowait()
            except queue.Empty:
                return n
            self.offsets[partition] = offset + 1
            if delta.worker_id == self.worker_id or delta.seq <= self.last_seq.get(delta.worker_id, -1):
                continue
            spec = lanes.spec_of(delta.lane)
            if spec is None:  # the lane's experiment is no longer declared here
                continue
            model = getattr(lanes.recommender(spec).policy, "ranker", None)
            if delta.policy_id != getattr(model, "policy_id", None):
                continue
            try:
                model.merge((delta.dA, delta.db))  # type: ignore[union-attr]
            except ValueError as exc:  # a worker on another feature set (a rolling upgrade): not mergeable
                log.warning("model delta from %s skipped: %s; upgrade every worker to the same version",
                            delta.worker_id, exc)
                continue
            self.last_seq[delta.worker_id] = delta.seq
            self.merged += 1
            n += 1


@dataclass
class Snapshot:
    recommender: bytes
    events_offsets: dict[int, int]  # events partition -> next offset not covered
    models_offsets: dict[int, int]
    merger_seq: dict[str, int]
    publish_seq: int
    taken_at: float


class SnapshotStore:
    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}.snapshot"
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, snap: Snapshot) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(snap))
        os.replace(tmp, self.path)  # atomic: a crash mid-write keeps the previous snapshot

    def load(self) -> Snapshot | None:
        if not self.path.exists():
            return None
        try:
            return pickle.loads(self.path.read_bytes())  # our own file, written by save()
        except Exception as exc:
            log.warning("snapshot %s unreadable (%s); starting from an empty model", self.path, exc)
            return None


def committed_offsets(settings: Settings, topic: str, partitions: list[int]) -> dict[int, int]:
    """The worker group's committed offsets (what the Faust agent will resume from)."""
    c = Consumer({**settings.kafka_config(), "group.id": settings.app_id, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in partitions], timeout=15)
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        c.close()


def replay(settings: Settings, topic: str, recommender: Recommender | Lanes, serde: Serde,
           start: dict[int, int], stop: dict[int, int],
           published: Callable[[list[tuple[str, uuid.UUID]]], Mapping[uuid.UUID, Recommendation]] | None = None,
           batch: int = 500) -> int:
    """Feed ``[start, stop)`` of each events partition through the recommend step, outputs
    discarded; returns the number of records replayed. ``published`` looks up the slates
    already published for the replayed requests, so their decisions hold the tracks listeners saw."""
    todo = {p: (start[p], stop[p]) for p in start if p in stop and stop[p] > start[p]}
    if not todo:
        return 0
    c = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-replay", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, lo) for p, (lo, _) in todo.items()])
    done: set[int] = set()
    n = 0
    deadline = time.monotonic() + 300
    pending: list[RawRecord] = []

    def flush() -> None:
        result = ingest(pending, serde, max_bytes=settings.max_record_bytes, max_events=settings.max_batch_events,
                        now=datetime.now(UTC))
        wanted = [(e.user_id, recommender.rec_id_of(e)) for e in result.events if e.kind == Kind.REC_REQUEST]
        known = published(wanted) if published is not None and wanted else None
        # no close here: the replayed decisions close on the worker's timer, and their rewards
        # are published then (again, identically, for the ones published before the restart)
        recommender.process(result.events, datetime.now(UTC), known=known)
        pending.clear()

    try:
        while len(done) < len(todo) and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                continue
            p, off = msg.partition(), msg.offset()
            if p in done or off >= todo[p][1]:
                done.add(p)
                continue
            pending.append(RawRecord(msg.topic(), p, off, msg.key(), msg.value()))
            n += 1
            if off + 1 >= todo[p][1]:
                done.add(p)
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
    finally:
        c.close()
    return n
