"""No raw control character from outside reaches a terminal through a log line.

The whole-cycle case runs inside a test-made network namespace (test_host, support/netns.py).

The console renderer gets every key and value (the event text too) escaped the
way ``repr`` does; JSON lines are escaped by the encoder. Checked in-process
with a stream that says it is a terminal, and end to end: ``situation run
--once`` inside an isolated host, its stdout and stderr on a real pty, with an
SQLite path holding an OSC title sequence.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys

import pytest
import structlog

from situation import logs

HOSTILE = "\x1b]0;pwned\x07"
# Colour codes are the renderer's own; anything else starting with ESC would be injected.
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
_RAW_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def raw_controls(text: str) -> list[str]:
    """The control characters in terminal output, other than newlines and colour codes."""
    return _RAW_CONTROLS.findall(_COLOURS.sub("", text))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Evil:
    def __repr__(self) -> str:
        return "\x1b[2J\x9b"


@pytest.fixture
def configured():
    def configure(fmt: str, level: str = "debug"):
        stream = Terminal()
        logs.configure(level, fmt, stream=stream)
        return stream

    yield configure
    logs.configure("info", "json", stream=sys.stderr)


HOSTILE_FIELDS = {
    "host_id": HOSTILE,
    f"key{HOSTILE}": "value",
    "with_space": f"a b{HOSTILE}",
    "nul": "host\x00name",
    "del_and_c1": "a\x7fb\x85c\x9b",
    "line_separator": "a\u2028b",
    "newline": "a\nb",
    "nested": [HOSTILE, {"k": HOSTILE}],
    "raw_bytes": HOSTILE.encode(),
    "custom_repr": Evil(),
    "db": f"/tmp/{HOSTILE}.sqlite",
}


def log_hostile_lines(logger_name: str = f"situation{HOSTILE}") -> None:
    log = structlog.get_logger(logger_name)
    log.warning(f"event text {HOSTILE}", **HOSTILE_FIELDS)
    try:
        raise RuntimeError(f"boom {HOSTILE}")
    except RuntimeError:
        log.exception("failed", reason=HOSTILE)


def test_console_lines_hold_no_raw_control_character(configured):
    terminal = configured("console")
    log_hostile_lines()
    output = terminal.getvalue()
    assert raw_controls(output) == [], output
    assert r"event text \x1b]0;pwned\x07" in output
    assert r"\x1b]0;pwned\x07" in output and "host\\x00name" in output
    assert "Traceback" in output and r"boom \x1b]0;pwned\x07" in output  # debug level keeps its traceback


def test_plain_words_stay_unquoted(configured):
    terminal = configured("console")
    structlog.get_logger("t").info("cycle finished", module="host-basic", rows=3, path="/var/lib/x.sqlite")
    line = _COLOURS.sub("", terminal.getvalue())
    assert "cycle finished" in line and "module=host-basic" in line and "rows=3" in line
    assert "path=/var/lib/x.sqlite" in line


def test_json_lines_are_already_safe(configured):
    terminal = configured("json")
    log_hostile_lines()
    lines = terminal.getvalue().splitlines()
    assert raw_controls(terminal.getvalue()) == []
    first = json.loads(lines[0])
    assert first["host_id"] == HOSTILE and first["event"] == f"event text {HOSTILE}"
    assert first[f"key{HOSTILE}"] == "value"


@pytest.mark.parametrize(
    ("value", "shown"),
    [("plain", "plain"), ("a b", "'a b'"), ("\x1b", r"'\x1b'"), ("é", "é"), (b"\x07", r"b'\x07'"),
     (3, "3"), (Evil(), r"\x1b[2J\x9b")],
)
def test_console_value(value, shown):
    assert logs.console_value(value) == shown


def test_terminal_text_keeps_what_it_is_told_to():
    assert logs.terminal_text("a\nb\x1b", keep="\n") == "a\nb\\x1b"
    assert logs.terminal_text("ok") == "ok"


def test_terminal_text_replaces_or_escapes_then_cuts_to_the_width():
    hostile = "evil\x1b[2J\u202ename"
    assert logs.terminal_text(hostile, replacement="?") == "evil?[2J?name"
    assert logs.terminal_text(hostile, replacement="\ufffd", width=8) == "evil\ufffd[2…"
    assert logs.terminal_text(hostile, width=10, ellipsis="...") == "evil\\x1..."  # escapes count towards it
    assert logs.terminal_text("x" * 10_000, width=5) == "xxxx…"
    assert logs.terminal_text("short", width=5) == "short"


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the pty
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_hostile_sqlite_path_reaches_the_terminal_escaped(test_host, tmp_path):
    database = tmp_path / f"{HOSTILE}.sqlite"
    controller, terminal = pty.openpty()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SITUATION_STATE_DIR": str(tmp_path / "state"),
           "TERM": "xterm"}
    process = test_host.popen(sys.executable, "-m", "situation", "run", "--once", "--db", str(database), env=env,
                              stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = read_all(controller).decode("utf-8", "replace")
    os.close(controller)
    assert process.wait(timeout=120) == 0, output
    assert raw_controls(output.replace("\r", "")) == [], output
    assert r"\x1b]0;pwned\x07" in output  # the log line and the summary name the file, escaped
    assert "recorded in SQLite" in output
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM machines").fetchone()[0] == 1


def test_logging_leaves_rich_unimported():
    # rich (installed for `explore`) and pygments would cost the daemon ~5 MB of resident memory.
    code = ("import sys; from situation import logs; logs.configure('debug', 'console'); "
            "import structlog; structlog.get_logger().info('x'); print('rich' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
