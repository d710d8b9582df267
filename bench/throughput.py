"""Throughput and latency of the worker, on a fresh local stack, against the goals of the
hot-path issue. ``make bench-throughput`` runs it; figures go to ``bench/out/throughput.json``
and a latency plot to ``bench/out/throughput.png``.

    python -m bench.throughput [--events 100000] [--rate 10000] [--seconds 20] [--skip two,bare]

(a) drain:  the workload (``bench.workload``: the demo's mix, >= 100k events in listener batch
            records) is put on a fresh events topic, then one worker with every step on
            (decode, validation, reward join, bandit update and slates, karma in Redis,
            analytics in chDB) drains it; events/s from its first record to its last.
(b) bare:   a bare Faust agent (``bench.bare_faust``) reads the same records, same broker.
(c) open loop: the workload is produced at a fixed event rate (half of (a), and ``--rate`` if
            (a) allows) while a probe sends a fresh listener's rec_request every 20 ms and an
            independent consumer reads its slate back: latency from the moment the request was
            produced to the moment its slate is read, p50 / p95 / p99.
(d) two workers draining the same workload against one.
(e) recommender memory per listener (the snapshot's bytes over the listeners it knows).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from bench.workload import read_workload, workload
from deploy.local.stack import Stack, _stop, free_port, settings_env
from schemas.events import Interaction, Kind
from schemas.wire import Serde
from streams.settings import ROOT, Settings
from streams.topics import EVENTS, RECOMMENDATIONS

OUT = Path(__file__).resolve().parent / "out"
GOALS = {"drain_events_per_s": 20_000, "share_of_bare": 0.35, "p50_ms": 15, "p99_ms": 50, "two_workers_ratio": 1.6,
         "bytes_per_listener": 2048}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, state: Path, tree: Path = ROOT) -> None:
        self.state = state
        self.tree = tree  # the checkout whose worker runs (another one gives a before / after pair)
        self.base = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             state_dir=state, clickhouse_dsn=f"chdb://{state / 'chdb'}", log_json=False)
        self.stack = Stack(self.base)
        self.stack.ensure_broker()
        self.stack.ensure_redis()
        self.runs = 0

    def fresh(self) -> Settings:
        """Settings for one run: its own topics (prefix), consumer group, chDB path, empty Redis."""
        self.runs += 1
        run = f"r{self.runs}-{uuid.uuid4().hex[:4]}"
        import redis

        redis.Redis.from_url(self.base.redis_url).flushall()
        s = self.base.model_copy(update={"topic_prefix": f"{run}.", "app_id": f"bench-{run}",
                                         "clickhouse_dsn": f"chdb://{self.state / run / 'chdb'}",
                                         "state_dir": self.state / run})
        Stack(s).ensure_topics()
        return s

    def produce(self, settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
        p = Producer({**settings.kafka_config(), "linger.ms": 20, "batch.num.messages": 10000,
                      "queue.buffering.max.messages": 1_000_000})
        topic = settings.topic(EVENTS.name)
        for key, value in records:
            p.produce(topic, value, key)
            p.poll(0)
        p.flush(60)

    def start(self, settings: Settings, name: str, module: str = "agents.worker") -> tuple[Settings, int]:
        s = settings.model_copy(update={"web_port": free_port()})
        env = {**os.environ, **settings_env(s), "PYTHONPATH": str(self.tree if module == "agents.worker" else ROOT)}
        s.state_dir.mkdir(parents=True, exist_ok=True)
        log = (s.state_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", module], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=self.tree if module == "agents.worker" else ROOT, start_new_session=True)
        return s, proc.pid


def metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except Exception:
        return -1.0
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def inside(port: int) -> dict[str, float]:
    """What the worker says of its batches (from its /metrics)."""
    def mean(name: str) -> float:
        return metric(port, f"{name}_sum") / max(metric(port, f"{name}_count"), 1)

    return {"records_per_batch": mean("encore_batch_records"), "batch_seconds": mean("encore_batch_seconds"),
            "clickhouse_flush_seconds": mean("encore_sink_flush_seconds"),
            "slate_latency_mean_s": mean("encore_recommendation_latency_seconds"),
            "stalls": metric(port, "encore_step_failures_total")}


def wait_ready(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"worker on :{port} not ready in {timeout} s; see its log under the bench state dir")


def workload_embeddings(records: list[tuple[bytes, bytes]]) -> Any:
    """The embedding job over the workload's own plays (what it would read from ClickHouse)."""
    from agents.worker import load_catalogue
    from online_models import embeddings
    from schemas.wire import Serde, decode_events

    cat = load_catalogue(Settings().catalogue)
    counts: dict[tuple[str, str], list[int]] = {}
    serde = Serde()
    for _, value in records:
        for e in decode_events(value, serde, max_bytes=10**7, max_events=10**6).events:
            if e.kind in ("play_start", "play_end") and e.track_id in cat.index:
                counts.setdefault((e.user_id, e.track_id), [0, 0])[e.kind == "play_end"] += 1
    return embeddings.train_on_plays(counts, lambda t: cat.genre_of(cat.index[t]))


