"""Declared experiments, feature flags, and who gets what: pure, no I/O.

Experiments are declared in a TOML file (``ENCORE_EXPERIMENTS_FILE``,
``deploy/config/experiments.toml``); whether each one runs, and the flags, live in the control
state (Redis, see :mod:`experiments.control`), so they change without a restart.

**Assignment** is a hash: ``sha256(salt:listener)`` mapped to [0, 1) picks the arm by the arms'
cumulative weights. It is the same in every worker, after every restart, and needs no storage.
A second hash (``salt:traffic:listener``) decides whether the listener takes part at all
(``traffic``, the share of listeners in the experiment). Experiments are exclusive: a listener
is in the first running experiment (in declaration order) whose traffic includes them.

**Lanes.** Everything that learns is per lane: a lane is one learner (policy, its parameters and
its reward weights) with its own model, profiles and reward join, and shares model deltas only
with the same lane on other workers. Each arm of a running experiment is its own lane
(``exp/<experiment>/<arm>``), so traffic in arm B never moves arm A's model. A policy rolled
out by flag is the lane ``flag/policy/<name>``; everyone else is in the default lane ``""``.

**Flags.** ``gamification`` (on for ``rollout`` of the listeners outside experiments) and
``policy`` (``value`` = a policy name, served to ``rollout`` of them). ``killed`` switches a
flag off at once for everyone, experiment arms included: a kill switch is for emergencies.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATUSES = ("draft", "running", "stopped")
FLAGS = ("gamification", "policy")
DEFAULT_LANE = ""


def bucket(salt: str, user_id: str) -> float:
    """A listener's fixed position in [0, 1) for one salt."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{user_id}".encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float = 1.0
    policy: str | None = None  # None: the worker's default policy
    params: dict[str, Any] = field(default_factory=dict)
    gamification: bool | None = None  # None: as for everyone else
    rewards: dict[str, float] = field(default_factory=dict)  # reward mapping overrides (see rewards.toml)


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[Arm, ...]
    primary: str = "minutes"
    guardrails: tuple[str, ...] = ()
    traffic: float = 1.0
    start: datetime | None = None
    end: datetime | None = None
    status: str = "draft"  # as declared; the control state overrides it
    description: str = ""

    def arm_of(self, user_id: str) -> Arm:
        x = bucket(self.salt, user_id) * sum(a.weight for a in self.arms)
        for arm in self.arms:
            if x < arm.weight:
                return arm
            x -= arm.weight
        return self.arms[-1]

    def includes(self, user_id: str) -> bool:
        return self.traffic >= 1.0 or bucket(f"{self.salt}:traffic", user_id) < self.traffic

    def within(self, now: datetime) -> bool:
        return (self.start is None or now >= self.start) and (self.end is None or now < self.end)

    @property
    def varies_gamification(self) -> bool:
        return len({a.gamification for a in self.arms}) > 1


@dataclass(frozen=True)
class Flag:
    name: str
    rollout: float = 0.0  # share of listeners (outside experiments) who get it
    value: str | None = None  # the policy name, for the policy flag
    killed: bool = False

    def on_for(self, user_id: str) -> bool:
        return not self.killed and bucket(f"flag:{self.name}", user_id) < self.rollout


@dataclass(frozen=True)
class Lane:
    """What one listener gets: which learner serves them and whether gamification is on."""

    key: str
    policy: str | None  # None: the default policy
    params: tuple[tuple[str, Any], ...] = ()
    rewards: tuple[tuple[str, float], ...] = ()
    gamification: bool = True
    experiment: str | None = None
    arm: str | None = None


