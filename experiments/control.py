"""The control state in Redis: which experiments run, and the flags. Workers poll it every
``ENCORE_CONTROL_POLL_S`` (2 s), so a start, a stop, a ramp or a kill reaches every worker within
seconds, without a restart. Every change is appended to a log (``<prefix>:control:log``) with
who made it and when, and every worker logs the version it applies.

    python -m experiments list                                   # declared experiments, status, flags
    python -m experiments start NAME | stop NAME
    python -m experiments flag gamification --rollout 0.3        # ramp: 30% of listeners
    python -m experiments flag policy --value lints --rollout 0.1
    python -m experiments flag gamification --kill               # off for everyone, at once
    python -m experiments flag gamification --unkill
    python -m experiments log                                    # the change log
    python -m experiments.report NAME                            # the analysis (see report.py)
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import redis

from experiments.config import FLAGS, Control, Experiment, Flag

LOG_KEEP = 1000


class ControlStore:
    def __init__(self, client: redis.Redis, prefix: str = "enc") -> None:
        self.client = client
        self.key, self.log_key = f"{prefix}:control", f"{prefix}:control:log"

    def read(self) -> dict[str, Any]:
        raw = self.client.get(self.key)
        return json.loads(raw) if raw else {"version": 0, "status": {}, "flags": {}}

    def control(self, experiments: tuple[Experiment, ...], gamification_default: bool = True) -> Control:
        return to_control(self.read(), experiments, gamification_default)

    def change(self, what: str, edit: Any) -> dict[str, Any]:
        """Apply ``edit(doc)`` atomically (optimistic: WATCH / MULTI), bump the version, log it."""
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    raw = pipe.get(self.key)
                    doc = json.loads(raw) if raw else {"version": 0, "status": {}, "flags": {}}
                    edit(doc)
                    doc["version"] = int(doc.get("version", 0)) + 1
                    entry = {"version": doc["version"], "at": datetime.now(UTC).isoformat(), "what": what,
                             "by": f"{getpass.getuser()}@{socket.gethostname()}"}
                    pipe.multi()
                    pipe.set(self.key, json.dumps(doc))
                    pipe.lpush(self.log_key, json.dumps(entry))
                    pipe.ltrim(self.log_key, 0, LOG_KEEP - 1)
                    pipe.execute()
                    return doc
                except redis.WatchError:
                    continue

    def log(self, n: int = 50) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.client.lrange(self.log_key, 0, n - 1)]

    def set_status(self, experiments: tuple[Experiment, ...], name: str, status: str) -> dict[str, Any]:
        if name not in {e.name for e in experiments}:
            raise ValueError(f"no experiment {name!r} is declared (declared: "
                             f"{', '.join(e.name for e in experiments) or 'none'}); add it to the experiments file")
        return self.change(f"{name}: {status}", lambda doc: doc.setdefault("status", {}).__setitem__(name, status))

    def set_flag(self, name: str, *, rollout: float | None = None, value: str | None = None,
                 killed: bool | None = None) -> dict[str, Any]:
        if name not in FLAGS:
            raise ValueError(f"unknown flag {name!r}; flags: {', '.join(FLAGS)}")
        if rollout is not None and not 0 <= rollout <= 1:
            raise ValueError(f"--rollout is a share of listeners in [0, 1], got {rollout}")

        def edit(doc: dict[str, Any]) -> None:
            flag = doc.setdefault("flags", {}).setdefault(name, {"rollout": 0.0, "value": None, "killed": False})
            for k, v in (("rollout", rollout), ("value", value), ("killed", killed)):
                if v is not None:
                    flag[k] = v
            if name == "policy" and not flag.get("value") and flag.get("rollout", 0) > 0:
                raise ValueError("the policy flag needs --value POLICY before it can be rolled out")

        parts = [f"{k}={v}" for k, v in (("rollout", rollout), ("value", value), ("killed", killed)) if v is not None]
        return self.change(f"flag {name}: {', '.join(parts)}", edit)


def to_control(doc: dict[str, Any], experiments: tuple[Experiment, ...], gamification_default: bool = True) -> Control:
    flags = {name: Flag(name, float(f.get("rollout", 0.0)), f.get("value"), bool(f.get("killed", False)))
             for name, f in doc.get("flags", {}).items() if name in FLAGS}
    status = {k: v for k, v in doc.get("status", {}).items() if any(e.name == k for e in experiments)}
    return Control(experiments, status, flags, int(doc.get("version", 0)), gamification_default)


def describe(control: Control) -> dict[str, Any]:
    """The control state as JSON (for ``list`` and ``GET /v1/experiments``)."""
    return {"version": control.version,
            "experiments": [{**{k: v for k, v in asdict(e).items() if k not in ("start", "end")},
                             "start": e.start.isoformat() if e.start else None,
                             "end": e.end.isoformat() if e.end else None,
                             "status": control.status_of(e.name)} for e in control.experiments],
            "flags": {k: asdict(f) for k, f in control.flags.items()}}
