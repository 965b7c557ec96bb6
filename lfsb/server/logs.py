"""Logging: one line per event, ``key=value`` attributes in the message, text or JSON lines."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_ATTR = re.compile(r"(\w+)=(\S+)")


class TextFormatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z INFO logger: message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += " error=" + json.dumps(repr(record.exc_info[1]))
            if record.levelno >= logging.ERROR:
                line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg and every ``key=value`` of the message."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        obj = {
            "time": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        obj.update(_ATTR.findall(msg))
        obj["msg"] = msg
        if record.exc_info:
            obj["error"] = repr(record.exc_info[1])
            obj["traceback"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send lfsb's logs to stderr at ``level`` in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("lfsb").setLevel({"warn": "WARNING"}.get(level, level.upper()))