def drain(bench: Bench, records: list[tuple[bytes, bytes]], workers: int = 1,
          profile: Path | None = None, embeddings: Any = None, **overrides: Any) -> dict[str, Any]:
    """Records on the topic first, then the workers start; events/s from first record to last.
    With ``profile``, py-spy samples the (first) worker into that file (collapsed stacks); with
    ``embeddings``, that version is published where the workers look before they start."""
    settings = bench.fresh().model_copy(update=overrides)
    if embeddings is not None:
        from online_models.embeddings import publish

        publish(embeddings, settings.embeddings_path)
        settings = settings.model_copy(update={"embeddings_poll_s": 0.2})
    bench.produce(settings, records)
    started = [bench.start(settings, f"worker{i}") for i in range(workers)]
    ports = [s.web_port for s, _ in started]
    spy = None
    if profile is not None:
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(started[0][1]),
                                "--rate", "200", "--format", "raw", "--threads", "--nonblocking", "-o", str(profile)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = None
        deadline = time.monotonic() + 900
        last_say = 0.0
        while time.monotonic() < deadline:
            done = [metric(p, "encore_records_total") for p in ports]
            total = sum(max(0.0, d) for d in done)
            now = time.monotonic()
            if first is None and total > 0:
                first = now
            if total >= len(records):
                events = sum(metric(p, "encore_events_total") for p in ports)
                seconds = now - (first or now)
                return {"records": total, "events": events, "seconds": seconds,
                        "events_per_s": events / seconds if seconds else float("nan"), "worker": inside(ports[0])}
            if now - last_say > 5:
                say(f"  drained {total:.0f} / {len(records)} records")
                last_say = now
            time.sleep(0.25)  # scraping /metrics costs the worker CPU: not too often
        raise RuntimeError("drain did not finish in 15 minutes")
    finally:
        for _, pid in started:
            _stop(pid)
        if spy is not None:
            spy.wait(30)


def bare(bench: Bench, records: list[tuple[bytes, bytes]], events: int) -> dict[str, float]:
    settings = bench.fresh()
    bench.produce(settings, records)
    s, pid = bench.start(settings, "bare", "bench.bare_faust")
    log = s.state_dir / "bare.log"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            # Faust routes stdout through its logger: the JSON is at the end of each line
            lines = [json.loads(x[x.index('{"t"'):].strip()) for x in log.read_text().splitlines()
                     if '{"t"' in x] if log.exists() else []
            if lines and lines[-1]["records"] >= len(records):
                # from the end of the first batch to the end of the last: (records - first batch) in that time
                seconds = lines[-1]["t"] - lines[0]["t"]
                n = lines[-1]["records"] - lines[0]["records"]
                return {"records": lines[-1]["records"], "seconds": seconds, "records_per_s": n / seconds,
                        "events_per_s": n / seconds * events / len(records)}
            time.sleep(0.2)
        raise RuntimeError(f"bare Faust did not finish; see {log}")
    finally:
        _stop(pid)


