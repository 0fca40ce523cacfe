"""local-users: the host's local accounts, one ``users`` row per uid.

Source: ``/etc/passwd`` parsed directly, never through ``pwd`` (NSS would add
LDAP/SSSD accounts) nor ``psutil.users()`` (logged-in sessions only). This
reproduces the original's two steps:

1. list the uids: lines starting with ``#`` and lines with fewer than 3
   ``:``-separated fields are skipped;
2. resolve each uid like Go's pure ``os/user`` lookup: the first line with
   all 7 fields whose uid matches gives ``username``, ``gid`` and ``name``
   (GECOS up to the first comma); uids that do not resolve are skipped.

``domain`` is ``''`` on Linux. Each uid appears once (first entry wins, so
``root`` hides ``toor``). An unreadable ``/etc/passwd`` is an error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from situation.hostroot import HostRoot, lines, read_text
from situation.module import Context, Skip, module


@dataclass(frozen=True)
class LocalUser:
    uid: str
    gid: str
    name: str
    username: str
    domain: str = ""


def _records(text: str) -> list[list[str]]:
    """Non-comment passwd lines split on ``:`` (at most 7 fields, like Go's SplitN)."""
    records = []
    for raw in lines(text):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        records.append(line.split(":", 6))
    return records


def listed_uids(records: list[list[str]]) -> list[str]:
    """Uids of the records with at least 3 fields, in file order, without repeats."""
    uids: dict[str, None] = {}
    for fields in records:
        if len(fields) >= 3 and fields[2]:
            uids.setdefault(fields[2], None)
    return list(uids)


def resolvable_users(records: list[list[str]]) -> dict[str, LocalUser]:
    """uid → the first complete (7-field) record with that uid."""
    users: dict[str, LocalUser] = {}
    for fields in records:
        if len(fields) < 7 or not fields[2] or fields[2] in users:
            continue
        username, _password, uid, gid, gecos = fields[:5]
        users[uid] = LocalUser(uid=uid, gid=gid, name=gecos.split(",", 1)[0], username=username)
    return users


def parse_passwd(text: str) -> list[LocalUser]:
    """The accounts of a passwd file, one per uid, in file order."""
    records = _records(text)
    users = resolvable_users(records)
    return [users[uid] for uid in listed_uids(records) if uid in users]


def collect(root: HostRoot) -> list[LocalUser]:
    """Local accounts of the host (blocking). Raises OSError when /etc/passwd is unreadable."""
    text = read_text(root.path("/etc/passwd"))
    return parse_passwd(text)


def user_row(user: LocalUser, machine_id: int) -> dict[str, object]:
    return {
        "uid": user.uid,
        "gid": user.gid,
        "name": user.name,
        "username": user.username,
        "domain": user.domain,
        "machine_id": machine_id,
    }


# The original refreshes only updated_at on conflict, so a renamed account or a
# changed primary group is never seen. Refreshing them is a deliberate improvement.
REFRESHED_COLUMNS = ("gid", "name", "username", "domain")


@module("local-users", depends=("host-basic",))
async def run(ctx: Context) -> None:
    """Record the local accounts of /etc/passwd."""
    machine_id = ctx.host_id()
    try:
        users = await asyncio.to_thread(collect, ctx.root)
    except OSError as exc:
        # A missing source is skipped with one log line, never a failed cycle.
        raise Skip(f"cannot read the passwd file: {exc.strerror or exc}") from None
    if not users:
        return
    rows = [user_row(user, machine_id) for user in users]
    await ctx.upsert("users", rows, key="machine_user", update=REFRESHED_COLUMNS)
