"""The dashboard in headless Chromium against a real worker with simulated traffic: every chart
drew data points, no console errors; screenshots go to var/screenshots/."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from streams.simloop import ClosedLoop
from streams.simulator import World, synthetic_catalogue

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
SHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
                "--window-size=1400,1700")


@pytest.fixture(scope="module")
def traffic(worker):  # type: ignore[no-untyped-def]
    settings, url = worker
    world = World(synthetic_catalogue(7, 2000), n_listeners=200, seed=9, run_id="dashboard-test")
    loop = ClosedLoop(settings, world, concurrency=40, seed=9)
    try:
        stats = loop.run(6.0)
    finally:
        loop.close()
    assert stats.slates > 50
    deadline = time.monotonic() + 30  # a leaderboard snapshot with these listeners (every 2 s)
    while not json.loads(urllib.request.urlopen(url + "/api/dashboard/leaderboard_history", timeout=10).read())["series"]:
        assert time.monotonic() < deadline, "no leaderboard snapshot was taken"
        time.sleep(0.5)
    return url, stats


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver come with `make install` (apt)"
    options = Options()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=options)
    yield d
    d.quit()


def load(browser, url: str) -> list[list]:  # type: ignore[no-untyped-def]
    browser.get(url)
    deadline = time.monotonic() + 30
    while browser.execute_script("return document.body.dataset.ready") != "1":
        assert time.monotonic() < deadline, f"{url} never finished drawing"
        time.sleep(0.2)
    return browser.execute_script(
        "return [...document.querySelectorAll('[data-points], [data-error]')]"
        ".map(e => [e.id, Number(e.dataset.points || 0), e.dataset.error || null,"
        " e.classList.contains('js-plotly-plot') ? e.data.length : null])")


@pytest.mark.parametrize("page", ["ops", "listener"])
def test_every_chart_renders_data_without_console_errors(traffic, browser, page) -> None:  # type: ignore[no-untyped-def]
    url, _ = traffic
    target = f"{url}/dashboard/" if page == "ops" else f"{url}/dashboard/listener"
    charts = load(browser, target)
    expected = {"ops": {"throughput", "quality", "leaderboard", "leaderboard_history", "rising", "top_tracks",
                        "heatmap", "activity"},
                "listener": {"profile", "karma", "heatmap", "graph", "activity", "trackmap", "why", "behaviour"}}[page]
    assert {c[0] for c in charts} == expected
    for chart_id, points, error, traces in charts:
        assert error is None, f"{chart_id}: {error}"
        assert points > 0, f"{chart_id} drew no data points"
        if chart_id not in ("profile", "why", "behaviour"):  # tables, not charts
            assert traces and traces > 0, f"{chart_id} is not a Plotly chart with traces"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS / f"{page}.png"))


def test_data_api_says_what_is_wrong(traffic) -> None:  # type: ignore[no-untyped-def]
    url, _ = traffic
    for path, status, message in [("/api/dashboard/karma", 400, "needs ?user="),
                                  ("/api/dashboard/top_tracks?n=0", 400, "between 1 and 100"),
                                  ("/api/dashboard/nope", 404, "unknown view")]:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + path, timeout=10)
        assert err.value.code == status and message in json.loads(err.value.read())["error"]
    user = json.loads(urllib.request.urlopen(url + "/api/dashboard/listeners?n=1", timeout=10).read())[0]
    slate = json.loads(urllib.request.urlopen(f"{url}/api/dashboard/latest_slate?user={user}", timeout=10).read())
    assert slate["items"] and all(len(i["why"]) == 3 and set(i["audio"]) == {"tempo", "energy", "valence",
                                  "danceability", "acousticness"} for i in slate["items"])
    behaviour = json.loads(urllib.request.urlopen(f"{url}/api/dashboard/behaviour?user={user}", timeout=10).read())
    assert sum(c["sessions"] for c in behaviour["clusters"]) > 0 and behaviour["listener"]["user_id"] == user
    top = json.loads(urllib.request.urlopen(url + "/api/dashboard/top_tracks?n=3", timeout=10).read())
    assert len(top) == 3 and top[0]["completions"] >= top[-1]["completions"]
