"""Run chosen collection modules once, in order, against a store: for tests of active modules.

Active modules send packets, so this script is only ever started inside a
test-made network namespace, behind the guard (``IsolatedHost.run_module``,
which goes through ``isolated_exec.py``); it checks again itself.

    run_module.py --db PATH_OR_DSN --agent HEX [--option module.name=value]...
                  [--exclude CIDR,...] [--rate PPS] [--only CIDR,...] [--scope attached|database]
                  [--timeout SECONDS] MODULE...

Prints one JSON object: ``{"rows": {module: rows_written}}``. A module that
raises Skip is reported as ``{"skipped": {module: reason}}``; one stopped by
``--timeout`` (as the scheduler stops it) as ``{"timeout": [module]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import structlog


def _namespace_of(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:  # /proc/1 may be out of reach (a container, hidepid)
        return None


def _refuse_home_namespace() -> None:
    here = _namespace_of("/proc/self/ns/net")
    home = os.environ.get("SITUATION_TEST_HOME_NETNS")
    if not home or here is None or here == int(home) or here == _namespace_of("/proc/1/ns/net"):
        sys.stderr.write("refusing to run: not inside a test-made network namespace\n")
        sys.exit(97)


async def _main(arguments: argparse.Namespace) -> dict:
    from situation.discovery import Discovery, parse_networks
    from situation.hostroot import HostRoot
    from situation.module import REGISTRY, Context, HostMachine, Skip, convert_option, load_builtin_modules
    from situation.net.rate import RateLimiter
    from situation.store import open_store

    load_builtin_modules()
    discovery = Discovery(
        scope=arguments.scope,
        exclude=parse_networks(arguments.exclude, what="--exclude"),
        rate=RateLimiter(arguments.rate),
        only=parse_networks(arguments.only, what="--only") if arguments.only else None,
    )
    store = await open_store(arguments.db, arguments.agent)
    host = HostMachine(id=await store.fetchval("machine_by_agent", arguments.agent)
                       if arguments.host_lookup else None)
    report: dict = {"rows": {}, "skipped": {}, "timeout": []}
    try:
        for name in arguments.modules:
            spec = REGISTRY[name]
            options = {o.name: o.default for o in spec.options}
            for assignment in arguments.option:
                target, value = assignment.split("=", 1)
                module_name, option_name = target.rsplit(".", 1)
                if module_name == name:
                    [option] = [o for o in spec.options if o.name == option_name]
                    options[option_name] = convert_option(option, value, assignment)
            ctx = Context(store=store, log=structlog.get_logger().bind(module=name), agent_id=arguments.agent,
                          options=options, root=HostRoot.under("/"), host=host, discovery=discovery)
            try:
                async with asyncio.timeout(arguments.timeout):
                    await spec.run(ctx)
            except Skip as reason:
                report["skipped"][name] = str(reason)
            except TimeoutError:
                report["timeout"].append(name)
            report["rows"][name] = ctx.rows_written
    finally:
        await store.close()
    return report


def main() -> None:
    _refuse_home_namespace()
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--agent", default="ab" * 16)
    parser.add_argument("--option", action="append", default=[])
    parser.add_argument("--exclude", default="")
    parser.add_argument("--only", default="")
    parser.add_argument("--scope", default="attached", choices=("attached", "database"))
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--timeout", type=float, default=None, help="stop each module after SECONDS")
    parser.add_argument("--host-lookup", action="store_true", help="resolve the host machine by agent id first")
    parser.add_argument("modules", nargs="+")
    arguments = parser.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(_main(arguments))))


if __name__ == "__main__":
    main()
