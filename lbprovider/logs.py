"""JSON logs with stable keys (event, service, ip, pool, request_id, error).

Keys come from ``extra=`` on the log call; anything else a caller adds is kept too. Secrets are
never passed to a logger, so nothing here filters them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

STABLE_KEYS = ("event", "service", "ip", "pool", "request_id", "error", "host", "version")
NOISY_LOGGERS = ("httpx", "httpcore", "alembic.runtime.plugins", "alembic.runtime.migration")
_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["error"] = out.get("error") or self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now, not to the stream it saw when created: a CLI
    invoked in-process (tests, embedding) must not leave logging bound to a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        del value


def setup_logging(level: str = "INFO", *, json_logs: bool = True) -> None:
    """Configure the root logger once per process."""
    handler = StderrHandler()
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that narrate every request or plugin at INFO; their warnings still show.
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
