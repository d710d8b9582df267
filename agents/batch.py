"""The worker's one pure step: ``process_batch(records, state, now) -> Outputs``.

Everything that is computation happens here, once per batch, with no I/O and no clock other
than ``now``: decode and validate each record (bad ones become dead letters with a reason),
enrich each event once (catalogue row, artist, genre, local time), answer rec_requests and
learn from feedback (step ``recommend``), close the reward windows that passed (step
``reward-join``), compute each event's gamification effect (step ``gamify``) and the analytics
rows (step ``analytics``). What it returns is delivered by :mod:`agents.deliver`, which owns
every write and acknowledges the records last.

It never raises on input: a record that breaks decoding is dead-lettered alone, and a failure
inside the recommender dead-letters the batch's records with the reason (the model is left as
the failure left it; a bug must not stop the stream).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents.gamify import Effect, Rules, effect_for
from agents.ingest import Ingested, RawRecord, dead_letter, ingest
from agents.lanes import Lanes
from agents.recommend import Recommender
from online_models.candidates import FriendTracks
from online_models.catalogue import Catalogue
from schemas.events import FRIEND_KINDS, DeadLetter, Interaction, Kind, Recommendation, RewardRecord
from schemas.wire import Serde
from sinks.clickhouse import event_rows, slate_rows
from sinks.listeners import Social

log = logging.getLogger("encore.batch")


@dataclass
class BatchState:
    """What the step reads and updates: the recommender (model, listener profiles, open
    decisions, recent ids), the contracts' serde and the rules. One per worker."""

    serde: Serde
    catalogue: Catalogue
    recommender: Recommender | Lanes  # Lanes in the worker: one recommender per experiment arm
    rules: Rules | None = None  # gamification off when None
    analytics: bool = True
    max_record_bytes: int = 1_048_576
    max_batch_events: int = 1000
    #: events partition -> offset below which the recommender already learned (a handoff from the
    #: partition's previous owner covers them): those records still get their effects and rows
    learned_below: dict[int, int] = field(default_factory=dict)
    #: listeners asked to be forgotten: their events still on the topic are dropped, unread
    forgotten: set[str] = field(default_factory=set)
    social: bool = False  # compute friend edges, completions and likes for the listener store


@dataclass
class Enriched:
    """One event with what the later steps look up about it, computed once."""

    event: Interaction
    track: int | None  # catalogue row, None when unknown or absent
    artist: str
    genre: str
    local: datetime  # occurred_at in the listener's zone


@dataclass
class Outputs:
    """What one batch produced, in the order it is delivered."""

    records: list[RawRecord]
    events: list[Interaction] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)  # per event: index of its record
    slates: list[Recommendation] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    rewards: list[RewardRecord] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    rows: dict[str, list[list[Any]]] = field(default_factory=dict)  # ClickHouse table -> rows
    duplicates: int = 0  # events skipped as already seen by the recommender
    forgotten: int = 0  # events of forgotten listeners, dropped
    social: Social = field(default_factory=Social)  # friend edges, completions, likes (listener store)

    def offsets(self) -> dict[int, int]:
        """events partition -> next offset, once this batch is delivered."""
        out: dict[int, int] = {}
        for r in self.records:
            out[r.partition] = max(out.get(r.partition, 0), r.offset + 1)
        return out


def enrich(events: list[Interaction], catalogue: Catalogue) -> list[Enriched]:
    index, artists = catalogue.index, catalogue.artist_ids
    out = []
    for e in events:
        idx = index.get(e.track_id) if e.track_id is not None else None
        artist = e.artist_id or (artists[idx] if idx is not None else "")
        genre = catalogue.genre_of(idx) if idx is not None else ""
        out.append(Enriched(e, idx, artist, genre, e.local_time()))
    return out


def decode(records: list[RawRecord], state: BatchState, now: datetime) -> Ingested:
    """Decode and validate a batch's records (bad ones become dead letters); never raises."""
    return ingest(records, state.serde, max_bytes=state.max_record_bytes, max_events=state.max_batch_events, now=now)


