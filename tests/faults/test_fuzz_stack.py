"""Hostile input through the real stack: ≥ 100,000 random and mutated records on the events topic,
and ≥ 10,000 requests on the HTTP API (schemathesis, and hypothesis on POST /v1/events). No
worker crash, no HTTP 5xx, every bad record in the DLQ with its reason, every good event
processed. (`make test-faults`; ENCORE_FAULT_FUZZ_RECORDS / ENCORE_FAULT_HTTP_CASES scale it.)

What is "bad" is what the contracts say: each record is judged in this process by the same
decoder (``agents.ingest.ingest``), and the worker's dead letters and ClickHouse rows must match
that verdict exactly (a mutation that still decodes is a good record).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.ingest import RawRecord, ingest
from bench.workload import generate
from schemas.events import DeadLetter
from schemas.wire import Serde
from tests.faults.harness import QUICK, Run, knob
from tests.faults.truth import read_all
from tests.test_fuzz import NASTY, mutate

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]
RECORDS = int(knob("FAULT_FUZZ_RECORDS", 100_000, 3_000))
HTTP_CASES = int(knob("FAULT_HTTP_CASES", 10_000, 400))
KEY = "fuzz-key"


def hostile(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """n records: ~10% good workload records, the rest mutated ones, random bytes and the nasty cases."""
    rng = random.Random(seed)
    good = generate(max(2_000, n // 10 * 10), seed=seed, n_listeners=300)
    out = []
    for i in range(n):
        key, value = good[i % len(good)]
        roll = rng.random()
        if roll < 0.1:
            out.append((key, value))
        elif roll < 0.7:
            out.append((key, mutate(value, rng)))
        elif roll < 0.98:
            out.append((key, bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))))
        else:
            out.append((key, NASTY[rng.randrange(len(NASTY))]))
    return out


@pytest.mark.timeout(2400)
def test_hostile_records_on_the_topic_cost_no_good_event(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = Run(stack, tmp_path, dedupe_window=2_000_000)
    records = hostile(RECORDS, seed=31)
    run.produce(records)
    run.start("w")
    pid = run.pid("w")
    run.wait_drained(timeout=1800)
    assert run.alive("w") and run.pid("w") == pid, "the worker exited"
    # the verdict of the same decoder, record by record, at the offsets the broker gave them
    consumer_records = read_all(run.settings, "encore.events")
    assert len(consumer_records) == len(records)
    serde, now = Serde(), datetime.now(UTC)
    kept_from = now - timedelta(days=365) + timedelta(hours=1)
    expected_dead, expected_events = set(), set()
    for m in consumer_records:
        got = ingest([RawRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value())], serde,
                     max_bytes=run.settings.max_record_bytes, max_events=run.settings.max_batch_events, now=now)
        expected_dead |= {(d.partition, d.offset, d.index, d.reason) for d in got.dead}
        # ClickHouse keeps a year of events (the events table's TTL): older ones are not stored
        expected_events |= {str(e.event_id) for e in got.events if e.occurred_at >= kept_from}
    seen = run.finish()
    letters = [serde.decode(m.value(), DeadLetter) for m in read_all(run.settings, "encore.events.dlq")]
    dead = {(d.partition, d.offset, d.index, d.reason) for d in letters}
    print(f"\n{len(records)} records: {len(expected_dead)} dead letters expected, {len(dead)} seen; "
          f"{len(expected_events)} good events expected, {len(seen['clickhouse']['event_ids'])} in ClickHouse")
    assert all(d.reason and d.error for d in letters)
    assert dead == expected_dead
    assert seen["clickhouse"]["event_ids"] == expected_events
    log = (run.stack.log_dir / "w.log").read_text(errors="replace")
    assert "crashed" not in log.lower() and "Traceback" not in log


def post(url: str, body: bytes, content_type: str = "application/json") -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"X-API-Key": KEY, "Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                    max_leaves=20)
FIELDS = ("event_id", "user_id", "session_id", "kind", "occurred_at", "track_id", "rec_id", "position",
          "listened_ms", "context", "rating", "playlist_id")


@pytest.mark.timeout(2400)
@pytest.mark.skipif(QUICK, reason="`make test` keeps its 15 minutes: tests/test_ops.py runs schemathesis on every "
                    "route in `make test`; the hostile-request storm (about 2 minutes even small) runs in `make test-faults`")
def test_hostile_requests_on_the_api_get_no_5xx(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = Run(stack, tmp_path, api_keys=KEY)
    url = run.start("w")
    n_schemathesis = HTTP_CASES // 2
    out = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json", "-H", f"X-API-Key: {KEY}",
         "--checks", "all", "-n", str(max(40, n_schemathesis // 8)), "--generation-deterministic",
         "--report-dir", str(tmp_path), "--suppress-health-check=filter_too_much"],  # see tests/test_ops.py
        capture_output=True, text=True, timeout=1800, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout[-4000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert cases and cases.group(1) == cases.group(2), out.stdout[-2000:]
    statuses: list[int] = []

    @settings(max_examples=max(100, HTTP_CASES - int(cases.group(1))), deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(st.one_of(
        st.binary(max_size=500),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({}, optional={f: JSON for f in FIELDS}).map(lambda v: json.dumps(v).encode()),
        st.sampled_from(NASTY),
    ))
    def fuzz(body: bytes) -> None:
        status = post(f"{url}/v1/events", body)
        statuses.append(status)
        assert status < 500, (status, body[:200])

    fuzz()
    total = int(cases.group(1)) + len(statuses)
    print(f"\n{total} HTTP cases ({cases.group(1)} schemathesis, {len(statuses)} hypothesis): "
          f"statuses {sorted(set(statuses))}, no 5xx")
    assert total >= HTTP_CASES and run.alive("w")
