"""kill -9 mid-stream: the worker is killed 10 times while it drains a workload and started again
each time; what every store holds must equal a run without kills (``tests/faults/truth.py``
lists what is compared: Redis karma and boards, the ClickHouse tables, the gamification,
recommendations and rewards topics). (`make test-faults`; ENCORE_FAULT_KILLS changes the count.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from agents.learn import committed_offsets
from bench.workload import generate
from deploy.local.stack import Stack, _stop
from streams.settings import Settings
from streams.topics import EVENTS
from tests.conftest import start_worker
from tests.faults.truth import collect, compare, table

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]
KILLS = int(os.environ.get("ENCORE_FAULT_KILLS", "10"))
WINDOW_S = 3.0  # reward windows: short, so every decision closes before the run ends


def run(stack: Stack, tmp: Path, records: list[tuple[bytes, bytes]], kills: int) -> dict:
    tag = f"k9{uuid.uuid4().hex[:4]}"
    own = Stack(stack.settings.model_copy(update={"topic_prefix": f"{tag}.", "app_id": tag, "state_dir": tmp,
                                                  "redis_prefix": tag}))
    own.ensure_topics()
    settings: Settings = own.settings
    p = Producer(settings.kafka_config())
    end: dict[int, int] = {}  # partition -> offset after the last record produced

    def delivered(err, msg) -> None:  # type: ignore[no-untyped-def]
        assert err is None, err
        end[msg.partition()] = max(end.get(msg.partition(), 0), msg.offset() + 1)

    for key, value in records:
        p.produce(settings.topic(EVENTS.name), value, key, on_delivery=delivered)
        p.poll(0)
    p.flush(60)

    def drained() -> bool:  # every record's offset committed by the group
        got = committed_offsets(settings, settings.topic(EVENTS.name), sorted(end))
        return all(got.get(q, 0) >= o for q, o in end.items())

    dsn = f"chdb://{tmp / 'chdb'}"
    common = {"topic_prefix": f"{tag}.", "app_id": tag, "state_dir": tmp, "redis_prefix": tag, "worker_id": "w",
              "model_snapshot_interval_s": 3600.0, "clickhouse_dsn": dsn, "reward_window_s": WINDOW_S}
    rng = random.Random(kills)
    done = False
    mid_stream = 0  # kills that landed while records were still unacknowledged
    for k in range(kills + 1):
        _, url = start_worker(own, "worker-k9", **common)
        ready(url)  # then killed a moment into its work, while records flow
        deadline = time.monotonic() + (rng.uniform(0.3, 2.5) if k < kills else 600)
        while time.monotonic() < deadline:
            if k == kills and drained():
                done = True
                break
            time.sleep(0.5)
        pid = own.pid_of("worker-k9")
        if k < kills:
            mid_stream += not drained()
            os.kill(pid, signal.SIGKILL)  # no shutdown, no snapshot, no commit of what is in flight
            time.sleep(0.5)
        else:
            time.sleep(WINDOW_S + 4)  # the last reward windows close, the last checkpoint
            _stop(pid)
    assert done, "the worker did not drain the workload after the kills"
    return {**collect(settings, tag, dsn), "mid_stream_kills": mid_stream}


def ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(urllib.request.urlopen(url + "/readyz", timeout=2).read()).get("ready"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"worker at {url} not ready in {timeout} s")


@pytest.mark.timeout(2400)
def test_kill_9_loses_nothing_and_counts_nothing_twice(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = generate(20_000, seed=11, n_listeners=500)
    clean = run(stack, tmp_path / "clean", records, kills=0)
    killed = run(stack, tmp_path / "killed", records, kills=KILLS)
    assert killed["mid_stream_kills"] >= KILLS - 1, "the kills did not land while events flowed"
    rows = compare(clean, killed)
    print(f"\nkill -9 x {KILLS} while draining {len(records)} records\n" + table(rows))
    assert clean["karma"] and clean["clickhouse"]["events"]["n"] > 0
    assert all(ok for *_, ok in rows), table([r for r in rows if not r[3]])
