"""Logging through structlog: JSON lines for machines, a console view for people.

Secrets never reach a log line: fields named like a secret are masked, and
DSNs are shown with their password replaced.

Nothing from outside reaches a terminal raw: on the console every key and value
(the event text too) goes through :func:`console_value` or
:func:`terminal_text`, which write control characters (ESC, BEL, NUL, DEL,
C1, line separators) the way ``repr`` does. :func:`terminal_text` is also what
``scan``, ``explore`` and error messages use for untrusted text. JSON lines need nothing: the
encoder writes every such character as a ``\\u`` escape.
"""

from __future__ import annotations

import sys
from typing import Any

# The stdlib logging numbers (not imported: it costs start-up time for nothing here).
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
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
            from situation.connection.dsn import redact_dsn

            event[key] = redact_dsn(event[key])
    return event


def terminal_text(text: str, *, replacement: str | None = None, width: int | None = None, keep: str = "",
                  ellipsis: str = "…") -> str:
    """Untrusted ``text`` made safe to write to a terminal: the one sanitiser for every screen.

    Every character that is not printable (control characters such as ESC, BEL,
    NUL, DEL and C1; format characters such as bidi overrides; line and
    paragraph separators) is written as ``repr`` writes it (ESC as ``\\x1b``),
    or becomes ``replacement`` when one is given. Characters in ``keep`` (the
    newlines of a traceback) are left as they are. With ``width``, longer
    text is cut to ``width`` characters, the last of them ``ellipsis``.
    """
    cut = width is not None and len(text) > width
    if cut:
        text = text[:width]  # nothing past it could be shown: no need to clean it
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() or ch in keep else
                       repr(ch)[1:-1] if replacement is None else replacement for ch in text)
    if width is not None and (cut or len(text) > width):
        text = text[: width - len(ellipsis)] + ellipsis
    return text


_NEEDS_QUOTES = frozenset(" =\"'")


def console_value(value: Any) -> str:
    """A log value as the console shows it: a plain word as is, any other text quoted and escaped by ``repr``."""
    if isinstance(value, str) and value.isprintable() and not _NEEDS_QUOTES.intersection(value):
        return value
    return terminal_text(repr(value))  # a custom __repr__ could still hold raw control characters


class _Shown:
    """A value already rendered for the console (ConsoleRenderer shows what is not a str by its repr)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


_OWN_FIELDS = {"level", "timestamp"}  # set by our own processors, and styled by the renderer
_PLAIN_FIELDS = {"event", "logger", "logger_name"}  # shown unquoted
_TRACEBACK_FIELDS = {"exception", "stack"}  # many lines


def escape_for_console(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """The last step before the console renderer: every key and value made safe for a terminal."""
    shown: dict[str, Any] = {}
    for key, value in event.items():
        if key in _OWN_FIELDS:
            shown[key] = value
        elif key in _TRACEBACK_FIELDS and isinstance(value, str):
            shown[key] = terminal_text(value, keep="\n")
        elif key in _PLAIN_FIELDS:
            shown[key] = terminal_text(str(value))
        else:
            shown[terminal_text(str(key))] = _Shown(console_value(value))
    return shown


def set_debug(debug: bool) -> None:
    """For commands that never log (no structlog set-up): whether a failure shows its traceback."""
    global _debug
    _debug = debug


def configure(level: str = "info", fmt: str = "auto", stream=None) -> None:
    """Set up structlog once per process; logs go to stderr, command output to stdout."""
    structlog = _import_structlog()

    stream = stream or sys.stderr
    set_debug(level == "debug")
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderers = (
        [escape_for_console, structlog.dev.ConsoleRenderer(colors=stream.isatty())]
        if fmt == "console"
        else [structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info if _debug else _drop_exc_info,
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _import_structlog():
    """structlog, imported here (commands that never log start faster without it) and without rich.

    structlog imports rich, when installed (textual, for `explore`, brings it), to
    pretty-print tracebacks: with pygments that is ~5 MB of resident memory for the
    whole life of the daemon. Tracebacks are shown only at debug level, and plain
    ones do; `explore` imports rich itself.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog

        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError meanwhile
    try:
        import structlog
    finally:
        del sys.modules["rich"]
    return structlog


def _drop_exc_info(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    # Tracebacks only at debug level.
    event.pop("exc_info", None)
    return event


def is_debug() -> bool:
    return _debug
