"""The listener app in headless Chromium against the real stack: clicks in, events on the topic,
a new slate out, karma and avatar back on the page. Screenshot: var/screenshots/listener-app.png."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from selenium.webdriver.support.ui import Select

from agents.ingest import RawRecord, ingest
from schemas.events import Kind, Recommendation
from schemas.wire import Serde
from tests.conftest import API_KEY
from tests.test_dashboard import SHOTS, browser  # noqa: F401  (the Chromium fixture)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def ends(settings, topic: str) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """The topic's end offsets now: what the test reads from afterwards."""
    name = settings.topic(topic)
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(name, timeout=10).topics[name].partitions
        return {p: c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def read_since(settings, topic: str, since: dict[int, int], idle_s: float = 1.5) -> list[bytes]:  # type: ignore[no-untyped-def]
    name = settings.topic(topic)
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    try:
        c.assign([TopicPartition(name, p, o if o >= 0 else OFFSET_END) for p, o in since.items()])
        out, last = [], time.monotonic()
        while time.monotonic() - last < idle_s:
            for m in c.consume(500, 0.2):
                if not m.error():
                    out.append(m.value())
                    last = time.monotonic()
        return out
    finally:
        c.close()


def wait_for(browser, script: str, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]  # noqa: F811
    deadline = time.monotonic() + timeout
    while not (got := browser.execute_script(script)):
        assert time.monotonic() < deadline, (f"the app never showed {what}; notice: "
                                             f"{browser.find_element('id', 'notice').text!r}; "
                                             f"player: {browser.find_element('id', 'now').text!r}; "
                                             f"console: {browser.get_log('browser')[-5:]}")
        time.sleep(0.2)
    return got


def test_clicks_become_events_and_the_next_slate_reacts(worker, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings, url = worker
    user = f"app-{uuid.uuid4().hex[:6]}"
    req = urllib.request.Request(url + "/v1/tokens", data=json.dumps({"user_id": user}).encode(), method="POST",
                                 headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
    token = json.loads(urllib.request.urlopen(req, timeout=10).read())["token"]
    events_from, slates_from = ends(settings, "encore.events"), ends(settings, "encore.recommendations")

    browser.get(f"{url}/app/#token={token}&speed=60")
    wait_for(browser, "return document.body.dataset.ready === '1' && document.querySelectorAll('#slate tbody tr').length",
             "a first slate")
    first = browser.execute_script("return document.getElementById('slate-box').dataset.recId")
    first_tracks = browser.execute_script("return [...document.querySelectorAll('#slate tbody tr')].map(r => r.dataset.track)")
    assert len(first_tracks) == 8 and all("listener" not in t for t in first_tracks)
    assert browser.execute_script("return document.querySelector('#slate tbody tr td:nth-child(3) span').textContent")

    # like, thumbs up and add the second track; play the first to the end (60x: a few seconds)
    rows = browser.find_elements("css selector", "#slate tbody tr")
    for action in ("like", "thumbs_up", "playlist_add"):
        rows[1].find_element("css selector", f"button[data-action='{action}']").click()
    rows[0].find_element("css selector", "button[data-action='play']").click()
    wait_for(browser, f"return document.getElementById('slate-box').dataset.recId !== '{first}'",
             "a new slate after the track finished", timeout=60)
    second = browser.execute_script("return document.getElementById('slate-box').dataset.recId")
    shown = browser.execute_script("return [...document.querySelectorAll('#slate tbody tr')].map(r => r.dataset.track)")
    assert first_tracks[0] not in shown  # what was just played is not offered again at once

    # play the top track of the new slate and skip it after a moment: a skip with the time listened
    browser.find_element("css selector", "#slate tbody tr button[data-action='play']").click()
    time.sleep(0.6)
    browser.find_element("id", "skip").click()
    wait_for(browser, f"return document.getElementById('slate-box').dataset.recId !== '{second}'",
             "a new slate after the skip")

    # karma and the avatar come back live; wear the item the first tier unlocked
    wait_for(browser, "return Number(document.getElementById('me').dataset.karma || 0) > 0", "karma")
    button = wait_for(browser, "return document.querySelector('#avatars button[data-item=\"basic-headphones\"]')",
                      "the unlocked avatar item")
    button.click()
    wait_for(browser, "return document.getElementById('avatar').textContent === 'basic-headphones'", "the avatar worn")
    # lists from what was just learned; follow someone; keep the board place private
    browser.find_element("id", "lists-refresh").click()
    wait_for(browser, "return Number(document.getElementById('lists-box').dataset.lists || 0) >= 3", "the lists")
    assert browser.execute_script("return document.querySelectorAll('#list tbody tr').length") > 0
    pal = f"pal-{uuid.uuid4().hex[:6]}"
    browser.find_element("id", "follow-id").send_keys(pal)
    browser.find_element("css selector", "#follow-form button").click()
    wait_for(browser, f"return (document.getElementById('friends-box').dataset.following || '') === '{pal}'",
             "the listener followed")
    Select(browser.find_element("css selector", "[data-privacy='board']")).select_by_visible_text("nobody")
    wait_for(browser, "return (document.body.dataset.privacySaved || '').includes('\"board\":\"nobody\"')",
             "the privacy saved")
    # a journey: five steps, and the next slate leads with the first
    before = browser.execute_script("return document.getElementById('slate-box').dataset.recId")
    Select(browser.find_element("id", "journey-target")).select_by_index(2)
    browser.find_element("id", "journey-start").click()
    wait_for(browser, "return document.querySelectorAll('#journey li').length === 5", "the journey's steps")
    wait_for(browser, f"return document.getElementById('slate-box').dataset.recId !== '{before}'", "the next slate")
    first_step = browser.execute_script("return document.querySelector('#journey li').textContent.split(':')[0]")
    assert browser.execute_script("return document.querySelector('#slate tbody tr').dataset.track") == first_step
    browser.find_element("id", "offline-get").click()  # a pack for the road
    wait_for(browser, "return Number(document.getElementById('offline-box').dataset.tracks || 0) > 0",
             "the offline pack")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(SHOTS / "listener-app.png"))

    serde = Serde()
    mine = [e for e in ingest([RawRecord("encore.events", 0, i, None, v) for i, v in
                               enumerate(read_since(settings, "encore.events", events_from))], serde,
                              max_bytes=1 << 20, max_events=1000, now=datetime.now(UTC)).events
            if e.user_id == user]  # other tests' producers send batches too
    kinds = [e.kind for e in mine]
    for kind in (Kind.REC_REQUEST, Kind.LIKE, Kind.THUMBS_UP, Kind.PLAYLIST_ADD, Kind.PLAY_START, Kind.PLAY_END,
                 Kind.SKIP, Kind.FOLLOW_USER):
        assert kind in kinds, (kind, kinds)
    end = next(e for e in mine if e.kind == Kind.PLAY_END)
    skip = next(e for e in mine if e.kind == Kind.SKIP)
    assert end.rec_id is not None and str(end.rec_id) == first and end.listened_ms == end.track_duration_ms
    assert skip.rec_id is not None and str(skip.rec_id) == second and 0 < skip.listened_ms < skip.track_duration_ms
    assert all(e.context.device == "web" for e in mine if e.context.network != "offline")  # the pack's: the API's
    slates = [s for s in (serde.decode(v, Recommendation) for v in read_since(settings, "encore.recommendations",
                                                                                 slates_from)) if s.user_id == user]
    assert {str(s.rec_id) for s in slates} >= {first, second}  # the slates came over the topic too

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "status of 404" not in e["message"]]
    assert not errors, errors


def test_without_a_token_the_app_says_how_to_get_one(worker, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, url = worker
    browser.get(f"{url}/app/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{url}/app/?fresh=1")
    wait_for(browser, "return document.body.dataset.ready === '1'", "its first paint")
    assert "encore token" in browser.find_element("id", "notice").text
