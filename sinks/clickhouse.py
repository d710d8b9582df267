"""Analytics in ClickHouse: versioned migrations, an idempotent batching sink, one query door.

Every client goes through clickhouse-connect, so the embedded chDB store (``chdb:///path``, the
default) and a ClickHouse server (``http(s)://user:pass@host:8123/db``) are the same code.
Only ONE process may open a chDB path: the worker that runs the sink owns it, and the dashboard
is served by that same process.

Idempotence: every table is a ReplacingMergeTree keyed by the record's identity (event_id,
rec_id + position, ...), read with FINAL; aggregates kept by materialised views count
``uniqExact`` of event ids; and each INSERT carries a deduplication token made from the
identities of its rows (never from Kafka offsets, which a reset broker hands out again), so a
retried flush is dropped by the server outright.

Failures come back classified: :class:`StoreUnavailable` (the store cannot be reached or is
overloaded: retry later, nothing is lost) or, for rows the store refuses, a ``refused`` list in
:class:`Flushed` (bisected down to the offending rows, so their neighbours are written). An
INSERT never spans more partitions than ClickHouse accepts in one block.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import OperationalError

from online_models.catalogue import Catalogue
from schemas.events import Interaction, Recommendation

log = logging.getLogger("encore.clickhouse")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

COLUMNS: dict[str, tuple[str, ...]] = {
    "events": ("event_id", "user_id", "session_id", "occurred_at", "kind", "track_id", "artist_id", "genre",
               "rec_id", "position", "listened_ms", "track_duration_ms", "device", "activity", "local_hour",
               "weekday", "cohort", "ingested_at", "timezone", "playlist_id", "rating", "friend_id"),
    "recommendations": ("rec_id", "request_id", "user_id", "created_at", "policy_id", "policy_version",
                        "experiment_arm", "position", "track_id", "score", "propensity", "slate_propensity",
                        "source", "device", "activity", "local_hour", "explanation", "why_features", "why_values"),
    "karma_history": ("event_id", "user_id", "what", "karma_delta", "karma_total", "tier", "created_at",
                      "occurred_at"),
    "leaderboard_snapshots": ("board", "taken_at", "rank", "user_id", "score"),
    "experiment_exposures": ("event_id", "experiment", "arm", "user_id", "exposed_at"),
}


#: how each table is partitioned (its PARTITION BY, on the row's values) and which columns are
#: its rows' identity (the insert deduplication token is made of them)
PARTITION_OF = {
    "events": lambda row: row[3].strftime("%Y%m%d"),
    "recommendations": lambda row: row[3].strftime("%Y%m%d"),
    "karma_history": lambda row: row[6].strftime("%Y%m"),
    "leaderboard_snapshots": lambda row: row[1].strftime("%Y%m"),
    "experiment_exposures": lambda row: row[4].strftime("%Y%m"),
}
IDENTITY = {"events": (0,), "recommendations": (0, 7), "karma_history": (0, 2), "leaderboard_snapshots": (0, 1, 2),
            "experiment_exposures": (0, 1)}
MAX_PARTITIONS_PER_INSERT = 90  # ClickHouse refuses a block over 100 (max_partitions_per_insert_block)
#: server error names that mean "later", not "never"
TRANSIENT_NAMES = ("TOO_MANY_PARTS", "MEMORY_LIMIT_EXCEEDED", "TIMEOUT", "NETWORK", "SOCKET", "CANNOT_SCHEDULE",
                   "TOO_MANY_SIMULTANEOUS_QUERIES", "ALL_CONNECTION_TRIES_FAILED", "READONLY", "TABLE_IS_READ_ONLY")


class ClickHouseError(RuntimeError):
    """ClickHouse could not be reached or refused a statement; the message says what to check."""


class StoreUnavailable(ClickHouseError):
    """Transient: the store cannot take the rows now. Retry the same flush later."""


class RowsRefused(ClickHouseError):
    """Permanent: the store refused these rows (retrying the same rows cannot succeed)."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | OSError | ConnectionError | TimeoutError):
        return True
    text = str(exc)
    return any(name in text for name in TRANSIENT_NAMES)


