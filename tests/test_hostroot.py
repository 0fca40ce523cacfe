"""hostroot: how host files are read (one rule for every host module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from situation.hostroot import INT64_MAX, host_int, in_range, lines, read_text, read_text_or_none


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("\n", [""]),
        ("a\nb\n", ["a", "b"]),
        ("a\nb", ["a", "b"]),
        ("a\n\nb\n", ["a", "", "b"]),
        ("a\r\nb\r\n", ["a", "b"]),  # a file saved with CRLF
        ("a\u2028b\x85c\fd\ve\x1cf\x1dg\x1eh\ri\u2029j\n", ["a\u2028b\x85c\fd\ve\x1cf\x1dg\x1eh\ri\u2029j"]),
    ],
)
def test_lines_split_on_newline_only(text: str, expected: list[str]) -> None:
    assert lines(text) == expected


def test_read_text_replaces_invalid_utf8_and_keeps_carriage_returns(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"ok\xff\xfe\rnext\r\n")
    assert read_text(path) == "ok\ufffd\ufffd\rnext\r\n"


def test_read_text_or_none(tmp_path: Path) -> None:
    assert read_text_or_none(tmp_path / "missing") is None
    with pytest.raises(OSError):
        read_text(tmp_path / "missing")


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("42\n", {}, 42),
        (str(INT64_MAX), {}, INT64_MAX),
        (str(INT64_MAX + 1), {}, None),
        ("99999999999999999999999", {}, None),
        ("9" * 5000, {}, None),  # beyond int()'s digit limit: a ValueError, not a crash
        ("-1", {}, None),
        ("-1", {"minimum": -5}, -1),
        ("0x1f", {"base": 0}, 31),
        ("1f", {"base": 16}, 31),
        ("", {}, None),
        (None, {}, None),
        ("4\x002", {}, None),
        ("\u00b2", {}, None),  # isdigit() says yes, int() says no
        ("12", {"maximum": 10}, None),
    ],
)
def test_host_int(text, kwargs, expected) -> None:
    assert host_int(text, **kwargs) == expected


def test_in_range() -> None:
    assert in_range(0) == 0 and in_range(INT64_MAX) == INT64_MAX
    assert in_range(INT64_MAX + 1) is None and in_range(-1) is None