@dataclass(frozen=True)
class Control:
    """The declared experiments with their current status, and the flags: everything a worker
    needs to route a listener. ``version`` increases with every change."""

    experiments: tuple[Experiment, ...] = ()
    status: dict[str, str] = field(default_factory=dict)  # experiment -> status (overrides the file)
    flags: dict[str, Flag] = field(default_factory=dict)
    version: int = 0
    gamification_default: bool = True  # the worker's own setting

    @property
    def active(self) -> bool:
        """Does routing matter: an experiment running or a flag set?"""
        return bool(self.flags) or any(self.status_of(e.name) == "running" for e in self.experiments)

    def status_of(self, name: str) -> str:
        exp = next(e for e in self.experiments if e.name == name)
        return self.status.get(name, exp.status)

    def at(self, now: datetime) -> Control:
        """The state as of ``now``: a running experiment outside its start / end is not running.
        (Workers apply this on every poll, so routing itself needs no clock.)"""
        status = {e.name: self.status_of(e.name) for e in self.experiments}
        status = {k: ("ended" if v == "running" and not e.within(now) else v)
                  for (k, v), e in zip(status.items(), self.experiments, strict=True)}
        return Control(self.experiments, status, self.flags, self.version, self.gamification_default)

    def arm_lane(self, exp: Experiment, arm: Arm) -> Lane:
        g_flag = self.flags.get("gamification")
        game = self.gamification_default if arm.gamification is None else arm.gamification
        return Lane(f"exp/{exp.name}/{arm.name}", arm.policy, tuple(sorted(arm.params.items())),
                    tuple(sorted(arm.rewards.items())), game and not (g_flag is not None and g_flag.killed),
                    exp.name, arm.name)

    def lane_of(self, user_id: str) -> Lane:
        g_flag = self.flags.get("gamification")
        killed_g = g_flag is not None and g_flag.killed
        for exp in self.experiments:
            if self.status_of(exp.name) == "running" and exp.includes(user_id):
                return self.arm_lane(exp, exp.arm_of(user_id))
        game = self.gamification_default
        if g_flag is not None:  # rolled out to a share of listeners (>= 1: everyone), or killed
            game = game and not killed_g and (g_flag.rollout >= 1.0 or g_flag.on_for(user_id))
        p_flag = self.flags.get("policy")
        if p_flag is not None and p_flag.value and p_flag.on_for(user_id):
            return Lane(f"flag/policy/{p_flag.value}", p_flag.value, gamification=game)
        return Lane(DEFAULT_LANE, None, gamification=game)


def load_experiments(path: str | Path) -> tuple[Experiment, ...]:
    """Read and validate the declarations; errors name the experiment and the field."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"experiments file {path} not found: set ENCORE_EXPERIMENTS_FILE "
                                "(deploy/config/experiments.toml is the example)")
    doc = tomllib.loads(path.read_text())
    out, names = [], set()
    for raw in doc.get("experiment", []):
        name = str(raw.get("name", ""))
        where = f"{path}: experiment {name or '?'}"
        if not name or "/" in name:
            raise ValueError(f"{where}: every experiment needs a name without '/'")
        if name in names:
            raise ValueError(f"{where}: declared twice")
        names.add(name)
        arms = tuple(Arm(str(a["name"]), float(a.get("weight", 1.0)), a.get("policy"), dict(a.get("params", {})),
                         a.get("gamification"), {k: float(v) for k, v in a.get("rewards", {}).items()})
                     for a in raw.get("arm", []))
        if len(arms) < 2 or len({a.name for a in arms}) != len(arms):
            raise ValueError(f"{where}: needs two or more arms with distinct names")
        if any(a.weight <= 0 for a in arms):
            raise ValueError(f"{where}: arm weights must be > 0")
        status = str(raw.get("status", "draft"))
        if status not in STATUSES:
            raise ValueError(f"{where}: status {status!r} is not one of {', '.join(STATUSES)}")
        traffic = float(raw.get("traffic", 1.0))
        if not 0 < traffic <= 1:
            raise ValueError(f"{where}: traffic must be in (0, 1]")
        out.append(Experiment(name, str(raw.get("salt", name)), arms, str(raw.get("primary", "minutes")),
                              tuple(raw.get("guardrails", ())), traffic, _utc(raw.get("start")), _utc(raw.get("end")),
                              status, str(raw.get("description", ""))))
    return tuple(out)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)
