"""What a run left in every store, and its comparison with a run without faults (the ground truth).

Used by the fault tests: each drains the same workload once cleanly and once under its fault,
then compares, store by store:

- Redis: karma per listener and every leaderboard (member -> score);
- ClickHouse: ``events`` (one row per event id), ``recommendations`` (per rec_id, its tracks),
  ``karma_history`` (per listener, the sum of deltas; one row per (event, rule));
- ``encore.recommendations``: every request answered; every rec_id published with one content;
- ``encore.gamification``: per listener, the karma changes reported add up to their karma;
  each event's change reported one way only; the unlocks;
- ``encore.rewards``: one reward per rec_id answered, re-emissions identical, over the tracks
  the listener was shown.

Slates, and so rewards, depend on the model at the moment of the decision, which depends on
batch boundaries: they are compared with the run's own published slates, not with the clean
run's. Everything else must equal the clean run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas.events import GamificationEvent, Recommendation, RewardRecord
from schemas.wire import Serde
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

_CH_DUMP = """
import json, sys
from sinks.clickhouse import ClickHouseStore
q = ClickHouseStore(sys.argv[1]).query
out = {
  "events": q("SELECT count() AS n, uniqExact(event_id) AS ids FROM events FINAL")[0],
  "event_ids": [str(r["event_id"]) for r in q("SELECT event_id FROM events FINAL")],
  "recommendations": {str(r["rec_id"]): r["tracks"] for r in q(
      "SELECT rec_id, arrayMap(x -> x.2, arraySort(groupArray((position, track_id)))) AS tracks "
      "FROM recommendations FINAL GROUP BY rec_id")},
  "karma_history": [[str(r["event_id"]), r["what"], r["user_id"], int(r["karma_delta"])]
                    for r in q("SELECT event_id, what, user_id, karma_delta FROM karma_history FINAL")],
  "karma_rows": q("SELECT count() AS n, uniqExact(event_id, what) AS ids FROM karma_history FINAL")[0],
}
print(json.dumps(out, default=str))
"""


def clickhouse(dsns: list[str]) -> dict[str, Any]:
    """Read the tables in child processes (one process may open a chDB path at a time, and this
    one may hold another), merged by row identity as ReplacingMergeTree's FINAL does (a run
    whose workers each own a store stands for workers writing to one server)."""
    events: set[str] = set()
    recs: dict[str, list[set[tuple[str, ...]]]] = {}
    karma: dict[tuple[str, str], tuple[str, int]] = {}
    unique = True
    for dsn in dsns:
        done = subprocess.run([sys.executable, "-c", _CH_DUMP, dsn], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
        unique &= got["events"]["n"] == got["events"]["ids"] and got["karma_rows"]["n"] == got["karma_rows"]["ids"]
        events.update(got["event_ids"])
        for rec_id, tracks in got["recommendations"].items():
            recs.setdefault(rec_id, []).append(tuple(tracks))
        for event_id, what, user, delta in got["karma_history"]:
            karma[(event_id, what)] = (user, delta)
    per_user: Counter[str] = Counter()
    for (_, what), (user, delta) in karma.items():
        if what == "karma":
            per_user[user] += delta
    return {
        "event_ids": events,
        "unique": unique,  # no identity twice in any store, as readers see it (FINAL)
        "recommendations": {r: set(v) for r, v in recs.items()},
        "karma_history": {u: k for u, k in per_user.items() if k},
        "unlock_rows": sorted((user, what) for (_, what), (user, _) in karma.items()
                              if what.startswith(("achievement:", "avatar:"))),
    }


def read_all(settings: Settings, topic: str, idle_s: float = 1.5, timeout: float = 300) -> list[Any]:
    """Every record of a topic, each once: all partitions assigned from the beginning (no group
    join), read until nothing more comes for ``idle_s``."""
    name = settings.topic(topic)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    try:
        parts = consumer.list_topics(name, timeout=10).topics[name].partitions
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in parts])
        seen: dict[tuple[int, int], Any] = {}
        last, deadline = time.monotonic(), time.monotonic() + timeout
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                if not m.error():
                    seen[(m.partition(), m.offset())] = m
                    last = time.monotonic()
        return list(seen.values())
    finally:
        consumer.close()


def collect(settings: Settings, tag: str, dsns: list[str]) -> dict[str, Any]:
    serde = Serde()
    game = [serde.decode(m.value(), GamificationEvent) for m in read_all(settings, "encore.gamification")]
    slates = [serde.decode(m.value(), Recommendation) for m in read_all(settings, "encore.recommendations")]
    rewards = [serde.decode(m.value(), RewardRecord) for m in read_all(settings, "encore.rewards")]
    r = redis.Redis.from_url(settings.redis_url)
    karma = {}
    for key in r.scan_iter(match=f"{tag}:{{*}}:s", count=1000):
        user = key.decode().split("{", 1)[1].split("}", 1)[0]
        karma[user] = int(r.hget(key, "karma") or 0)
    boards = {key.decode().removeprefix(tag): {m.decode(): s for m, s in r.zrange(key, 0, -1, withscores=True)}
              for key in r.scan_iter(match=f"{tag}:lb:*", count=1000)}
    changes: dict[str, set[tuple[int, int]]] = {}
    user_of: dict[str, str] = {}
    for g in game:
        if g.karma_delta and not g.board:
            changes.setdefault(str(g.event_id), set()).add((g.karma_delta, g.karma_total))
            user_of[str(g.event_id)] = g.user_id
    reported: Counter[str] = Counter()
    for event_id, seen in changes.items():
        reported[user_of[event_id]] += next(iter(seen))[0]
    contents: dict[str, set[tuple[str, ...]]] = {}
    published = Counter(str(s.rec_id) for s in slates)
    for s in slates:
        contents.setdefault(str(s.rec_id), set()).add(tuple(i.track_id for i in s.items))
    paid: dict[str, set[tuple[Any, ...]]] = {}
    for rec in rewards:
        paid.setdefault(str(rec.rec_id), set()).add(tuple((i.track_id, i.reward) for i in rec.items))
    return {
        "karma": karma,
        "boards": boards,
        "reported": {u: k for u, k in reported.items() if k},
        "karma_events": changes,
        # at-least-once on the topic: a re-emitted event may come twice; consumers keep one per identity
        "unlocks": {(g.user_id, g.achievement_unlocked or g.avatar_unlocked) for g in game
                    if g.achievement_unlocked or g.avatar_unlocked},
        "answered": {str(s.request_id) for s in slates},
        "slates": contents,
        "republished": sum(n > 1 for n in published.values()),  # rec_ids sent more than once
        "rewards": paid,
        "clickhouse": clickhouse(dsns) if dsns else None,
    }


def compare(clean: dict[str, Any], seen: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(case, ground truth, observed, equal) per store; the fault tests assert every row."""
    rows: list[tuple[str, str, str, bool]] = []

    def row(case: str, truth: Any, got: Any, ok: bool | None = None) -> None:
        rows.append((case, str(truth)[:60], str(got)[:60], truth == got if ok is None else ok))

    row("karma per listener (Redis)", f"{len(clean['karma'])} listeners, {sum(clean['karma'].values())} karma",
        f"{len(seen['karma'])} listeners, {sum(seen['karma'].values())} karma", clean["karma"] == seen["karma"])
    differ = [(b, m, clean["boards"].get(b, {}).get(m), seen["boards"].get(b, {}).get(m))
              for b in sorted(set(clean["boards"]) | set(seen["boards"]))
              for m in sorted(set(clean["boards"].get(b, {})) | set(seen["boards"].get(b, {})))
              if clean["boards"].get(b, {}).get(m) != seen["boards"].get(b, {}).get(m)]
    if differ:
        print(f"leaderboard entries that differ: {len(differ)}, e.g. (board, listener, clean, observed) {differ[:5]}")
    row("every leaderboard (Redis)", f"{len(clean['boards'])} boards", f"{len(seen['boards'])} boards, "
        f"{len(differ)} entries differ", not differ)
    for result, name in ((clean, "clean"), (seen, "observed")):
        ok = all(len(v) == 1 for v in result["karma_events"].values()) and result["reported"] == {
            u: max(0, k) for u, k in result["karma"].items() if k > 0}  # karma is floored at 0
        row(f"encore.gamification adds up to karma ({name})", "sums equal", "equal" if ok else "differ", ok)
    row("unlocks on encore.gamification", len(clean["unlocks"]), len(seen["unlocks"]),
        clean["unlocks"] == seen["unlocks"])
    row("requests answered (encore.recommendations)", len(clean["answered"]), len(seen["answered"]),
        clean["answered"] == seen["answered"])
    rows.append(("rec_ids published more than once, same content (informative)", str(clean["republished"]),
                 str(seen["republished"]), True))
    for result, name in ((clean, "clean"), (seen, "observed")):
        again = sum(len(v) > 1 for v in result["slates"].values())
        row(f"rec_ids published with other content ({name})", 0, again)
        ok = set(result["rewards"]) == set(result["slates"]) and all(
            len(v) == 1 and tuple(t for t, _ in next(iter(v))) == next(iter(result["slates"][r]))
            for r, v in result["rewards"].items())
        row(f"encore.rewards: one per rec_id, over the tracks shown ({name})", len(result["slates"]),
            len(result["rewards"]), ok)
    if clean["clickhouse"] is not None:
        a, b = clean["clickhouse"], seen["clickhouse"]
        row("events rows, one per event id (ClickHouse)", len(a["event_ids"]), len(b["event_ids"]),
            a["event_ids"] == b["event_ids"] and a["unique"] and b["unique"])
        row("karma_history per listener (ClickHouse)", sum(a["karma_history"].values()),
            sum(b["karma_history"].values()), a["karma_history"] == b["karma_history"])
        row("karma_history unlock rows (ClickHouse)", len(a["unlock_rows"]), len(b["unlock_rows"]),
            a["unlock_rows"] == b["unlock_rows"])
        for result, name, ch in ((clean, "clean", a), (seen, "observed", b)):
            slates = {r: v for r, v in result["slates"].items()}
            row(f"recommendations rows = slates published ({name})", len(slates), len(ch["recommendations"]),
                ch["recommendations"] == slates)
    return rows


def table(rows: list[tuple[str, str, str, bool]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'case':<{width}}  {'ground truth':<30}  {'observed':<30}  ok"]
    lines += [f"{c:<{width}}  {t:<30}  {o:<30}  {'yes' if ok else 'NO'}" for c, t, o, ok in rows]
    return "\n".join(lines)


def assert_equal(clean: dict[str, Any], seen: dict[str, Any], title: str, where: str = "") -> None:
    """Print the table (case, ground truth, observed) and fail on any row that differs;
    ``where`` keeps only the rows whose case names it (e.g. "(Redis)")."""
    rows = [r for r in compare(clean, seen) if where in r[0]]
    print(f"\n{title}\n" + table(rows))
    assert all(ok for *_, ok in rows), table([r for r in rows if not r[3]])