def open_loop(bench: Bench, records: list[tuple[bytes, bytes]], events_per_record: float, rate: float,
              seconds: float) -> dict[str, Any]:
    """Produce the workload at ``rate`` events/s, probe slate latency every 20 ms."""
    settings = bench.fresh()
    s, pid = bench.start(settings, "worker")
    serde = Serde()
    try:
        wait_ready(s.web_port)
        sent: dict[str, float] = {}
        got: dict[str, float] = {}
        stop = threading.Event()

        def read() -> None:
            # assigned, not subscribed: no group join (slow on tansu); every partition from its end
            c = Consumer({**settings.kafka_config(), "group.id": f"probe-{uuid.uuid4().hex[:6]}",
                          "fetch.wait.max.ms": 5, "fetch.min.bytes": 1, "enable.auto.commit": False})
            topic = settings.topic(RECOMMENDATIONS.name)
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            c.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
            while not stop.is_set():
                msg = c.poll(0.05)
                if msg is None or msg.error():
                    continue
                key = (msg.key() or b"").decode()
                if key.startswith("probe-"):
                    rec = serde.decode_any(msg.value())
                    got.setdefault(str(rec.request_id), time.time())  # type: ignore[attr-defined]
            c.close()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(2)  # the probe consumer is positioned
        p = Producer({**settings.kafka_config(), "linger.ms": 1})
        topic = settings.topic(EVENTS.name)
        per_s = rate / events_per_record
        t0 = time.monotonic()
        i = 0
        next_probe = t0
        n_records = min(len(records), int(per_s * seconds))
        while i < n_records or time.monotonic() - t0 < seconds:
            now = time.monotonic()
            due = min(n_records, int((now - t0) * per_s))
            while i < due:
                key, value = records[i]
                p.produce(topic, value, key)
                i += 1
            if now >= next_probe:
                req = Interaction(event_id=uuid.uuid4(), user_id=f"probe-{uuid.uuid4().hex[:8]}", session_id="probe",
                                  occurred_at=datetime.now(UTC), kind=Kind.REC_REQUEST)
                sent[str(req.event_id)] = time.time()
                p.produce(topic, req.model_dump_json().encode(), req.user_id.encode())
                next_probe += 0.02
            p.poll(0)
            time.sleep(0.0005)
        p.flush(30)
        time.sleep(3)
        stop.set()
        reader.join(5)
        worker = inside(s.web_port)
        lat = np.array([(got[k] - t) * 1000 for k, t in sent.items() if k in got])
        answered = len(lat)
        skip = int(len(lat) * 0.1)  # the first 10%: the worker warms up
        lat = lat[skip:]
        return {"rate": rate, "offered_records": i, "probes": len(sent), "answered": answered, "worker": worker,
                "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
                "p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
                "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
                "latencies_ms": lat.tolist()}
    finally:
        _stop(pid)


