"""local-users: /etc/passwd parsing (comments, short lines, duplicate uids) and the users rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from situation.hostroot import HostRoot
from situation.modules.local_users import LocalUser, collect, parse_passwd
from support.modules import AGENT, ModuleStore
from support.stored_text import CONTROL

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


# -- run(ctx) against a real SQLite store ---------------------------------------------------

USER_COLUMNS = ("uid", "gid", "name", "username", "domain", "machine_id")


def user_columns(module_store: ModuleStore) -> list[dict]:
    return [{column: row[column] for column in USER_COLUMNS} for row in module_store.rows("users")]


async def test_run_stores_users(tmp_path: Path, module_store: ModuleStore) -> None:
    ctx = await module_store.run("local-users", write_passwd(tmp_path, PASSWD))
    host = module_store.machine_id
    stored = user_columns(module_store)
    assert stored[0] == {"uid": "0", "gid": "0", "name": "root", "username": "root", "domain": "", "machine_id": host}
    assert [(row["uid"], row["username"]) for row in stored] == [
        ("0", "root"), ("1", "daemon"), ("1000", "alice"), ("1001", "bob"), ("65534", "nobody"),
    ]
    assert all(row["machine_id"] == host for row in stored)
    assert all(row["updated_by"] == AGENT for row in module_store.rows("users"))
    assert ctx.rows_written == 5


async def test_second_run_writes_nothing(tmp_path: Path, module_store: ModuleStore) -> None:
    root = write_passwd(tmp_path, PASSWD)
    await module_store.run("local-users", root)
    before = module_store.snapshot()
    ctx = await module_store.run("local-users", root)
    assert ctx.rows_written == 0
    assert module_store.snapshot() == before


async def test_renamed_account_updates_its_row(tmp_path: Path, module_store: ModuleStore) -> None:
    # Found again on (uid, machine_id); gid, name, username and domain are refreshed.
    await module_store.run("local-users", write_passwd(tmp_path / "before", PASSWD))
    ids = {row["uid"]: row["id"] for row in module_store.rows("users")}
    renamed = PASSWD.replace("bob:x:1001:100::", "robert:x:1001:1001:Robert:")
    ctx = await module_store.run("local-users", write_passwd(tmp_path / "after", renamed))
    assert ctx.rows_written == 1
    assert {row["uid"]: row["id"] for row in module_store.rows("users")} == ids
    [bob] = [row for row in user_columns(module_store) if row["uid"] == "1001"]
    assert bob == {"uid": "1001", "gid": "1001", "name": "Robert", "username": "robert", "domain": "",
                   "machine_id": module_store.machine_id}


async def test_run_empty_is_a_no_op(tmp_path: Path, module_store: ModuleStore) -> None:
    before = module_store.snapshot()
    ctx = await module_store.run("local-users", write_passwd(tmp_path, "# empty\n"))
    assert ctx.rows_written == 0
    assert module_store.snapshot() == before


async def test_run_unreadable_passwd_is_skipped(tmp_path: Path, module_store: ModuleStore) -> None:
    from situation.module import Skip

    with pytest.raises(Skip, match="passwd"):
        await module_store.run("local-users", HostRoot.under(tmp_path / "empty"))
    assert module_store.rows("users") == []


# Everything str.splitlines breaks a line at, besides "\n" (issue 14, item 5).
LINE_BREAKS_OF_SPLITLINES = ["\u2028", "\u2029", "\x85", "\f", "\v", "\x1c", "\x1d", "\x1e", "\r"]


@pytest.mark.parametrize("separator", LINE_BREAKS_OF_SPLITLINES, ids=repr)
async def test_a_line_break_inside_gecos_forges_no_account(
    tmp_path: Path, module_store: ModuleStore, separator: str
) -> None:
    passwd = f"bob:x:1000:1000:Bob{separator}ghost:x:4242:0:Ghost:/:/bin/sh\n"
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(passwd.encode())
    await module_store.run("local-users", root)
    [bob] = user_columns(module_store)
    assert (bob["uid"], bob["gid"], bob["username"]) == ("1000", "1000", "bob")
    assert bob["name"].startswith("Bob")  # the rest of the GECOS stays data (the store cleans it)


async def test_run_needs_host(tmp_path: Path, module_store: ModuleStore) -> None:
    with pytest.raises(RuntimeError, match="no host"):
        await module_store.run("local-users", write_passwd(tmp_path, PASSWD), machine_id=None)
    assert module_store.rows("users") == []


async def test_escape_sequences_in_gecos_reach_no_terminal(tmp_path: Path, module_store: ModuleStore) -> None:
    # issue 12, item 5: an OSC title, a clear-screen and a C1 CSI in GECOS, then a byte that is not UTF-8.
    passwd = b"eve:x:1003:1003:\x1b]0;owned\x07Eve\x1b[2J\xc2\x9b31m\xff:/home/eve:/bin/sh\n"
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(passwd)
    await module_store.run("local-users", root)
    [eve] = user_columns(module_store)
    assert (eve["username"], eve["name"]) == ("eve", "]0;ownedEve[2J31m\ufffd")
    assert not CONTROL.search(eve["name"])
