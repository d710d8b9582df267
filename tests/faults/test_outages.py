"""Dependencies away under load, and partitions on the move: the worker stays up with bounded
memory, says it is stalled, stops within seconds when asked, and once the service is back every
store equals a run without the fault (``tests/faults/truth.py``). (`make test-faults`.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.workload import generate
from deploy.local.stack import free_port, settings_env
from tests.faults.harness import QUICK, Run, knob
from tests.faults.truth import assert_equal

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]
REDIS_DOWN_S = knob("FAULT_REDIS_DOWN_S", 30, 6)
CLICKHOUSE_DOWN_S = knob("FAULT_CLICKHOUSE_DOWN_S", 60, 6)
MOVES = int(knob("FAULT_MOVES", 5, 2))
EVENTS = int(knob("FAULT_EVENTS", 12_000, 2_000))
LOAD_S = knob("FAULT_LOAD_S", 60, 12)  # how long the load of the Redis case lasts
KEY = "drill-key"


SEED = 21  # every case here drains the same records, so one clean run is their ground truth
_CLEAN: dict[int, dict] = {}


def records(seed: int = SEED) -> list[tuple[bytes, bytes]]:
    return generate(EVENTS, seed=seed, n_listeners=400)


def clean_run(stack, tmp, recs):  # type: ignore[no-untyped-def]
    run = Run(stack, tmp)
    run.produce(recs)
    run.start("clean")
    return run.finish()


def ground_truth(stack, tmp, recs) -> dict:  # type: ignore[no-untyped-def]
    """The clean run of ``recs``, drained once per session."""
    key = hash(tuple(v for _, v in recs[:50]))
    if key not in _CLEAN:
        _CLEAN[key] = clean_run(stack, tmp, recs)
    return _CLEAN[key]


def metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def sample_while(run: Run, name: str, seconds: float) -> list[float]:
    """RSS of the worker once a second; it must stay alive throughout."""
    rss = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert run.alive(name), f"{name} exited during the outage"
        rss.append(run.rss_mb(name))
        time.sleep(1)
    return rss


def assert_bounded(rss: list[float], what: str) -> None:
    grew = max(rss) - rss[0]
    tail = rss[len(rss) // 2:]
    print(f"{what}: RSS {rss[0]:.0f} -> max {max(rss):.0f} MB (grew {grew:.0f} MB; second half "
          f"{min(tail):.0f}..{max(tail):.0f} MB)")
    assert grew < 250, f"memory grew {grew:.0f} MB during {what}"
    assert max(tail) - min(tail) < 100, f"memory still growing in the second half of {what}"


@pytest.mark.timeout(1200)
def test_redis_down_under_load_then_everything_equals_the_clean_run(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    recs = records()
    clean = ground_truth(stack, tmp_path / "clean", recs)
    run = Run(stack, tmp_path / "redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    run.stack.ensure_redis()  # its own, persistent (append-only file), so it can be killed
    run.start("w1")
    run.produce(recs, rate=len(recs) / LOAD_S)
    time.sleep(min(8, LOAD_S / 4))
    redis_pid = run.stack.pid_of("redis")
    os.kill(redis_pid, 9)
    rss = sample_while(run, "w1", REDIS_DOWN_S * 2 / 3)
    text = run.get("w1", "/metrics")
    assert metric(text, "encore_stalled") == 1 and not run.get("w1", "/readyz")["ready"]
    assert_bounded(rss, f"a Redis outage ({len(rss)} s sampled)")
    took = run.stop("w1")  # asked to stop mid-retry
    print(f"SIGTERM while retrying: exited in {took:.1f} s")
    assert took < 10, f"the worker took {took:.1f} s to stop while retrying"
    time.sleep(max(0.0, REDIS_DOWN_S - len(rss) - took))
    run.stack.ensure_redis()  # back, with what its append-only file kept
    run.start("w2")
    seen = run.finish()
    assert_equal(clean, seen, f"Redis killed for {REDIS_DOWN_S:.0f} s under load, the worker stopped mid-retry")


@pytest.mark.timeout(1200)
def test_clickhouse_refusing_under_load_then_everything_equals_the_clean_run(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    recs = records()
    clean = ground_truth(stack, tmp_path / "clean", recs)
    run = Run(stack, tmp_path / "ch", drills_enabled=True, api_keys=KEY)
    url = run.start("w1")
    run.produce(recs, rate=len(recs) / (CLICKHOUSE_DOWN_S + 20))
    time.sleep(min(5, CLICKHOUSE_DOWN_S / 3))
    request = urllib.request.Request(f"{url}/drills/clickhouse?seconds={CLICKHOUSE_DOWN_S:.0f}", method="POST",
                                     headers={"X-API-Key": KEY})
    assert urllib.request.urlopen(request, timeout=30).status == 202
    rss = sample_while(run, "w1", CLICKHOUSE_DOWN_S * 0.8)
    text = run.get("w1", "/metrics")
    assert metric(text, "encore_stalled") == 1 and metric(text, "encore_sink_failures_total") > 0
    assert not run.get("w1", "/readyz")["ready"]
    assert_bounded(rss, f"ClickHouse refusing inserts ({len(rss)} s sampled)")
    seen = run.finish()
    assert_equal(clean, seen, f"ClickHouse refusing inserts for {CLICKHOUSE_DOWN_S:.0f} s under load")


@pytest.mark.timeout(1500)
@pytest.mark.skipif(QUICK, reason="`make test` keeps its 15 minutes: a moved partition's hand-off is checked there by "
                    "tests/test_rebalance.py and tests/test_ops.py; `make test-faults` moves them under load")
def test_partitions_moving_under_load_then_everything_equals_the_clean_run(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    recs = records()
    clean = ground_truth(stack, tmp_path / "clean", recs)
    # one chDB store per process: b writes its rows to a store of its own, and the two are read
    # as one (merged by row identity, as one ClickHouse server would keep them)
    run = Run(stack, tmp_path / "move")
    b_store = f"chdb://{tmp_path / 'move' / 'chdb-b'}"
    run.start("a")
    run.produce(recs, rate=len(recs) / (MOVES * (12 if not QUICK else 8) + 10))
    for move in range(MOVES):
        time.sleep(6 if not QUICK else 3)
        if move % 2 == 0:
            run.start("b", clickhouse_dsn=b_store)  # the group splits the partitions
        else:
            run.stop("b")  # b's partitions (and their listeners' state) move back to a
    if "b" in run.workers:
        time.sleep(6)
        run.stop("b")
    seen = run.finish()
    assert_equal(clean, seen, f"partitions moved {MOVES} times under load")


@pytest.mark.timeout(1200)
@pytest.mark.skipif(QUICK, reason="`make test` keeps its 15 minutes: noticing and rebuilding a Redis that came back "
                    "empty is checked there by tests/test_analytics.py; `make test-faults` does it to a running worker")
def test_redis_back_empty_is_noticed_and_rebuilt_from_clickhouse(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The README's repair, end to end: Redis comes back without its state; the worker says so
    (metric, log); the operator stops it and runs `encore rebuild-gamification`; karma and every
    board equal a run where nothing was lost."""
    recs = records()
    clean = ground_truth(stack, tmp_path / "clean", recs)
    run = Run(stack, tmp_path / "lost", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    run.stack.ensure_redis()
    run.produce(recs)
    run.start("w1")
    run.wait_drained()
    os.kill(run.stack.pid_of("redis"), 9)  # Redis loses everything: its append-only file too
    time.sleep(0.5)
    shutil.rmtree(run.settings.state_dir / "redis")
    run.stack.ensure_redis()
    deadline = time.monotonic() + 60
    while metric(run.get("w1", "/metrics"), "encore_redis_state_lost") != 1:
        assert time.monotonic() < deadline, "the worker did not notice that Redis lost its state"
        time.sleep(1)
    log = (run.stack.log_dir / "w1.log").read_text(errors="replace")
    assert "rebuild-gamification" in log  # the log line says what to do
    run.stop("w1")
    env = {**os.environ, **settings_env(run.settings)}
    done = subprocess.run([str(Path(sys.executable).parent / "encore"), "rebuild-gamification"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "rebuilt:" in done.stdout
    run.start("w2")
    deadline = time.monotonic() + 60
    while metric(run.get("w2", "/metrics"), "encore_redis_state_lost") != 0:
        assert time.monotonic() < deadline, "the alert did not clear after the rebuild"
        time.sleep(1)
    seen = run.finish()
    assert_equal(clean, seen, "Redis back empty, rebuilt from ClickHouse", where="(Redis)")
