"""Module options become flags and environment variables; values keep their kind."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from situation.config import click_options, convert, defaults_document, module_settings
from situation.errors import ConfigError
from situation.module import ModuleSpec, Option, format_duration, parse_bool, parse_duration


async def _noop(ctx):
    return None


REGISTRY = {
    "tcp-scan": ModuleSpec("tcp-scan", _noop, (), (Option("timeout", 0.2, "duration", "Connect timeout."),
                                                    Option("workers", 64, "int", "Parallel connects."))),
}


def test_names_follow_the_conventions():
    settings = {s.key: s for s in module_settings(REGISTRY)}
    timeout = settings["modules.tcp-scan.timeout"]
    assert timeout.flag == "--tcp-scan-timeout"
    assert timeout.envs == ("SITUATION_TCP_SCAN_TIMEOUT", "MODULES_TCP_SCAN_TIMEOUT")
    disable = settings["no-module-tcp-scan"]
    assert disable.flag == "--no-module-tcp-scan"
    assert disable.envs == ("SITUATION_NO_MODULE_TCP_SCAN", "NO_MODULE_TCP_SCAN")


@pytest.mark.parametrize("argv, env, expected", [
    ([], {}, 0.2),
    ([], {"MODULES_TCP_SCAN_TIMEOUT": "1s"}, 1.0),
    (["--tcp-scan-timeout", "300ms"], {"SITUATION_TCP_SCAN_TIMEOUT": "2s"}, 0.3),  # flag beats environment
])
def test_precedence(argv, env, expected):
    settings = module_settings(REGISTRY)
    seen = {}

    @click.command()
    @click_options(settings)
    def command(**values):
        seen.update({s.dest: convert(s, values[s.dest]) for s in settings})

    result = CliRunner().invoke(command, argv, env=env)
    assert result.exit_code == 0, result.output
    assert seen["opt__tcp_scan__timeout"] == pytest.approx(expected)
    assert seen["opt__tcp_scan__workers"] == 64


def test_bad_values_name_the_flag():
    (timeout,) = [s for s in module_settings(REGISTRY) if s.option == "timeout"]
    with pytest.raises(ConfigError, match="--tcp-scan-timeout: invalid duration"):
        convert(timeout, "fast")


def test_defaults_document():
    document = defaults_document(module_settings(REGISTRY), {"NO_MODULE_TCP_SCAN": "on"})
    assert document["modules.tcp-scan.timeout"]["default"] == "200ms"
    assert document["no-module-tcp-scan"]["value"] is True


def test_go_durations_and_booleans():
    assert parse_duration("1m30s") == 90 and parse_duration("300ms") == 0.3 and parse_duration("2") == 2
    assert format_duration(0.3) == "300ms" and format_duration(900) == "15m" and format_duration(5) == "5s"
    assert parse_bool("on") and not parse_bool("F")
    with pytest.raises(ValueError):
        parse_duration("1x")
