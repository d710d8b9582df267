"""Declared experiments, assignment, flags and isolated learners (lanes), through the worker's
pure step; the control state against the real Redis."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis

from agents.batch import BatchState, process_batch
from agents.gamify import Rules
from agents.ingest import RawRecord
from agents.lanes import Lanes
from agents.learn import ModelDelta
from agents.recommend import Recommender
from experiments import stats as S
from experiments.config import (
    DEFAULT_LANE,
    Arm,
    Control,
    Experiment,
    Flag,
    Lane,
    bucket,
    load_experiments,
)
from experiments.control import ControlStore
from online_models.policy import make_policy
from schemas.events import Interaction, Kind, Recommendation
from schemas.wire import Serde, encode_batch
from streams.settings import Settings
from streams.simulator import synthetic_catalogue

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CAT = synthetic_catalogue(7, 300)
SERDE = Serde()
AB = Experiment("ab", "salt-1", (Arm("control"), Arm("b")))


def make(lane: Lane) -> Recommender:
    return Recommender(CAT, make_policy(lane.policy or "linucb", CAT, n_candidates=50, **dict(lane.params)),
                       slate_size=5, dedupe_window=10_000, lane=lane.key,
                       experiment_arm=f"{lane.experiment}/{lane.arm}" if lane.experiment else None)


def running(*experiments: Experiment, **flags: Flag) -> Control:
    return Control(experiments, {e.name: "running" for e in experiments}, dict(flags), version=1)


def users_in(control: Control, lane_key: str, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        u = f"u{i}"
        if control.lane_of(u).key == lane_key:
            out.append(u)
        i += 1
    return out


def ev(kind: Kind, user: str, t: int = 0, **kw: object) -> Interaction:
    track = None if kind == Kind.REC_REQUEST else CAT.track_ids[t % len(CAT)]
    return Interaction(event_id=uuid.uuid4(), user_id=user, session_id=f"s-{user}", kind=kind, track_id=track,
                       occurred_at=NOW - timedelta(seconds=60) + timedelta(milliseconds=t), **kw)


def batch(events: list[Interaction]) -> list[RawRecord]:
    return [RawRecord("encore.events", 0, i, e.user_id.encode(), encode_batch([e], SERDE)) for i, e in enumerate(events)]


def serve(state: BatchState, users: list[str]) -> list[Recommendation]:
    """Each listener asks for a slate, then completes and likes its first item."""
    slates = process_batch(batch([ev(Kind.REC_REQUEST, u, j) for j, u in enumerate(users)]), state, NOW).slates
    feedback = []
    for s in slates:
        first = dict(rec_id=s.rec_id, position=0)
        feedback += [Interaction(event_id=uuid.uuid4(), user_id=s.user_id, session_id=f"s-{s.user_id}", kind=k,
                                 track_id=s.items[0].track_id, occurred_at=NOW - timedelta(seconds=30),
                                 listened_ms=200_000 if k == Kind.PLAY_END else None, **first)  # type: ignore[arg-type]
                     for k in (Kind.PLAY_END, Kind.LIKE)]
    process_batch(batch(feedback), state, NOW)
    return slates


def bandit_state(rec: Recommender) -> tuple[np.ndarray, np.ndarray]:
    r = rec.policy.ranker  # type: ignore[union-attr]
    return r.A_inv.copy(), r.b.copy()


# --- assignment ---------------------------------------------------------------------------------
def test_assignment_is_a_deterministic_hash_that_honours_the_weights() -> None:
    exp = Experiment("w", "salt-w", (Arm("a", 0.2), Arm("b", 0.8)))
    users = [f"listener-{i}" for i in range(50_000)]
    arms = [exp.arm_of(u).name for u in users]
    assert arms == [exp.arm_of(u).name for u in users]  # same answer every time, no state
    counts = {a: arms.count(a) for a in ("a", "b")}
    assert not S.srm(counts, {"a": 0.2, "b": 0.8}).mismatch, counts
    other = Experiment("w2", "another-salt", exp.arms)
    agree = np.mean([exp.arm_of(u).name == other.arm_of(u).name for u in users[:5000]])
    assert 0.6 < agree < 0.72  # independent salts: 0.2² + 0.8² = 0.68 by chance, not 1
    half = Experiment("t", "salt-t", exp.arms, traffic=0.3)
    assert np.mean([half.includes(u) for u in users[:10_000]]) == pytest.approx(0.3, abs=0.02)
    assert 0 <= bucket("s", "u") < 1


def test_declarations_are_validated_with_the_experiment_named(tmp_path: Path) -> None:
    good = load_experiments(Settings().experiments_file)
    assert {e.name for e in good} >= {"policy-lints", "gamification"}
    assert next(e for e in good if e.name == "gamification").varies_gamification
    bad = tmp_path / "x.toml"
    bad.write_text('[[experiment]]\nname = "solo"\n[[experiment.arm]]\nname = "only"\n')
    with pytest.raises(ValueError, match="experiment solo: needs two or more arms"):
        load_experiments(bad)
    bad.write_text('[[experiment]]\nname = "s"\nstatus = "on"\n[[experiment.arm]]\nname = "a"\n[[experiment.arm]]\nname = "b"\n')
    with pytest.raises(ValueError, match="status 'on'"):
        load_experiments(bad)
    with pytest.raises(FileNotFoundError, match="ENCORE_EXPERIMENTS_FILE"):
        load_experiments(tmp_path / "missing.toml")


def test_an_experiment_runs_only_between_its_start_and_end() -> None:
    exp = Experiment("timed", "s", AB.arms, start=NOW, end=NOW + timedelta(days=7))
    control = running(exp)
    assert control.at(NOW - timedelta(seconds=1)).lane_of("u1").key == DEFAULT_LANE
    assert control.at(NOW + timedelta(days=1)).lane_of("u1").experiment == "timed"
    assert control.at(NOW + timedelta(days=7)).lane_of("u1").key == DEFAULT_LANE
    assert not Control((exp,)).lane_of("u1").experiment  # declared as draft: not running


def test_flags_roll_out_ramp_and_kill() -> None:
    users = [f"u{i}" for i in range(20_000)]
    ramp = Control(flags={"gamification": Flag("gamification", 0.3)})
    on = [u for u in users if ramp.lane_of(u).gamification]
    assert len(on) / len(users) == pytest.approx(0.3, abs=0.015)
    wider = Control(flags={"gamification": Flag("gamification", 0.6)})
    assert all(wider.lane_of(u).gamification for u in on)  # a ramp only adds listeners
    killed = Control((AB,), {"ab": "running"}, {"gamification": Flag("gamification", 1.0, killed=True)})
    assert not any(killed.lane_of(u).gamification for u in users[:500])  # experiment arms included
    pol = Control(flags={"policy": Flag("policy", 0.1, "lints")})
    lanes = {pol.lane_of(u).key for u in users[:2000]}
    assert lanes == {DEFAULT_LANE, "flag/policy/lints"}


# --- isolated learners --------------------------------------------------------------------------
def test_traffic_in_arm_b_does_not_move_arm_a_or_the_default_model() -> None:
    control = running(AB)
    lanes = Lanes(make, control)
    a, b = lanes.recommender(control.arm_lane(AB, AB.arms[0])), lanes.recommender(control.arm_lane(AB, AB.arms[1]))
    before_a, before_default = bandit_state(a), bandit_state(lanes.default)
    state = BatchState(SERDE, CAT, lanes, None, True)
    slates = serve(state, users_in(control, "exp/ab/b", 30))
    assert len(slates) == 30 and {s.experiment_arm for s in slates} == {"ab/b"}
    lanes.close(NOW + timedelta(hours=1), all_open=True)  # the rewards teach arm B
    after_b = bandit_state(b)
    assert not np.allclose(after_b[1], 0)  # B learned
    for got, want in zip(bandit_state(a), before_a, strict=True):
        np.testing.assert_array_equal(got, want)  # A did not move
    for got, want in zip(bandit_state(lanes.default), before_default, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(b.policy.gen.profiles) == 30 and len(a.policy.gen.profiles) == 0  # type: ignore[union-attr]


def test_exposures_are_logged_at_the_first_treatment_not_at_assignment() -> None:
    control = running(AB)
    lanes = Lanes(make, control)
    state = BatchState(SERDE, CAT, lanes, None, True)
    u = users_in(control, "exp/ab/control", 1)[0]
    plays = process_batch(batch([ev(Kind.PLAY_END, u, 1, listened_ms=1000)]), state, NOW)
    assert plays.rows["experiment_exposures"] == []  # assigned, not yet treated (no slate)
    req = ev(Kind.REC_REQUEST, u, 2)
    first = process_batch(batch([req, ev(Kind.REC_REQUEST, u, 3)]), state, NOW)
    assert [(r[0], r[1], r[2], r[3]) for r in first.rows["experiment_exposures"]] == [(req.event_id, "ab", "control", u)]
    assert process_batch(batch([ev(Kind.REC_REQUEST, u, 4)]), state, NOW).rows["experiment_exposures"] == []


def test_an_arm_without_gamification_earns_no_karma() -> None:
    exp = Experiment("g", "salt-g", (Arm("off", gamification=False), Arm("on", gamification=True)))
    control = running(exp)
    state = BatchState(SERDE, CAT, Lanes(make, control), Rules.from_toml(Settings().gamification_rules), True)
    off, on = users_in(control, "exp/g/off", 5), users_in(control, "exp/g/on", 5)
    out = process_batch(batch([ev(Kind.PLAY_END, u, i, listened_ms=200_000) for i, u in enumerate(off + on)]),
                        state, NOW)
    assert {e.user_id for e in out.effects} == set(on)
    assert {r[3] for r in out.rows["experiment_exposures"]} == set(off + on)  # gamification arms: first event


def test_lanes_survive_a_snapshot_and_move_with_their_partition() -> None:
    control = running(AB)
    lanes = Lanes(make, control)
    state = BatchState(SERDE, CAT, lanes, None, True)
    users = users_in(control, "exp/ab/b", 5) + users_in(control, "exp/ab/control", 5)
    serve(state, users)
    again = Lanes(make, control)
    again.restore(lanes.snapshot())
    assert set(again.lanes) == set(lanes.lanes) and len(again.default.seen) == len(lanes.default.seen)
    assert all(r.seen is again.default.seen for r in again.lanes.values())  # one window, shared
    assert again.open_decisions == lanes.open_decisions == 10
    moved = Lanes(make, control)
    n = moved.import_partition(0, lanes.export_partition(0), NOW)
    assert n == 5 and moved.open_decisions == 10 and lanes.open_decisions == 0
    legacy = Lanes(make, control)
    legacy.restore(make(Lane(DEFAULT_LANE, None)).snapshot())  # a snapshot from before lanes
    assert set(legacy.lanes) == {DEFAULT_LANE}


def test_a_request_keeps_its_rec_id_within_its_lane_and_lanes_never_share_one() -> None:
    control = running(AB)
    lanes = Lanes(make, control)
    u = users_in(control, "exp/ab/b", 1)[0]
    req = ev(Kind.REC_REQUEST, u)
    assert lanes.rec_id_of(req) == lanes.rec_id_of(req) != lanes.default.rec_id_of(req)


def test_model_deltas_carry_their_lane() -> None:
    d = ModelDelta("w1", 3, "linucb", np.eye(2), np.ones(2), "exp/ab/b")
    assert ModelDelta.decode(d.encode()).lane == "exp/ab/b"
    buf = io.BytesIO()  # a delta from a worker without lanes: it belongs to the default lane
    np.savez(buf, worker_id=np.array("w0"), seq=np.array(1), policy_id=np.array("linucb"), dA=np.eye(2), db=np.ones(2))
    assert ModelDelta.decode(buf.getvalue()).lane == DEFAULT_LANE


# --- the control state on the real Redis --------------------------------------------------------
def test_control_changes_are_versioned_and_logged_in_redis(stack) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(stack.settings.redis_url)
    store = ControlStore(client, f"t{uuid.uuid4().hex[:6]}")
    experiments = (AB,)
    assert store.control(experiments).version == 0
    store.set_status(experiments, "ab", "running")
    store.set_flag("gamification", rollout=0.25)
    store.set_flag("gamification", killed=True)
    control = store.control(experiments)
    assert control.version == 3 and control.status_of("ab") == "running"
    assert control.flags["gamification"] == Flag("gamification", 0.25, None, True)
    assert [e["what"] for e in store.log()] == ["flag gamification: killed=True", "flag gamification: rollout=0.25",
                                                "ab: running"]
    with pytest.raises(ValueError, match="no experiment 'nope' is declared"):
        store.set_status(experiments, "nope", "running")
    with pytest.raises(ValueError, match="needs --value"):
        store.set_flag("policy", rollout=0.5)


def test_a_merged_delta_reaches_the_same_lane_only() -> None:
    import queue
    from types import SimpleNamespace

    from agents.learn import DeltaMerger

    control = running(AB)
    lanes = Lanes(make, control)
    reader = SimpleNamespace(deltas=queue.Queue())
    n = lanes.default.policy.ranker.A_inv.shape[0]  # type: ignore[union-attr]
    reader.deltas.put((0, 0, ModelDelta("other", 1, "linucb", np.eye(n), np.ones(n), "exp/ab/b")))
    reader.deltas.put((0, 1, ModelDelta("other", 2, "linucb", np.eye(n), np.ones(n), "exp/gone/x")))  # undeclared
    before = bandit_state(lanes.default)
    assert DeltaMerger("me").merge(lanes, reader) == 1  # type: ignore[arg-type]
    b = lanes.lanes["exp/ab/b"]  # created by the delta: its listeners may come here later
    assert np.allclose(bandit_state(b)[1], 1) and np.array_equal(bandit_state(lanes.default)[1], before[1])
    assert "exp/ab/control" not in lanes.lanes


def test_the_cli_starts_stops_flags_and_logs(stack) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "ENCORE_REDIS_URL": stack.settings.redis_url, "ENCORE_REDIS_PREFIX": f"c{uuid.uuid4().hex[:6]}"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, env=env,
                              timeout=60)

    listed = json.loads(cli("list").stdout)
    assert {e["name"]: e["status"] for e in listed["experiments"]} == {"policy-lints": "draft", "gamification": "draft"}
    started = json.loads(cli("start", "gamification").stdout)
    assert next(e for e in started["experiments"] if e["name"] == "gamification")["status"] == "running"
    flagged = json.loads(cli("flag", "policy", "--value", "lints", "--rollout", "0.1").stdout)
    assert flagged["flags"]["policy"] == {"name": "policy", "rollout": 0.1, "value": "lints", "killed": False}
    assert json.loads(cli("flag", "policy", "--kill").stdout)["flags"]["policy"]["killed"] is True
    log = json.loads(cli("log").stdout)
    assert [e["version"] for e in log] == [3, 2, 1] and log[-1]["what"] == "gamification: running"
    bad = cli("start", "nope")
    assert bad.returncode == 2 and "no experiment 'nope' is declared" in bad.stderr
    away = subprocess.run([sys.executable, "-m", "experiments", "list"], capture_output=True, text=True, timeout=60,
                          env={**env, "ENCORE_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert away.returncode == 2 and "is not reachable" in away.stderr


def test_a_policy_arm_is_served_by_its_own_policy() -> None:
    exp = Experiment("pol", "salt-p", (Arm("control"), Arm("pop", policy="popularity")))
    control = running(exp)
    lanes = Lanes(make, control)
    state = BatchState(SERDE, CAT, lanes, None, True)
    users = users_in(control, "exp/pol/pop", 3) + users_in(control, "exp/pol/control", 3)
    out = process_batch(batch([ev(Kind.REC_REQUEST, u, i) for i, u in enumerate(users)]), state, NOW)
    by_arm = {s.experiment_arm: s.policy_id for s in out.slates}
    assert by_arm == {"pol/pop": "popularity", "pol/control": "linucb"}
    assert {r[2] for r in out.rows["recommendations"] if r[6] == "pol/pop"} == set(users[:3])  # experiment_arm column