def requests(decoded: Ingested, state: BatchState) -> list[tuple[str, uuid.UUID]]:
    """(listener, rec_id) of every rec_request decoded: the slates to look up before deciding
    (a request answered before gets its published slate again)."""
    rec_id = state.recommender.rec_id_of
    return [(e.user_id, rec_id(e)) for e in decoded.events if e.kind == Kind.REC_REQUEST]


def process_batch(records: list[RawRecord], state: BatchState, now: datetime, decoded: Ingested | None = None,
                  known: Mapping[uuid.UUID, Recommendation] | None = None,
                  social: Mapping[str, FriendTracks] | None = None) -> Outputs:
    """Decode, recommend, learn, and compute every effect of one batch. Never raises on input.
    ``decoded`` is :func:`decode` of the records when the caller has it already; ``known``
    holds the slates already published for some of its requests (rec_id -> slate); ``social``
    what the requesters' friends finished lately (listener -> FriendTracks)."""
    if decoded is None:
        decoded = decode(records, state, now)
    out = Outputs(records, decoded.events, decoded.origin, dead=decoded.dead)
    if state.forgotten:
        kept = [j for j, e in enumerate(out.events) if e.user_id not in state.forgotten]
        out.forgotten = len(out.events) - len(kept)
        if out.forgotten:
            out.events, out.origin = [out.events[j] for j in kept], [out.origin[j] for j in kept]
    rec = state.recommender
    before = rec.duplicates
    partitions = [records[i].partition for i in out.origin]
    if state.learned_below:
        learn = [j for j, i in enumerate(out.origin)
                 if records[i].offset >= state.learned_below.get(records[i].partition, -1)]
        events, partitions = [out.events[j] for j in learn], [partitions[j] for j in learn]
    else:
        events = out.events
    try:
        out.slates = rec.process(events, now, partitions, known, social)
        out.rewards = rec.close(now).records  # step reward-join: decisions whose window passed
    except Exception as exc:  # a bug must not stop the stream: park the batch, say why
        log.exception("recommend step failed; the batch's records go to the DLQ",
                      extra={"step": "recommend", "partition": records[0].partition, "offset": records[0].offset})
        out.dead.extend(dead_letter(r, "recommend", "processing_error", f"{type(exc).__name__}: {exc}",
                                    r.value or b"", now) for r in records)
        out.events, out.origin, out.slates, out.rewards = [], [], [], []
        return out
    out.duplicates = rec.duplicates - before
    enriched = enrich(out.events, state.catalogue)
    routed = isinstance(rec, Lanes) and rec.control.active  # experiments running or flags set
    if state.rules is not None:
        gamified = [x for x in enriched if rec.gamified(x.event.user_id)] if routed else enriched  # type: ignore[union-attr]
        out.effects = [f for f in (effect_for(x.event, state.rules, artist=x.artist, genre=x.genre, local=x.local)
                                   for x in gamified) if f is not None]
    if state.social:
        out.social = social_of(out.events, state.forgotten)
    if state.analytics:
        out.rows["events"] = event_rows(((x.event, x.artist, x.genre, x.local) for x in enriched), now)
        out.rows["recommendations"] = slate_rows(out.slates)
        if routed:
            out.rows["experiment_exposures"] = rec.exposures(out.events)  # type: ignore[union-attr]
    return out


def social_of(events: list[Interaction], forgotten: set[str]) -> Social:
    """What the batch changes of the listeners' social state: follow / unfollow edges (never to
    a forgotten listener or to oneself), completions (their followers' candidates) and likes (their feed)."""
    social = Social()
    for e in events:
        ms = int(e.occurred_at.timestamp() * 1000)
        if e.kind in FRIEND_KINDS and e.friend_id not in (None, e.user_id) and e.friend_id not in forgotten:
            social.edges.append((e.user_id, e.friend_id, ms, e.kind == Kind.FOLLOW_USER))
        elif e.kind == Kind.PLAY_END and e.track_id:
            social.completions.append((e.user_id, e.track_id, ms))
        elif e.kind == Kind.LIKE and e.track_id:
            item = json.dumps({"kind": "like", "track_id": e.track_id, "id": str(e.event_id)}, sort_keys=True)
            social.activity.append((e.user_id, item, ms))
    return social
