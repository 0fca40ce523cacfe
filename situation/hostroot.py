r"""Where a module reads the host from: /proc, /sys, /etc … or a fixture tree.

In the spirit of gopsutil's HOST_PROC / HOST_SYS / HOST_ETC, every path a host
module reads goes through one :class:`HostRoot`, so that tests can point it at
a fixture tree and a container can point it at the host's mounted /proc.

Host files are untrusted text. The helpers below are how every host module
reads them: :func:`read_text` (invalid UTF-8 replaced, no newline
translation), :func:`lines` (split on ``\n`` only), :func:`host_int` (an
integer only when it fits the database) and :func:`parse_source` (a file that
cannot be parsed is skipped with one warning instead of failing the module).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

T = TypeVar("T")

INT64_MAX = 2**63 - 1  # every integer column is BIGINT (SQLite INTEGER: 64 bits)

# What parsing hostile text raises (int(), ipaddress, json, struct, indexing a short line).
PARSE_ERRORS = (ValueError, LookupError, ArithmeticError, struct.error)

log = structlog.get_logger("situation.host")

# (attribute, default path, environment override)
_PARTS = (
    ("proc", "/proc", "HOST_PROC"),
    ("sys", "/sys", "HOST_SYS"),
    ("etc", "/etc", "HOST_ETC"),
    ("run", "/run", "HOST_RUN"),
    ("var", "/var", "HOST_VAR"),
    ("usr", "/usr", "HOST_USR"),
)


@dataclass(frozen=True)
class HostRoot:
    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    etc: Path = Path("/etc")
    run: Path = Path("/run")
    var: Path = Path("/var")
    usr: Path = Path("/usr")
    base: Path = Path("/")  # for files outside the parts above (e.g. /.dockerenv)

    @property
    def is_live(self) -> bool:
        """True when this is the running system (psutil and sockets may be used)."""
        return self == HostRoot()

    @classmethod
    def under(cls, root: Path | str) -> HostRoot:
        """Every part below ``root``: a fixture tree laid out like ``/``."""
        root = Path(root)
        return cls(**{name: root / default.lstrip("/") for name, default, _env in _PARTS}, base=root)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> HostRoot:
        """``SITUATION_HOST_ROOT`` for the whole tree, then HOST_PROC, HOST_SYS … per part."""
        environ = os.environ if environ is None else environ
        root = environ.get("SITUATION_HOST_ROOT")
        start = cls.under(root) if root else cls()
        overrides = {name: Path(environ[env]) for name, _default, env in _PARTS if environ.get(env)}
        return cls(**{**start.__dict__, **overrides})

    def path(self, absolute: str) -> Path:
        """Map an absolute host path (``/sys/block``) into this root."""
        for name, default, _env in _PARTS:
            if absolute == default or absolute.startswith(default + "/"):
                return getattr(self, name) / absolute[len(default) :].lstrip("/")
        return self.base / absolute.lstrip("/")


# -- reading host files ------------------------------------------------------------------


def read_text(path: str | os.PathLike[str]) -> str:
    r"""A host file's text, invalid UTF-8 replaced; raises OSError when it cannot be read.

    Bytes are decoded as they are: no universal-newline translation, so a lone
    ``\r`` stays inside its line (``Path.read_text`` would split it off).
    A plain string path is opened as it is: a ``Path`` made of it interns each of
    its parts, and a dict of interned strings grown by thousands of file names
    never shrinks.
    """
    with open(path, "rb") as stream:
        return stream.read().decode("utf-8", errors="replace")


def read_text_or_none(path: Path) -> str | None:
    """:func:`read_text`, or None when the file cannot be read."""
    try:
        return read_text(path)
    except OSError:
        return None


def lines(text: str) -> list[str]:
    r"""The lines of a line-oriented host file, split on ``\n`` only.

    ``str.splitlines`` also breaks at U+2028, U+0085, ``\f``, ``\x1c``–``\x1e`` and
    a lone ``\r``, so a field holding one (a GECOS, a DMI string) would open a
    forged line. A ``\r`` ending a line (a file saved with CRLF) is dropped.
    """
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    return [part.removesuffix("\r") for part in parts]


def host_int(text: str | None, *, base: int = 10, minimum: int = 0, maximum: int = INT64_MAX) -> int | None:
    """The integer ``text`` spells, or None when it spells none or lies outside [minimum, maximum].

    Every integer a host file gives goes through here (or :func:`in_range`)
    before it is stored: the columns are 64-bit, and a kernel, a fixture or an
    attacker may write ``99999999999999999999999``.
    """
    if text is None:
        return None
    try:
        value = int(text.strip(), base)
    except ValueError:  # also for more than sys.get_int_max_str_digits() digits
        return None
    return in_range(value, minimum=minimum, maximum=maximum)


def in_range(value: int, *, minimum: int = 0, maximum: int = INT64_MAX) -> int | None:
    """``value`` when minimum <= value <= maximum, else None."""
    return value if minimum <= value <= maximum else None


def parse_source(source: Path | str, parse: Callable[[], T], default: T) -> T:
    """``parse()``, or ``default`` with one warning when the host file ``source`` cannot be parsed.

    One malformed file then costs only what it would have told, never the
    module (and the modules that depend on it).
    """
    try:
        return parse()
    except PARSE_ERRORS as exc:
        log.warning("host file skipped: it cannot be parsed", file=str(source), error=f"{type(exc).__name__}: {exc}")
        return default
