"""An experiment end to end on the real stack: simulated listeners (who come back on later days
with a probability set by what they experienced) against a real worker, through the broker,
Redis and ClickHouse; the report must find the true effect of gamification on returns, and an
A/A experiment running beside it must find nothing. Then the report CLI (through the worker),
the kill switch reaching the worker within seconds, and the experiment page in Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from agents.worker import load_catalogue
from experiments import stats as S
from experiments.config import load_experiments
from experiments.control import ControlStore
from streams.simloop import ClosedLoop
from streams.simulator import Returns, World
from tests.faults.harness import Run, knob
from tests.test_dashboard import browser, load  # noqa: F401 (the browser fixture)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
LISTENERS = int(knob("EXP_LISTENERS", 2000, 500))
DAYS = int(knob("EXP_DAYS", 3, 2))
LIFT = 0.5  # true effect: +50 points of next-day return for a listener who earned karma that day

# The A/A arms serve popularity: each arm is a lane with a learner of its own, and two LinUCB
# learners trained on ~125 listeners each differ in quality by luck, which a per-listener test
# does not know about (quick runs of this seed gave A/A p-values 0.26, 0.14, 0.001, 0.62, 0.025).
# Popularity counts converge alike, so the A/A checks the pipeline (assignment, SRM, metrics).
DECLARED = """
[[experiment]]
name = "aa"
salt = "aa-salt"
traffic = 0.5
primary = "returned_d1"
[[experiment.arm]]
name = "a"
policy = "popularity"
[[experiment.arm]]
name = "b"
policy = "popularity"

[[experiment]]
name = "gamification"
salt = "g-salt"
primary = "returned_d1"
[[experiment.arm]]
name = "control"
gamification = false
[[experiment.arm]]
name = "gamified"
gamification = true
"""


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def report(url: str, name: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"{url}/api/dashboard/experiment?name={name}&churn_days=1", timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.timeout(900)
def test_the_report_finds_the_true_effect_and_the_a_a_finds_nothing(stack, tmp_path: Path, browser, request) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    declared = tmp_path / "experiments.toml"
    declared.write_text(DECLARED)
    run = Run(stack, tmp_path, experiments_file=declared, control_poll_s=0.5)
    request.addfinalizer(run.close)  # its worker stops with the test, passed or not
    control = ControlStore(redis.Redis.from_url(run.settings.redis_url), run.tag)
    for name in ("aa", "gamification"):
        control.set_status(load_experiments(declared), name, "running")
    url = run.start("w")
    world = World(load_catalogue(run.settings.catalogue), n_listeners=LISTENERS, seed=5, run_id=run.tag, communities=8)
    loop = ClosedLoop(run.settings, world, concurrency=200, seed=5, returns=Returns(0.4, gamification_lift=LIFT), days=DAYS)
    try:
        stats = loop.run(600)
    finally:
        loop.close()
    print(f"\nactive by day {stats.active_by_day}, told of karma {stats.karma_by_day}")
    assert stats.timed_out == 0 and len(stats.active_by_day) == DAYS, stats.active_by_day
    deadline = time.monotonic() + 120
    while metric(url, "encore_events_total") < stats.events:
        assert time.monotonic() < deadline, "the worker did not process every event"
        time.sleep(0.5)
    time.sleep(3)  # the last batch's rows reach ClickHouse at its checkpoint

    g = report(url, "gamification")
    assert not g["srm"]["mismatch"] and sum(g["arms"].values()) > LISTENERS * 0.4
    d1 = next(r for r in g["results"] if r["metric"] == "returned_d1")
    assert d1["arm"] == "gamified" and d1["lift"] > 0 and d1["p_adjusted"] < 0.01, d1
    assert "gamified raises returned_d1" in g["verdict"]
    assert g["survival"]["gamified"]["logrank"]["p_value"] < 0.05  # retention curves part too
    aa = report(url, "aa")
    assert not aa["srm"]["mismatch"]
    aa_d1 = next(r for r in aa["results"] if r["metric"] == "returned_d1")
    assert aa_d1["p_value"] > 0.001, aa_d1  # A/A: nothing (a false alarm at this level: 1 in 1,000)
    power = S.power_proportions(d1["control"], d1["lift"], alpha=0.05, n=min(d1["n_control"], d1["n_treatment"]))
    print(f"\nexperiment e2e: {LISTENERS} listeners, days {stats.active_by_day}; gamification arms "
          f"{g['arms']}: D1 {d1['control']:.3f} -> {d1['treatment']:.3f}, lift {d1['lift']:+.1%} "
          f"(p {d1['p_value']:.2g}, power for this effect at these sizes {power:.3f}); "
          f"A/A D1 lift {aa_d1['lift']:+.1%} (p {aa_d1['p_value']:.2g})")

    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "experiments.report", "gamification", "--worker", url,
                          "--churn-days", "1", "--plot", str(tmp_path / "retention.png")],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "gamified raises returned_d1" in out.stdout and (tmp_path / "retention.png").stat().st_size > 10_000

    control.set_flag("gamification", killed=True)  # the kill switch reaches the worker within seconds
    deadline = time.monotonic() + 10
    while metric(url, "encore_control_version") != 3:
        assert time.monotonic() < deadline, "the worker did not apply the control change within 10 s"
        time.sleep(0.2)

    points = {row[0]: row for row in load(browser, f"{url}/dashboard/experiments?name=gamification&churn_days=1")}
    assert not any(row[2] for row in points.values()), points  # no chart reported an error
    assert points["retention"][1] > 0 and points["metrics"][1] >= 5 and points["allocation"][1] == 2
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not logs, logs
