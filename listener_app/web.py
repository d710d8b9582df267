"""The listener app: one page, served by every worker at ``/app/``, that uses only the public API
with the listener's token (``encore token USER`` prints a link; a sign-in service would hand the
token over the same way). It shows the current slate with why each track is there, plays tracks
with a simulated player that reports start, progress, completion and skips with real timings,
and sends likes, thumbs and playlist adds; every action is an event on the pipeline, and the
next slate, karma, tier, streak, rank and avatar are read back live.
"""

from __future__ import annotations

from pathlib import Path

import faust

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}


def register_listener_app(app: faust.App) -> None:
    page = (STATIC / "index.html").read_text()

    @app.page("/app/")
    async def listener_app(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.html(page)

    @app.page("/app/static/{name}")
    async def static(web: faust.web.View, request: faust.web.Request, name: str) -> faust.web.Response:
        if name not in ASSETS:
            return web.json({"error": f"no asset {name}"}, status=404)
        return web.bytes((STATIC / name).read_bytes(), content_type=ASSETS[name],
                         headers={"Cache-Control": "no-cache"})
