"""``encore`` command line: produce, replay, tail, simulate, demo, topics, token, forget.

    encore produce events.jsonl            # one JSON event (or batch) per line; - for stdin
    encore replay history.csv --speed 60   # CSV user,track,timestamp[,artist,duration,action]
    encore tail encore.recommendations     # any topic, decoded (Avro contracts, JSON, bytes)
    encore simulate --seconds 60           # closed-loop listeners against a running worker
    encore demo                            # simulate + a readable summary (make demo)
    encore topics                          # create the topic catalogue, list partitions
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.events import Interaction, Kind
from streams.client import EventProducer, RecordConsumer
from streams.settings import Settings, load_settings
from streams.topics import CATALOGUE, create_topics

console = Console()
REPLAY_NAMESPACE = uuid.UUID("2b7c9a52-90a8-4f5e-bb0f-8d7d1c4a6e31")
SESSION_GAP = timedelta(minutes=30)
ACTIONS = {
    "": Kind.PLAY_END, "play": Kind.PLAY_END, "listen": Kind.PLAY_END, "complete": Kind.PLAY_END,
    "skip": Kind.SKIP, "like": Kind.LIKE, "love": Kind.LIKE, "dislike": Kind.DISLIKE,
    "replay": Kind.REPLAY, "playlist_add": Kind.PLAYLIST_ADD, "share": Kind.SHARE,
    "thumbs_up": Kind.THUMBS_UP, "thumbs_down": Kind.THUMBS_DOWN, "play_start": Kind.PLAY_START,
}


# --- produce ---------------------------------------------------------------------------------
def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    """Each line is sent as it is (JSON accepted on the events topic), keyed by its user_id."""
    src = sys.stdin if args.file == "-" else open(args.file)
    sent = 0
    with EventProducer(settings) as producer:
        for line in src:
            line = line.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
                key = doc.get("user_id") if isinstance(doc, dict) else None
            except ValueError:
                key = None  # still sent: the worker dead-letters it with the reason
            producer.send_raw(str(key) if key is not None else None, line.encode())
            sent += 1
    console.print(f"sent {sent} records to {settings.topic('encore.events')}")
    return 0


# --- replay ----------------------------------------------------------------------------------
def read_history(path: Path) -> Iterator[Interaction]:
    """CSV columns: user, track, timestamp (ISO 8601 or unix seconds); optional artist,
    duration (seconds or ms), action (play/skip/like/...). Event ids are derived from the row,
    so replaying a file twice is idempotent downstream."""
    sessions: dict[str, tuple[int, datetime]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"user", "track", "timestamp"} - set(reader.fieldnames or [])
        if missing:
            raise SystemExit(f"{path}: missing column(s) {sorted(missing)}; need user,track,timestamp")
        for n, row in enumerate(reader, start=2):
            ts = _parse_time(row["timestamp"], path, n)
            action = (row.get("action") or "").strip().lower()
            if action not in ACTIONS:
                raise SystemExit(f"{path}:{n}: unknown action {action!r}; use one of {sorted(ACTIONS)}")
            user = row["user"].strip()
            count, last = sessions.get(user, (0, ts))
            if ts - last > SESSION_GAP:
                count += 1
            sessions[user] = (count, ts)
            duration = row.get("duration") or ""
            dur_ms = None
            if duration:
                value = float(duration)
                dur_ms = int(value if value > 10_000 else value * 1000)
            kind = ACTIONS[action]
            yield Interaction(
                event_id=uuid.uuid5(REPLAY_NAMESPACE, f"{path.name}:{n}:{user}:{row['track']}:{row['timestamp']}:{action}"),
                user_id=user, session_id=f"{user}-replay-{count}", occurred_at=ts, kind=kind,
                track_id=row["track"].strip(), artist_id=(row.get("artist") or None),
                track_duration_ms=dur_ms, listened_ms=dur_ms if kind == Kind.PLAY_END else None,
            )


def _parse_time(value: str, path: Path, line: int) -> datetime:
    value = value.strip()
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        pass
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"{path}:{line}: timestamp {value!r} is neither ISO 8601 nor unix seconds") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Send the history in timestamp order; --speed N replays N times faster than it happened
    (0 = as fast as possible)."""
    events = sorted(read_history(Path(args.file)), key=lambda e: e.occurred_at)
    if not events:
        console.print("no rows to replay")
        return 0
    first, wall0 = events[0].occurred_at, time.monotonic()
    with EventProducer(settings) as producer, _progress() as bar:
        task = bar.add_task("replaying", total=len(events), info=f"{len(events):,} events")
        for event in events:
            if args.speed > 0:
                due = (event.occurred_at - first).total_seconds() / args.speed
                delay = due - (time.monotonic() - wall0)
                if delay > 0:
                    producer.poll(min(delay, 1.0))
                    time.sleep(max(0.0, due - (time.monotonic() - wall0)))
            producer.send(event)
            bar.advance(task)
    console.print(f"replayed {len(events)} events from {args.file} into {settings.topic('encore.events')}")
    return 0


