"""A dependency outage never skips a batch: while Redis refuses the worker, the batch waits
(retried with backoff), and once Redis is back every event is applied once."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest
import redis

from agents.gamify import Rules
from deploy.local.stack import Stack, _stop, free_port
from schemas.events import Interaction, Kind
from sinks.gamification import GamificationStore
from streams.client import EventProducer
from tests.conftest import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_a_redis_outage_holds_the_batch_and_loses_nothing(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # an isolated corner: own Redis, own topics (prefix), own consumer group
    own = Stack(stack.settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{free_port()}/0", "state_dir": tmp_path, "topic_prefix": "res.",
        "app_id": f"res-{uuid.uuid4().hex[:6]}"}))
    own.ensure_redis()
    own.ensure_topics()
    settings, url = start_worker(own, "worker-res", analytics_enabled=False, redis_url=own.settings.redis_url,
                                 topic_prefix="res.", app_id=own.settings.app_id, state_dir=tmp_path)
    admin = redis.Redis.from_url(own.settings.redis_url)
    admin.execute_command("ACL", "SETUSER", "admin", "on", ">adminpw", "+@all", "~*", "&*")
    admin = redis.Redis.from_url(own.settings.redis_url.replace("redis://", "redis://admin:adminpw@"))
    store = GamificationStore(admin, Rules.from_toml(settings.gamification_rules), prefix=settings.redis_prefix)
    user = f"res-{uuid.uuid4().hex[:6]}"

    def send(n: int) -> None:
        with EventProducer(settings, batch_events=1) as producer:
            producer.send_many(Interaction(event_id=uuid.uuid4(), user_id=user, session_id="s", kind=Kind.PLAY_END,
                                           occurred_at=datetime.now(UTC), track_id="t-00010") for _ in range(n))

    def listens() -> int:
        return store.profile(user)["stats"].get("listens", 0)

    def wait_for(n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while listens() != n:
            assert time.monotonic() < deadline, f"listens {listens()} != {n}"
            time.sleep(0.3)

    try:
        send(5)
        wait_for(5, 30)
        admin.execute_command("ACL", "SETUSER", "default", "-@all")  # the worker is refused from now on
        send(5)
        deadline = time.monotonic() + 30
        while metric(url, 'encore_step_failures_total') == 0:
            assert time.monotonic() < deadline, "the worker never met the outage"
            time.sleep(0.3)
        assert listens() == 5
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        wait_for(10, 60)  # the held batch went through, once
        assert json.loads(urllib.request.urlopen(url + "/readyz", timeout=5).read())["ready"]
        send(1)
        wait_for(11, 30)  # and the stream flows on
    finally:
        pid = own.pid_of("worker-res")
        if pid:
            _stop(pid)
        own.down()
