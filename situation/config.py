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

from situation.errors import ConfigError
from situation.module import ModuleSpec, Option, format_duration, parse_bool, parse_duration


@dataclass(frozen=True)
class Setting:
    key: str  # as shown by `defaults`: "interval", "no-module-ping", "modules.ping.timeout"
    dest: str  # Python parameter name
    flag: str
    envs: tuple[str, ...]
    default: Any
    kind: str  # str, int, bool, duration, path
    help: str
    module: str | None = None
    option: str | None = None
    minimum: float | None = None  # smallest accepted number (durations in seconds)


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
    kwargs["metavar"] = {"duration": "DURATION", "int": "N", "path": "PATH"}.get(setting.kind, "TEXT")
    return kwargs


MAX_DURATION = 366 * 86400.0  # beyond that a timer overflows, and no cycle wants it


def convert(setting: Setting, value: Any) -> Any:
    """A value from Click (or None) as the setting's kind, falling back to its default."""
    if value is None:
        return setting.default
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
    except ValueError:
        return text
    return text


def _shown(setting: Setting, value: Any) -> Any:
    if setting.kind == "duration" and isinstance(value, (int, float)):
        return format_duration(value)
    return value
