"""The public HTTP API, served by every worker on its web port (loopback by default).

    POST   /v1/events                  JSON: one event, a list, or {"events": [...]}
    POST   /v1/tokens                  a listener token (services only)
    GET    /v1/recommendations/{user}  the listener's latest slate
    GET    /v1/users/{user}/profile    karma, tier, avatar items (and the one worn), streak, achievements, rank
    PUT    /v1/users/{user}/avatar     wear an avatar item the listener unlocked
    POST   /v1/users/{user}/offline    an offline pack: a size-bounded slate the device keeps
    GET|POST|DELETE /v1/users/{user}/journey  a content journey toward a genre or mood (the slates follow it)
    GET|POST /v1/users/{user}/lists    their lists (Daily Mix, Discovery Weekly, Artists you may like, Hidden Gems); POST rebuilds
    DELETE /v1/users/{user}            forget the listener everywhere
    GET    /v1/users/{user}/friends    who they follow (follow_user / unfollow_user events) and who follows them
    GET|PUT /v1/users/{user}/privacy   what their followers may see (listening, activity, board)
    GET    /v1/users/{user}/feed       likes and achievements of those they follow
    GET    /v1/users/{user}/friends/board  them and those they follow, by karma
    GET    /v1/leaderboards/{board}    top N (?n=), or the board around a listener (?around=); a listener
                                       who keeps their board place private shows as "(private)"
    GET    /v1/users/{user}/model      what this worker's recommender holds about the listener
    GET    /v1/tracks?ids=a,b          catalogue rows (artist, genre, duration)
    GET    /healthz, /readyz           liveness; readiness (partitions assigned)
    GET    /openapi.json               this API, generated from the route table and the contracts

Who may call what (agents.auth): services send ``X-API-Key`` and may act for any listener; a
listener sends ``Authorization: Bearer <token>`` and may read and act for themselves only
(their events, profile, slate, model, avatar, erasure). Leaderboards are public.

Events are validated with the same contracts as the events topic; a request with any bad event
is refused whole with each problem named (nothing half-accepted), and accepted events are
produced to the events topic keyed by user id, one batch record per listener.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import faust
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.auth import Denied, issue, require, signing_secret
from online_models.catalogue import Catalogue
from schemas.events import Context, EventBatch, Interaction, Kind, Network, Recommendation
from schemas.wire import Serde, decode_events
from sinks.gamification import GamificationStore
from sinks.listeners import ListenerStore, NotUnlocked
from sinks.slate_cache import SlateCache
from streams.settings import Settings

log = logging.getLogger("encore.api")
OFFLINE_WAIT_S = 3.0  # how long POST /v1/users/{user}/offline waits for its slate before answering 202


class Problem(BaseModel):
    index: int | None = Field(None, description="position of the event in the request")
    reason: str
    error: str


class ErrorBody(BaseModel):
    error: str
    problems: list[Problem] = Field(default_factory=list)


class Accepted(BaseModel):
    accepted: int
    records: int = Field(description="Kafka records written (one per listener)")


class AchievementProgress(BaseModel):
    id: str
    title: str
    progress: int
    target: int
    unlocked: bool


class ChallengeProgress(BaseModel):
    id: str
    title: str
    progress: int
    target: int
    completed: bool
    start: str
    end: str


class Profile(BaseModel):
    user_id: str
    karma: int
    earned: int
    tier: str | None
    rank: int | None
    avatar_items: list[str] = Field(description="avatar items the listener unlocked")
    avatar: str | None = Field(None, description="the item they wear (PUT /v1/users/{user}/avatar)")
    streak: int
    best_streak: int
    achievements: list[AchievementProgress]
    challenges: list[ChallengeProgress]
    stats: dict[str, int]


class BoardEntry(BaseModel):
    rank: int
    user_id: str
    score: float
    avatar: str | None = Field(None, description="the avatar item the listener wears")


class Track(BaseModel):
    track_id: str
    artist_id: str
    genre: str
    duration_ms: int


class Tracks(BaseModel):
    tracks: list[Track]
    unknown: list[str] = Field(default_factory=list, description="ids not in the catalogue")


class Friends(BaseModel):
    user_id: str
    following: list[str] = Field(description="listeners they follow (follow_user / unfollow_user events)")
    followers: list[str]


class Privacy(BaseModel):
    """What the listener's followers may see: their listening (as candidates for their slates),
    their activity (likes, achievements: the feed), their place on boards (everyone sees the public
    boards; 'followers': only on their followers' friends board; 'nobody': hidden everywhere)."""

    listening: Literal["followers", "nobody"] = "followers"
    activity: Literal["followers", "nobody"] = "followers"
    board: Literal["everyone", "followers", "nobody"] = "everyone"


class PrivacyChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listening: Literal["followers", "nobody"] | None = None
    activity: Literal["followers", "nobody"] | None = None
    board: Literal["everyone", "followers", "nobody"] | None = None


class FeedItem(BaseModel):
    user_id: str
    kind: str = Field(description="like | achievement")
    at_ms: int
    track_id: str | None = None
    achievement: str | None = None


class Feed(BaseModel):
    user_id: str
    items: list[FeedItem]


class OfflineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_mb: float = Field(200.0, gt=0, le=10_000, description="the pack's size bound (estimated audio size)")
    tracks: int = Field(50, ge=1, le=100, description="tracks asked for (the size bound may keep fewer)")
    timezone: str = Field("UTC", max_length=64, description="the device's IANA zone")


class PackItem(BaseModel):
    track_id: str
    position: int = Field(description="report it with the pack's rec_id in the plays' events")
    duration_ms: int
    bytes: int = Field(description="estimated size at the worker's offline bitrate")
    explanation: str


class OfflinePack(BaseModel):
    user_id: str
    rec_id: str = Field(description="the slate the pack is: plays report it as rec_id, with the item's position")
    request_id: str
    created_at: str
    valid_until: str = Field(description="plays reported with their original times until then count for learning")
    max_bytes: int
    total_bytes: int
    items: list[PackItem]


class ListItem(BaseModel):
    id: str = Field(description="a track id (an artist id in artists_you_may_like)")
    why: str
    score: float


class OneList(BaseModel):
    name: str
    title: str
    items: list[ListItem]


class Lists(BaseModel):
    user_id: str
    lists: dict[str, list[OneList]] = Field(description="daily_mix (one per taste cluster), discovery_weekly, "
                                           "artists_you_may_like, hidden_gems")
    built_at: dict[str, str] = Field(description="when each list was built (Discovery Weekly: weekly, others daily)")
    worker_id: str | None = None


class JourneyStep(BaseModel):
    track_id: str
    why: str


class JourneyState(BaseModel):
    target: str
    position: int = Field(description="the step the listener is on (finishing its track moves on)")
    done: bool
    steps: list[JourneyStep]


class Journeys(BaseModel):
    user_id: str
    journey: JourneyState | None = Field(description="the journey the slates follow (None: none)")
    targets: list[str] = Field(description="where a journey can go: genre:<name> or mood:<name>")


class JourneyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=1, max_length=64, description="genre:<name> or mood:<name> (see targets)")


