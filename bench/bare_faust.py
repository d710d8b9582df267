"""A bare Faust agent: the ceiling the worker is measured against.

    python -m bench.bare_faust        # settings from ENCORE_* (broker, topic prefix, app id)

Reads the events topic with ``take_events(2000, within=0.05)`` and only counts records and
bytes: no decoding, no state, no writes. Prints one JSON line per batch
(``{"t": unix time, "records": total, "bytes": total}``) so the benchmark can time it.
"""

from __future__ import annotations

import json
import time

import faust

from streams.app import create_app
from streams.settings import load_settings
from streams.topics import EVENTS


def main() -> None:
    settings = load_settings()
    app = create_app(settings)
    topic = app.topic(settings.topic(EVENTS.name), partitions=settings.partitions, key_serializer="raw",
                      value_serializer="raw")
    seen = {"records": 0, "bytes": 0}

    @app.agent(topic, name="bare")
    async def bare(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(2000, within=0.05):
            seen["records"] += len(batch)
            seen["bytes"] += sum(len(e.message.value or b"") for e in batch)
            print(json.dumps({"t": time.time(), **seen}), flush=True)

    from faust.worker import Worker

    Worker(app, loglevel="warning", workdir=str(settings.state_dir)).execute_from_commandline()


if __name__ == "__main__":
    main()
