"""The agent id: 16 bytes, shown as 32 lowercase hex characters.

The original agent keeps its id inside its own executable and `refresh-id`
patches the binary. A Python package cannot do that, so the id lives in a file,
``<state dir>/agent-id``, created with 16 random bytes the first time an agent
needs it. ``--agent-id`` / ``SITUATION_AGENT_ID`` override the file.

The state directory is ``/var/lib/situation`` for root, else
``$XDG_STATE_HOME/situation`` or ``~/.local/state/situation``;
``SITUATION_STATE_DIR`` overrides it (systemd units and containers set it).

Creation is safe against a second process doing the same at the same moment:
the file is written in full under a temporary name, then linked to its final
name, which fails if the name exists; the loser reads the winner's id.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from situation.errors import ConfigError

AGENT_ID_BYTES = 16
AGENT_ID_FILE = "agent-id"
HEALTH_FILE = "health.json"  # written by the daemon after each cycle, read by `situation health`
STATE_DIR_ENV = "SITUATION_STATE_DIR"
AGENT_ID_ENV = "SITUATION_AGENT_ID"
ROOT_STATE_DIR = Path("/var/lib/situation")
# The original's built-in id (first 16 bytes of sha256("situation")), which every
# agent had until `refresh-id`. Not used as a default here: see load_or_create_agent_id.
ORIGINAL_DEFAULT_AGENT_ID = "fc097e65503cb3ad9eb8e10f5a617611"

_WHITESPACE = re.compile(r"\s+")
_HEX = re.compile(r"[0-9a-fA-F]*")
# How long a process that lost the creation race waits for the winner's file to be
# complete; only the fallback path (no hard links) can show a partial file.
_PARTIAL_FILE_WAIT = 2.0
# Errors from os.link that mean "this filesystem has no hard links", not "name taken".
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the agent keeps its state (the id, the last cycle's record)."""
    env = os.environ if environ is None else environ
    override = env.get(STATE_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    if os.geteuid() == 0:
        return ROOT_STATE_DIR
    xdg = env.get("XDG_STATE_HOME", "").strip()
    # The XDG spec: a relative path in XDG_* is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "situation"
    home = env.get("HOME", "").strip() or str(Path.home())
    return Path(home) / ".local" / "state" / "situation"


def parse_agent_id(text: str) -> str:
    """Validate an agent id and return it as 32 lowercase hex characters.

    Accepts hex in any case, with whitespace anywhere; it must decode to at least
    16 bytes, and bytes past the 16th are ignored (as the original does).
    """
    if not isinstance(text, str):
        raise ConfigError(f"agent id must be text, not {type(text).__name__}")
    compact = _WHITESPACE.sub("", text)
    problem = _id_problem(compact)
    if problem is not None:
        shown = "" if not compact else f" {_shown(compact)}"
        raise ConfigError(f"agent id{shown} {problem}; give 32 hex digits (16 bytes)")
    return compact[: 2 * AGENT_ID_BYTES].lower()


def _id_problem(compact: str) -> str | None:
    """What is wrong with an id (whitespace already removed), or None."""
    if not compact:
        return "is empty"
    if not _HEX.fullmatch(compact):
        bad = next(ch for ch in compact if ch not in "0123456789abcdefABCDEF")
        return f"is not hexadecimal (found {bad!r})"
    if len(compact) % 2:
        return f"has an odd number of hex digits ({len(compact)})"
    if len(compact) < 2 * AGENT_ID_BYTES:
        return f"is {len(compact) // 2} bytes long, fewer than {AGENT_ID_BYTES}"
    return None


def _shown(text: str, limit: int = 48) -> str:
    """The offending input, quoted and cut short (a corrupt file may hold anything)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def new_agent_id() -> str:
    return secrets.token_bytes(AGENT_ID_BYTES).hex()


def agent_id_path(state_dir: Path) -> Path:
    return Path(state_dir) / AGENT_ID_FILE


def read_agent_id(state_dir: Path) -> str | None:
    """The stored id, or None when there is no file; a corrupt file is a ConfigError."""
    path = agent_id_path(state_dir)
    text = _read_text(path)
    if text is None:
        return None
    return _parse_stored(path, text)


def _read_text(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f'agent id file "{path}" is a directory; remove it and run `situation refresh-id`') from None
    except OSError as exc:
        raise ConfigError(
            f'agent id file "{path}" cannot be read ({exc.strerror}); fix its permissions or set {STATE_DIR_ENV}'
        ) from None
    return raw.decode("utf-8", errors="replace")


def _parse_stored(path: Path, text: str) -> str:
    problem = _id_problem(_WHITESPACE.sub("", text))
    if problem is not None:
        raise ConfigError(
            f'agent id file "{path}" is corrupt (its content {problem}); '
            "run `situation refresh-id` to write a new id"
        )
    return parse_agent_id(text)


def load_or_create_agent_id(state_dir: Path) -> str:
    """Read ``<state_dir>/agent-id``; create it with a random id when it is missing.

    The original ships one fixed id (ORIGINAL_DEFAULT_AGENT_ID) and asks users to
    run `refresh-id` before joining a shared database; agents that forget all write
    as the same agent. Generating a random id on first use makes every install
    unique from the start; `situation refresh-id fc09…` restores the old id.
    """
    path = agent_id_path(state_dir)
    existing = read_agent_id(state_dir)
    if existing is not None:
        return existing
    _ensure_directory(Path(state_dir))
    candidate = new_agent_id()
    try:
        created = _create_exclusive(path, candidate + "\n")
    except OSError as exc:
        raise _write_error(path, exc) from None
    if created:
        return candidate
    return _read_after_race(path)


def write_agent_id(state_dir: Path, agent_id: str) -> str:
    """Store ``agent_id`` (validated) as the agent's id, replacing any previous one.

    Returns the id as stored (32 lowercase hex characters).
    """
    value = parse_agent_id(agent_id)
    path = agent_id_path(state_dir)
    _ensure_directory(Path(state_dir))
    try:
        _replace(path, value + "\n")
    except OSError as exc:
        raise _write_error(path, exc) from None
    return value


def resolve_agent_id(override: str | None, state_dir: Path | None = None) -> str:
    """The id this run uses: ``--agent-id`` / ``SITUATION_AGENT_ID`` when given, else the file's."""
    if override is not None:
        try:
            return parse_agent_id(override)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from --agent-id or {AGENT_ID_ENV})") from None
    return load_or_create_agent_id(default_state_dir() if state_dir is None else Path(state_dir))


