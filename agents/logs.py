"""Structured logs: one JSON object per line (python-json-logger), with the step, partition and
offset when the caller gives them (``extra={"step": ..., "partition": ..., "offset": ...}``)."""

from __future__ import annotations

from typing import Any


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for the worker: every logger to stderr as JSON lines
    (``ts``, ``level``, ``logger``, ``message``, any ``extra`` fields, ``exc_info`` on errors)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "ts",  # ISO 8601, UTC
        }},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": level},
    }
