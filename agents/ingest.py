"""Step ``ingest``: raw records of the events topic -> valid interactions + dead letters.

Pure: the Faust agent hands it records and sends what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from schemas.events import DeadLetter, Interaction
from schemas.wire import Serde, decode_events

STEP = "ingest.decode"


@dataclass(frozen=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Ingested:
    events: list[Interaction]
    dead: list[DeadLetter]
    origin: list[int] = field(default_factory=list)  # per event: index of its record in the batch


def ingest(
    records: list[RawRecord], serde: Serde, *, max_bytes: int, max_events: int, now: datetime
) -> Ingested:
    """Decode and validate every record; never raises on input. Good events keep their order."""
    out = Ingested([], [])
    for i, rec in enumerate(records):
        try:
            decoded = decode_events(rec.value, serde, max_bytes=max_bytes, max_events=max_events)
        except Exception as exc:  # a decoder bug or an input nobody foresaw: this record alone pays
            out.dead.append(dead_letter(rec, STEP, "undecodable", f"{type(exc).__name__}: {str(exc)[:500]}",
                                        rec.value or b"", now))
            continue
        out.events.extend(decoded.events)
        out.origin.extend([i] * len(decoded.events))
        for bad in decoded.rejected:
            raw = bad.raw if bad.raw is not None else (rec.value or b"")
            if bad.reason == "oversized":
                raw = raw[:4096]  # keep the head for diagnosis, not the whole payload
            out.dead.append(dead_letter(rec, STEP, bad.reason, bad.error, raw, now, bad.index))
    return out


MAX_DEAD_RAW = 512_000  # a dead letter must fit in one Kafka record whatever it carries


def dead_letter(
    rec: RawRecord, step: str, reason: str, error: str, raw: bytes, now: datetime, index: int | None = None
) -> DeadLetter:
    if len(raw) > MAX_DEAD_RAW:
        error, raw = f"{error} (raw truncated to its first {MAX_DEAD_RAW} bytes)", raw[:MAX_DEAD_RAW]
    return DeadLetter(
        topic=rec.topic, partition=rec.partition, offset=rec.offset, step=step, reason=reason,
        error=error[:2000], index=index, key=rec.key, raw=raw, received_at=now,
    )
