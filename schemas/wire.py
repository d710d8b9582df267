"""The one serialisation step: pydantic model <-> Kafka bytes.

Kafka values use the Confluent wire format (byte 0 = 0, then a 4-byte big-endian schema id, then
the Avro body), so any Confluent-aware tool can read them. Schema ids come from a Confluent
Schema Registry when one is configured, otherwise from the committed catalogue
``schemas/avro/ids.json``. The events topic also accepts plain JSON (one event, a list of
events, or ``{"events": [...]}``) for clients that cannot write Avro.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, TypeVar
from uuid import UUID

import fastavro
from pydantic import BaseModel, ValidationError

from schemas.avro import AVRO_DIR, generate, latest_versions, load_ids
from schemas.events import (
    EARLIEST,
    LATEST,
    NAMESPACE,
    RECORDS,
    TRACK_KINDS,
    Activity,
    Context,
    Device,
    EventBatch,
    Interaction,
    Kind,
    Network,
)

MAGIC = 0
_HEADER = struct.Struct(">bI")
M = TypeVar("M", bound=BaseModel)


class DecodeError(ValueError):
    """A record that cannot become a contract object; ``reason`` is a short machine code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SchemaCatalogue:
    """Schema ids <-> parsed Avro schemas, from the committed files or a Schema Registry."""

    def __init__(self, registry_url: str | None = None) -> None:
        self._by_id: dict[int, tuple[str, Any]] = {}
        self._writer_ids: dict[str, int] = {}
        self._registry = _registry_client(registry_url) if registry_url else None
        ids = load_ids()
        for sid, entry in ids.items():
            raw = json.loads((AVRO_DIR / entry["file"]).read_text())
            if self._registry is None:
                self._by_id[sid] = (entry["name"], fastavro.parse_schema(raw))
        if self._registry is None:
            for name, (sid, _) in latest_versions(ids).items():
                self._writer_ids[name] = sid

    def writer_id(self, name: str) -> int:
        """The id to stamp on records of ``name`` written by this code version."""
        if name not in self._writer_ids:
            if self._registry is None:
                raise KeyError(f"{name} has no committed schema; run `python -m schemas.avro`")
            self._writer_ids[name] = self._register(name)
        return self._writer_ids[name]

    def schema(self, schema_id: int) -> tuple[str, Any]:
        """(record name, parsed writer schema) for an id seen on the wire."""
        if schema_id not in self._by_id:
            if self._registry is None:
                raise DecodeError(
                    "unknown_schema_id",
                    f"schema id {schema_id} is not in schemas/avro/ids.json; the writer uses a "
                    "newer contract: upgrade this service or configure ENCORE_SCHEMA_REGISTRY_URL",
                )
            try:
                registered = self._registry.get_schema(schema_id)
            except Exception as exc:  # registry answers 404 or is down
                raise DecodeError("unknown_schema_id", f"registry has no schema {schema_id}: {exc}") from exc
            raw = json.loads(registered.schema_str)
            name = f"{raw.get('namespace', NAMESPACE)}.{raw['name']}"
            self._by_id[schema_id] = (name, fastavro.parse_schema(raw))
        return self._by_id[schema_id]

    @cached_property
    def _readers(self) -> dict[str, Any]:
        return {name: fastavro.parse_schema(generate(model)) for name, model in RECORDS.items()}

    def reader(self, name: str) -> Any:
        return self._readers[name]

    def _register(self, name: str) -> int:
        from confluent_kafka.schema_registry import Schema

        schema_str = json.dumps(generate(RECORDS[name]))
        # RecordNameStrategy: one topic carries several record types (events and batches).
        sid = self._registry.register_schema(name, Schema(schema_str, "AVRO"))
        self._by_id[sid] = (name, fastavro.parse_schema(json.loads(schema_str)))
        return int(sid)


def _registry_client(url: str) -> Any:
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:  # authlib / httpx missing
        raise ImportError(
            "ENCORE_SCHEMA_REGISTRY_URL is set but the registry client is not installed: "
            "pip install -e '.[registry]'"
        ) from exc
    return SchemaRegistryClient({"url": url})