class ClickHouseStore:
    """A clickhouse-connect client behind a lock (chDB is one engine per process)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        if dsn.startswith("chdb://"):
            Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        try:
            self.client = clickhouse_connect.get_client(dsn=dsn)
        except Exception as exc:
            if "already initialized with path" in str(exc):
                hint = "this process already opened another chDB path; one process serves one store"
            elif "EmbeddedServer" in str(exc):
                hint = "another process owns this chDB path: stop it (`make down`) or use another ENCORE_CLICKHOUSE_DSN"
            else:
                hint = "check ENCORE_CLICKHOUSE_DSN"
            raise ClickHouseError(f"cannot open ClickHouse at {dsn}: {exc}; {hint}") from exc
        self._lock = threading.Lock()

    # --- schema ---------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply every migration not yet recorded in ``schema_migrations``; returns their names."""
        with self._lock:
            self.client.command(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
                "applied_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY version"
            )
            done = {r[0] for r in self.client.query("SELECT version FROM schema_migrations FINAL").result_rows}
        applied = []
        for path in sorted(MIGRATIONS.glob("V*__*.sql")):
            version = int(re.match(r"V(\d+)__", path.name).group(1))  # type: ignore[union-attr]
            if version in done:
                continue
            with self._lock:
                for statement in path.read_text().split("--;;"):
                    if statement.strip():
                        self.client.command(statement)
                self.client.insert("schema_migrations", [[version, path.stem]], column_names=["version", "name"])
            applied.append(path.stem)
        return applied

    # --- write / read ---------------------------------------------------------------------
    def insert(self, table: str, rows: list[list[Any]], token: str | None = None) -> None:
        """One INSERT of ``rows`` (one attempt). With ``token`` a repeat is dropped by the server.
        Raises :class:`StoreUnavailable` (retry later) or :class:`RowsRefused` (never)."""
        if not rows:
            return
        settings = {"insert_deduplication_token": token, "insert_deduplicate": 1,
                    "deduplicate_blocks_in_dependent_materialized_views": 1} if token else None
        columns = [list(c) for c in zip(*rows, strict=True)]  # column-oriented: ~25% faster
        try:
            with self._lock:
                self.client.insert(table, columns, column_names=list(COLUMNS[table]), settings=settings,
                                   column_oriented=True)
        except Exception as exc:
            if is_transient(exc):
                raise StoreUnavailable(f"insert into {table} failed: {exc}; the batch waits and is retried "
                                       f"(check the store at {self.dsn})") from exc
            raise RowsRefused(f"insert into {table} refused: {exc}") from exc

    def refuse_inserts(self, refuse: bool) -> None:
        """Fault drill: make the engine itself refuse every INSERT into Encore's tables
        (``TOO_MANY_PARTS``, as a server under merge pressure does; writers wait and retry) or
        accept them again. The setting is kept in the tables' metadata until reset."""
        with self._lock:
            for table in COLUMNS:
                if refuse:
                    self.client.command(f"ALTER TABLE {table} MODIFY SETTING parts_to_throw_insert = 1, "
                                        "parts_to_delay_insert = 1, max_delay_to_insert = 0")
                else:
                    self.client.command(f"ALTER TABLE {table} RESET SETTING parts_to_throw_insert, "
                                        "parts_to_delay_insert, max_delay_to_insert")

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            result = self.client.query(sql, parameters=parameters or {})
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def erase_user(self, user: str) -> dict[str, int]:
        """Delete every row of one listener from every Encore table that has a ``user_id``
        (a synchronous mutation). Returns table -> rows it held."""
        held: dict[str, int] = {}
        tables = [r["table"] for r in self.query(
            "SELECT c.table AS table FROM system.columns AS c JOIN system.tables AS t "
            "ON c.database = t.database AND c.table = t.name WHERE c.database = currentDatabase() "
            "AND c.name = 'user_id' AND t.engine LIKE '%MergeTree' ORDER BY table")]
        for table in tables:
            with self._lock:
                n = int(self.client.query(f"SELECT count() FROM {table} WHERE user_id = {{u:String}}",
                                          parameters={"u": user}).result_rows[0][0])
                if n:
                    self.client.command(f"ALTER TABLE {table} DELETE WHERE user_id = {{u:String}}",
                                        parameters={"u": user}, settings={"mutations_sync": 2})
            held[table] = n
        with self._lock:  # the edges other listeners drew to them (follow_user / unfollow_user events)
            n = int(self.client.query("SELECT count() FROM events WHERE friend_id = {u:String}",
                                      parameters={"u": user}).result_rows[0][0])
            if n:
                self.client.command("ALTER TABLE events DELETE WHERE friend_id = {u:String}",
                                    parameters={"u": user}, settings={"mutations_sync": 2})
        held["events (edges to them)"] = n
        return held

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT count() AS n FROM {table} FINAL")[0]["n"])


