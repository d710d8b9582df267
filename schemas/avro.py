"""Generate Avro schemas from the pydantic contracts, and keep the committed ones in step.

``python -m schemas.avro`` writes a new version file (and a new id in ``avro/ids.json``) for
every record whose generated schema differs from its latest committed version;
``python -m schemas.avro --check`` exits 1 instead (CI and a test run it). Old versions stay on
disk so records written with them can still be read (schema evolution).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas.events import NAMESPACE, RECORDS

AVRO_DIR = Path(__file__).resolve().parent / "avro"
IDS_FILE = AVRO_DIR / "ids.json"

_PRIMITIVES: dict[type, Any] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
    UUID: {"type": "string", "logicalType": "uuid"},
    datetime: {"type": "long", "logicalType": "timestamp-micros"},
}


class _Builder:
    """Turns pydantic models into one Avro schema; named types are defined once, then referenced."""

    def __init__(self) -> None:
        self.defined: set[str] = set()

    def record(self, model: type[BaseModel]) -> dict[str, Any] | str:
        name = f"{NAMESPACE}.{model.__name__}"
        if name in self.defined:
            return name
        self.defined.add(name)
        schema: dict[str, Any] = {"type": "record", "name": model.__name__, "namespace": NAMESPACE}
        if model.__doc__:
            schema["doc"] = " ".join(model.__doc__.split())
        schema["fields"] = [self.field(n, f) for n, f in model.model_fields.items()]
        return schema

    def field(self, name: str, info: FieldInfo) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "type": self.type_of(info.annotation)}
        if info.description:
            out["doc"] = info.description
        if not info.is_required():
            default = info.get_default(call_default_factory=True)
            out["default"] = _json_default(default)
        return out

    def type_of(self, tp: Any) -> Any:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:  # StrictInt and friends: the wire type is the base type
            return self.type_of(typing.get_args(tp)[0])
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                raise TypeError(f"only Optional[X] unions map to Avro, got {tp}")
            return ["null", self.type_of(args[0])]
        if origin is list:
            (item,) = typing.get_args(tp)
            return {"type": "array", "items": self.type_of(item)}
        if isinstance(tp, type) and issubclass(tp, Enum):
            return self.enum(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return self.record(tp)
        if tp in _PRIMITIVES:
            return _PRIMITIVES[tp]
        raise TypeError(f"no Avro mapping for {tp!r}")

    def enum(self, tp: type[Enum]) -> dict[str, Any] | str:
        name = f"{NAMESPACE}.{tp.__name__}"
        if name in self.defined:
            return name
        self.defined.add(name)
        symbols = [str(m.value) for m in tp]
        schema: dict[str, Any] = {"type": "enum", "name": tp.__name__, "symbols": symbols}
        if "unknown" in symbols:
            # readers map symbols they do not know to this one (Avro >= 1.9 enum default)
            schema["default"] = "unknown"
        return schema


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Enum):
        return value.value
    return value


def generate(model: type[BaseModel]) -> dict[str, Any]:
    """The Avro schema (as JSON-able dict) for a pydantic model."""
    schema = _Builder().record(model)
    assert isinstance(schema, dict)
    return schema


def canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def load_ids() -> dict[int, dict[str, Any]]:
    """The committed schema-id catalogue: id -> {name, version, file}."""
    if not IDS_FILE.exists():
        return {}
    return {int(k): v for k, v in json.loads(IDS_FILE.read_text()).items()}


def latest_versions(ids: dict[int, dict[str, Any]]) -> dict[str, tuple[int, dict[str, Any]]]:
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for sid, entry in sorted(ids.items()):
        name = entry["name"]
        if name not in latest or entry["version"] > latest[name][1]["version"]:
            latest[name] = (sid, entry)
    return latest


def drift() -> dict[str, str]:
    """Records whose generated schema differs from the latest committed version."""
    latest = latest_versions(load_ids())
    changed = {}
    for name, model in RECORDS.items():
        text = canonical(generate(model))
        if name not in latest:
            changed[name] = "not committed yet"
            continue
        committed = (AVRO_DIR / latest[name][1]["file"]).read_text()
        if committed != text:
            changed[name] = f"differs from {latest[name][1]['file']}"
    return changed


def write() -> list[str]:
    """Commit a new version for every drifted record; returns the files written."""
    ids = load_ids()
    latest = latest_versions(ids)
    written = []
    for name in drift():
        version = latest[name][1]["version"] + 1 if name in latest else 1
        file = f"{name}.v{version}.avsc"
        (AVRO_DIR / file).write_text(canonical(generate(RECORDS[name])))
        ids[max(ids, default=0) + 1] = {"name": name, "version": version, "file": file}
        written.append(file)
    IDS_FILE.write_text(json.dumps({str(k): v for k, v in sorted(ids.items())}, indent=2) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if committed schemas drift")
    args = parser.parse_args(argv)
    if args.check:
        changed = drift()
        for name, why in changed.items():
            print(f"{name}: {why}; run `python -m schemas.avro` and commit schemas/avro/")
        return 1 if changed else 0
    for file in write():
        print(f"wrote schemas/avro/{file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
