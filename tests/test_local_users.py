"""local-users: /etc/passwd parsing (comments, short lines, duplicate uids) and the users rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from situation.hostroot import HostRoot
from situation.module import Context
from situation.modules import local_users
from situation.modules.local_users import LocalUser, collect, parse_passwd
from situation.store import UpsertResult

PASSWD = """\
# /etc/passwd: local accounts
root:x:0:0:root:/root:/bin/bash
toor:x:0:0:Second root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

   # an indented comment
alice:x:1000:1000:Alice Liddell,Room 42,+1 555 0100,,:/home/alice:/bin/zsh
broken:x:1234
short
bob:x:1001:100::/home/bob:/bin/bash
carol:x:1002:1002:Carol:/home/carol
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""


def write_passwd(tmp_path: Path, text: str) -> HostRoot:
    path = tmp_path / "etc" / "passwd"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return HostRoot.under(tmp_path)


def test_parse_passwd() -> None:
    assert parse_passwd(PASSWD) == [
        LocalUser(uid="0", gid="0", name="root", username="root"),
        LocalUser(uid="1", gid="1", name="daemon", username="daemon"),
        LocalUser(uid="1000", gid="1000", name="Alice Liddell", username="alice"),
        LocalUser(uid="1001", gid="100", name="", username="bob"),
        LocalUser(uid="65534", gid="65534", name="nobody", username="nobody"),
    ]


def test_duplicate_uid_first_entry_wins() -> None:
    users = parse_passwd(PASSWD)
    assert [u.username for u in users if u.uid == "0"] == ["root"]


def test_short_and_incomplete_lines_are_skipped() -> None:
    # "broken" (3 fields) is listed but cannot be resolved; "carol" lacks the shell field.
    names = {u.username for u in parse_passwd(PASSWD)}
    assert "broken" not in names and "short" not in names and "carol" not in names


def test_short_line_resolved_by_a_later_complete_line() -> None:
    text = "first:x:500\nsecond:x:500:500:Second,x:/home/second:/bin/sh\n"
    assert parse_passwd(text) == [LocalUser(uid="500", gid="500", name="Second", username="second")]


def test_domain_is_empty() -> None:
    assert all(u.domain == "" for u in parse_passwd(PASSWD))


def test_empty_file() -> None:
    assert parse_passwd("") == []
    assert parse_passwd("# nothing\n\n") == []


def test_collect(tmp_path: Path) -> None:
    assert len(collect(write_passwd(tmp_path, PASSWD))) == 5


def test_collect_unreadable(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        collect(HostRoot.under(tmp_path))


# -- run(ctx) with a fake store -------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def upsert(self, table, rows, *, key, update=None):
        self.calls.append((table, [dict(r) for r in rows], key, tuple(update) if update else None))
        return UpsertResult(written=len(rows), ids=list(range(1, len(rows) + 1)))


def context(root: HostRoot, store: FakeStore, host_id: int | None = 9) -> Context:
    ctx = Context(store=store, log=structlog.get_logger(), agent_id="ef" * 16, options={}, root=root)
    ctx.host.id = host_id
    return ctx


async def test_run_upserts_users(tmp_path: Path) -> None:
    store = FakeStore()
    ctx = context(write_passwd(tmp_path, PASSWD), store)
    await local_users.run(ctx)
    (table, rows, key, update) = store.calls[0]
    assert (table, key) == ("users", "machine_user")
    assert set(update) == {"gid", "name", "username", "domain"}
    assert rows[0] == {"uid": "0", "gid": "0", "name": "root", "username": "root", "domain": "", "machine_id": 9}
    assert [r["uid"] for r in rows] == ["0", "1", "1000", "1001", "65534"]
    assert ctx.rows_written == 5


async def test_run_empty_is_a_no_op(tmp_path: Path) -> None:
    store = FakeStore()
    ctx = context(write_passwd(tmp_path, "# empty\n"), store)
    await local_users.run(ctx)
    assert store.calls == [] and ctx.rows_written == 0


async def test_run_unreadable_passwd_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="passwd"):
        await local_users.run(context(HostRoot.under(tmp_path), FakeStore()))


async def test_run_needs_host(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no host"):
        await local_users.run(context(write_passwd(tmp_path, PASSWD), FakeStore(), None))