class Serde:
    """Encode contract objects to Confluent-framed Avro and decode them back."""

    def __init__(self, catalogue: SchemaCatalogue | None = None) -> None:
        self.catalogue = catalogue or SchemaCatalogue()

    def encode(self, obj: BaseModel) -> bytes:
        name = f"{NAMESPACE}.{type(obj).__name__}"
        schema_id = self.catalogue.writer_id(name)
        _, schema = self.catalogue.schema(schema_id)
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, schema_id))
        fastavro.schemaless_writer(buf, schema, obj.model_dump(mode="python"))
        return buf.getvalue()

    def encode_fields(self, model: type[BaseModel], fields: dict[str, Any]) -> bytes:
        """Encode a dict of a contract's fields without building the model (hot paths whose
        fields come from the project's own code); the Avro writer still checks every type."""
        schema_id = self.catalogue.writer_id(f"{NAMESPACE}.{model.__name__}")
        _, schema = self.catalogue.schema(schema_id)
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, schema_id))
        fastavro.schemaless_writer(buf, schema, fields)
        return buf.getvalue()

    def decode_any(self, data: bytes) -> BaseModel:
        """Decode a framed record into whichever contract its schema id names."""
        name, record = self._read(data)
        return RECORDS[name].model_validate(record)

    def decode(self, data: bytes, model: type[M]) -> M:
        obj = self.decode_any(data)
        if not isinstance(obj, model):
            raise DecodeError("wrong_schema", f"expected {model.__name__}, got {type(obj).__name__}")
        return obj

    def _read(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if len(data) < _HEADER.size or data[0] != MAGIC:
            raise DecodeError("bad_framing", "not Confluent-framed Avro (magic byte 0 + schema id)")
        _, schema_id = _HEADER.unpack_from(data)
        name, writer = self.catalogue.schema(schema_id)
        if name not in RECORDS:
            raise DecodeError("wrong_schema", f"schema id {schema_id} is {name}, not an Encore contract")
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[_HEADER.size :]), writer, self.catalogue.reader(name)
            )
        except Exception as exc:  # truncated / garbage body
            raise DecodeError("bad_avro", f"Avro body does not match schema {schema_id}: {exc}") from exc
        return name, record  # type: ignore[return-value]

    def encode_json(self, obj: BaseModel) -> bytes:
        return obj.model_dump_json(exclude_none=True).encode()


# --- the events topic -----------------------------------------------------------------------


@dataclass
class Rejected:
    """One refused record or one refused event inside a batch record."""

    reason: str
    error: str
    index: int | None = None
    raw: bytes | None = None  # the event's own bytes when it came from a batch


@dataclass
class Decoded:
    events: list[Interaction] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def decode_events(
    data: bytes | None, serde: Serde, *, max_bytes: int, max_events: int
) -> Decoded:
    """Decode one record of the events topic. Never raises: bad parts come back as ``rejected``.

    A batch record with one bad event keeps its good events; the bad one is rejected alone.
    """
    out = Decoded()
    if not data:
        out.rejected.append(Rejected("empty", "empty record value; send one event or a batch"))
        return out
    if len(data) > max_bytes:
        out.rejected.append(
            Rejected("oversized", f"record is {len(data)} bytes, limit {max_bytes}; split the batch")
        )
        return out
    try:
        if data[0] == MAGIC:
            name, record = serde._read(data)
            items = record["events"] if name == f"{NAMESPACE}.EventBatch" else [record]
            if name not in (f"{NAMESPACE}.EventBatch", f"{NAMESPACE}.Interaction"):
                raise DecodeError("wrong_schema", f"{name} does not belong on the events topic")
            raw_items: list[bytes | None] = [None] * len(items)
        else:
            items, raw_items = _json_items(data)
    except DecodeError as exc:
        out.rejected.append(Rejected(exc.reason, str(exc)))
        return out
    if len(items) > max_events:
        out.rejected.append(
            Rejected("batch_too_large", f"{len(items)} events in one record, limit {max_events}")
        )
        return out
    avro = data[0] == MAGIC
    for index, (item, raw) in enumerate(zip(items, raw_items, strict=True)):
        if avro:  # the schema guarantees the types: check the rules without a validation pass
            fast = fast_interaction(item)
            if fast is not None:
                out.events.append(fast)
                continue
        at = index if len(items) > 1 or raw is not None else None
        try:
            out.events.append(Interaction.model_validate(item))
        except ValidationError as exc:
            reason, message = explain(exc)
            out.rejected.append(Rejected(reason, message, at, raw))
    return out


# --- the fast path for Avro events --------------------------------------------------------
# An Avro record of the committed schema already has every field with its type (strings, ints,
# UUIDs, an aware datetime, enum symbols). What pydantic would still check are the contract's
# rules: lengths, ranges, enum membership, valid text, the time window, the kind rules.
# ``fast_interaction`` checks exactly those in plain Python and builds the object without a
# validation pass; if anything is off it returns None and pydantic decides (with its reasons).
# tests/test_schemas.py holds it to pydantic's verdict and result on generated records.
_KINDS = {k.value: k for k in Kind}
_DEVICES, _ACTIVITIES, _NETWORKS = ({m.value: m for m in e} for e in (Device, Activity, Network))
_FIELDS = frozenset(Interaction.model_fields)
_CONTEXT_FIELDS = frozenset(Context.model_fields)
_new, _set = object.__new__, object.__setattr__
_INT_MAX = 2**31 - 1


def _build(cls: type[BaseModel], values: dict[str, Any], fields: frozenset[str]) -> Any:
    """A model instance from values already known to satisfy it (what ``model_construct`` does,
    without its per-field default handling: every field is present)."""
    obj = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", fields)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _text_ok(v: Any, lo: int, hi: int) -> bool:
    return type(v) is str and lo <= len(v) <= hi and (v.isascii() or _utf8(v))


