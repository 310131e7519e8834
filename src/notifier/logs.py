"""Logging: one JSON object per line, with the role and replica on every line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else came from `extra=` and is logged.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON with `extra` fields inlined."""

    def __init__(self, role: str, replica: str) -> None:
        super().__init__()
        self.role, self.replica = role, replica

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "role": self.role,
            "replica": self.replica,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str, role: str, replica: str) -> None:
    """Send every log record to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role, replica))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries are chatty at INFO; their warnings still get through.
    for name in ("aio_pika", "aiormq", "neo4j", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Neo4j's query notices ("label does not exist" on a graph not yet imported)
    # come at WARNING for every read; they are hints, not faults.
    logging.getLogger("neo4j.notifications").setLevel(max(logging.ERROR, root.level))
