"""Analytics sink throughput: rows/s written through clickhouse-connect, batched, into chDB.

    .venv/bin/python -m bench.clickhouse_bench [--rows 1000000] [--batch 20000] [--dsn chdb:///tmp/x]

Builds event rows the way the worker does (AnalyticsSink.add_events over simulated
interactions), then times AnalyticsSink.flush per batch into a fresh store: the same code path,
ReplacingMergeTree table and deduplication token as in production. Prints
rows/s and saves bench/out/clickhouse.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime

from sinks.clickhouse import AnalyticsSink, ClickHouseStore
from streams.settings import ROOT
from streams.simloop import SIM_START
from streams.simulator import World, synthetic_catalogue

OUT = ROOT / "bench" / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000, help="rows per flush (one INSERT)")
    ap.add_argument("--dsn", default="", help="default: a fresh chDB store in a temp dir")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="encore-ch-")
    store = ClickHouseStore(args.dsn or f"chdb://{tmp}")
    store.migrate()

    cat = synthetic_catalogue(7, 2000)
    world = World(cat, n_listeners=2000, seed=5, run_id=uuid.uuid4().hex)
    events = []
    t0 = time.perf_counter()
    i = 0
    while len(events) < min(args.rows, 200_000):
        listener = world.listeners[i % len(world.listeners)]
        i += 1
        session = world.start_session(listener, SIM_START)
        while session.active:
            events.extend(world.react(session, uuid.uuid4(), list(cat.track_ids[(i * 7) % 1990:(i * 7) % 1990 + 10])))
    print(f"simulated {len(events):,} interactions in {time.perf_counter() - t0:.1f} s")

    now = datetime.now(UTC)
    results = {}
    for label in ("events",):
        sink = AnalyticsSink(store, cat)
        written = 0
        build_s = flush_s = 0.0
        batch_no = 0
        while written < args.rows:
            for start in range(0, len(events), args.batch):
                chunk = events[start:start + args.batch]
                t = time.perf_counter()
                sink.add_events(chunk, now)
                build_s += time.perf_counter() - t
                flushed = sink.flush(f"bench:{label}:{batch_no}")
                flush_s += flushed.seconds
                written += len(chunk)
                batch_no += 1
                if written >= args.rows:
                    break
        rate = written / flush_s
        results[label] = {"rows": written, "rows_per_s": round(rate), "flush_s": round(flush_s, 2),
                          "row_building_rows_per_s": round(written / build_s)}
        print(f"{label}: {rate:>10,.0f} rows/s into ClickHouse ({written:,} rows, {args.batch:,} per INSERT, "
              f"{flush_s:.2f} s); building rows {written / build_s:,.0f} rows/s (Python)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "clickhouse.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"goal >= 300,000 rows/s; saved {OUT / 'clickhouse.json'}")


if __name__ == "__main__":
    main()
