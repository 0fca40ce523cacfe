"""Every setting of `situation run`: its default, flag and environment names.

One list drives both the Click options of `run` and the JSON printed by
`situation defaults`. Precedence is default < environment < flag. Module
options become ``--<module>-<option>`` / ``SITUATION_<MODULE>_<OPTION>``, and
``--no-module-<name>`` / ``SITUATION_NO_MODULE_<NAME>`` disables a module; the
original agent's ``MODULES_<MODULE>_<OPTION>`` and ``NO_MODULE_<NAME>`` names
are accepted too.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from situation import discovery
from situation.errors import ConfigError
from situation.module import ModuleSpec, Option, format_duration, parse_bool, parse_duration


@dataclass(frozen=True)
class Setting:
    key: str  # as shown by `defaults`: "interval", "no-module-ping", "modules.ping.timeout"
    dest: str  # Python parameter name
    flag: str
    envs: tuple[str, ...]
    default: Any
    kind: str  # str, int, bool, duration, path, number, choice, networks, ports, address
    help: str
    module: str | None = None
    option: str | None = None
    minimum: float | None = None  # smallest accepted number (durations in seconds)
    maximum: float | None = None  # largest accepted number (kind "number")
    choices: tuple[str, ...] = ()  # accepted words (kind "choice")


def _env_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper()


def core_settings() -> list[Setting]:
    return [
        Setting("once", "once", "--once", ("SITUATION_ONCE",), False, "bool", "Run one collection cycle and exit."),
        Setting("interval", "interval", "--interval", ("SITUATION_INTERVAL",), 15 * 60.0, "duration",
                "Time between cycles (Go syntax: 90s, 15m, 1h); a little random jitter is added.", minimum=1.0),
        Setting("no-migration", "no_migration", "--no-migration", ("SITUATION_NO_MIGRATION",), False, "bool",
                "Never change the schema; refuse to start when it is behind this build (alias --no-migrate)."),
        Setting("fail-fast", "fail_fast", "--fail-fast", ("SITUATION_FAIL_FAST",), False, "bool",
                "Stop the cycle at the first module failure and exit non-zero."),
        Setting("ignore-missing-deps", "ignore_missing_deps", "--ignore-missing-deps",
                ("SITUATION_IGNORE_MISSING_DEPS",), False, "bool",
                "Run modules whose dependencies are disabled instead of disabling them too."),
        Setting("agent-id", "agent_id", "--agent-id", ("SITUATION_AGENT_ID",), None, "str",
                "Use this agent id (32 hex digits) instead of the one in the state directory."),
        Setting("state-dir", "state_dir", "--state-dir", ("SITUATION_STATE_DIR",), None, "path",
                "Where the agent keeps its id, health record and default SQLite database."),
        Setting("pool-size", "pool_size", "--pool-size", ("SITUATION_POOL_SIZE",), 4, "int",
                "Largest number of PostgreSQL connections this agent opens.", minimum=1),
        Setting("no-statement-cache", "no_statement_cache", "--no-statement-cache",
                ("SITUATION_NO_STATEMENT_CACHE",), False, "bool",
                "Do not use prepared statements (for PgBouncer in transaction mode)."),
        Setting("summary", "summary", "--summary/--no-summary", ("SITUATION_SUMMARY",), None, "bool",
                "Print what was recorded after --once (default: when stdout is a terminal)."),
        Setting("metrics-address", "metrics_address", "--metrics-address", ("SITUATION_METRICS_ADDRESS",), None,
                "address", "Serve Prometheus metrics over HTTP on HOST:PORT (e.g. 127.0.0.1:9464); off by default."),
        *discovery_settings(),
    ]


def discovery_settings() -> list[Setting]:
    """Where and how fast every active module may send packets (one policy per agent)."""
    return [
        Setting("discovery-scope", "discovery_scope", "--discovery-scope", ("SITUATION_DISCOVERY_SCOPE",),
                discovery.DEFAULT_SCOPE, "choice",
                "attached: sweep only the subnetworks of this host's interfaces; database: every IPv4 "
                "subnetwork in the database (the original agent's behaviour).", choices=discovery.SCOPES),
        Setting("discovery-exclude", "discovery_exclude", "--discovery-exclude", ("SITUATION_DISCOVERY_EXCLUDE",),
                "", "networks", "Addresses and networks (CIDR[,CIDR…]) that no module ever sends a packet to."),
        Setting("discovery-rate", "discovery_rate", "--discovery-rate", ("SITUATION_DISCOVERY_RATE",),
                discovery.DEFAULT_RATE, "number", "Most probe packets per second, for the whole agent.",
                minimum=1.0, maximum=discovery.MAX_RATE),
    ]


def module_settings(registry: Mapping[str, ModuleSpec]) -> list[Setting]:
    settings = []
    for name in sorted(registry):
        spec = registry[name]
        settings.append(Setting(
            f"no-module-{name}", f"no_module__{_env_name(name).lower()}", f"--no-module-{name}",
            (f"SITUATION_NO_MODULE_{_env_name(name)}", f"NO_MODULE_{_env_name(name)}"), False, "bool",
            f"Disable module {name}.", module=name,
        ))
        for option in spec.options:
            settings.append(_option_setting(spec, option))
    return settings


def _option_setting(spec: ModuleSpec, option: Option) -> Setting:
    joined = f"{spec.name}-{option.name}"
    return Setting(
        f"modules.{spec.name}.{option.name}",
        f"opt__{_env_name(spec.name).lower()}__{_env_name(option.name).lower()}",
        f"--{joined}",
        (f"SITUATION_{_env_name(joined)}", f"MODULES_{_env_name(spec.name)}_{_env_name(option.name)}"),
        option.default, option.kind, option.help, module=spec.name, option=option.name,
        minimum=0 if option.kind in ("duration", "int") else None,
    )


def click_options(settings: list[Setting]):
    """Decorate a Click command with one option per setting."""

    def decorate(command):
        for setting in reversed(settings):
            command = click.option(*_declarations(setting), **_option_kwargs(setting))(command)
        return command

    return decorate


def _declarations(setting: Setting) -> list[str]:
    names = [setting.flag, setting.dest]
    if setting.key == "no-migration":
        names.insert(1, "--no-migrate")
    return names


def _option_kwargs(setting: Setting) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"envvar": list(setting.envs), "help": setting.help, "show_envvar": False}
    if setting.kind == "bool":
        if "/" in setting.flag:
            kwargs["default"] = setting.default
        else:
            kwargs.update(is_flag=True, default=False)
        return kwargs
    kwargs["default"] = None
    kwargs["metavar"] = {
        "duration": "DURATION", "int": "N", "path": "PATH", "number": "N", "networks": "CIDR[,CIDR…]",
        "choice": "|".join(setting.choices), "ports": "PORTS", "address": "HOST:PORT",
    }.get(setting.kind, "TEXT")
    return kwargs


MAX_DURATION = 366 * 86400.0  # beyond that a timer overflows, and no cycle wants it


def convert(setting: Setting, value: Any) -> Any:
    """A value from Click (or None) as the setting's kind, falling back to its default."""
    if value is None:
        value = setting.default
    if setting.kind == "choice":
        return _choice(setting, value)
    if setting.kind == "networks":
        return _networks(setting, value)
    if setting.kind == "number":
        return _number(setting, value)
    if setting.kind == "ports":
        return _ports(setting, value)
    if setting.kind == "address":
        return _address(setting, value)
    if not isinstance(value, str) or setting.kind not in ("duration", "int"):
        return value
    try:
        number = parse_duration(value) if setting.kind == "duration" else int(value)
    except ValueError as exc:
        problem = str(exc) if setting.kind == "duration" else f"{value!r} is not a whole number"
        raise ConfigError(f"{setting.flag}: {problem}") from None
    too_long = setting.kind == "duration" and number > MAX_DURATION
    if not math.isfinite(number) or too_long or (setting.minimum is not None and number < setting.minimum):
        if setting.kind == "duration":
            least = format_duration(setting.minimum or 0)
            raise ConfigError(f"{setting.flag}: {value!r} is out of range; use a duration from {least} to 366 days")
        raise ConfigError(f"{setting.flag}: {value!r} is out of range; use a whole number of at least {setting.minimum}")
    return number