def _utf8(v: str) -> bool:
    try:
        v.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a lone surrogate
        return False


def _opt_text_ok(v: Any, lo: int, hi: int) -> bool:
    return v is None or _text_ok(v, lo, hi)


def _opt_int_ok(v: Any, lo: int, hi: int) -> bool:
    return v is None or (type(v) is int and lo <= v <= hi)


def fast_interaction(r: dict[str, Any]) -> Interaction | None:
    """The Interaction for an Avro-decoded record when it provably passes every rule, else None."""
    ctx = r.get("context")
    if type(ctx) is not dict or len(r) != len(_FIELDS) or len(ctx) != len(_CONTEXT_FIELDS):
        return None
    kind = _KINDS.get(r.get("kind"))  # type: ignore[arg-type]
    device, activity, network = (_DEVICES.get(ctx.get("device")), _ACTIVITIES.get(ctx.get("activity")),  # type: ignore[arg-type]
                                 _NETWORKS.get(ctx.get("network")))  # type: ignore[arg-type]
    at = r.get("occurred_at")
    rating, track = r.get("rating"), r.get("track_id")
    if (kind is None or device is None or activity is None or network is None
            or type(r.get("event_id")) is not UUID or not (r.get("rec_id") is None or type(r["rec_id"]) is UUID)
            or type(at) is not datetime or at.tzinfo is None or at.utcoffset() or not EARLIEST <= at < LATEST
            or not _text_ok(r.get("user_id"), 1, 128) or not _text_ok(r.get("session_id"), 1, 128)
            or not _opt_text_ok(track, 1, 128) or not _opt_text_ok(r.get("artist_id"), 0, 128)
            or not _opt_text_ok(r.get("playlist_id"), 0, 128)
            or not _opt_int_ok(r.get("position"), 0, 1000) or not _opt_int_ok(r.get("listened_ms"), 0, _INT_MAX)
            or not _opt_int_ok(r.get("track_duration_ms"), 0, _INT_MAX) or not _opt_int_ok(r.get("slate_size"), 1, 100)
            or not (rating is None or (type(rating) is float and 0 <= rating <= 5))
            or not _opt_int_ok(ctx.get("local_hour"), 0, 23) or not _opt_int_ok(ctx.get("weekday"), 0, 6)
            or not _text_ok(ctx.get("timezone"), 0, 64) or not _opt_text_ok(ctx.get("country"), 0, 8)
            or not _opt_text_ok(ctx.get("cohort"), 0, 64)):
        return None
    if (kind in TRACK_KINDS and track is None) or (kind is Kind.RATING and rating is None) or (
            kind is Kind.FOLLOW_ARTIST and r.get("artist_id") is None and track is None):
        return None
    values = dict(r)
    values["kind"] = kind
    values["occurred_at"] = at if at.tzinfo is UTC else at.astimezone(UTC)
    values["context"] = _build(Context, {**ctx, "device": device, "activity": activity, "network": network},
                               _CONTEXT_FIELDS)
    return _build(Interaction, values, _FIELDS)  # type: ignore[no-any-return]


def _json_items(data: bytes) -> tuple[list[Any], list[bytes | None]]:
    try:
        doc = json.loads(data)
    except RecursionError:
        raise DecodeError("bad_json", "JSON nested too deeply to read; send flat event objects") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
        raise DecodeError("bad_json", f"value is neither Confluent Avro nor JSON: {str(exc)[:300]}") from None
    if isinstance(doc, dict) and "events" in doc:
        if "kind" in doc:  # ambiguous: an event would drop the batch silently, a batch the event
            raise DecodeError("wrong_type", "an object is an event (with \"kind\") or a batch "
                              "({\"events\": [...]}), not both; send them apart")
        doc = doc["events"]
    if isinstance(doc, dict):
        return [doc], [None]
    if isinstance(doc, list) and doc:
        return doc, [json.dumps(d).encode() for d in doc]
    raise DecodeError("wrong_type", "JSON value must be an event object, a non-empty list of "
                      "events or {\"events\": [...]}")


_TYPE_ERRORS = ("_type", "_parsing", "model_attributes_type", "dict_type", "is_instance_of")


def explain(exc: ValidationError) -> tuple[str, str]:
    """A reason code and a one-line message naming each bad field (what to fix)."""
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r:.60})"
        parts.append(f"{loc}: {err['msg']}{got}")
    types_ = [(e["type"], e["loc"][:1]) for e in errors]
    if any(loc == ("kind",) and t in ("enum", "literal_error") for t, loc in types_):
        reason = "unknown_kind"
    elif any(t == "missing" for t, _ in types_):
        reason = "missing_field"
    elif any(t.endswith(_TYPE_ERRORS) for t, _ in types_):
        reason = "wrong_type"
    else:
        reason = "invalid_value"
    return reason, "; ".join(parts)


def encode_batch(events: Iterable[Interaction], serde: Serde) -> bytes:
    """One Avro record carrying several events of one listener."""
    return serde.encode(EventBatch(events=list(events)))
