"""Batches from a Faust stream that are acknowledged only once their effects are durable.

Faust's ``stream.take_events`` acknowledges a batch in a ``finally``: when the agent raises or
is cancelled (shutdown) mid-batch, the batch is acknowledged anyway and its offsets committed,
so its effects are lost (INFRA.md). :func:`durable_batches` has the same buffering but never
acknowledges: the caller acknowledges each event (``stream.ack``) once its batch is delivered,
possibly later and from another task (the worker delivers batch N while it computes N + 1).
A batch left unacknowledged by an exception or a cancellation is read again.

Batch size adapts to load: the first record of a batch is waited for without limit, then the
batch takes whatever else is already buffered, lingering at most ``linger_s`` for more, up to
``max_records``. A quiet worker answers one record at once; a busy one finds a full buffer
after each batch and amortises its costs over up to ``max_records``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust


async def durable_batches(stream: faust.StreamT, max_records: int, linger_s: float) -> AsyncIterator[list[Any]]:
    """Yield lists of Faust events, unacknowledged (the caller acks them once delivered)."""
    events: list[Any] = []
    ready = asyncio.Event()  # at least one event is buffered
    full = asyncio.Event()  # max_records are buffered
    room = asyncio.Event()  # the buffer may take more
    room.set()

    async def add(value: Any) -> Any:
        # runs for every record Faust reads (a stream processor); blocks while the buffer is full,
        # which stops Faust reading (its own queue is bounded): memory stays bounded
        while not room.is_set():
            await room.wait()
        event = stream.current_event
        if event is None:  # pragma: no cover - Faust always sets it for a processor
            raise RuntimeError("Faust gave a processor no current_event")
        events.append(event)
        ready.set()
        if len(events) >= max_records:
            full.set()
            room.clear()
        return value

    stream.enable_acks = False  # acknowledged by the caller, once the batch is delivered
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))  # the same passive read take_events uses
    while not stream.should_stop:
        await stream.wait_for_stopped(ready)  # type: ignore[arg-type]
        if not events:
            continue
        if not full.is_set() and linger_s > 0:
            try:
                await asyncio.wait_for(full.wait(), linger_s)
            except TimeoutError:
                pass
        batch = events[:max_records]
        del events[:len(batch)]
        if not events:
            ready.clear()
        full.clear()
        room.set()
        yield batch