# --- tail ------------------------------------------------------------------------------------
def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    seen = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    with RecordConsumer(settings, [args.topic], group_id=f"encore-tail-{uuid.uuid4().hex[:8]}",
                        from_beginning=args.from_beginning) as consumer:
        while deadline is None or time.monotonic() < deadline:
            for msg in consumer.poll_decoded(timeout=0.5):
                value = msg.value
                body = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
                if isinstance(body, bytes):
                    body = body.hex()
                print(json.dumps({"topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
                                  "key": msg.key, "type": type(value).__name__, "value": body}), flush=True)
                seen += 1
                if args.max and seen >= args.max:
                    return 0
    return 0


# --- simulate / demo -------------------------------------------------------------------------
def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=console, disable=False)


def _worker_counts(settings: Settings) -> dict[str, float]:
    """Sums of the worker's domain counters from its /metrics page ({} if unreachable)."""
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except Exception:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("encore_") and not line.startswith("#"):
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{")[0]
            if name.endswith("_total") or name in ("encore_reward_accumulated", "encore_reward_count"):
                key = name_labels if name in ("encore_dead_letters_total", "encore_slate_items_total") else name
                out[key] = out.get(key, 0.0) + float(value)
    return out


def run_simulation(settings: Settings, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from agents.worker import load_catalogue
    from streams.simloop import ClosedLoop
    from streams.simulator import Returns, World

    run_id = args.run_id or uuid.uuid4().hex[:8]
    console.print(f"simulation run {run_id} (seed {args.seed}; --run-id {run_id} replays it, event ids included)")
    world = World(load_catalogue(settings.catalogue), n_listeners=args.listeners, seed=args.seed, run_id=run_id,
                  communities=args.communities)
    rate = 0.0 if args.saturate else args.rate
    if rate:
        console.print(f"listeners paced to {rate:,.0f} events/s (a load one worker sustains); --saturate shows capacity")
    returns = Returns(args.return_base, gamification_lift=args.gamification_lift) if args.days else None
    if returns:
        console.print(f"{args.days} simulated days, listeners return with p = {returns.base} + "
                      f"{returns.per_satisfaction} x (completion share - 0.5) + {returns.gamification_lift} if they "
                      "earned karma")
    friends = world.friend_graph(args.follows, seed=args.seed) if args.follows else None
    if friends:
        console.print(f"each listener follows {args.follows} others, mostly from their taste community")
    loop = ClosedLoop(settings, world, concurrency=args.concurrency, slate_size=settings.slate_size,
                      bad_rate=args.bad_rate, seed=args.seed, rate=rate, returns=returns, days=args.days,
                      friends=friends)
    before = _worker_counts(settings)
    try:
        with _progress() as bar:
            task = bar.add_task("simulating", total=args.seconds, info="")
            t0 = time.monotonic()

            def tick(stats) -> None:  # type: ignore[no-untyped-def]
                el = time.monotonic() - t0
                if stats.requests % 50 == 0:
                    bar.update(task, completed=min(el, args.seconds),
                               info=f"{stats.events:,} events · {stats.slates:,} slates · "
                                    f"{stats.events / max(el, 1e-9):,.0f} ev/s")

            stats = loop.run(args.seconds, on_tick=tick)
            bar.update(task, completed=args.seconds)
    finally:
        loop.close()
    # let the worker drain what is still queued before reading its counters
    deadline, last, still = time.monotonic() + 30, -1.0, 0
    while time.monotonic() < deadline:
        after = _worker_counts(settings)
        done = after.get("encore_events_total", 0.0) - before.get("encore_events_total", 0.0)
        still = still + 1 if done == last else 0
        if not after or done >= stats.events or still >= 5:  # caught up, or stalled for 5 s
            break
        last = done
        time.sleep(1.0)
    return world, stats, {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    world, stats, worker = run_simulation(settings, args)
    print_summary(settings, world, stats, worker)
    if args.command == "demo":
        publish_embeddings(settings)
    return 0 if stats.slates and not stats.timed_out else 1


def publish_embeddings(settings: Settings) -> None:
    """The embedding job once, on what the demo's listeners did (read through the worker, which
    owns the chDB store), then wait for the worker to serve the version."""
    from online_models import embeddings

    url = f"http://{settings.web_host}:{settings.web_port}"
    console.print("[bold]Embedding job[/bold] (python -m online_models.embeddings train --worker URL)")
    try:
        if embeddings.main(["train", "--worker", url, "--days", "3650"]) != 0:
            return
    except (OSError, ValueError) as exc:  # analytics off, or the worker gone: the demo still ends well
        console.print(f"[yellow]embedding job skipped: {exc} (it reads the events through the worker's "
                      "analytics API; ENCORE_ANALYTICS_ENABLED must be true)[/yellow]")
        return
    deadline = time.monotonic() + settings.embeddings_poll_s + 20
    while time.monotonic() < deadline:
        served = _worker_gauge(settings, "encore_embeddings_tracks")
        if served:
            console.print(f"the worker serves it: {served:,.0f} catalogue tracks with a vector "
                          "(encore_embeddings_tracks); slates now use cf_* features and taste clusters")
            return
        time.sleep(1.0)
    console.print(f"[yellow]the worker has not loaded it yet; see {settings.log_dir}/worker.log (step=embeddings)[/yellow]")


def _worker_gauge(settings: Settings, name: str) -> float:
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except Exception:
        return 0.0
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name + " "))


def print_summary(settings: Settings, world, stats, worker: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    t = Table(title="Encore demo summary", show_header=False)
    wall = max(stats.wall_s, 1e-9)
    worker_events = worker.get("encore_events_total", 0.0)
    t.add_row("events sent by listeners", f"{stats.events:,} in {wall:.1f} s = {stats.events / wall:,.0f} events/s")
    if worker:
        t.add_row("events processed by the worker", f"{worker_events:,.0f} = {worker_events / wall:,.0f} events/s "
                  f"in {worker.get('encore_records_total', 0):,.0f} Kafka records")
    t.add_row("slates served", f"{stats.slates:,} of {stats.requests:,} requests "
              f"(timed out {stats.timed_out}, latency p50 {stats.latency(50):.0f} ms, p95 {stats.latency(95):.0f} ms, "
              f"p99 {stats.latency(99):.0f} ms)")
    played = stats.completions + stats.skips
    t.add_row("listener behaviour", f"{stats.sessions:,} sessions, {played:,} tracks played, "
              f"completion rate {stats.completions / max(played, 1):.1%}")
    if stats.active_by_day:
        t.add_row("returning listeners", " → ".join(f"day {d}: {n:,}" for d, n in enumerate(stats.active_by_day)))
    t.add_row("reward vs oracle", f"{stats.reward / max(stats.oracle_reward, 1e-9):.1%} of the best possible "
              f"expected completions (policy: {settings.policy})")
    if worker.get("encore_reward_count"):
        n = worker["encore_reward_count"]
        t.add_row("learning", f"{n:,.0f} slate items joined to their feedback and learned from, mean reward "
                  f"{worker.get('encore_reward_accumulated', 0.0) / n:+.2f}; decisions with rewards in "
                  f"{settings.topic('encore.rewards')}")
    items = {k: v for k, v in worker.items() if k.startswith("encore_slate_items_total")}
    social = sum(v for k, v in items.items() if 'source="friends"' in k)
    if items:
        t.add_row("friends' listening", f"{social:,.0f} slate items ({social / max(sum(items.values()), 1):.1%}) came "
                  "from what the listeners someone follows finished lately")
    dlq = {k.split('"')[1]: v for k, v in worker.items() if k.startswith("encore_dead_letters_total")}
    injected = sum(stats.bad_injected.values())
    t.add_row("dead letters", f"{sum(dlq.values()):,.0f} in {settings.topic('encore.events.dlq')} "
              f"({', '.join(f'{k}: {v:.0f}' for k, v in sorted(dlq.items())) or 'none'}); "
              f"{injected} malformed records injected")
    console.print(t)
    top = Table(title="Top tracks (completed plays)")
    for col in ("track", "artist", "genre", "plays"):
        top.add_column(col)
    cat = world.catalogue
    for track, n in stats.completed_tracks.most_common(5):
        i = cat.index[track]
        top.add_row(track, cat.artist_ids[i], cat.genre_of(i), str(n))
    console.print(top)
    print_gamification(settings)
    console.print(
        "[bold]Where to look next[/bold]\n"
        f"  dashboard:    http://{settings.web_host}:{settings.web_port}/dashboard/ "
        f"(listener view: /dashboard/listener?user=...) — the worker keeps serving it until `make down`\n"
        f"  listener app: .venv/bin/encore token {world.listeners[0].user_id} prints the link to their app\n"
        f"  slates:       .venv/bin/encore tail encore.recommendations --max 3\n"
        f"  dead letters: .venv/bin/encore tail encore.events.dlq --from-beginning --max 5\n"
        f"  metrics:      curl http://{settings.web_host}:{settings.web_port}/metrics\n"
        f"  logs:         {settings.log_dir}/worker.log\n"
        "  stop:         make down"
    )


def print_gamification(settings: Settings) -> None:
    """The top of the global leaderboard and the leader's profile, read back from Redis."""
    if not settings.gamification_enabled:
        return
    import redis

    from agents.gamify import Rules
    from sinks.gamification import GamificationStore

    try:
        store = GamificationStore(redis.Redis.from_url(settings.redis_url), Rules.from_toml(settings.gamification_rules),
                                  prefix=settings.redis_prefix)
        top = store.top("global", 5)
    except redis.RedisError as exc:
        console.print(f"[red]leaderboard unavailable: {exc}; is Redis at {settings.redis_url} up? (`make up`)[/red]")
        return
    board = Table(title="Leaderboard (global karma)")
    for col in ("rank", "listener", "karma"):
        board.add_column(col)
    for rank, (user, score) in enumerate(top, start=1):
        board.add_row(str(rank), user, f"{score:,.0f}")
    console.print(board)
    if not top:
        return
    p = store.profile(top[0][0])
    unlocked = [a["title"] for a in p["achievements"] if a["unlocked"]]
    nearest = sorted((a for a in p["achievements"] if not a["unlocked"]),
                     key=lambda a: a["progress"] / a["target"], reverse=True)[:2]
    challenges = [f"{c['title']}: {c['progress']}/{c['target']}" for c in p["challenges"]]
    next_up = ", ".join(f"{a['title']} {a['progress']}/{a['target']}" for a in nearest)
    console.print(
        f"[bold]Profile of {p['user_id']}[/bold]: karma {p['karma']:,} (earned {p['earned']:,}), tier {p['tier']}, "
        f"streak {p['streak']} day(s) (best {p['best_streak']})\n"
        f"  avatar items: {', '.join(p['avatar_items']) or '-'}\n"
        f"  achievements: {', '.join(unlocked) or '-'}\n"
        f"  next up:      {next_up or '-'}\n"
        f"  challenges:   {'; '.join(challenges) or '-'}"
    )


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    status = create_topics(settings)
    for spec in CATALOGUE:
        name = settings.topic(spec.name)
        console.print(f"{name:28} {status[name]:8} key={spec.key:12} value={spec.value}")
    return 0


def cmd_rebuild_gamification(settings: Settings, args: argparse.Namespace) -> int:
    """Karma, streaks, achievements and boards recomputed from the events in ClickHouse."""
    import redis

    from agents.gamify import Rules
    from agents.rebuild import rebuild
    from agents.worker import load_catalogue
    from sinks.clickhouse import ClickHouseError, ClickHouseStore
    from sinks.gamification import GamificationStore

    try:
        clickhouse = ClickHouseStore(settings.clickhouse_dsn)
    except ClickHouseError as exc:
        console.print(f"[red]{exc}[/red]\nStop the workers first (`make down`), then run this again.")
        return 1
    clickhouse.migrate()
    store = GamificationStore(redis.Redis.from_url(settings.redis_url), Rules.from_toml(settings.gamification_rules),
                              prefix=settings.redis_prefix)
    with _progress() as bar:
        task = bar.add_task("replaying events", total=None, info="")
        counts = rebuild(clickhouse, store, load_catalogue(settings.catalogue),
                         lambda done, total: bar.update(task, completed=done, total=total,
                                                        info=f"{done:,} / {total:,} events"))
    console.print(f"rebuilt: {counts['events']:,} events read, {counts['applied']:,} applied, "
                  f"{counts['skipped']:,} skipped, {counts['keys_removed']:,} old keys removed; "
                  "a fresh generation marker clears encore_redis_state_lost. Start the workers again.")
    return 0


def _worker_call(settings: Settings, method: str, path: str, body: object = None) -> tuple[int, dict]:
    """One call to the local worker's API with the service key (ENCORE_API_KEYS or the local one)."""
    import urllib.error

    from deploy.local.stack import Stack

    url = f"http://{settings.web_host}:{settings.web_port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "X-API-Key": Stack(settings).api_key()})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except OSError as exc:
        return 0, {"error": f"no worker at {url} ({exc}); start one with `make up`"}


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """A listener token from the worker (what a sign-in service does for a signed-in listener)."""
    status, body = _worker_call(settings, "POST", "/v1/tokens", {"user_id": args.user})
    if status != 201:
        console.print(f"[red]no token ({status}): {body.get('error')}[/red]")
        return 1
    print(body["token"])
    Console(stderr=True).print(f"valid until {body['expires_at']}; the listener app: http://{settings.web_host}:"
                               f"{settings.web_port}/app/#token={body['token']}", highlight=False, soft_wrap=True)
    return 0


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    """Erase a listener everywhere, and wait until Redis holds nothing of theirs."""
    import redis

    from sinks.listeners import ListenerStore

    status, body = _worker_call(settings, "DELETE", f"/v1/users/{args.user}")
    if status != 202:
        console.print(f"[red]erasure not requested ({status}): {body.get('error')}[/red]")
        return 1
    console.print(f"erasure of {args.user} requested at {body['requested_at']}; waiting for the workers")
    store = ListenerStore(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)
    deadline = time.monotonic() + args.timeout
    while left := store.holds(args.user):
        if time.monotonic() > deadline:
            console.print(f"[red]Redis still holds {len(left)} of their keys after {args.timeout:.0f} s: "
                          f"{left[:5]}; are the workers running? (`make status`)[/red]")
            return 1
        time.sleep(0.5)
    console.print(f"{args.user} is forgotten: no Redis key or board entry left; the workers erased their "
                  "ClickHouse rows and model state (see encore_listeners_erased_total)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="encore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce", help="send JSON lines to the events topic")
    p.add_argument("file", help="JSON lines file, or - for stdin")
    p = sub.add_parser("replay", help="replay a listening-history CSV into the events topic")
    p.add_argument("file")
    p.add_argument("--speed", type=float, default=0.0, help="N x real time; 0 = as fast as possible")
    p = sub.add_parser("tail", help="print a topic's records decoded, one JSON per line")
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=int, default=0, help="stop after N records")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after N seconds")
    for name in ("simulate", "demo"):
        p = sub.add_parser(name, help="closed-loop listeners against a running worker")
        p.add_argument("--seconds", type=float, default=60.0)
        p.add_argument("--listeners", type=int, default=5000)
        p.add_argument("--concurrency", type=int, default=500, help="listeners waiting on a slate at once")
        p.add_argument("--bad-rate", type=float, default=0.005 if name == "demo" else 0.0,
                       help="share of requests followed by a malformed record (DLQ path)")
        p.add_argument("--seed", type=int, default=11)
        p.add_argument("--communities", type=int, default=8,
                       help="taste communities of the simulated listeners (0: the old world, independent tastes)")
        p.add_argument("--rate", type=float, default=500.0 if name == "demo" else 0.0,
                       help="events/s the listeners send at most (0: as fast as slates come back)")
        p.add_argument("--saturate", action="store_true", help="no pace: as many listeners as --concurrency, "
                       "as fast as the worker answers (capacity, with the latency that costs)")
        p.add_argument("--follows", type=int, default=5 if name == "demo" else 0,
                       help="each listener follows this many others, mostly from their taste community "
                       "(follow_user events before their first request; their slates draw on friends' listening)")
        p.add_argument("--run-id", default="", help="event-id namespace; default: a fresh one per run")
        p.add_argument("--days", type=int, default=0, help="simulated days with returning listeners (experiments): "
                       "everyone listens on day 0, then comes back the next day with a probability set by what "
                       "they experienced; --seconds still bounds the run")
        p.add_argument("--return-base", type=float, default=0.5, help="return probability after a neutral day")
        p.add_argument("--gamification-lift", type=float, default=0.0,
                       help="true effect: added return probability for a listener who earned karma that day")
    sub.add_parser("topics", help="create the topic catalogue and list it")
    sub.add_parser("rebuild-gamification", help="recompute Redis gamification state from the events in "
                   "ClickHouse (workers stopped)")
    p = sub.add_parser("token", help="print a listener token (and the listener app's link)")
    p.add_argument("user")
    p = sub.add_parser("forget", help="erase a listener from every store (their right to be forgotten)")
    p.add_argument("user")
    p.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    settings = load_settings()
    commands = {"produce": cmd_produce, "replay": cmd_replay, "tail": cmd_tail,
                "simulate": cmd_simulate, "demo": cmd_simulate, "topics": cmd_topics,
                "rebuild-gamification": cmd_rebuild_gamification, "token": cmd_token, "forget": cmd_forget}
    return commands[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
