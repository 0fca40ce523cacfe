"""Logging through structlog: JSON lines for machines, a console view for people.

Secrets never reach a log line: fields named like a secret are masked, and
DSNs are shown with their password replaced.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from situation.dsn import redact_dsn

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# The original agent's numeric levels (0 panic … 5 debug) are accepted too.
NUMERIC_LEVELS = {"0": "error", "1": "error", "2": "error", "3": "warning", "4": "info", "5": "debug"}
FORMATS = ("auto", "json", "console")

_SECRET_FIELDS = {"password", "sslpassword", "passphrase", "secret", "key_material", "community", "auth_key",
                  "priv_key"}
_DSN_FIELDS = {"dsn", "db", "url"}

_debug = False


def parse_level(text: str) -> str:
    """A level name from a name, an alias or the original's number; ValueError otherwise."""
    name = text.strip().lower()
    name = NUMERIC_LEVELS.get(name, name)
    name = {"warn": "warning", "err": "error", "fatal": "error", "panic": "error"}.get(name, name)
    if name not in LEVELS:
        raise ValueError(f"unknown log level {text!r}; use debug, info, warning or error (or 0-5)")
    return name


def redact_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key in _SECRET_FIELDS:
            event[key] = "***"
        elif key in _DSN_FIELDS and isinstance(event[key], str):
            event[key] = redact_dsn(event[key])
    return event


def configure(level: str = "info", fmt: str = "auto", stream=None) -> None:
    """Set up structlog once per process; logs go to stderr, command output to stdout."""
    global _debug
    stream = stream or sys.stderr
    _debug = level == "debug"
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info if _debug else _drop_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _drop_exc_info(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    # Tracebacks only at debug level.
    event.pop("exc_info", None)
    return event


def is_debug() -> bool:
    return _debug
