"""Soak: ten minutes of open-loop load at about half of one worker's measured drain rate, memory
and lag sampled every few seconds: memory flat, lag not growing, every store equal to a clean run
of the same records. (`make test-faults`; ENCORE_SOAK_S and ENCORE_SOAK_RATE (events/s) scale it.)

Some settings differ from the defaults, for reasons outside the worker:
- the worker's bounded memories are set small so that they fill within the first half: the
  event-id window (150k ids, default 1M; closed rec_ids follow at a fifth of it), tracks kept
  per listener (40, default 500) and session states (5k, default 100k). A memory that fills to
  its bound is not a leak, but at 1,200 events/s the defaults take 15 minutes to hours to fill,
  which would read as growth through a 10-minute run (measured per structure with tracemalloc:
  docs/operations.md, "Keys and memory");
- the fetch wait is 50 ms (default 5 ms): with 5 ms, the local broker (tansu) saturates a core
  after ~5 minutes and serves nothing (docs/operations.md, "The local broker under a long soak").
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.workload import generate
from tests.faults.harness import QUICK, Run, knob
from tests.faults.test_outages import clean_run
from tests.faults.truth import assert_equal

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]
SOAK_S = knob("SOAK_S", 600, 20)
RATE = knob("SOAK_RATE", 1200, 800)  # events/s: ~half of bench-throughput's drain


def lag(text: str) -> float:
    return sum(float(v) for v in re.findall(r"^encore_consumer_lag_messages(?:{[^}]*})? (\S+)$", text, re.M))


@pytest.mark.timeout(int(SOAK_S * 3 + 900))
@pytest.mark.skipif(QUICK, reason="a soak needs minutes to say anything about memory and lag: `make test-faults` "
                    "runs it (10 minutes at 1,200 events/s); `make test` keeps its budget for the other fault cases")
def test_soak_memory_flat_and_lag_not_growing(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = generate(int(SOAK_S * RATE), seed=41, n_listeners=3000 if not QUICK else 300)
    clean = clean_run(stack, tmp_path / "clean", records)
    run = Run(stack, tmp_path / "soak")
    run.start("w", dedupe_window=150_000, profile_tracks=40, sessions_kept=5_000, fetch_max_wait_ms=50)
    run.produce(records, rate=len(records) / SOAK_S)
    started, samples, dumped = time.monotonic(), [], False
    while run.producing is not None and run.producing.is_alive():
        time.sleep(5)
        assert run.alive("w"), "the worker exited during the soak"
        samples.append((time.monotonic() - started, run.rss_mb("w"), lag(run.get("w", "/metrics"))))
        if samples[-1][2] > RATE * 5 and not dumped:  # 50 s behind: show where the worker waits
            dumped = True
            spy = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(run.pid("w"))],
                                 capture_output=True, text=True, timeout=60)
            print(f"\nlag {samples[-1][2]:.0f} records at {samples[-1][0]:.0f} s; the worker's threads:\n{spy.stdout}")
    t, rss, lags = (np.array(x) for x in zip(*samples, strict=True))
    half = t >= t[-1] / 2  # after warm-up (catalogue, caches, listener state filling)
    slope = np.polyfit(t[half] / 60, rss[half], 1)[0]  # MB per minute, second half
    third = len(lags) // 3
    print(f"\nsoak {SOAK_S:.0f} s at {RATE:.0f} events/s ({len(records)} records): RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB, "
          f"second-half slope {slope:+.1f} MB/min; lag (records) first third mean {lags[:third].mean():.1f}, "
          f"last third mean {lags[-third:].mean():.1f}, max {lags.max():.0f}")
    if SOAK_S >= 300:  # a slope needs minutes; a short run only bounds the second half's growth
        assert slope < 5.0, f"memory grows {slope:.1f} MB/min in the second half"
    else:
        assert rss[half].max() - rss[half].min() < 50, "memory grows in the second half"
    assert lags[-third:].mean() <= max(2 * lags[:third].mean(), RATE / 10 * 2), "lag grows: the worker falls behind"
    seen = run.finish()
    assert_equal(clean, seen, f"soak {SOAK_S:.0f} s at {RATE:.0f} events/s")
