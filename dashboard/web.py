"""The dashboard, served by the worker that owns the ClickHouse store (chDB allows one process).

Pages: ``/dashboard/`` (ops / data view), ``/dashboard/listener?user=ID`` (listener view) and
``/dashboard/experiments?name=NAME`` (an experiment's report).
Data: ``/api/dashboard/{name}`` returns one query's JSON, to callers on the worker's host or with a
service key (it holds every listener's data). Assets are served from this folder and
Plotly's own bundled file (no CDN: machines are offline).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import faust

from dashboard import queries as Q
from experiments.report import analyse, declared, experiments_seen
from online_models.catalogue import Catalogue
from online_models.embeddings import interactions_sql
from sinks.clickhouse import ClickHouseStore
from sinks.gamification import GamificationStore

STATIC = Path(__file__).resolve().parent / "static"


def plotly_js() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: reinstall plotly (pip install plotly==7.1.0)")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, list | dict):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN: "not known" is null
        return None
    return value


def api(clickhouse: ClickHouseStore, redis_store: GamificationStore | None,
        catalogue: Catalogue | None = None, behaviour: Callable[[str | None], dict[str, Any]] | None = None
        ) -> dict[str, Any]:
    """name -> function(params) returning JSON-able data. Unknown / bad params raise ValueError.
    ``behaviour(user)``: the worker's session clusters (and that listener's), when it serves them."""
    q = clickhouse.query

    def need_user(p: dict[str, str]) -> str:
        user = p.get("user", "")
        if not user:
            raise ValueError("this view needs ?user=<listener id>")
        return user

    def profile(p: dict[str, str]) -> dict[str, Any]:
        user = need_user(p)
        if redis_store is None:
            raise ValueError("gamification is disabled (ENCORE_GAMIFICATION_ENABLED=false)")
        out = redis_store.profile(user)
        out["rank"] = redis_store.rank(user)
        out["around"] = [{"rank": r, "user_id": u, "score": s} for r, u, s in redis_store.around(user, k=2)]
        out["unlocked_at"] = Q.unlocks(q, user)
        return out

    def leaderboard(p: dict[str, str]) -> list[dict[str, Any]]:
        if redis_store is None:
            return []
        board = p.get("board", "global")
        return [{"rank": i, "user_id": u, "score": s} for i, (u, s) in enumerate(redis_store.top(board, 10), 1)]

    def experiment(p: dict[str, str]) -> dict[str, Any]:
        name = p.get("name", "")
        if not name:
            raise ValueError("this view needs ?name=<experiment>")
        primary, weights, guardrails = declared(name)
        try:
            mde, churn_days = float(p.get("mde", 0.05)), float(p.get("churn_days", 3))
        except ValueError:
            raise ValueError("mde (a relative lift, e.g. 0.05) and churn_days must be numbers") from None
        return analyse(q, name, primary=p.get("primary") or primary, mde=mde, weights=weights,
                       churn_days=churn_days, guardrails=guardrails).as_dict()

    def need_behaviour() -> Callable[[str | None], dict[str, Any]]:
        if behaviour is None:
            raise ValueError("this worker's policy keeps no session clusters")
        return behaviour

    def need_catalogue() -> Catalogue:
        if catalogue is None:
            raise ValueError("this worker serves no catalogue")
        return catalogue

    def int_param(p: dict[str, str], name: str, default: int, high: int) -> int:
        try:
            value = int(p.get(name, default))
        except ValueError:
            raise ValueError(f"{name} must be an integer") from None
        if not 1 <= value <= high:
            raise ValueError(f"{name} must be between 1 and {high}")
        return value

    return {
        "heatmap": lambda p: Q.listening_heatmap(q, p.get("user") or None),
        "activity": lambda p: Q.activity_by_hour(q, p.get("user") or None),
        "recommendation_rates": lambda p: Q.recommendation_rates(q),
        "top_tracks": lambda p: Q.top_tracks(q, int_param(p, "n", 10, 100), int_param(p, "hours", 24, 24 * 90)),
        "rising_artists": lambda p: Q.rising_artists(q, int_param(p, "n", 10, 100), int_param(p, "hours", 6, 24 * 30)),
        "karma": lambda p: Q.karma_progression(q, need_user(p)),
        "leaderboard_history": lambda p: Q.leaderboard_history(q, p.get("board", "global"), int_param(p, "top", 5, 50)),
        "artist_graph": lambda p: Q.artist_graph(q, need_user(p), int_param(p, "n", 12, 50)),
        "throughput": lambda p: Q.throughput(q, int_param(p, "minutes", 60, 24 * 60), int_param(p, "bucket", 10, 3600)),
        "listeners": lambda p: Q.listeners(q, int_param(p, "n", 20, 200)),
        "profile": profile,
        "leaderboard": leaderboard,
        "experiments": lambda p: experiments_seen(q),
        "experiment": experiment,
        "latest_slate": lambda p: Q.latest_slate(q, catalogue, need_user(p)),
        "behaviour": lambda p: need_behaviour()(p.get("user") or None),
        "track_map": lambda p: Q.track_map(q, need_catalogue(), p.get("user") or None, p.get("method", "pca"),
                                           int_param(p, "limit", 3000, 20000)),
        # the embedding job's input, for a chDB store only this worker can open
        "interactions": lambda p: q(interactions_sql(float(int_param(p, "days", 30, 3650)))),
    }


def operator(request: faust.web.Request, keys: frozenset[str]) -> bool:
    """The dashboard's data is every listener's: it answers callers on the worker's own host
    (ops with a port-forward or an SSH tunnel) and callers with a service key, nobody else."""
    peer = (request.remote or "").removeprefix("::ffff:")
    if peer == "::1" or peer.startswith("127."):
        return True
    given = request.headers.get("X-API-Key", "")
    return bool(given) and any(hmac.compare_digest(given, k) for k in keys)


def register_dashboard(app: faust.App, clickhouse: ClickHouseStore, redis_store: GamificationStore | None,
                       catalogue: Catalogue | None = None,
                       behaviour: Callable[[str | None], dict[str, Any]] | None = None,
                       keys: frozenset[str] = frozenset()) -> None:
    handlers = api(clickhouse, redis_store, catalogue, behaviour)
    page = (STATIC / "index.html").read_text()

    @app.page("/dashboard/")
    async def ops_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.html(page.replace("{{VIEW}}", "ops"))

    @app.page("/dashboard/listener")
    async def listener_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.html(page.replace("{{VIEW}}", "listener"))

    @app.page("/dashboard/experiments")
    async def experiments_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.html(page.replace("{{VIEW}}", "experiments"))

    @app.page("/dashboard/static/{name}")
    async def static(web: faust.web.View, request: faust.web.Request, name: str) -> faust.web.Response:
        files = {"app.js": (STATIC / "app.js", "text/javascript"), "style.css": (STATIC / "style.css", "text/css"),
                 "plotly.min.js": (plotly_js(), "text/javascript")}
        if name not in files:
            return web.json({"error": f"no asset {name}"}, status=404)
        path, kind = files[name]
        return web.bytes(path.read_bytes(), content_type=kind, headers={"Cache-Control": "max-age=3600"})

    @app.page("/api/dashboard/{name}")
    async def data(web: faust.web.View, request: faust.web.Request, name: str) -> faust.web.Response:
        if not operator(request, keys):
            return web.json({"error": "the dashboard's data is for operators: open it from the worker's host "
                                      "(e.g. kubectl port-forward) or send X-API-Key"}, status=401)
        handler = handlers.get(name)
        if handler is None:
            return web.json({"error": f"unknown view {name!r}; one of {sorted(handlers)}"}, status=404)
        params = dict(request.query)
        try:
            result = await asyncio.to_thread(handler, params)
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        return web.bytes(json.dumps(_plain(result)).encode(), content_type="application/json")
