"""The agent host's ``machines`` row: one row per host, whatever the agent ids.

An agent id changes when the state directory is lost, the agent is reinstalled or a
container is recreated without its volume; two agents sometimes run on one host by
mistake; and a cloned image starts the same agent id on several hosts. The host's
row follows the host, not the agent id:

1. **One row per host.** A host with a ``host_id`` has exactly the row carrying
   that host_id. The agent that writes it takes it over: its id goes into
   ``agent``. The take-over is logged once, naming the previous agent id; when the
   previous agent wrote the row less than one interval ago, two agents are running
   on this host, which is a warning (each take-over of such a flip-flop is one).
2. **The agent id's other row.** When this agent id is already on another row:
   - that row has no host_id, or it carries one of this host's MACs (the host_id
     source changed: a new DMI UUID, a boot_id after a reboot): it is this host's
     row. It becomes the host's row when none carries the host_id yet, else it
     gives the agent id up (``agent`` NULL) and the host_id's row is used;
   - otherwise it describes another host using the same agent id (a cloned
     image). That row is left alone, one warning is logged (once per process and
     other host), and this host is written to the row keyed by its own host_id
     with ``agent`` NULL (an existing row's ``agent`` is not touched). The first
     host to record itself keeps the id; ``situation refresh-id`` on the clone
     ends it. A clone without any host_id cannot be keyed apart: host-basic fails
     with that advice rather than overwrite the other host.
3. **No host_id** (no DMI UUID, machine-id or boot_id): the row fingerprint found
   from MAC evidence, else the agent id's row, else a new one.

Everything runs as one short transaction that first takes a transaction-scoped lock
on the host_id and on the agent id (PostgreSQL ``pg_advisory_xact_lock``, in a
fixed order; SQLite's write transaction admits one writer anyway), so agents
starting together on one host queue instead of racing into unique violations, and
the lock works behind PgBouncer's transaction pooling.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from situation.errors import SituationError
from situation.module import Context
from situation.modules.host_network import read_interfaces

# The first key of every lock taken here (the two-integer advisory lock space, which
# never meets the one-bigint space of the migration lock).
LOCK_NAMESPACE = 0x517A_0001

# Other hosts already warned about by this process: (agent id, their machine id).
_clones_warned: set[tuple[str, int]] = set()


class ClonedWithoutHostId(SituationError):
    """This agent id describes another host, and this one has no host_id to be recorded by."""


@dataclass(frozen=True)
class HostRow:
    id: int
    host_id: str | None
    agent: str | None
    hostname: str

    @classmethod
    def of(cls, row: Mapping[str, Any] | None) -> HostRow | None:
        return None if row is None else cls(row["id"], row["host_id"], row["agent"], row["hostname"])


@dataclass(frozen=True)
class Plan:
    """What the write does: which row it updates, and what happens to the others."""

    target: HostRow | None  # the row to write; None: insert a new one
    release: HostRow | None = None  # the agent id's earlier row of this host, which gives the id up
    clone_of: HostRow | None = None  # another host's row holding this agent id: write without it


def lock_key(kind: str, value: str) -> int:
    """A signed 32-bit key for ``pg_advisory_xact_lock(namespace, key)``, the same on every agent."""
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_host_identity(store, agent_id: str, host_id: str | None) -> None:
    """Take the locks on this agent id and this host_id, in one order for every agent (no deadlock)."""
    keys = {lock_key("agent", agent_id), *([lock_key("host", host_id)] if host_id else [])}
    for key in sorted(keys):
        await store.execute("lock_host_identity", LOCK_NAMESPACE, key)


def plan_write(
    host_id: str | None,
    by_host: HostRow | None,
    by_agent: HostRow | None,
    hint: HostRow | None,
    agent_row_is_this_host: bool,
) -> Plan:
    """The rules of the module docstring, on the rows read under the lock."""
    if by_agent is not None and by_agent.host_id not in (None, host_id) and not agent_row_is_this_host:
        return Plan(target=by_host, clone_of=by_agent)
    if by_host is not None:
        release = by_agent if by_agent is not None and by_agent.id != by_host.id else None
        return Plan(target=by_host, release=release)
    if by_agent is not None:
        return Plan(target=by_agent)
    if hint is not None and (hint.host_id is None or hint.host_id == host_id):
        return Plan(target=hint)
    return Plan(target=None)


@dataclass
class Outcome:
    machine_id: int
    plan: Plan
    previous_agent: str | None = None  # whose row this agent took over
    seconds_since_written: float | None = None  # by the previous agent


async def write_host_row(ctx: Context, row: dict[str, Any], update: tuple[str, ...]) -> int:
    """Write the host's machine row (``row`` holds every column, ``agent`` this agent) by the rules; its id."""
    host_id = row["host_id"]
    store = ctx.store

    async def unit() -> Outcome:
        await lock_host_identity(store, ctx.agent_id, host_id)
        by_host = HostRow.of(await store.fetchrow("host_row_by_host_id", host_id)) if host_id else None
        by_agent = HostRow.of(await store.fetchrow("host_row_by_agent", ctx.agent_id))
        hint = HostRow.of(await store.fetchrow("host_row_by_id", ctx.host.id)) if ctx.host.id is not None else None
        moved = by_agent is not None and by_agent.host_id not in (None, host_id)
        plan = plan_write(host_id, by_host, by_agent, hint, moved and await _carries_our_mac(ctx, by_agent.id))
        if plan.clone_of is not None:
            return await _write_as_clone(ctx, row, update, plan)
        if plan.release is not None:
            await store.execute("release_machine_agent", plan.release.id, ctx.agent_id)
        outcome = Outcome(0, plan)
        target = plan.target
        if target is not None and target.agent is not None and target.agent != ctx.agent_id:
            outcome.previous_agent = target.agent
            outcome.seconds_since_written = await store.fetchval("machine_write_age", target.id)
        if target is not None and target.agent != ctx.agent_id:
            await store.execute("take_over_machine", ctx.agent_id, target.id)
            ctx.count(1)
        written = await ctx.upsert("machines", [row], key="agent", update=update)
        outcome.machine_id = written.ids[0]
        return outcome

    outcome = await ctx.run_in_transaction(unit)
    _log_outcome(ctx, outcome, host_id)
    return outcome.machine_id