@dataclass
class Refused:
    """A row the store refused for good, with the store's reason."""

    table: str
    identity: Any  # the row's first column: event_id / rec_id / ...
    error: str


@dataclass
class Flushed:
    rows: dict[str, int]
    seconds: float
    refused: list[Refused] = field(default_factory=list)


def identity_token(table: str, rows: list[list[Any]]) -> str:
    """A deduplication token from the rows' identities (order-independent)."""
    cols = IDENTITY[table]
    keys = sorted("|".join(str(r[c]) for c in cols) for r in rows)
    return f"{table}:" + hashlib.sha1("\n".join(keys).encode()).hexdigest()


def partition_blocks(table: str, rows: list[list[Any]]) -> list[list[list[Any]]]:
    """Split rows so that no INSERT block spans more than MAX_PARTITIONS_PER_INSERT partitions."""
    part = PARTITION_OF[table]
    by_part: dict[str, list[list[Any]]] = defaultdict(list)
    for r in rows:
        by_part[part(r)].append(r)
    if len(by_part) <= MAX_PARTITIONS_PER_INSERT:
        return [rows]
    keys = sorted(by_part)
    return [[r for k in keys[i:i + MAX_PARTITIONS_PER_INSERT] for r in by_part[k]]
            for i in range(0, len(keys), MAX_PARTITIONS_PER_INSERT)]