class PackPending(BaseModel):
    user_id: str
    rec_id: str
    detail: str


class TokenRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=128)


class Token(BaseModel):
    user_id: str
    token: str = Field(description="send as Authorization: Bearer <token>")
    expires_at: str


class AvatarChoice(BaseModel):
    item: str = Field(min_length=1, max_length=64, description="an item from the profile's avatar_items")


class Erasure(BaseModel):
    user_id: str
    requested_at: str
    detail: str


class Board(BaseModel):
    board: str
    entries: list[BoardEntry]


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    partitions: list[int]
    batches: int
    stalled_s: float = Field(0.0, description="how long the current batch has waited for a store or the "
                             "broker (0: not waiting)")


class ListenerModel(BaseModel):
    """What this worker's recommender holds about a listener (only the worker that owns the
    listener's events partition knows them)."""

    user_id: str
    worker_id: str
    partition: int | None = Field(description="the events partition the listener's state belongs to")
    plays: int = Field(description="plays the listener's profile has seen")
    completions: int
    recent_tracks: list[str] = Field(description="recently played tracks (kept out of slates)")
    open_decisions: list[str] = Field(description="rec_ids of slates whose reward window is still open")
    embeddings: str | None = Field(None, description="the embedding version this worker serves (None: none yet)")
    taste_cluster: int | None = Field(None, description="the listener's taste cluster under that version")
    cluster_top_genres: dict[str, float] | None = Field(None, description="the three genres listeners like them "
                                                        "finish most, with the finish rate")
    behaviour_cluster: int | None = Field(None, description="the session cluster their last ended session fell in "
                                          "(online_models.behaviour; None: no session ended yet)")
    behaviour: str | None = Field(None, description="that cluster in a few words")
    sessions_clustered: int | None = Field(None, description="their sessions that updated the clusters")
    taste_shifts: int | None = Field(None, description="taste shifts flagged on their completions (each fades "
                                     "what was learned of them)")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    responses: dict[int, type[BaseModel]]
    body: Any = None
    params: tuple[dict[str, Any], ...] = ()
    secured: bool = False
    tags: tuple[str, ...] = field(default=("encore",))
    body_required: bool = True


