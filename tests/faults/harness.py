"""One isolated run of real worker processes over a workload, for the fault tests.

Each run has its own topics (prefix), consumer group, Redis key prefix, chDB store and state
directory on the session's broker and Redis (or on a Redis of its own), so a clean run and a
faulty run of the same records can be compared store by store (:mod:`tests.faults.truth`).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from agents.learn import committed_offsets
from deploy.local.stack import Stack, _alive, _stop
from streams.settings import Settings
from streams.topics import EVENTS
from tests.conftest import start_worker
from tests.faults.truth import collect

WINDOW_S = 3.0  # reward windows: short, so every decision closes before a run ends
#: `make test` runs every fault case small (ENCORE_FAULT_QUICK=1); `make test-faults` runs them full
QUICK = os.environ.get("ENCORE_FAULT_QUICK", "") == "1"


def knob(name: str, full: float, quick: float) -> float:
    """A fault test's size: ENCORE_<name> if set, else the full or the quick default."""
    return float(os.environ.get(f"ENCORE_{name}", quick if QUICK else full))


RUNS: list[Run] = []  # closed after each test by tests/faults/conftest.py, whatever happened


class Run:
    def __init__(self, stack: Stack, tmp: Path, **overrides: Any) -> None:
        RUNS.append(self)
        self.tag = f"f{uuid.uuid4().hex[:5]}"
        self.tmp = tmp
        self.dsn = f"chdb://{tmp / 'chdb'}"
        self.common: dict[str, Any] = {
            "topic_prefix": f"{self.tag}.", "app_id": self.tag, "state_dir": tmp, "redis_prefix": self.tag,
            "clickhouse_dsn": self.dsn, "reward_window_s": WINDOW_S, **overrides}
        self.stack = Stack(stack.settings.model_copy(update=self.common))
        self.stack.ensure_topics()
        self.settings: Settings = self.stack.settings
        self.end: dict[int, int] = {}  # partition -> offset after the last record produced
        self.workers: dict[str, str] = {}  # name -> base URL
        self.producing: threading.Thread | None = None
        self.dsns: list[str] = [self.dsn]  # every chDB store a worker of this run wrote to

    # --- load -------------------------------------------------------------------------------
    def produce(self, records: list[tuple[bytes, bytes]], rate: float | None = None) -> None:
        """All records now, or in the background at ``rate`` records/s (load while faults happen)."""
        p = Producer(self.settings.kafka_config())
        topic = self.settings.topic(EVENTS.name)

        def delivered(err, msg) -> None:  # type: ignore[no-untyped-def]
            assert err is None, err
            self.end[msg.partition()] = max(self.end.get(msg.partition(), 0), msg.offset() + 1)

        def send() -> None:
            started = time.monotonic()
            for n, (key, value) in enumerate(records):
                if rate is not None:
                    time.sleep(max(0.0, started + n / rate - time.monotonic()))
                p.produce(topic, value, key, on_delivery=delivered)
                p.poll(0)
            p.flush(60)

        if rate is None:
            send()
        else:
            self.producing = threading.Thread(target=send, name="load", daemon=True)
            self.producing.start()

    def drained(self) -> bool:
        """Every record produced so far is committed by the group (and the producer is done)."""
        if self.producing is not None and self.producing.is_alive():
            return False
        got = committed_offsets(self.settings, self.settings.topic(EVENTS.name), sorted(self.end))
        return bool(self.end) and all(got.get(q, 0) >= o for q, o in self.end.items())

    def wait_drained(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not self.drained():
            assert time.monotonic() < deadline, f"the workload was not drained in {timeout:.0f} s"
            time.sleep(0.5)

    # --- workers ----------------------------------------------------------------------------
    def start(self, name: str, **extra: Any) -> str:
        settings, url = start_worker(self.stack, name, **{**self.common, "worker_id": name, **extra})
        if settings.analytics_enabled and settings.clickhouse_dsn not in self.dsns:
            self.dsns.append(settings.clickhouse_dsn)
        self.workers[name] = url
        return url

    def pid(self, name: str) -> int:
        pid = self.stack.pid_of(name)
        assert pid is not None, f"{name} has no pid file"
        return pid

    def stop(self, name: str) -> float:
        """SIGTERM; returns the seconds the worker took to exit."""
        started = time.monotonic()
        _stop(self.pid(name))
        self.workers.pop(name, None)
        return time.monotonic() - started

    def rss_mb(self, name: str) -> float:
        """Resident memory of the worker process (Linux /proc)."""
        status = Path(f"/proc/{self.pid(name)}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    def get(self, name: str, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.workers[name] + path, timeout=5) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        return json.loads(body) if path != "/metrics" else body.decode()

    def open_decisions(self, name: str) -> float:
        """The worker's open decisions (its encore_reward_join{what="open"} gauge)."""
        found = re.search(r'^encore_reward_join\{what="open"\} (\S+)$', self.get(name, "/metrics"), re.M)
        return float(found.group(1)) if found else 0.0

    def alive(self, name: str) -> bool:
        return _alive(self.pid(name))

    def finish(self) -> dict[str, Any]:
        """Drained: let the last reward windows close, stop every worker, read every store."""
        self.wait_drained()
        time.sleep(WINDOW_S + 4)
        deadline = time.monotonic() + 60  # a worker restarted late may still hold decisions it replayed
        while any(self.open_decisions(name) for name in self.workers if self.alive(name)):
            assert time.monotonic() < deadline, "decisions still open a minute after the workload drained"
            time.sleep(0.5)
        for name in list(self.workers):
            self.stop(name)
        return collect(self.settings, self.tag, self.dsns)


    def close(self) -> None:
        """Stop whatever this run started and left running: workers, its own Redis."""
        self.stack.down()
        self.workers.clear()


def kill9(pid: int) -> None:
    os.kill(pid, 9)