class AnalyticsSink:
    """Collects a batch's rows with ``add_*`` and writes each table once in ``flush``."""

    def __init__(self, store: ClickHouseStore, catalogue: Catalogue | None = None) -> None:
        self.store = store
        self.catalogue = catalogue
        self._rows: dict[str, list[list[Any]]] = defaultdict(list)

    def add_events(self, events: Iterable[Interaction], now: datetime) -> None:
        cat = self.catalogue

        def looked_up(e: Interaction) -> tuple[Interaction, str, str, datetime]:
            idx = cat.index.get(e.track_id or "") if cat is not None else None
            artist = e.artist_id or (cat.artist_ids[idx] if idx is not None and cat is not None else "")
            genre = cat.genre_of(idx) if idx is not None and cat is not None else ""
            return e, artist or "", genre, e.local_time()

        self.add_rows("events", event_rows(map(looked_up, events), now))

    def add_recommendations(self, slates: Iterable[Recommendation]) -> None:
        self.add_rows("recommendations", slate_rows(slates))

    def add_rows(self, table: str, rows: list[list[Any]]) -> None:
        """Rows built by :func:`event_rows` / :func:`slate_rows` (or in COLUMNS order)."""
        if rows:
            self._rows[table].extend(rows)

    def add_gamification(self, outputs: Iterable[dict[str, Any]], events: Iterable[Interaction] = ()) -> None:
        """GamificationEvent field dicts; ``events`` (the batch's interactions) give each its time."""
        when = {str(e.event_id): e.occurred_at for e in events}
        rows = self._rows["karma_history"]
        for g in outputs:
            if g.get("board"):
                what = f"rank:{g['board']}"
            elif g.get("achievement_unlocked"):
                what = f"achievement:{g['achievement_unlocked']}"
            elif g.get("avatar_unlocked"):
                what = f"avatar:{g['avatar_unlocked']}"
            else:
                what = "karma"
            rows.append([g["event_id"], g["user_id"], what, g["karma_delta"], g["karma_total"], g.get("tier") or "",
                         g["created_at"], when.get(str(g["event_id"]), g["created_at"])])

    def add_snapshot(self, board: str, top: list[tuple[str, float]], taken_at: datetime) -> None:
        rows = self._rows["leaderboard_snapshots"]
        for rank, (user, score) in enumerate(top, start=1):
            rows.append([board, taken_at.replace(microsecond=0), rank, user, score])

    def pending(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def flush(self, token: str | None = None) -> Flushed:
        """Write every table's rows, one INSERT per table (more only when the rows span more
        partitions than one INSERT may). Each INSERT's deduplication token comes from its rows'
        identities (or from ``token`` when given), so a retried flush is a no-op on the server.
        Rows the store refuses are isolated by bisection and returned in ``refused``; their
        neighbours are written. On :class:`StoreUnavailable` the rows not yet written stay
        buffered and the error propagates: the caller must not acknowledge the batch."""
        started = time.perf_counter()
        out = Flushed({}, 0.0)
        for table in list(self._rows):
            rows = self._rows[table]
            for i, block in enumerate(partition_blocks(table, rows)):
                name = f"{table}:{token}:{i}" if token else identity_token(table, block)
                self._write(table, block, name, out)
            out.rows[table] = len(rows) - sum(1 for r in out.refused if r.table == table)
            del self._rows[table]
        out.seconds = time.perf_counter() - started
        return out

    def _write(self, table: str, rows: list[list[Any]], token: str, out: Flushed) -> None:
        try:
            self.store.insert(table, rows, token=token)
        except RowsRefused as exc:
            if len(rows) == 1:
                out.refused.append(Refused(table, rows[0][0], str(exc.__cause__ or exc)[:2000]))
                log.warning("clickhouse refused a row of %s (%s): %s", table, rows[0][0], exc)
                return
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                self._write(table, part, identity_token(table, part), out)


def event_rows(events: Iterable[tuple[Interaction, str, str, datetime]], now: datetime) -> list[list[Any]]:
    """``events`` rows from (event, artist, genre, local time) tuples (looked up once by the caller)."""
    rows = []
    for e, artist, genre, local in events:
        ctx = e.context
        rows.append([
            e.event_id, e.user_id, e.session_id, e.occurred_at, str(e.kind), e.track_id or "", artist or "",
            genre, e.rec_id, e.position, e.listened_ms, e.track_duration_ms, str(ctx.device),
            str(ctx.activity), ctx.local_hour if ctx.local_hour is not None else local.hour,
            ctx.weekday if ctx.weekday is not None else local.weekday(), ctx.cohort or "", now,
            ctx.timezone, e.playlist_id or "", e.rating, e.friend_id or "",
        ])
    return rows


def slate_rows(slates: Iterable[Recommendation]) -> list[list[Any]]:
    """``recommendations`` rows: one per slate item."""
    rows = []
    for s in slates:
        ctx = s.context
        for item in s.items:
            rows.append([
                s.rec_id, s.request_id, s.user_id, s.created_at, s.policy_id, s.policy_version,
                s.experiment_arm or "", item.position, item.track_id, item.score, item.propensity,
                s.slate_propensity, item.source, str(ctx.device), str(ctx.activity),
                ctx.local_hour if ctx.local_hour is not None else 0,
                item.explanation, item.why_features, item.why_values,
            ])
    return rows


def now_utc() -> datetime:
    return datetime.now(UTC)
