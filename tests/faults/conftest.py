"""Every run a fault test starts is stopped after it, passed or failed (no worker or Redis left
behind to eat the next test's CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import RUNS


@pytest.fixture(autouse=True)
def close_runs() -> Iterator[None]:
    yield
    while RUNS:
        RUNS.pop().close()
