"""Operations: the HTTP API (auth, errors, schemathesis), Prometheus (promtool, a real server
scraping a worker), the Grafana dashboard's metric names, structured logs, two workers sharing
the partitions, and the production manifests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from deploy.local.stack import free_port
from schemas.events import Interaction, Recommendation
from schemas.wire import Serde
from streams.client import EventProducer
from tests.conftest import API_KEY, start_worker
from tests.test_e2e import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def call(url: str, method: str = "GET", body: bytes | None = None, key: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    if key is not None:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def request_event(user: str) -> dict:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "session_id": "s", "kind": "rec_request",
            "occurred_at": datetime.now(UTC).isoformat(), "context": {"device": "mobile", "activity": "study"}}


def test_writes_need_an_api_key_and_bad_input_gets_a_precise_answer(worker) -> None:  # type: ignore[no-untyped-def]
    _, url = worker
    good = json.dumps(request_event("api-user")).encode()
    assert call(url + "/v1/events", "POST", good)[0] == 401
    assert call(url + "/v1/events", "POST", good, key="wrong")[0] == 401
    status, body = call(url + "/v1/events", "POST", json.dumps({"user_id": 42, "kind": "no_such_kind"}).encode(), API_KEY)
    assert status == 422 and body["problems"][0]["reason"] == "unknown_kind" and "no_such_kind" in body["problems"][0]["error"]
    status, body = call(url + "/v1/events", "POST", b"not json", API_KEY)
    assert status == 400 and "JSON" in body["error"]
    status, body = call(url + "/v1/events", "POST", b"[" + b" " * 70_000 + b"]", API_KEY)
    assert status == 413 and "limit" in body["error"]
    for poison in (b"[" * 30_000 + b"]" * 30_000, b'{"n": ' + b"9" * 5000 + b"}"):  # json.loads raises beyond JSONDecodeError
        status, body = call(url + "/v1/events", "POST", poison, API_KEY)
        assert status == 400 and body["problems"][0]["reason"] == "bad_json", body
    mixed = json.dumps([request_event("api-a"), {"kind": "like"}]).encode()
    status, body = call(url + "/v1/events", "POST", mixed, API_KEY)
    assert status == 422 and [p["index"] for p in body["problems"]] == [1]  # nothing half-accepted
    # accepted events flow through the worker; the latest slate is then readable
    event = request_event(f"api-{uuid.uuid4().hex[:6]}")
    status, body = call(url + "/v1/events", "POST", json.dumps(event).encode(), API_KEY)
    assert (status, body) == (202, {"accepted": 1, "records": 1})
    deadline = time.monotonic() + 20
    while (got := call(url + f"/v1/recommendations/{event['user_id']}", key=API_KEY))[0] == 404:
        assert time.monotonic() < deadline, "no slate came back for an accepted request"
        time.sleep(0.3)
    assert got[0] == 200 and got[1]["request_id"] == event["event_id"] and len(got[1]["items"]) == 10
    assert call(url + "/v1/users/nobody-at-all/profile", key=API_KEY)[0] == 404
    assert call(url + "/v1/users/nobody-at-all/profile")[0] == 401  # private: a key or the listener's token
    assert call(url + "/v1/leaderboards/global?n=0")[0] == 400
    status, board = call(url + "/v1/leaderboards/global?n=3")
    assert status == 200 and board["board"] == "global" and len(board["entries"]) <= 3


def test_schemathesis_finds_no_failure(worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, url = worker
    out = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json", "-H", f"X-API-Key: {API_KEY}",
         "--checks", "all", "-n", "40", "--generation-deterministic", "--report-dir", str(tmp_path),
         # POST /v1/events takes a key or a listener token: generating both auth variants of its big
         # body filters many examples out, which is a generation-speed warning, not an API failure
         "--suppress-health-check=filter_too_much"],
        capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout[-4000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert cases and int(cases.group(1)) > 200 and cases.group(1) == cases.group(2), out.stdout[-2000:]
    assert "Failures:" not in out.stdout


def test_promtool_accepts_the_config_and_alert_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with apt's prometheus (`make install`)"
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {"EncoreWorkerDown", "EncoreConsumerLagGrowing", "EncoreDeadLetterRateHigh",
                                          "EncoreNoRecommendations", "EncoreSinkFailures", "EncoreStalled",
                                          "EncoreRedisStateLost"}
    runbook = (DEPLOY.parent / "docs" / "operations.md").read_text()
    assert all(f"### {r['alert']}" in runbook for r in rules)  # every alert says what to do


def exported_names(url: str) -> set[str]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_a_real_prometheus_scrapes_the_worker(worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, url = worker
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus comes from apt (`make install`)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "encore-worker", "static_configs": [{"targets": [url.removeprefix("http://")]}]}],
    }))
    proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with EventProducer(worker[0], batch_events=1) as producer:  # something to count
            producer.send_raw("prom-user", json.dumps(request_event("prom-user")).encode())
        found: dict[str, list] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for metric in ("encore_events_total", "encore_recommendations_total", "encore_consumer_lag_messages",
                           "encore_recommendation_latency_seconds_count", 'up{job="encore-worker"}'):
                try:
                    q = urllib.parse.quote(metric)
                    body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={q}", timeout=5).read())
                    if body["data"]["result"]:
                        found[metric] = body["data"]["result"]
                except (urllib.error.URLError, ConnectionError):
                    pass
            if len(found) == 5:
                break
            time.sleep(1)
        assert set(found) == {"encore_events_total", "encore_recommendations_total", "encore_consumer_lag_messages",
                              "encore_recommendation_latency_seconds_count", 'up{job="encore-worker"}'}
        assert found['up{job="encore-worker"}'][0]["value"][1] == "1"
        assert sum(float(r["value"][1]) for r in found["encore_events_total"]) > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_grafana_dashboard_uses_only_exported_metrics(worker) -> None:  # type: ignore[no-untyped-def]
    _, url = worker
    dashboard = json.loads((DEPLOY / "grafana" / "encore-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"\b(encore_[a-z_]+|faust_[a-z_]+)", e)}
    exported = {re.sub(r"_total$", "", n) for n in exported_names(url)}
    assert used and {re.sub(r"_total$", "", u) for u in used} <= exported, used - exported
    assert len(dashboard["panels"]) >= 10 and all(p["targets"] for p in dashboard["panels"])


def test_worker_logs_are_json_lines(worker) -> None:  # type: ignore[no-untyped-def]
    settings, _ = worker
    lines = (settings.log_dir / "worker-e2e.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) > 10 and len(records) >= 0.95 * len([line for line in lines if line.strip()])
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)


def test_two_workers_share_the_partitions_and_no_event_is_missed(stack, worker) -> None:  # type: ignore[no-untyped-def]
    settings, url1 = worker
    # the session worker owns the chDB store; a second one runs without analytics (see README)
    settings2, url2 = start_worker(stack, "worker-two", analytics_enabled=False, api_keys=API_KEY)
    try:
        def assignments() -> tuple[list[int], list[int]]:
            return (call(url1 + "/readyz")[1]["partitions"], call(url2 + "/readyz")[1]["partitions"])

        deadline = time.monotonic() + 60
        while True:
            a, b = assignments()
            if a and b and sorted(a + b) == list(range(settings.partitions)):
                break
            assert time.monotonic() < deadline, f"partitions not shared: {a} / {b}"
            time.sleep(0.5)
        before = [exported_total(u) for u in (url1, url2)]
        users = [f"two-{uuid.uuid4().hex[:8]}" for _ in range(60)]
        requests = [Interaction.model_validate(request_event(u)) for u in users]
        with EventProducer(settings, batch_events=1) as producer:
            producer.send_many(requests)
        want = {r.event_id for r in requests}
        serde = Serde()
        recs = read_topic(settings, "encore.recommendations",
                          lambda r: want <= {serde.decode(m.value(), Recommendation).request_id for m in r}, timeout=60)
        answered = [serde.decode(m.value(), Recommendation) for m in recs]
        assert want <= {r.request_id for r in answered}  # no event processed by neither
        after = [exported_total(u) for u in (url1, url2)]
        assert after[0] > before[0] and after[1] > before[1]  # both workers consumed
        assert (after[0] - before[0]) + (after[1] - before[1]) >= len(users)
    finally:
        pid = stack.pid_of("worker-two")
        if pid:
            from deploy.local.stack import _stop

            _stop(pid)
        deadline = time.monotonic() + 60  # the session worker takes every partition back
        while (ready := call(url1 + "/readyz")[1])["partitions"] != list(range(settings.partitions)) \
                or not ready["ready"]:
            assert time.monotonic() < deadline, "the remaining worker did not take the partitions back"
            time.sleep(0.5)


def exported_total(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r'^encore_events_total\{[^}]*\} (\S+)$', text, re.M))


def test_production_manifests_parse() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    assert {"kafka", "redis", "clickhouse", "prometheus", "grafana", "worker"} <= set(compose["services"])
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "encore.yaml").read_text()))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "encore-worker") in kinds and ("StatefulSet", "kafka") in kinds
    worker = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "encore-worker")
    env = {e["name"] for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"ENCORE_KAFKA_BOOTSTRAP", "ENCORE_REDIS_URL", "ENCORE_CLICKHOUSE_DSN", "ENCORE_API_KEYS",
            "ENCORE_WORKER_ID", "ENCORE_STATE_DIR"} <= env
