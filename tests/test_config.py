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


# -- discovery settings: one policy per agent ----------------------------------------------

def _discovery_settings():
    from situation.config import core_settings

    return {s.key: s for s in core_settings() if s.key.startswith("discovery-")}


def test_discovery_settings_have_flags_environment_names_and_defaults():
    from situation.discovery import DEFAULT_RATE

    settings = _discovery_settings()
    assert {key: (s.flag, s.envs) for key, s in settings.items()} == {
        "discovery-scope": ("--discovery-scope", ("SITUATION_DISCOVERY_SCOPE",)),
        "discovery-exclude": ("--discovery-exclude", ("SITUATION_DISCOVERY_EXCLUDE",)),
        "discovery-rate": ("--discovery-rate", ("SITUATION_DISCOVERY_RATE",)),
    }
    assert convert(settings["discovery-scope"], None) == "attached"
    assert convert(settings["discovery-exclude"], None) == ()
    assert convert(settings["discovery-rate"], None) == DEFAULT_RATE
    document = defaults_document(list(settings.values()), {"SITUATION_DISCOVERY_RATE": "500"})
    assert document["discovery-rate"] == {**document["discovery-rate"], "default": DEFAULT_RATE, "value": 500.0}
    assert document["discovery-scope"]["default"] == "attached"


def test_discovery_values_are_parsed():
    import ipaddress

    settings = _discovery_settings()
    assert convert(settings["discovery-scope"], "Database") == "database"
    assert convert(settings["discovery-exclude"], "192.0.2.7, 198.51.100.0/25,2001:db8::/64") == (
        ipaddress.ip_network("192.0.2.7/32"), ipaddress.ip_network("198.51.100.0/25"),
        ipaddress.ip_network("2001:db8::/64"),
    )
    assert convert(settings["discovery-rate"], "250") == 250.0


@pytest.mark.parametrize("key, value, message", [
    ("discovery-scope", "fleet", "--discovery-scope: 'fleet' is not one of attached, database"),
    ("discovery-exclude", "10.0.0.0/33", "--discovery-exclude: '10.0.0.0/33' is not an address or a network"),
    ("discovery-exclude", "printer.lan", "--discovery-exclude: 'printer.lan' is not an address or a network"),
    ("discovery-exclude", "10.0.0.5/24",
     "--discovery-exclude: '10.0.0.5/24' is not a network (host bits set); write 10.0.0.0/24 for the network"),
    ("discovery-rate", "0", "--discovery-rate: '0' is out of range; use a number from 1 to 1000000"),
    ("discovery-rate", "-10", "--discovery-rate: '-10' is out of range"),
    ("discovery-rate", "1e12", "--discovery-rate: '1e12' is out of range"),
    ("discovery-rate", "inf", "--discovery-rate: 'inf' is out of range"),
    ("discovery-rate", "fast", "--discovery-rate: 'fast' is not a number"),
])
def test_bad_discovery_values_name_the_flag(key, value, message):
    with pytest.raises(ConfigError) as caught:
        convert(_discovery_settings()[key], value)
    assert str(caught.value).startswith(message)


def test_one_discovery_policy_is_shared_by_every_module(tmp_path):
    from situation.agent import Agent, AgentConfig
    from situation.discovery import Discovery
    from situation.module import HostMachine
    from situation.net.rate import RateLimiter

    policy = Discovery(rate=RateLimiter(100))
    registry = {name: ModuleSpec(name, _noop) for name in ("ping", "tcp-scan")}
    agent = Agent(AgentConfig(dsn=None, state_dir=tmp_path, agent_id="ab" * 16, discovery=policy), registry=registry)
    host = HostMachine()
    contexts = [agent._context(spec, host) for spec in registry.values()]
    assert all(ctx.discovery is policy for ctx in contexts)
    assert contexts[0].discovery.rate is contexts[1].discovery.rate
