"""Rebuild the gamification state in Redis from the events in ClickHouse.

    encore rebuild-gamification          # stop the workers first (see README "When Redis lost its state")

When Redis lost its state (it restarted without its append-only file, was flushed, or failed
over to an empty replica), karma, streaks, achievements and boards are short. The analytics
store keeps every event, so the state is recomputed from them: every key under the store's
prefix is deleted, then the events are applied again in event-time order, through the same
rules and the same Lua apply the worker uses, in windows of at most a day (each window is
applied as of its own end, so no event counts as too old to apply). Finally a fresh generation
marker is written, which clears ``encore_redis_state_lost`` on every worker.

Events written before the V004 migration lack their time zone, playlist and rating: they are
replayed in UTC, with the default playlist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.gamify import Rules, effect_for
from online_models.catalogue import Catalogue
from schemas.events import Context, Interaction, Kind
from sinks.clickhouse import ClickHouseStore
from sinks.gamification import GamificationStore

log = logging.getLogger("encore.rebuild")
COLUMNS = ("event_id", "user_id", "session_id", "occurred_at", "kind", "track_id", "artist_id", "rec_id",
           "position", "listened_ms", "track_duration_ms", "device", "activity", "local_hour", "weekday", "cohort",
           "timezone", "playlist_id", "rating")


def interaction(row: dict[str, Any]) -> Interaction:
    """An event row back to the contract object (validated again: a row that no longer passes is skipped)."""
    ctx = Context(device=row["device"] or "unknown", activity=row["activity"] or "unknown",
                  local_hour=row["local_hour"], weekday=row["weekday"], timezone=row["timezone"] or "UTC",
                  cohort=row["cohort"] or None)
    at = row["occurred_at"] if row["occurred_at"].tzinfo else row["occurred_at"].replace(tzinfo=UTC)
    return Interaction(
        event_id=row["event_id"], user_id=row["user_id"], session_id=row["session_id"], occurred_at=at,
        kind=Kind(row["kind"]), track_id=row["track_id"] or None, artist_id=row["artist_id"] or None,
        rec_id=row["rec_id"], position=row["position"], listened_ms=row["listened_ms"],
        track_duration_ms=row["track_duration_ms"], playlist_id=row["playlist_id"] or None,
        rating=float(row["rating"]) if row["rating"] is not None else None, context=ctx,
    )


def windows(store: ClickHouseStore, span: timedelta = timedelta(days=1)) -> Iterator[tuple[datetime, datetime]]:
    got = store.query("SELECT min(occurred_at) AS lo, max(occurred_at) AS hi, count() AS n FROM events FINAL")[0]
    if not got["n"]:
        return
    lo = got["lo"].replace(tzinfo=UTC) if got["lo"].tzinfo is None else got["lo"]
    hi = got["hi"].replace(tzinfo=UTC) if got["hi"].tzinfo is None else got["hi"]
    start = lo
    while start <= hi:
        yield start, start + span
        start += span


def rebuild(clickhouse: ClickHouseStore, store: GamificationStore, catalogue: Catalogue | None,
            progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, int]:
    """Reset the store and apply every event again; returns counts."""
    total = int(clickhouse.query("SELECT count() AS n FROM events FINAL")[0]["n"])
    removed = store.reset()
    rules: Rules = store.rules
    seen = applied = skipped = 0
    for lo, hi in windows(clickhouse):
        rows = clickhouse.query(
            f"SELECT {', '.join(COLUMNS)} FROM events FINAL WHERE occurred_at >= {{lo:DateTime64(3)}} "
            "AND occurred_at < {hi:DateTime64(3)} ORDER BY occurred_at, event_id",
            {"lo": lo.replace(tzinfo=None), "hi": hi.replace(tzinfo=None)})
        effects = []
        for row in rows:
            try:
                effect = effect_for(interaction(row), rules, catalogue)
            except ValueError as exc:  # a row today's contract refuses
                skipped += 1
                log.warning("event %s skipped: %s", row["event_id"], exc)
                continue
            if effect is not None:
                effects.append(effect)
        if effects:
            applied += store.apply(effects, now=hi).applied  # as of the window's end: none is too old
        seen += len(rows)
        progress(seen, total)
    store.mark_rebuilt()
    return {"events": seen, "applied": applied, "skipped": skipped, "keys_removed": removed}