def memory_per_listener(records: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """Recommender state per listener after the workload, measured in process."""
    from agents.batch import BatchState, process_batch
    from agents.ingest import RawRecord
    from agents.recommend import Recommender
    from agents.worker import load_catalogue
    from online_models.policy import make_policy
    from online_models.reward import RewardJoin, RewardMapping
    from online_models.slate import SlateRules

    s = Settings()
    cat = load_catalogue(s.catalogue)
    policy = make_policy(s.policy, cat, rules=SlateRules(s.artist_cap, s.discovery_share), n_candidates=s.n_candidates)
    rec = Recommender(cat, policy, slate_size=s.slate_size, dedupe_window=s.dedupe_window,
                      join=RewardJoin(RewardMapping.from_toml(s.rewards_file), window_s=s.reward_window_s))
    state = BatchState(Serde(), cat, rec, None, False, s.max_record_bytes, s.max_batch_events)
    raw = [RawRecord("encore.events", 0, i, k, v) for i, (k, v) in enumerate(records)]
    for i in range(0, len(raw), 500):
        process_batch(raw[i:i + 500], state, datetime.now(UTC))
    import pickle

    listeners = len(policy.gen.profiles) if hasattr(policy, "gen") else len(rec.recent)
    # what grows with listeners (moves with a partition), with slates in flight, with events seen
    per_listener = (len(pickle.dumps(getattr(getattr(policy, "gen", None), "profiles", {})))
                    + len(pickle.dumps(getattr(policy, "sessions", None))) + len(pickle.dumps(rec.recent))
                    + len(pickle.dumps(rec.partition_of)))
    in_flight = len(rec.join.snapshot()) - len(rec.join.__class__().snapshot()) + len(pickle.dumps(rec.decisions))
    blob = rec.snapshot()
    return {"listeners": listeners, "snapshot_bytes": len(blob),
            "bytes_per_listener": per_listener / max(listeners, 1),
            "open_decisions": len(rec.join.open), "bytes_per_open_decision": in_flight / max(len(rec.join.open), 1),
            "event_ids_kept": len(rec.seen), "bytes_per_event_id": 80,  # RecentIds: set + queue of ints
            "snapshot_bytes_per_listener": len(blob) / max(listeners, 1)}


def pure_step_floor(records: list[tuple[bytes, bytes]], events: int) -> dict[str, float]:
    """(f) What the computation alone costs, in this process, with no broker, no store and no
    Faust: decoding only, then the whole pure step (decode, recommend, learn, karma effects,
    analytics rows) in batches of 500 records, as a draining worker takes them. The inverse is
    the most any single-process worker could drain with every step on, if all I/O were free."""
    from agents.batch import BatchState, decode, process_batch
    from agents.gamify import Rules
    from agents.ingest import RawRecord
    from agents.recommend import Recommender
    from agents.worker import load_catalogue
    from online_models.policy import make_policy
    from online_models.reward import RewardJoin, RewardMapping
    from online_models.slate import SlateRules

    s = Settings()
    cat = load_catalogue(s.catalogue)
    policy = make_policy(s.policy, cat, rules=SlateRules(s.artist_cap, s.discovery_share), n_candidates=s.n_candidates)
    rec = Recommender(cat, policy, slate_size=s.slate_size, dedupe_window=s.dedupe_window,
                      join=RewardJoin(RewardMapping.from_toml(s.rewards_file), window_s=s.reward_window_s))
    state = BatchState(Serde(), cat, rec, Rules.from_toml(s.gamification_rules), True, s.max_record_bytes,
                       s.max_batch_events)
    raw = [RawRecord("encore.events", 0, i, k, v) for i, (k, v) in enumerate(records)]
    batches = [raw[i:i + 500] for i in range(0, len(raw), 500)]
    now = datetime.now(UTC)
    started = time.perf_counter()
    for b in batches:
        decode(b, state, now)
    decode_s = time.perf_counter() - started
    started = time.perf_counter()
    slates = 0
    for b in batches:
        slates += len(process_batch(b, state, now).slates)
    step_s = time.perf_counter() - started
    return {"decode_us_per_event": decode_s / events * 1e6, "step_us_per_event": step_s / events * 1e6,
            "step_events_per_s": events / step_s, "slates": slates,
            "slates_per_event": slates / events, "rest_us_per_event": (step_s - decode_s) / events * 1e6}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in result.get("open_loop", []):
        lat = np.sort(np.array(run["latencies_ms"]))
        if len(lat):
            label = f"{run['rate']:,.0f} events/s offered" if run["rate"] else "probes only (idle worker)"
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=label)
    ax.axvline(GOALS["p50_ms"], color="grey", ls=":", label="goal p50 15 ms")
    ax.axvline(GOALS["p99_ms"], color="grey", ls="--", label="goal p99 50 ms")
    ax.set_xscale("log")
    ax.set_xlabel("request produced -> slate read (ms)")
    ax.set_ylabel("share of probes")
    ax.set_title("Encore slate latency under open-loop load (one worker)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=10_000, help="open-loop rate to try if the drain allows it")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each open-loop run")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: drain,bare,open,two,memory,floor")
    ap.add_argument("--rates", default="", help="open-loop rates (events/s, comma-separated) instead of half of (a) and --rate")
    ap.add_argument("--worker-tree", type=Path, default=ROOT,
                    help="run the worker of another checkout (e.g. a `git worktree` of an older commit) for a before / after")
    ap.add_argument("--out", default="throughput", help="name of the figures file in bench/out/")
    ap.add_argument("--embeddings", action="store_true", help="(a) with an embedding version served (trained on "
                    "the workload's plays): the cost of the cf features and taste clusters")
    ap.add_argument("--profile", action="store_true", help="py-spy the draining worker (bench/out/<out>-profile.txt)")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    say(f"workload: {args.events:,} events (generated once, cached in bench/out/)")
    records = list(read_workload(workload(args.events)))
    events_per_record = args.events / len(records)
    result: dict[str, Any] = {"workload": {"events": args.events, "records": len(records)}, "goals": GOALS}
    with tempfile.TemporaryDirectory(prefix="encore-bench-") as tmp:
        bench = Bench(Path(tmp), args.worker_tree.resolve())
        try:
            if "drain" not in skip:
                say("(a) one worker drains the workload, every step on")
                emb = workload_embeddings(records) if args.embeddings else None
                result["drain"] = drain(bench, records, profile=OUT / f"{args.out}-profile.txt" if args.profile else None,
                                        embeddings=emb)
                say(f"    {result['drain']['events_per_s']:,.0f} events/s; worker: {result['drain']['worker']}")
            if "bare" not in skip:
                say("(b) a bare Faust agent reads the same records")
                result["bare"] = bare(bench, records, args.events)
                say(f"    {result['bare']['records_per_s']:,.0f} records/s")
            if "open" not in skip:
                if args.rates:
                    rates = [float(r) for r in args.rates.split(",")]
                else:  # probes alone (an idle worker), a light load, half the measured capacity
                    rates = [0.0, 100.0, round(result["drain"]["events_per_s"] / 2, -2)]
                    if args.rate <= result["drain"]["events_per_s"] * 0.9:
                        rates.append(args.rate)
                result["open_loop"] = []
                for rate in rates:
                    say(f"(c) open loop at {rate:,.0f} events/s for {args.seconds:.0f} s, probing slate latency")
                    result["open_loop"].append(open_loop(bench, records, events_per_record, rate, args.seconds))
                    r = result["open_loop"][-1]
                    say(f"    p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms "
                        f"({r['answered']}/{r['probes']} probes answered); worker: {r['worker']}")
            if "two" not in skip:
                # one chDB store has one owner, so here both runs go without the analytics step (with
                # a ClickHouse server every worker writes it)
                say("(d) one worker, then two, drain the same workload (analytics off in both)")
                result["one_worker_no_analytics"] = drain(bench, records, analytics_enabled=False)
                result["two_workers"] = drain(bench, records, workers=2, analytics_enabled=False)
                say(f"    one {result['one_worker_no_analytics']['events_per_s']:,.0f}, two "
                    f"{result['two_workers']['events_per_s']:,.0f} events/s")
        finally:
            bench.stack.down()
    if "memory" not in skip:
        say("(e) recommender memory per listener")
        result["memory"] = memory_per_listener(records)
    if "floor" not in skip:
        say("(f) the pure step alone, in process (no I/O): the ceiling of one process")
        result["floor"] = pure_step_floor(records, args.events)
    report(result)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps(result, indent=1))
    if result.get("open_loop"):
        plot(result, OUT / f"{args.out}.png")
    say(f"figures in {OUT / (args.out + '.json')}" + (f", plot in {OUT / (args.out + '.png')}" if result.get("open_loop") else ""))
    return 0