# -- files ------------------------------------------------------------------------


def _ensure_directory(directory: Path) -> None:
    """Create the state directory (0700) and its parents when missing; leave an existing one alone."""
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not directory.is_dir():
            raise ConfigError(f'state directory "{directory}" exists but is not a directory; fix {STATE_DIR_ENV}') from None
        return
    except OSError as exc:
        raise ConfigError(
            f'cannot create the state directory "{directory}" ({exc.strerror}); '
            f"set {STATE_DIR_ENV} to a writable directory, or pass --agent-id"
        ) from None
    # mkdir's mode goes through the umask; make sure it ends up exactly 0700.
    os.chmod(directory, 0o700)


def _write_error(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f'cannot write the agent id file "{path}" ({exc.strerror}); '
        f"set {STATE_DIR_ENV} to a writable directory, or pass --agent-id"
    )


def _write_temporary(directory: Path, content: str) -> str:
    """A complete, fsynced, 0600 file beside the target; returns its name."""
    fd, name = tempfile.mkstemp(prefix=f".{AGENT_ID_FILE}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        _unlink_quietly(name)
        raise
    return name


def _create_exclusive(path: Path, content: str) -> bool:
    """Create ``path`` with ``content`` unless it exists; True when this call created it.

    The content is complete before the name appears (link of a written temporary
    file), so a reader never sees half an id. On filesystems without hard links,
    fall back to ``O_CREAT | O_EXCL`` on the final name.
    """
    temporary = _write_temporary(path.parent, content)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        return _create_exclusive_in_place(path, content)
    finally:
        _unlink_quietly(temporary)
    _fsync_directory(path.parent)
    return True


def _create_exclusive_in_place(path: Path, content: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_directory(path.parent)
    return True


def _replace(path: Path, content: str) -> None:
    temporary = _write_temporary(path.parent, content)
    try:
        os.replace(temporary, path)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    _fsync_directory(path.parent)


def _read_after_race(path: Path) -> str:
    """Another process created the file first: use its id (waiting briefly if it is still being written)."""
    deadline = time.monotonic() + _PARTIAL_FILE_WAIT
    while True:
        text = _read_text(path)
        if text is not None:
            try:
                return parse_agent_id(text)
            except ConfigError:
                if time.monotonic() >= deadline:
                    return _parse_stored(path, text)
        elif time.monotonic() >= deadline:
            raise ConfigError(f'agent id file "{path}" vanished while it was being created; run the command again')
        time.sleep(0.02)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
