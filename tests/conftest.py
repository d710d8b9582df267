"""Session fixtures: a real tansu broker and a real redis-server on free loopback ports,
started once per test session through the same code as `make up` (deploy.local)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.stack import Stack, free_port, settings_env  # noqa: F401 (tests import it from here)
from streams.settings import Settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("encore-state")
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        clickhouse_dsn=f"chdb://{state / 'chdb'}",
        state_dir=state,
        web_port=free_port(),
        app_id=f"encore-test-{uuid.uuid4().hex[:6]}",
    )
    stack = Stack(settings)
    stack.ensure_broker()
    stack.ensure_redis()
    stack.ensure_clickhouse()
    stack.ensure_topics()
    yield stack
    stack.down()


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return stack.settings


def start_worker(stack: Stack, name: str, **overrides: object) -> tuple[Settings, str]:
    """Start a real worker process; returns its settings and base URL."""
    worker_settings = stack.settings.model_copy(update={"web_port": free_port(), **overrides})
    env = settings_env(worker_settings)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")
    stack.ensure_worker(name, env)
    return worker_settings, f"http://{worker_settings.web_host}:{worker_settings.web_port}"


MAX_RECORD = 65_536
API_KEY = "test-key"


@pytest.fixture(scope="session")
def worker(stack: Stack) -> tuple[Settings, str]:
    """One real worker process for the session (it owns the session's chDB store)."""
    return start_worker(stack, "worker-e2e", max_record_bytes=MAX_RECORD, snapshot_interval_s=2.0,
                        api_keys=API_KEY, embeddings_poll_s=1.0)


def wait(what: str, check, timeout: float = 90.0, every: float = 0.3):  # type: ignore[no-untyped-def]
    """Poll ``check`` until it returns something truthy (returned), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return got
