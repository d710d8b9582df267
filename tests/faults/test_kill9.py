"""kill -9 mid-stream: the worker is killed 10 times while it drains a workload and started again
each time; what every store holds must equal a run without kills (``tests/faults/truth.py``
lists what is compared: Redis karma and boards, the ClickHouse tables, the gamification,
recommendations and rewards topics). (`make test-faults`; ENCORE_FAULT_KILLS changes the count.)
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from bench.workload import generate
from deploy.local.stack import Stack
from tests.faults.harness import Run, kill9, knob
from tests.faults.truth import assert_equal

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]
KILLS = int(knob("FAULT_KILLS", 10, 2))
EVENTS = int(knob("FAULT_EVENTS", 20_000, 3_000))
SECONDS_PER_KILL = 4.0  # a start (to ready), 0.3-2.5 s of work, the kill and a pause


def run(stack: Stack, tmp: Path, records: list[tuple[bytes, bytes]], kills: int) -> dict[str, Any]:
    # no snapshot timer: a restart has only the snapshot each start takes, and its replay
    r = Run(stack, tmp, model_snapshot_interval_s=3600.0)
    # with kills, the records arrive while the worker is killed and restarted (a worker drains a
    # small workload in well under a second, so records produced up front are gone before the
    # first kill); the clean run gets them all at once: same records, same order per partition
    r.produce(records, rate=len(records) / (kills * SECONDS_PER_KILL) if kills else None)
    rng = random.Random(kills)
    mid_stream = 0  # kills that landed while records were still unacknowledged
    for _ in range(kills):
        r.start("w")  # ready: it owns its partitions
        time.sleep(rng.uniform(0.3, 2.5))  # a moment into its work, while records flow
        mid_stream += not r.drained()
        kill9(r.pid("w"))  # no shutdown, no snapshot, no commit of what is in flight
        r.workers.pop("w")
        time.sleep(0.5)
    r.start("w")
    return {**r.finish(), "mid_stream_kills": mid_stream}


@pytest.mark.timeout(2400)
def test_kill_9_loses_nothing_and_counts_nothing_twice(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = generate(EVENTS, seed=11, n_listeners=500)
    clean = run(stack, tmp_path / "clean", records, kills=0)
    killed = run(stack, tmp_path / "killed", records, kills=KILLS)
    assert killed["mid_stream_kills"] >= KILLS - 1, "the kills did not land while events flowed"
    assert clean["karma"] and clean["clickhouse"]["event_ids"]
    assert_equal(clean, killed, f"kill -9 x {KILLS} while draining {len(records)} records")