def report(r: dict[str, Any]) -> None:
    rows = []

    def row(what: str, value: float, goal: str, ok: bool | None) -> None:
        rows.append((what, value, goal, "-" if ok is None else ("met" if ok else "NOT met")))

    d = r["drain"]["events_per_s"] if "drain" in r else float("nan")
    if "drain" in r:
        row("(a) drain, one worker, events/s", d, f">= {GOALS['drain_events_per_s']:,}", d >= GOALS["drain_events_per_s"])
    if "bare" in r and "drain" in r:
        b = r["bare"]["events_per_s"]
        row("(b) bare Faust, same records, events/s", b, "", None)
        row("    worker / bare", d / b, f">= {GOALS['share_of_bare']}", d / b >= GOALS["share_of_bare"])
    for o in r.get("open_loop", []):
        row(f"(c) p50 ms at {o['rate']:,.0f} events/s", o["p50_ms"], f"<= {GOALS['p50_ms']} (at 10,000)",
            o["p50_ms"] <= GOALS["p50_ms"] if o["rate"] >= 10_000 else None)
        row(f"    p95 ms at {o['rate']:,.0f} events/s", o["p95_ms"], "", None)
        row(f"    p99 ms at {o['rate']:,.0f} events/s", o["p99_ms"], f"<= {GOALS['p99_ms']} (at 10,000)",
            o["p99_ms"] <= GOALS["p99_ms"] if o["rate"] >= 10_000 else None)
    if "two_workers" in r:
        one, t = r["one_worker_no_analytics"]["events_per_s"], r["two_workers"]["events_per_s"]
        row("(d) one worker, analytics off, events/s", one, "", None)
        row("    two workers, analytics off, events/s", t, "", None)
        row("    two / one", t / one, f">= {GOALS['two_workers_ratio']}", t / one >= GOALS["two_workers_ratio"])
    if "memory" in r:
        m = r["memory"]
        row("(e) recommender state per listener, bytes", m["bytes_per_listener"], f"<= {GOALS['bytes_per_listener']}",
            m["bytes_per_listener"] <= GOALS["bytes_per_listener"])
        row("    per open decision (reward window), bytes", m["bytes_per_open_decision"], "", None)
        row("    whole snapshot / listeners, bytes", m["snapshot_bytes_per_listener"], "", None)
    if "floor" in r:
        f = r["floor"]
        row("(f) pure step alone (no I/O, no Faust), events/s", f["step_events_per_s"],
            f">= {GOALS['drain_events_per_s']:,} to allow (a)", f["step_events_per_s"] >= GOALS["drain_events_per_s"])
        row("    decoding alone, us/event", f["decode_us_per_event"], "", None)
        row("    whole step, us/event", f["step_us_per_event"], "", None)
        row("    the rest (recommend, learn, effects, rows), us/event", f["rest_us_per_event"],
            f"({f['slates_per_event']:.2f} slates/event)", None)
    width = max(len(w) for w, *_ in rows)
    print()
    for what, value, goal, verdict in rows:
        print(f"{what:<{width}}  {value:>12,.2f}  {goal:<22} {verdict}")
    print()


if __name__ == "__main__":
    raise SystemExit(main())