USER = {"name": "user", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
DENIED = {401: ErrorBody, 403: ErrorBody}
ROUTES = (
    Route("post", "/v1/events", "Send listener events (a listener token: their own events only)",
          {202: Accepted, 400: ErrorBody, **DENIED, 413: ErrorBody, 422: ErrorBody, 503: ErrorBody},
          body={"oneOf": [{"$ref": "#/components/schemas/Interaction"},
                          {"type": "array", "items": {"$ref": "#/components/schemas/Interaction"}, "minItems": 1},
                          {"$ref": "#/components/schemas/EventBatch"}]},
          secured=True),
    Route("post", "/v1/tokens", "Issue a listener token (services only: the sign-in service calls it)",
          {201: Token, 400: ErrorBody, **DENIED, 503: ErrorBody},
          body={"$ref": "#/components/schemas/TokenRequest"}, secured=True),
    Route("get", "/v1/recommendations/{user}", "The listener's latest slate",
          {200: Recommendation, **DENIED, 404: ErrorBody}, params=(USER,), secured=True),
    Route("get", "/v1/users/{user}/profile", "Karma, tier, avatar items, streak, achievements, rank",
          {200: Profile, **DENIED, 404: ErrorBody, 503: ErrorBody}, params=(USER,), secured=True),
    Route("put", "/v1/users/{user}/avatar", "Wear an avatar item the listener unlocked",
          {200: Profile, 400: ErrorBody, **DENIED, 409: ErrorBody, 503: ErrorBody}, params=(USER,),
          body={"$ref": "#/components/schemas/AvatarChoice"}, secured=True),
    Route("delete", "/v1/users/{user}", "Forget the listener: every worker drops their events and erases them "
          "from Redis, ClickHouse, model state and snapshots within seconds", {202: Erasure, **DENIED, 503: ErrorBody},
          params=(USER,), secured=True),
    Route("post", "/v1/users/{user}/offline", "An offline pack: a size-bounded slate the device keeps; plays reported "
          "later with their original times count for karma and learning once",
          {201: OfflinePack, 202: PackPending, 400: ErrorBody, **DENIED, 503: ErrorBody}, params=(USER,),
          body={"$ref": "#/components/schemas/OfflineRequest"}, secured=True, body_required=False),
    Route("get", "/v1/users/{user}/offline/{rec_id}", "An offline pack asked for earlier (POST answered 202: not ready "
          "yet); 404 while it is not ready", {200: OfflinePack, 400: ErrorBody, **DENIED, 404: ErrorBody, 503: ErrorBody},
          params=(USER, {"name": "rec_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
                  {"name": "max_mb", "in": "query", "required": False,
                   "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 10_000, "default": 200}}),
          secured=True),
    Route("get", "/v1/users/{user}/lists", "The listener's lists: Daily Mixes, Discovery Weekly, Artists you may "
          "like, Hidden Gems (rebuilt on a schedule)", {200: Lists, **DENIED, 404: ErrorBody, 503: ErrorBody},
          params=(USER,), secured=True),
    Route("post", "/v1/users/{user}/lists", "Rebuild the listener's lists now (on the worker that owns their partition)",
          {200: Lists, **DENIED, 404: ErrorBody, 503: ErrorBody}, params=(USER,), secured=True),
    Route("get", "/v1/users/{user}/journey", "The listener's content journey and where one can go",
          {200: Journeys, **DENIED, 404: ErrorBody}, params=(USER,), secured=True),
    Route("post", "/v1/users/{user}/journey", "Start a journey toward a genre or a mood: up to 5 steps from the "
          "listener's taste; their slates follow it", {200: Journeys, 400: ErrorBody, **DENIED, 404: ErrorBody},
          params=(USER,), body={"$ref": "#/components/schemas/JourneyRequest"}, secured=True),
    Route("delete", "/v1/users/{user}/journey", "Stop the listener's journey", {200: Journeys, **DENIED, 404: ErrorBody},
          params=(USER,), secured=True),
    Route("get", "/v1/users/{user}/friends", "Who the listener follows and who follows them",
          {200: Friends, **DENIED, 503: ErrorBody}, params=(USER,), secured=True),
    Route("get", "/v1/users/{user}/privacy", "What the listener's followers may see",
          {200: Privacy, **DENIED, 503: ErrorBody}, params=(USER,), secured=True),
    Route("put", "/v1/users/{user}/privacy", "Change what the listener's followers may see",
          {200: Privacy, 400: ErrorBody, **DENIED, 503: ErrorBody}, params=(USER,),
          body={"$ref": "#/components/schemas/PrivacyChoice"}, secured=True),
    Route("get", "/v1/users/{user}/feed", "Likes and achievements of the listeners they follow (who share them)",
          {200: Feed, **DENIED, 503: ErrorBody}, params=(USER,), secured=True),
    Route("get", "/v1/users/{user}/friends/board", "The listener and those they follow, by karma (who share it)",
          {200: Board, **DENIED, 503: ErrorBody}, params=(USER,), secured=True),
    Route("get", "/v1/leaderboards/{board}", "A leaderboard: global, weekly:<n>, genre:<g>, cohort:<c>",
          {200: Board, 400: ErrorBody, 503: ErrorBody},
          params=({"name": "board", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}},
                  {"name": "n", "in": "query", "required": False,
                   "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}},
                  {"name": "around", "in": "query", "required": False, "schema": {"type": "string"}})),
    Route("get", "/v1/users/{user}/model", "What this worker's recommender holds about a listener (404 on the "
          "workers that do not own the listener's partition)", {200: ListenerModel, **DENIED, 404: ErrorBody},
          params=(USER,), secured=True),
    Route("get", "/v1/tracks", "Catalogue rows of some tracks (artist, genre, duration): public",
          {200: Tracks, 400: ErrorBody},
          params=({"name": "ids", "in": "query", "required": True, "description": "comma-separated track ids (≤ 100)",
                   "schema": {"type": "string", "minLength": 1}},)),
    Route("get", "/healthz", "Liveness", {200: Health}),
    Route("get", "/readyz", "Readiness: partitions assigned, not rebalancing, not waiting for a store",
          {200: Ready, 503: Ready}),
)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document: paths from ROUTES, schemas from the pydantic contracts."""
    components: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components.setdefault(model.__name__, schema)
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for model in (Interaction, EventBatch, TokenRequest, AvatarChoice, PrivacyChoice, OfflineRequest, JourneyRequest):
        ref(model)
    paths: dict[str, Any] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary, "operationId": f"{r.method}_{r.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "tags": list(r.tags), "parameters": list(r.params),
            "responses": {str(code): {"description": model.__name__,
                                      "content": {"application/json": {"schema": ref(model)}}}
                          for code, model in r.responses.items()},
        }
        if r.body is not None:
            op["requestBody"] = {"required": r.body_required, "content": {"application/json": {"schema": r.body}}}
        if r.secured:
            op["security"] = [{"apiKey": []}] if r.path in ("/v1/tokens",) else [{"apiKey": []}, {"listenerToken": []}]
        paths.setdefault(r.path, {})[r.method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Encore API", "version": "1", "description": __doc__.split("\n\n")[0]},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {
                           "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                      "description": "a service key (ENCORE_API_KEYS): any listener"},
                           "listenerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                             "description": "a listener token (POST /v1/tokens): that listener only"}}},
    }


def _json(web: faust.web.View, model: BaseModel, status: int) -> faust.web.Response:
    return web.bytes(model.model_dump_json().encode(), content_type="application/json", status=status)


def _error(web: faust.web.View, status: int, message: str, problems: list[Problem] | None = None) -> faust.web.Response:
    return _json(web, ErrorBody(error=message, problems=problems or []), status)


def not_here(web: faust.web.View, user: str) -> faust.web.Response:
    """404 from a worker that does not hold the listener's recommender state."""
    return _error(web, 404, f"this worker holds no recommender state for {user!r}: ask the worker that owns the "
                            "listener's events partition (see /readyz partitions)")


def register_api(app: faust.App, settings: Settings, *, events_topic: faust.TopicT, serde: Serde,
                 slates: SlateCache, gamification: GamificationStore | None, readiness: Any,
                 listener_model: Any = None, listeners: ListenerStore | None = None,
                 catalogue: Catalogue | None = None, build_lists: Any = None, journey_of: Any = None,
                 rec_id_of: Any = None) -> None:
    keys = settings.api_key_set()
    secret = signing_secret(settings)
    limit = settings.max_record_bytes
    spec = json.dumps(openapi()).encode()

    def denied(web: faust.web.View, request: faust.web.Request, user: str | None = None) -> faust.web.Response | None:
        """None when the caller may act for ``user`` (any listener when None: services only)."""
        try:
            who = require(request.headers, keys, secret, user)
        except Denied as exc:
            return _error(web, exc.status, str(exc))
        if user is None and not who.service:
            return _error(web, 403, "services only: send X-API-Key")
        return None

    async def body_of(web: faust.web.View, request: faust.web.Request, model: type[BaseModel],
                      required: bool = True) -> BaseModel | faust.web.Response:
        raw = await web.read_request_content(request)
        if not raw.strip():
            if required:
                return _error(web, 400, f"send a JSON {model.__name__} body")
            raw = b"{}"  # an optional body: the defaults
        if len(raw) > 4096:
            return _error(web, 413, "body over 4 KB")
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            return _error(web, 400, f"body is not a {model.__name__}: {exc.errors()[0]['msg']}")

    class Events(faust.web.View):
        async def post(self, request: faust.web.Request) -> faust.web.Response:
            if not keys:
                return _error(self, 503, "no API keys configured: set ENCORE_API_KEYS on the worker")
            try:
                who = require(request.headers, keys, secret)
            except Denied as exc:
                return _error(self, exc.status, str(exc))
            size = request.content_length
            if size is not None and size > limit:
                return _error(self, 413, f"body is {size} bytes, limit {limit}; send smaller batches")
            body = await self.read_request_content(request)
            if len(body) > limit:
                return _error(self, 413, f"body is {len(body)} bytes, limit {limit}; send smaller batches")
            if not body.strip().startswith((b"{", b"[")):
                return _error(self, 400, "body must be a JSON event, a JSON list of events or {\"events\": [...]}")
            decoded = decode_events(body, serde, max_bytes=limit, max_events=settings.max_batch_events)
            if decoded.rejected:
                status = 400 if decoded.rejected[0].reason in ("bad_json", "wrong_type", "empty") and not decoded.events \
                    and decoded.rejected[0].index is None else 422
                return _error(self, status, f"{len(decoded.rejected)} event(s) refused; nothing was accepted",
                              [Problem(index=r.index, reason=r.reason, error=r.error) for r in decoded.rejected])
            others = sorted({e.user_id for e in decoded.events if not who.may_act_for(e.user_id)})
            if others:
                return _error(self, 403, f"a listener token sends its own listener's events only, not {others[:3]}; "
                                         "nothing was accepted")
            by_user: dict[str, list[Interaction]] = {}
            for e in decoded.events:
                by_user.setdefault(e.user_id, []).append(e)
            pending = []
            for user, events in by_user.items():
                value = serde.encode(events[0] if len(events) == 1 else EventBatch(events=events))
                pending.append(await events_topic.send(key=user.encode(), value=value))
            await asyncio.gather(*pending)  # acknowledged by the broker before we answer 202
            return _json(self, Accepted(accepted=len(decoded.events), records=len(by_user)), 202)

    app.page("/v1/events")(Events)

    class Tokens(faust.web.View):
        async def post(self, request: faust.web.Request) -> faust.web.Response:
            if secret is None:
                return _error(self, 503, "listener tokens need ENCORE_TOKEN_SECRET or ENCORE_API_KEYS on the worker")
            if (refused := denied(self, request)) is not None:
                return refused
            got = await body_of(self, request, TokenRequest)
            if not isinstance(got, TokenRequest):
                return got
            token, expires = issue(secret, got.user_id, settings.token_ttl_s)
            return _json(self, Token(user_id=got.user_id, token=token, expires_at=expires.isoformat()), 201)

    app.page("/v1/tokens")(Tokens)

    @app.page("/v1/recommendations/{user}")
    async def latest(web: faust.web.View, request: faust.web.Request, user: str) -> faust.web.Response:
        if (refused := denied(web, request, user)) is not None:
            return refused
        slate = await asyncio.to_thread(slates.get, user)
        if slate is None:
            return _error(web, 404, f"no slate for {user!r} in the last day; send a rec_request event")
        return _json(web, slate, 200)

    async def profile_of(web: faust.web.View, user: str) -> faust.web.Response:
        if gamification is None:
            return _error(web, 503, "gamification is disabled on this worker (ENCORE_GAMIFICATION_ENABLED)")
        p = await asyncio.to_thread(gamification.profile, user)
        if not p["stats"]:
            return _error(web, 404, f"no listener {user!r} has earned anything yet")
        p["rank"] = await asyncio.to_thread(gamification.rank, user)
        if listeners is not None:
            p["avatar"] = (await asyncio.to_thread(listeners.avatars, [user]))[user]
        return _json(web, Profile.model_validate(p), 200)

    @app.page("/v1/users/{user}/profile")
    async def profile(web: faust.web.View, request: faust.web.Request, user: str) -> faust.web.Response:
        if (refused := denied(web, request, user)) is not None:
            return refused
        return await profile_of(web, user)

    class Avatar(faust.web.View):
        async def put(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user)) is not None:
                return refused
            if gamification is None or listeners is None:
                return _error(self, 503, "gamification is disabled on this worker (ENCORE_GAMIFICATION_ENABLED)")
            got = await body_of(self, request, AvatarChoice)
            if not isinstance(got, AvatarChoice):
                return got
            try:
                await asyncio.to_thread(listeners.equip, gamification, user, got.item)
            except NotUnlocked as exc:
                return _error(self, 409, str(exc))
            return await profile_of(self, user)

    app.page("/v1/users/{user}/avatar")(Avatar)

    class Listener(faust.web.View):
        async def delete(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user)) is not None:
                return refused
            if listeners is None:
                return _error(self, 503, "this worker has no listener store")
            now = datetime.now(UTC)
            await asyncio.to_thread(listeners.request_erasure, user, now)
            log.warning("erasure of listener %s requested", user, extra={"step": "forget"})
            return _json(self, Erasure(user_id=user, requested_at=now.isoformat(),
                                       detail="every worker now drops this listener's events and erases them from "
                                              "Redis, ClickHouse, its model state and snapshots within seconds"), 202)

    app.page("/v1/users/{user}")(Listener)

    def pack_of(user: str, slate: Recommendation, max_mb: float) -> OfflinePack:
        """The slate's tracks, in order, while their estimated size fits ``max_mb``."""
        budget, total, items = int(max_mb * 1e6), 0, []
        for it in slate.items:
            i = catalogue.index.get(it.track_id) if catalogue is not None else None
            duration = int(catalogue.duration_ms[i]) if catalogue is not None and i is not None else 0
            size = duration * settings.offline_kbps // 8  # ms x kbit/s / 8 = bytes
            if total + size > budget:
                break
            total += size
            items.append(PackItem(track_id=it.track_id, position=it.position, duration_ms=duration, bytes=size,
                                  explanation=it.explanation))
        until = slate.created_at + timedelta(seconds=settings.offline_window_s)
        return OfflinePack(user_id=user, rec_id=str(slate.rec_id), request_id=str(slate.request_id),
                           created_at=slate.created_at.isoformat(), valid_until=until.isoformat(), max_bytes=budget,
                           total_bytes=total, items=items)

    async def published(user: str, rec_id: uuid.UUID) -> Recommendation | None:
        got = await asyncio.to_thread(slates.published, [(user, rec_id)])
        return serde.decode(got[rec_id], Recommendation) if rec_id in got else None

    class Offline(faust.web.View):
        async def post(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user)) is not None:
                return refused
            if catalogue is None or rec_id_of is None:
                return _error(self, 503, "this worker has no catalogue or recommender")
            got = await body_of(self, request, OfflineRequest, required=False)
            if not isinstance(got, OfflineRequest):
                return got
            ask = Interaction(event_id=uuid.uuid4(), user_id=user, session_id=f"offline-{uuid.uuid4().hex[:12]}",
                              occurred_at=datetime.now(UTC), kind=Kind.REC_REQUEST, slate_size=got.tracks,
                              context=Context(network=Network.OFFLINE, timezone=got.timezone))
            rec_id = rec_id_of(ask)
            await (await events_topic.send(key=user.encode(), value=serde.encode(ask)))
            deadline = time.monotonic() + OFFLINE_WAIT_S
            while time.monotonic() < deadline:
                slate = await published(user, rec_id)
                if slate is not None:
                    return _json(self, pack_of(user, slate, got.max_mb), 201)
                await asyncio.sleep(0.1)
            return _json(self, PackPending(user_id=user, rec_id=str(rec_id), detail=(
                f"the pack is being made: GET /v1/users/{user}/offline/{rec_id}?max_mb={got.max_mb:g} in a moment")),
                202)

    app.page("/v1/users/{user}/offline")(Offline)

    @app.page("/v1/users/{user}/offline/{rec_id}")
    async def offline_pack(web: faust.web.View, request: faust.web.Request, user: str, rec_id: str) -> faust.web.Response:
        if (refused := denied(web, request, user)) is not None:
            return refused
        try:
            rid, max_mb = uuid.UUID(rec_id), float(request.query.get("max_mb", "200"))
        except ValueError:
            return _error(web, 400, "rec_id must be a UUID and max_mb a number")
        if not 0 < max_mb <= 10_000:
            return _error(web, 400, "max_mb must be in (0, 10000]")
        slate = await published(user, rid)
        if slate is None:
            return _error(web, 404, f"no pack {rec_id} for {user!r} (not ready yet, or over an hour old): ask again")
        return _json(web, pack_of(user, slate, max_mb), 200)


    class ListsView(faust.web.View):
        async def get(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user)) is not None:
                return refused
            if listeners is None:
                return _error(self, 503, "this worker has no listener store")
            got = await asyncio.to_thread(listeners.get_lists, user)
            if got is None and build_lists is not None:
                got = await build_lists(user)
            if got is None:
                return _error(self, 404, f"no lists for {user!r} yet: they come with the listener's first plays "
                                         "(rebuilt every few seconds for active listeners)")
            return _json(self, Lists.model_validate(got), 200)

        async def post(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user)) is not None:
                return refused
            got = await build_lists(user) if build_lists is not None else None
            if got is None:
                return not_here(self, user)
            return _json(self, Lists.model_validate(got), 200)

    app.page("/v1/users/{user}/lists")(ListsView)

    class JourneyView(faust.web.View):
        async def act(self, request: faust.web.Request, user: str, target: str | None = None,
                      stop: bool = False) -> faust.web.Response:
            try:
                got = journey_of(user, target, stop) if journey_of is not None else None
            except ValueError as exc:
                return _error(self, 400, str(exc))
            if got is None:
                return not_here(self, user)
            return _json(self, Journeys.model_validate(got), 200)

        async def get(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user)) is not None:
                return refused
            return await self.act(request, user)

        async def post(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user)) is not None:
                return refused
            got = await body_of(self, request, JourneyRequest)
            if not isinstance(got, JourneyRequest):
                return got
            return await self.act(request, user, got.target)

        async def delete(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user)) is not None:
                return refused
            return await self.act(request, user, stop=True)

    app.page("/v1/users/{user}/journey")(JourneyView)

    def social_ready(web: faust.web.View) -> faust.web.Response | None:
        if listeners is None or gamification is None:
            return _error(web, 503, "friends need gamification (ENCORE_GAMIFICATION_ENABLED) on this worker")
        return None

    @app.page("/v1/users/{user}/friends")
    async def friends(web: faust.web.View, request: faust.web.Request, user: str) -> faust.web.Response:
        if (refused := denied(web, request, user) or social_ready(web)) is not None:
            return refused
        following = (await asyncio.to_thread(listeners.following, [user]))[user]  # type: ignore[union-attr]
        followers = await asyncio.to_thread(listeners.followers, user)  # type: ignore[union-attr]
        return _json(web, Friends(user_id=user, following=following, followers=followers), 200)

    class PrivacyView(faust.web.View):
        async def get(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user) or social_ready(self)) is not None:
                return refused
            got = (await asyncio.to_thread(listeners.privacy, [user]))[user]  # type: ignore[union-attr]
            return _json(self, Privacy.model_validate(got), 200)

        async def put(self, request: faust.web.Request, user: str) -> faust.web.Response:
            if (refused := denied(self, request, user) or social_ready(self)) is not None:
                return refused
            got = await body_of(self, request, PrivacyChoice)
            if not isinstance(got, PrivacyChoice):
                return got
            now = await asyncio.to_thread(listeners.set_privacy, user,  # type: ignore[union-attr]
                                          got.model_dump(exclude_none=True))
            hidden.clear()
            return _json(self, Privacy.model_validate(now), 200)

    app.page("/v1/users/{user}/privacy")(PrivacyView)

    @app.page("/v1/users/{user}/feed")
    async def feed(web: faust.web.View, request: faust.web.Request, user: str) -> faust.web.Response:
        if (refused := denied(web, request, user) or social_ready(web)) is not None:
            return refused
        items = await asyncio.to_thread(listeners.feed, user)  # type: ignore[union-attr]
        return _json(web, Feed(user_id=user, items=[FeedItem.model_validate(i) for i in items]), 200)

    @app.page("/v1/users/{user}/friends/board")
    async def friends_board(web: faust.web.View, request: faust.web.Request, user: str) -> faust.web.Response:
        if (refused := denied(web, request, user) or social_ready(web)) is not None:
            return refused
        people = [user, *await asyncio.to_thread(listeners.shared, user, "board")]  # type: ignore[union-attr]
        scores = await asyncio.to_thread(gamification.scores, people)  # type: ignore[union-attr]
        worn = await asyncio.to_thread(listeners.avatars, people)  # type: ignore[union-attr]
        ranked = sorted(((sc, u) for u, sc in scores.items() if sc is not None), key=lambda x: (-x[0], x[1]))
        return _json(web, Board(board=f"friends:{user}", entries=[
            BoardEntry(rank=i, user_id=u, score=sc, avatar=worn.get(u)) for i, (sc, u) in enumerate(ranked, 1)]), 200)

    hidden: TTLCache[str, bool] = TTLCache(maxsize=100_000, ttl=30.0)  # listener -> off the public boards

    async def public_names(users: list[str]) -> dict[str, bool]:
        missing = [u for u in users if u not in hidden]
        if missing and listeners is not None:
            got = await asyncio.to_thread(listeners.privacy, missing)
            hidden.update({u: p["board"] != "everyone" for u, p in got.items()})
        return {u: hidden.get(u, False) for u in users}

    @app.page("/v1/leaderboards/{board}")
    async def leaderboard(web: faust.web.View, request: faust.web.Request, board: str) -> faust.web.Response:
        if gamification is None:
            return _error(web, 503, "gamification is disabled on this worker (ENCORE_GAMIFICATION_ENABLED)")
        try:
            n = int(request.query.get("n", "10"))
        except ValueError:
            return _error(web, 400, "n must be an integer between 1 and 100")
        if not 1 <= n <= 100:
            return _error(web, 400, "n must be an integer between 1 and 100")
        around = request.query.get("around")
        if around:
            rows = await asyncio.to_thread(gamification.around, around, board, max(1, n // 2))
        else:
            top = await asyncio.to_thread(gamification.top, board, n)
            rows = [(i, u, sc) for i, (u, sc) in enumerate(top, 1)]
        worn = await asyncio.to_thread(listeners.avatars, [u for _, u, _ in rows]) if listeners is not None else {}
        private = await public_names([u for _, u, _ in rows])
        entries = [BoardEntry(rank=r, user_id="(private)" if private[u] else u, score=sc,
                              avatar=None if private[u] else worn.get(u)) for r, u, sc in rows]
        return _json(web, Board(board=board, entries=entries), 200)

    @app.page("/v1/users/{user}/model")
    async def model(web: faust.web.View, request: faust.web.Request, user: str) -> faust.web.Response:
        if (refused := denied(web, request, user)) is not None:
            return refused
        got = listener_model(user) if listener_model is not None else None
        if got is None:
            return not_here(web, user)
        return _json(web, ListenerModel.model_validate(got), 200)

    @app.page("/v1/tracks")
    async def tracks(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ids = [t for t in request.query.get("ids", "").split(",") if t]
        if not ids or len(ids) > 100:
            return _error(web, 400, "ids: 1 to 100 comma-separated track ids")
        if catalogue is None:
            return _json(web, Tracks(tracks=[], unknown=ids), 200)
        rows, unknown = [], []
        for t in ids:
            i = catalogue.index.get(t)
            if i is None:
                unknown.append(t)
            else:
                rows.append(Track(track_id=t, artist_id=catalogue.artist_ids[i], genre=catalogue.genre_of(i),
                                  duration_ms=int(catalogue.duration_ms[i])))
        return _json(web, Tracks(tracks=rows, unknown=unknown), 200)

    @app.page("/healthz")
    async def healthz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return _json(web, Health(status="ok"), 200)

    @app.page("/readyz")
    async def readyz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ready = Ready(**readiness())
        return _json(web, ready, 200 if ready.ready else 503)

    @app.page("/openapi.json")
    async def openapi_doc(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.bytes(spec, content_type="application/json")


def register_drills(app: faust.App, settings: Settings, clickhouse: Any) -> None:
    """Fault drills for game days and ``make test-faults``, only with ENCORE_DRILLS_ENABLED=true
    and an API key: ``POST /drills/clickhouse?seconds=60`` makes the ClickHouse engine refuse
    every insert for that long (the worker must stall, keep its memory bounded, and catch up)."""
    keys = settings.api_key_set()

    @app.page("/drills/clickhouse")
    class ClickHouseDrill(faust.web.View):
        async def post(self, request: faust.web.Request) -> faust.web.Response:
            given = request.headers.get("X-API-Key", "")
            if not keys or not any(hmac.compare_digest(given, k) for k in keys):
                return _error(self, 401, "missing or wrong X-API-Key header")
            try:
                seconds = float(request.query.get("seconds", "60"))
            except ValueError:
                return _error(self, 400, "seconds must be a number")
            if not 0 < seconds <= 3600:
                return _error(self, 400, "seconds must be in (0, 3600]")
            await asyncio.to_thread(clickhouse.refuse_inserts, True)
            log.warning("drill: ClickHouse refuses inserts for %.0f s", seconds)

            async def restore() -> None:
                await asyncio.sleep(seconds)
                await asyncio.to_thread(clickhouse.refuse_inserts, False)
                log.warning("drill over: ClickHouse accepts inserts again")

            app._drill = asyncio.ensure_future(restore())  # type: ignore[attr-defined]  # kept referenced
            return self.json({"refusing_s": seconds}, status=202)
