"""Structured, quiet-by-default logging shared by dfsd, mount.dfs and the CLI.

Lines are ``ts level logger message key=value...`` (or one JSON object per
line with ``[log] json = true``).  Callers pass context through
``extra={"ctx": {...}}``; values are never the payload of a request, so no
file data or secrets reach the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from dfs.core.config import LogConfig


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        ctx: dict[str, Any] = getattr(record, "ctx", {}) or {}
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        if self.as_json:
            doc: dict[str, Any] = {
                "ts": ts,
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
                **ctx,
            }
            if record.exc_info:
                doc["exc"] = self.formatException(record.exc_info)
            return json.dumps(doc, default=str)
        tail = "".join(f" {k}={v}" for k, v in ctx.items())
        line = f"{ts} {record.levelname.lower()} {record.name} {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(cfg: LogConfig, *, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(cfg.json))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(cfg.level.upper())