def _choice(setting: Setting, value: str) -> str:
    word = value.strip().lower()
    if word not in setting.choices:
        raise ConfigError(f"{setting.flag}: {value!r} is not one of {', '.join(setting.choices)}")
    return word


def _networks(setting: Setting, value: Any) -> tuple:
    if isinstance(value, tuple):
        return value
    try:
        return discovery.parse_networks(value, what=setting.flag, strict=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _ports(setting: Setting, value: str) -> str:
    """Checked at start (one line naming the bad item); the module parses the text again."""
    from situation.net.tcp import parse_ports

    try:
        parse_ports(value)
    except ValueError as exc:
        raise ConfigError(f"{setting.flag}: {exc}") from None
    return value


def _address(setting: Setting, value: str | None) -> tuple[str, int] | None:
    """HOST:PORT as (host, port); None stays None (the feature is off)."""
    if value is None or isinstance(value, tuple):
        return value
    from situation.metrics import parse_listen_address

    try:
        return parse_listen_address(value)
    except ValueError as exc:
        raise ConfigError(f"{setting.flag}: {exc}") from None


def _number(setting: Setting, value: Any) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{setting.flag}: {value!r} is not a number") from None
    low, high = setting.minimum, setting.maximum
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        raise ConfigError(f"{setting.flag}: {value!r} is out of range; use a number from {_plain(low)} to {_plain(high)}")
    return number


def _plain(number: float) -> str:
    return f"{number:.0f}" if number == int(number) else f"{number:g}"


def defaults_document(settings: list[Setting], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting: its default, its value from the environment, flag and env names."""
    environ = os.environ if environ is None else environ
    document = {}
    for setting in settings:
        value = setting.default
        for name in setting.envs:
            if environ.get(name):
                value = _from_environment(setting, environ[name])
                break
        document[setting.key] = {
            "default": _shown(setting, setting.default),
            "value": _shown(setting, value),
            "flag": setting.flag.split("/")[0],
            "env": setting.envs[0],
            "env_aliases": list(setting.envs[1:]),
            "help": setting.help,
        }
    return document


def _from_environment(setting: Setting, text: str) -> Any:
    try:
        if setting.kind == "bool":
            return parse_bool(text)
        if setting.kind == "duration":
            return parse_duration(text)
        if setting.kind == "int":
            return int(text)
        if setting.kind == "number":
            return float(text)
    except ValueError:
        return text
    return text


def _shown(setting: Setting, value: Any) -> Any:
    if setting.kind == "duration" and isinstance(value, (int, float)):
        return format_duration(value)
    return value
