"""A replayable workload in the demo's mix, for the throughput benchmark.

The simulator's listeners (taste communities on) open sessions; each record on the events topic
is one listener's ``EventBatch``: their reactions to the previous slate followed by the next
``rec_request``, as the closed loop sends them. Slates here are drawn in process (popularity
weighted, no broker), and their ``rec_id`` is the one the worker will give the same request
under the same policy, so the feedback in the workload joins the worker's own decisions.

    python -m bench.workload --events 100000      # writes bench/out/workload-<seed>-<events>.bin

The file is a sequence of (key length, key, value length, value) with 4-byte big-endian
lengths; ``read_workload`` gives the records back.
"""

from __future__ import annotations

import argparse
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from agents.recommend import REC_NAMESPACE
from schemas.events import Interaction
from schemas.wire import Serde, encode_batch
from streams.simulator import World, synthetic_catalogue

OUT = Path(__file__).resolve().parent / "out"
_LEN = struct.Struct(">I")


def generate(events: int, *, seed: int = 7, n_listeners: int = 2000, policy_id: str = "linucb",
             slate_size: int = 10, n_tracks: int = 2000) -> list[tuple[bytes, bytes]]:
    """(key, value) records holding at least ``events`` events, in the order a client sends them."""
    catalogue = synthetic_catalogue(7, n_tracks)  # the worker's default catalogue (synthetic:7:2000)
    world = World(catalogue, n_listeners=n_listeners, seed=seed, run_id=f"bench-{seed}-{events}", communities=8)
    rng = np.random.default_rng(seed)
    weights = catalogue.popularity / catalogue.popularity.sum()
    serde = Serde()
    clock = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    records: list[tuple[bytes, bytes]] = []
    live: dict[str, tuple[object, Interaction]] = {}  # user -> (session, open request)
    n = 0
    while n < events:
        clock += timedelta(milliseconds=int(rng.integers(5, 50)))
        listener = world.listeners[int(rng.integers(len(world.listeners)))]
        pending: list[Interaction] = []
        if listener.user_id in live:
            session, request = live.pop(listener.user_id)
            rec_id = uuid.uuid5(REC_NAMESPACE, f"{policy_id}:{request.event_id}")
            picks = rng.choice(len(catalogue), size=slate_size, replace=False, p=weights)
            pending = world.react(session, rec_id, [catalogue.track_ids[i] for i in picks])
            if not session.active:
                if pending:
                    records.append((listener.user_id.encode(), encode_batch(pending, serde)))
                    n += len(pending)
                continue
        else:
            session = world.start_session(listener, clock)
        request = world.request(session, slate_size)
        live[listener.user_id] = (session, request)
        batch = [*pending, request]
        records.append((listener.user_id.encode(), encode_batch(batch, serde)))
        n += len(batch)
    return records


def write_workload(path: Path, records: list[tuple[bytes, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for key, value in records:
            out.write(_LEN.pack(len(key)) + key + _LEN.pack(len(value)) + value)


def read_workload(path: Path) -> Iterator[tuple[bytes, bytes]]:
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (k,) = _LEN.unpack_from(data, pos)
        key = data[pos + 4:pos + 4 + k]
        pos += 4 + k
        (v,) = _LEN.unpack_from(data, pos)
        yield key, data[pos + 4:pos + 4 + v]
        pos += 4 + v


def workload(events: int, seed: int = 7) -> Path:
    """The cached workload file for (events, seed), generated on first use."""
    path = OUT / f"workload-{seed}-{events}.bin"
    if not path.exists():
        write_workload(path, generate(events, seed=seed))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workload", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    path = workload(args.events, args.seed)
    records = list(read_workload(path))
    print(f"{path}: {len(records)} records, {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