async def _carries_our_mac(ctx: Context, machine_id: int) -> bool:
    """The row has an interface with one of this host's MACs: it describes this host."""
    recorded = {r["mac"] for r in await ctx.store.fetch("host_row_macs", machine_id)}
    if not recorded:
        return False
    interfaces = await asyncio.to_thread(read_interfaces, ctx.root)
    return bool(recorded & {i.mac for i in interfaces if i.mac})


async def _write_as_clone(ctx: Context, row: dict[str, Any], update: tuple[str, ...], plan: Plan) -> Outcome:
    if row["host_id"] is None:
        other = plan.clone_of
        raise ClonedWithoutHostId(
            f"this agent id is in use on another host (machine {other.id}, {other.hostname or 'no hostname'}) and "
            "this host has no host_id to be recorded apart by; run `situation refresh-id` on one of them"
        )
    # An existing row keeps its agent column: ``update`` never lists it.
    written = await ctx.upsert("machines", [{**row, "agent": None}], key="host_id", update=update)
    return Outcome(written.ids[0], plan)


def _log_outcome(ctx: Context, outcome: Outcome, host_id: str | None) -> None:
    plan = outcome.plan
    if plan.clone_of is not None:
        other = plan.clone_of
        if (ctx.agent_id, other.id) not in _clones_warned:
            _clones_warned.add((ctx.agent_id, other.id))
            ctx.log.warning(
                "this agent id is in use on another host (a cloned image?); this host is recorded without it",
                agent=ctx.agent_id, machine_id=outcome.machine_id, host_id=host_id, other_machine_id=other.id,
                other_host_id=other.host_id, other_hostname=other.hostname,
                fix="run `situation refresh-id` on one of the hosts",
            )
        return
    if plan.release is not None:
        ctx.log.info("this agent's earlier row of this host gives its agent id up", machine_id=plan.release.id,
                     host_machine_id=outcome.machine_id)
    if outcome.previous_agent is None:
        return
    age = outcome.seconds_since_written
    fields = {"previous_agent": outcome.previous_agent, "machine_id": outcome.machine_id, "host_id": host_id,
              "seconds_since_written": None if age is None else round(age, 1)}
    if age is not None and age < ctx.interval:
        ctx.log.warning("two agents run on this host: its machine row changed hands within one interval",
                        **fields, fix="stop one of them")
    else:
        ctx.log.info("took over this host's machine row from another agent", **fields)
