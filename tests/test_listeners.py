"""What a listener may do, against real workers, Redis and chDB: tokens (who may read what),
avatars (wear only what you unlocked, shown on boards), and forget-me (erased from every store,
everyone else untouched)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from agents.auth import Denied, issue, listener_of
from deploy.local.stack import Stack, _stop, settings_env
from sinks.listeners import ListenerStore
from tests.conftest import API_KEY, start_worker, wait

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).resolve().parent.parent


def call(url: str, method: str = "GET", body: object = None, *, key: str | None = None,
         token: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key:
        req.add_header("X-API-Key", key)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def events(user: str, n_plays: int, session: str = "s-1") -> list[dict]:
    """n completed plays (with a like each) and a request for a slate."""
    now = datetime.now(UTC)
    out: list[dict] = []
    for i in range(n_plays):
        track = f"t-{i * 7:05d}"
        for kind in ("play_start", "play_end", "like"):
            out.append({"event_id": str(uuid.uuid4()), "user_id": user, "session_id": session, "kind": kind,
                        "track_id": track, "occurred_at": (now - timedelta(seconds=60 - i)).isoformat(),
                        "context": {"device": "mobile", "activity": "study"}})
    out.append({"event_id": str(uuid.uuid4()), "user_id": user, "session_id": session, "kind": "rec_request",
                "occurred_at": now.isoformat(), "context": {"device": "mobile", "activity": "study"}})
    return out


def token_for(url: str, user: str) -> str:
    status, body = call(url + "/v1/tokens", "POST", {"user_id": user}, key=API_KEY)
    assert status == 201, body
    return str(body["token"])


def test_a_token_names_its_listener_and_expires() -> None:
    secret = b"s" * 32
    token, _ = issue(secret, "ann", 60)
    assert listener_of(secret, token) == "ann"
    with pytest.raises(Denied) as wrong:
        listener_of(b"t" * 32, token)
    assert wrong.value.status == 401
    old, _ = issue(secret, "ann", 60, datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(Denied, match="expired"):
        listener_of(secret, old)


def test_a_listener_reads_and_acts_for_themselves_only(worker) -> None:  # type: ignore[no-untyped-def]
    _, url = worker
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    assert call(url + "/v1/tokens", "POST", {"user_id": ann})[0] == 401  # services only
    t_ann, t_bob = token_for(url, ann), token_for(url, bob)
    assert call(url + "/v1/tokens", "POST", {"user_id": ann}, token=t_ann)[0] == 403
    assert call(url + "/v1/events", "POST", events(ann, 3), token=t_ann)[0] == 202  # the app sends its own
    assert call(url + "/v1/events", "POST", events(bob, 1), token=t_ann)[0] == 403  # never someone else's
    assert call(url + "/v1/events", "POST", events(bob, 1), token=t_bob)[0] == 202
    wait("ann's slate and karma", lambda: call(url + f"/v1/recommendations/{ann}", token=t_ann)[0] == 200
         and call(url + f"/v1/users/{ann}/profile", token=t_ann)[0] == 200)
    status, mine = call(url + f"/v1/users/{ann}/profile", token=t_ann)
    assert status == 200 and mine["user_id"] == ann and mine["karma"] > 0
    for path in (f"/v1/users/{ann}/profile", f"/v1/recommendations/{ann}", f"/v1/users/{ann}/model"):
        assert call(url + path, token=t_bob)[0] == 403, path  # bob never reads ann's
        assert call(url + path)[0] == 401, path  # nobody without credentials
        assert call(url + path, token=t_ann + "x")[0] == 401, path  # a tampered token
        assert call(url + path, key=API_KEY)[0] in (200, 404), path  # a service reads anyone
    assert call(url + f"/v1/users/{ann}", "DELETE", token=t_bob)[0] == 403
    assert call(url + f"/v1/leaderboards/global?around={ann}")[0] == 200  # boards are public


def test_a_listener_wears_only_an_avatar_item_they_unlocked_and_boards_show_it(worker) -> None:  # type: ignore[no-untyped-def]
    _, url = worker
    cat = f"cat-{uuid.uuid4().hex[:6]}"
    token = token_for(url, cat)
    assert call(url + "/v1/events", "POST", events(cat, 2), token=token)[0] == 202
    profile = wait("cat's profile", lambda: (got := call(url + f"/v1/users/{cat}/profile", token=token))[0] == 200
                   and got[1])
    assert "basic-headphones" in profile["avatar_items"] and profile["avatar"] is None
    status, refused = call(url + f"/v1/users/{cat}/avatar", "PUT", {"item": "platinum-crown"}, token=token)
    assert status == 409 and "not unlocked" in refused["error"] and "basic-headphones" in refused["error"]
    assert call(url + f"/v1/users/{cat}/avatar", "PUT", {"nope": 1}, token=token)[0] == 400
    status, worn = call(url + f"/v1/users/{cat}/avatar", "PUT", {"item": "basic-headphones"}, token=token)
    assert status == 200 and worn["avatar"] == "basic-headphones"
    status, board = call(url + f"/v1/leaderboards/global?around={cat}&n=4")
    assert status == 200 and {e["user_id"]: e["avatar"] for e in board["entries"]}[cat] == "basic-headphones"


def _clickhouse_rows(dsn: str, users: list[str]) -> dict[str, dict[str, int]]:
    """Rows per table per listener, read in a process of its own (chDB: one path per process)."""
    code = ("import json, sys\nfrom sinks.clickhouse import ClickHouseStore\n"
            "s = ClickHouseStore(sys.argv[1])\nout = {}\n"
            "for t in ('events', 'recommendations', 'karma_history', 'leaderboard_snapshots', "
            "'experiment_exposures', 'experiment_outcomes'):\n"
            "    out[t] = {u: s.query(f'SELECT count() AS n FROM {t} WHERE user_id = {{u:String}}', {'u': u})[0]['n'] "
            "for u in sys.argv[2:]}\nprint(json.dumps(out))\n")
    got = subprocess.run([sys.executable, "-c", code, dsn, *users], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert got.returncode == 0, got.stderr[-2000:]
    return json.loads(got.stdout.strip().splitlines()[-1])


def test_forget_me_erases_a_listener_from_every_store_and_leaves_the_others(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dsn = f"chdb://{tmp_path / 'chdb'}"
    prefix = f"fg{uuid.uuid4().hex[:4]}"
    own = Stack(stack.settings.model_copy(update={"topic_prefix": f"{prefix}.", "app_id": f"{prefix}-app",
                                                  "state_dir": tmp_path}))
    own.ensure_topics()  # topics and a consumer group of its own: this worker owns every partition
    settings, url = start_worker(own, "worker-forget", api_keys=API_KEY, clickhouse_dsn=dsn, state_dir=tmp_path,
                                 redis_prefix=prefix, topic_prefix=f"{prefix}.", app_id=f"{prefix}-app",
                                 snapshot_interval_s=1.0, model_snapshot_interval_s=1.0, reward_window_s=2.0)
    gone, kept, also = (f"{who}-{uuid.uuid4().hex[:6]}" for who in ("gone", "kept", "also"))
    tokens = {u: token_for(url, u) for u in (gone, kept, also)}
    for u in (gone, kept, also):
        assert call(url + "/v1/events", "POST", events(u, 4), token=tokens[u])[0] == 202
    assert call(url + "/v1/events", "POST", [social(gone, "follow_user", kept)], token=tokens[gone])[0] == 202
    assert call(url + "/v1/events", "POST", [social(kept, "follow_user", gone), social(kept, "follow_user", also)],
                token=tokens[kept])[0] == 202
    wait("the friend edges", lambda: call(url + f"/v1/users/{kept}/friends", token=tokens[kept])[1]
         == {"user_id": kept, "following": sorted([gone, also]), "followers": [gone]})
    for u in (gone, kept, also):
        wait(f"{u}'s slate, karma and model state",
             lambda u=u: all(call(url + p, token=tokens[u])[0] == 200
                             for p in (f"/v1/recommendations/{u}", f"/v1/users/{u}/profile", f"/v1/users/{u}/model")))
    r = redis.Redis.from_url(settings.redis_url)
    for u in (gone, kept):  # their karma history reached ClickHouse (read through the worker that owns chDB)
        wait(f"{u}'s rows in ClickHouse", lambda u=u: call(f"{url}/api/dashboard/karma?user={u}")[1], timeout=30)
    time.sleep(3.0)  # the reward window closes, a board snapshot and a model snapshot are taken

    status, body = call(url + f"/v1/users/{gone}", "DELETE", token=tokens[gone])  # the listener asks
    assert status == 202 and body["user_id"] == gone
    wait("the erasure", lambda: call(url + f"/v1/users/{gone}/profile", key=API_KEY)[0] == 404
         and call(url + f"/v1/users/{gone}/model", key=API_KEY)[0] == 404, timeout=30)
    # ops run the command for a request that came by another channel
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    cli = subprocess.run([sys.executable, "-m", "streams.cli", "forget", also], capture_output=True, text=True,
                         timeout=120, env=env, cwd=ROOT)
    assert cli.returncode == 0 and "is forgotten" in cli.stdout, cli.stdout + cli.stderr
    # events of the forgotten listener still arriving (an app offline until now) are dropped unread
    assert call(url + "/v1/events", "POST", events(gone, 2), key=API_KEY)[0] == 202
    assert call(url + "/v1/events", "POST", events(kept, 1), key=API_KEY)[0] == 202
    time.sleep(3.0)

    for u in (gone, also):
        left = [k.decode() for k in r.scan_iter(match=f"{prefix}:*", count=1000) if u.encode() in k]
        boards = [k.decode() for k in r.scan_iter(match=f"{prefix}:lb:*", count=1000)
                  if r.type(k) == b"zset" and r.zscore(k, u) is not None]
        assert left == [] and boards == [], (u, left, boards)
    assert call(url + f"/v1/recommendations/{gone}", key=API_KEY)[0] == 404
    assert call(url + f"/v1/users/{kept}/profile", key=API_KEY)[0] == 200
    assert call(url + f"/v1/recommendations/{kept}", key=API_KEY)[0] == 200
    assert call(url + f"/v1/users/{kept}/model", key=API_KEY)[0] == 200
    assert call(url + f"/v1/users/{kept}/friends", key=API_KEY)[1] == {"user_id": kept, "following": [],
                                                                       "followers": []}  # edges to them gone too
    pid = own.pid_of("worker-forget")
    assert pid is not None
    _stop(pid)
    rows = _clickhouse_rows(dsn, [gone, kept, also])
    assert all(per[gone] == 0 and per[also] == 0 for per in rows.values()), rows
    assert rows["events"][kept] > 0 and rows["karma_history"][kept] > 0 and rows["recommendations"][kept] > 0, rows
    snapshots = list((tmp_path / "models").glob("*.snapshot"))
    assert snapshots
    for path in snapshots:
        raw = path.read_bytes()
        assert gone.encode() not in raw and also.encode() not in raw and kept.encode() in raw, path  # nothing of theirs, the others kept
        pickle.loads(raw)  # still a readable snapshot


def social(user: str, kind: str, friend: str) -> dict:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "session_id": "s-f", "kind": kind, "friend_id": friend,
            "occurred_at": datetime.now(UTC).isoformat()}


def test_friends_listening_feeds_slates_and_privacy_is_honoured_everywhere(worker, settings) -> None:  # type: ignore[no-untyped-def]
    _, url = worker
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    t_ann, t_bob = token_for(url, ann), token_for(url, bob)
    assert call(url + "/v1/events", "POST", [social(ann, "follow_user", bob)], token=t_ann)[0] == 202
    assert call(url + "/v1/events", "POST", [social(ann, "follow_user", ann)], token=t_ann)[0] == 202  # no edge
    finished = events(bob, 5)  # bob finishes and likes five tracks
    assert call(url + "/v1/events", "POST", finished, token=t_bob)[0] == 202
    bobs = {e["track_id"] for e in finished if e["kind"] == "play_end"}
    wait("the edge", lambda: call(url + f"/v1/users/{ann}/friends", token=t_ann)[1].get("following") == [bob])
    assert call(url + f"/v1/users/{bob}/friends", token=t_bob)[1]["followers"] == [ann]
    assert call(url + f"/v1/users/{ann}/feed", token=t_bob)[0] == 403

    feed = wait("bob's likes in ann's feed", lambda: [i for i in call(url + f"/v1/users/{ann}/feed", token=t_ann)[1]
                                                        ["items"] if i["user_id"] == bob and i["kind"] == "like"])
    assert {i["track_id"] for i in feed} == bobs
    board = call(url + f"/v1/users/{ann}/friends/board", token=t_ann)[1]
    assert {e["user_id"] for e in board["entries"]} == {bob}  # ann has no karma yet: bob only

    # ann asks for slates: what bob finished comes as candidates, explained by him (her first
    # request starts reading her friends' listening in the background; the next ones have it)
    def next_slate() -> dict:
        ask = events(ann, 0)
        assert call(url + "/v1/events", "POST", ask, token=t_ann)[0] == 202
        return wait("ann's slate", lambda: (got := call(url + f"/v1/recommendations/{ann}", token=t_ann))[0] == 200
                    and got[1]["request_id"] == ask[-1]["event_id"] and got[1])

    slate = wait("a slate with bob's listening", lambda: (s := next_slate()) and any(
        i["source"] == "friends" for i in s["items"]) and s, timeout=30)
    from_bob = [i for i in slate["items"] if i["source"] == "friends"]
    assert from_bob and {i["track_id"] for i in from_bob} <= bobs, slate["items"]
    assert all(i["explanation"] == f"{bob}, whom you follow, finished it lately" for i in from_bob)

    # bob keeps it all to himself: feed, friends board, public boards and candidates honour it
    status, now = call(url + f"/v1/users/{bob}/privacy", "PUT", {"listening": "nobody", "activity": "nobody",
                                                                   "board": "nobody"}, token=t_bob)
    assert status == 200 and now == {"listening": "nobody", "activity": "nobody", "board": "nobody"}
    assert call(url + f"/v1/users/{bob}/privacy", "PUT", {"board": "friends-of-friends"}, token=t_bob)[0] == 400
    assert call(url + f"/v1/users/{ann}/feed", token=t_ann)[1]["items"] == []
    assert call(url + f"/v1/users/{ann}/friends/board", token=t_ann)[1]["entries"] == []
    store = ListenerStore(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    assert store.friends_listening([ann]) == {ann: []}
    rank = call(url + f"/v1/users/{bob}/profile", token=t_bob)[1]["rank"]

    def bob_on_the_board() -> str:
        entries = call(url + f"/v1/leaderboards/global?around={bob}&n=2")[1]["entries"]
        return next(e["user_id"] for e in entries if e["rank"] == rank)

    wait("bob hidden on the public board", lambda: bob_on_the_board() == "(private)", timeout=40)  # a 30 s cache

    assert call(url + "/v1/events", "POST", [social(ann, "unfollow_user", bob)], token=t_ann)[0] == 202
    wait("the unfollow", lambda: call(url + f"/v1/users/{ann}/friends", token=t_ann)[1].get("following") == [])


def test_an_offline_pack_is_size_bounded_and_its_plays_count_once_with_their_times(worker) -> None:  # type: ignore[no-untyped-def]
    _, url = worker
    dee = f"dee-{uuid.uuid4().hex[:6]}"
    token = token_for(url, dee)
    status, pack = call(url + f"/v1/users/{dee}/offline", "POST", {"max_mb": 40, "tracks": 30}, token=token)
    if status == 202:  # still being made: fetched by its rec_id
        pack = wait("the pack", lambda: (got := call(url + f"/v1/users/{dee}/offline/{pack['rec_id']}?max_mb=40",
                                                     token=token))[0] == 200 and got[1])
        status = 201
    assert status == 201, pack
    again = call(url + f"/v1/users/{dee}/offline/{pack['rec_id']}?max_mb=40", token=token)
    assert again[0] == 200 and again[1]["items"] == pack["items"]
    assert call(url + f"/v1/users/{dee}/offline/{pack['rec_id']}", token=token_for(url, "mallory"))[0] == 403
    assert 0 < len(pack["items"]) < 30 and pack["total_bytes"] <= pack["max_bytes"] == 40_000_000
    assert sum(i["bytes"] for i in pack["items"]) == pack["total_bytes"]
    assert call(url + f"/v1/users/{dee}/offline", "POST", {"max_mb": -1}, token=token)[0] == 400

    # back online: the device reports what it played, at the times it played them, twice (a retry)
    made = datetime.fromisoformat(pack["created_at"])
    time.sleep(2.0)
    played = []
    for n, item in enumerate(pack["items"][:3]):
        for kind, dt in (("play_start", 0.2), ("play_end", 0.9)):
            played.append({"event_id": str(uuid.uuid4()), "user_id": dee, "session_id": "offline-s",
                           "kind": kind, "track_id": item["track_id"], "rec_id": pack["rec_id"],
                           "position": item["position"], "listened_ms": item["duration_ms"] if kind == "play_end"
                           else None, "track_duration_ms": item["duration_ms"],
                           "occurred_at": (made + timedelta(seconds=n + dt)).isoformat(),
                           "context": {"network": "offline"}})
    assert call(url + "/v1/events", "POST", played, token=token)[0] == 202
    once = wait("karma for the offline plays", lambda: (got := call(url + f"/v1/users/{dee}/profile", token=token))
                [0] == 200 and got[1]["stats"].get("completions", got[1]["karma"]) and got[1])
    model = wait("the plays learned", lambda: (m := call(url + f"/v1/users/{dee}/model", token=token))[0] == 200
                 and m[1]["completions"] >= 3 and m[1])
    assert pack["rec_id"] in model["open_decisions"]  # the pack waits for its plays (ENCORE_OFFLINE_WINDOW_S)
    assert call(url + "/v1/events", "POST", played, token=token)[0] == 202  # the same events again
    time.sleep(3.0)
    again = call(url + f"/v1/users/{dee}/profile", token=token)[1]
    assert (again["karma"], again["stats"]) == (once["karma"], once["stats"])  # karma counted once
    assert call(url + f"/v1/users/{dee}/model", token=token)[1]["completions"] == model["completions"]  # learned once


def test_lists_are_built_from_the_model_explained_and_honour_unfollows(worker, settings) -> None:  # type: ignore[no-untyped-def]
    from agents.worker import load_catalogue

    _, url = worker
    cat = load_catalogue(settings.catalogue)
    eve = f"eve-{uuid.uuid4().hex[:6]}"
    token = token_for(url, eve)
    jazz = [t for i, t in enumerate(cat.track_ids) if cat.genre_idx[i] == 0][:8]  # one genre: a Daily Mix
    now = datetime.now(UTC)
    sent = []
    for n, track in enumerate(jazz):
        for kind in ("play_start", "play_end", "like"):
            sent.append({"event_id": str(uuid.uuid4()), "user_id": eve, "session_id": "s-l", "kind": kind,
                         "track_id": track, "occurred_at": (now - timedelta(seconds=60 - n)).isoformat()})
    mine = {cat.artist_ids[cat.index[t]] for t in jazz}
    others = sorted(set(cat.artist_ids) - mine)
    sent.append({"event_id": str(uuid.uuid4()), "user_id": eve, "session_id": "s-l", "kind": "follow_artist",
                 "artist_id": others[0], "occurred_at": now.isoformat()})
    sent.append({"event_id": str(uuid.uuid4()), "user_id": eve, "session_id": "s-l", "kind": "unfollow_artist",
                 "artist_id": others[1], "occurred_at": now.isoformat()})
    assert call(url + "/v1/events", "POST", sent, token=token)[0] == 202
    wait("eve's plays learned", lambda: (m := call(url + f"/v1/users/{eve}/model", token=token))[0] == 200
         and m[1]["completions"] >= len(jazz))
    status, got = call(url + f"/v1/users/{eve}/lists", "POST", token=token)  # rebuilt now, from what was learned
    assert status == 200, got
    lists = got["lists"]
    assert set(lists) == {"daily_mix", "discovery_weekly", "artists_you_may_like", "hidden_gems"}
    assert lists["daily_mix"] and lists["daily_mix"][0]["title"] == f"Daily Mix: {cat.genres[0]}"
    for name, ones in lists.items():
        for one in ones:
            assert one["items"] and all(i["why"] for i in one["items"]), (name, one)
    assert not {cat.artist_ids[cat.index[i["id"]]] for i in lists["discovery_weekly"][0]["items"]} & mine
    gems = {cat.index[i["id"]] for i in lists["hidden_gems"][0]["items"]}
    assert not {cat.artist_ids[i] for i in gems} & mine
    artists = [i["id"] for i in lists["artists_you_may_like"][0]["items"]]
    assert others[1] not in artists and not set(artists) & mine  # never an unfollowed or already played artist
    assert call(url + f"/v1/users/{eve}/lists", token=token)[1]["built_at"] == got["built_at"]  # stored, served
    assert call(url + f"/v1/users/{eve}/lists", token=token_for(url, "mallory"))[0] == 403


def test_a_journey_leads_the_slates_step_by_step_to_its_target(worker, settings) -> None:  # type: ignore[no-untyped-def]
    from agents.worker import load_catalogue

    _, url = worker
    cat = load_catalogue(settings.catalogue)
    fay = f"fay-{uuid.uuid4().hex[:6]}"
    token = token_for(url, fay)
    assert call(url + "/v1/events", "POST", events(fay, 4), token=token)[0] == 202
    wait("fay's model", lambda: call(url + f"/v1/users/{fay}/journey", token=token)[0] == 200)
    target = f"genre:{cat.genres[3]}"
    assert call(url + f"/v1/users/{fay}/journey", "POST", {"target": "genre:polka-metal"}, token=token)[0] == 400
    status, got = call(url + f"/v1/users/{fay}/journey", "POST", {"target": target}, token=token)
    assert status == 200 and target in got["targets"], got
    steps = got["journey"]["steps"]
    assert len(steps) == 5 and all(s["why"].startswith(f"step {k} of 5 toward {cat.genres[3]}")
                                   for k, s in enumerate(steps, 1))
    assert cat.genre_of(cat.index[steps[-1]["track_id"]]) == cat.genres[3]  # it arrives
    for k in range(2):  # the slate leads with the current step; finishing it moves the journey on
        ask = events(fay, 0)
        assert call(url + "/v1/events", "POST", ask, token=token)[0] == 202
        slate = wait("the slate", lambda ask=ask: (s := call(url + f"/v1/recommendations/{fay}", token=token))[0] == 200
                     and s[1]["request_id"] == ask[-1]["event_id"] and s[1])
        first = slate["items"][0]
        assert (first["track_id"], first["source"], first["propensity"]) == (steps[k]["track_id"], "journey", 1.0)
        done = {"event_id": str(uuid.uuid4()), "user_id": fay, "session_id": "s-1", "kind": "play_end",
                "track_id": first["track_id"], "rec_id": slate["rec_id"], "position": 0,
                "occurred_at": datetime.now(UTC).isoformat()}
        assert call(url + "/v1/events", "POST", [done], token=token)[0] == 202
        wait("the next step", lambda k=k: call(url + f"/v1/users/{fay}/journey", token=token)[1]["journey"]["position"]
             == k + 1)
    assert call(url + f"/v1/users/{fay}/journey", "DELETE", token=token)[1]["journey"] is None


def test_the_dashboard_data_answers_the_worker_host_and_service_keys_only() -> None:
    from types import SimpleNamespace

    from dashboard.web import operator

    keys = frozenset({"k1"})
    assert operator(SimpleNamespace(remote="127.0.0.1", headers={}), keys)
    assert operator(SimpleNamespace(remote="::1", headers={}), keys)
    assert not operator(SimpleNamespace(remote="10.1.2.3", headers={}), keys)  # another pod: every listener's data
    assert not operator(SimpleNamespace(remote="10.1.2.3", headers={"X-API-Key": "nope"}), keys)
    assert operator(SimpleNamespace(remote="10.1.2.3", headers={"X-API-Key": "k1"}), keys)
