"""hostroot: how host files are read (one rule for every host module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from situation.hostroot import lines, read_text, read_text_or_none


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
