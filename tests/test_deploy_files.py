"""Deployment files: Dockerfile, docker-compose.yml and deploy/situation.service.

Every `situation` command line they contain must exist in the CLI, checked
against ``situation <command> --help``.

Where the machine allows it (root, openssl, PostgreSQL server binaries), the
compose flow itself runs against a throwaway cluster: the certificate script,
the secrets setup from the compose file's header, its pg_hba.conf and init SQL,
the migrate service's script, and `situation check` as both agents.

Nothing here runs the agent: `situation run` (a whole cycle, with network
discovery) is only ever shown `--help`. The commands this file does execute
(migrate, grant, check) go through ``refuse_agent_cycles``, which stops the
test before any of them could start a cycle in the machine's own network
namespace; agent cycles are tested in test_agent.py, inside isolated hosts.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from situation import identity

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
UNIT = REPO / "deploy" / "situation.service"

# What operators of these deployments are told to use beyond the files themselves.
OPERATOR_COMMANDS = [
    ["health"],
    ["run", "--interval", "1h"],
    ["run", "--once"],
    ["id"],
    ["refresh-id"],
    ["defaults"],
    ["check", "--db-file", "/etc/situation/db"],
]
GLOBAL_OPTIONS_WITH_VALUE = {"--log-level", "-l", "--log-format"}
SITUATION_SERVICES = ("migrate", "agent1", "agent2")


# -- the CLI's help ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def cli_help(*command: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "situation", *command, "--help"],
        cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SITUATION_", "PG"))},
    )
    return result.returncode, result.stdout + result.stderr


def flag_in_help(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def split_invocation(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """``situation ARGV`` → (global flags, subcommand or None, the subcommand's flags)."""
    global_flags: list[str] = []
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        name = argv[index].split("=", 1)[0]
        global_flags.append(name)
        index += 2 if name in GLOBAL_OPTIONS_WITH_VALUE and "=" not in argv[index] else 1
    command = argv[index] if index < len(argv) else None
    flags = [token.split("=", 1)[0] for token in argv[index + 1 :] if token.startswith("-") and token != "-"]
    return global_flags, command, flags


def missing_from_cli(argv: list[str]) -> list[str]:
    """What ``situation ARGV`` uses that the CLI does not have (empty when all exists)."""
    global_flags, command, flags = split_invocation(argv)
    missing = []
    code, top_help = cli_help()
    assert code == 0, top_help
    missing += [f"global option {flag}" for flag in global_flags if not flag_in_help(flag, top_help)]
    if command is None:
        return missing
    code, help_text = cli_help(command)
    if code != 0:
        return missing + [f"command {command}"]
    missing += [f"{command} {flag}" for flag in flags if not flag_in_help(flag, help_text)]
    return missing


# -- finding `situation` command lines -----------------------------------------------


def shell_invocations(script: str) -> list[list[str]]:
    """The ``situation …`` commands of a POSIX shell script, as argument lists."""
    script = re.sub(r"\\\n", " ", script)
    found = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|()"):
                found += _command_in(segment)
                segment = []
            else:
                segment.append(token)
    return found


def _command_in(words: list[str]) -> list[list[str]]:
    while words and (words[0] in ("exec", "command", "then", "do", "else", "!") or re.match(r"^\w+=", words[0])):
        words = words[1:]
    if words and Path(words[0]).name == "situation":
        return [words[1:]]
    return []


def argv_invocations(argv: list[str]) -> list[list[str]]:
    """An exec-form command: ``situation …`` directly, or a shell running a script."""
    if not argv:
        return []
    if Path(argv[0]).name == "situation":
        return [argv[1:]]
    if Path(argv[0]).name in ("sh", "bash") and len(argv) >= 3 and argv[-2].startswith("-") and "c" in argv[-2]:
        return shell_invocations(argv[-1])
    return []


# -- the files -----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions = []
    current = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def dockerfile_values(keyword: str) -> list[str]:
    return [rest for key, rest in dockerfile() if key == keyword]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def image_entrypoint() -> list[str]:
    (entrypoint,) = dockerfile_values("ENTRYPOINT")
    return exec_form(entrypoint)


def image_cmd() -> list[str]:
    (cmd,) = dockerfile_values("CMD")
    return exec_form(cmd)


def healthcheck_command() -> list[str]:
    (healthcheck,) = dockerfile_values("HEALTHCHECK")
    _options, marker, command = healthcheck.partition(" CMD ")
    assert marker, f"HEALTHCHECK without CMD: {healthcheck}"
    return exec_form(command.strip())


@functools.lru_cache(maxsize=None)
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def unit_values(section: str, key: str) -> list[str]:
    """Every value of ``key`` (systemd allows repeated keys; configparser keeps the last)."""
    values, current = [], None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and not line.startswith(("#", ";")) and "=" in line:
            name, _, value = line.partition("=")
            if name.strip() == key:
                values.append(value.strip())
    return values


def service_argv(name: str) -> list[str]:
    """What a compose service runs: its entrypoint (or the image's) followed by its command."""
    service = compose()["services"][name]
    entrypoint = service.get("entrypoint")
    command = service.get("command")
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if isinstance(command, str):
        command = shlex.split(command)
    # Compose turns `$$` into `$` (the shell's) before running anything.
    entrypoint = [part.replace("$$", "$") for part in entrypoint] if entrypoint is not None else None
    command = [part.replace("$$", "$") for part in command] if command is not None else None
    if entrypoint is None:
        entrypoint = image_entrypoint() if "build" in service or service.get("image", "").startswith("situation") else []
    if command is None:
        command = image_cmd()
    return [*entrypoint, *command]


def all_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for name, service in compose()["services"].items():
        for argv in argv_invocations(service_argv(name)):
            found.append((f"compose {name}", argv))
        check = (service.get("healthcheck") or {}).get("test")
        if isinstance(check, list) and check and check[0] in ("CMD", "CMD-SHELL"):
            argv = check[1:] if check[0] == "CMD" else ["sh", "-c", check[1]]
            found += [(f"compose {name} healthcheck", a) for a in argv_invocations(argv)]
    found += [("Dockerfile ENTRYPOINT+CMD", a) for a in argv_invocations(image_entrypoint() + image_cmd())]
    found += [("Dockerfile HEALTHCHECK", a) for a in argv_invocations(healthcheck_command())]
    for value in unit_values("Service", "ExecStart"):
        found += [("unit ExecStart", a) for a in argv_invocations(shlex.split(value.lstrip("-@:+!")))]
    return found


def _invocation_params():
    return [pytest.param(argv, id=f"{where}: situation {' '.join(argv)}") for where, argv in all_invocations()]


# -- every command line exists ----------------------------------------------------------


def test_the_files_contain_situation_commands():
    where = {w.split(":")[0].split(" healthcheck")[0] for w, _ in all_invocations()}
    assert {"compose migrate", "compose agent1", "compose agent2", "Dockerfile HEALTHCHECK", "unit ExecStart"} <= where
    assert "Dockerfile ENTRYPOINT+CMD" in where


@pytest.mark.parametrize("argv", _invocation_params())
def test_command_exists_in_the_cli(argv):
    assert missing_from_cli(argv) == []


@pytest.mark.parametrize("argv", OPERATOR_COMMANDS, ids=" ".join)
def test_operator_commands_exist(argv):
    assert missing_from_cli(argv) == []


def test_the_checker_notices_a_missing_flag():
    assert missing_from_cli(["run", "--no-migration"]) == []
    assert missing_from_cli(["--log-format", "json", "run", "--no-migrate"]) == []
    assert missing_from_cli(["run", "--no-such-flag"]) == ["run --no-such-flag"]
    assert missing_from_cli(["--no-such-global", "run"]) == ["global option --no-such-global"]
    assert missing_from_cli(["no-such-command"]) == ["command no-such-command"]


def test_shell_parsing():
    script = 'X="$(cat f)"\nexport X\nsituation migrate && exec /usr/bin/situation grant a --db "$D" # c\nif true; then situation check; fi\n'
    assert shell_invocations(script) == [["migrate"], ["grant", "a", "--db", "$D"], ["check"]]


def click_envvars() -> set[str]:
    from situation.cli import cli

    names: set[str] = set()

    def walk(command):
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli)
    return names


def test_situation_environment_variables_exist():
    known = click_envvars() | {identity.STATE_DIR_ENV}
    used = set(re.findall(r"\bSITUATION_[A-Z_]+\b", COMPOSE.read_text() + DOCKERFILE.read_text() + UNIT.read_text()))
    assert used, "no SITUATION_* variable found"
    assert used <= known, f"unknown: {sorted(used - known)}"


# -- docker-compose.yml ---------------------------------------------------------------------


def test_compose_services():
    services = compose()["services"]
    assert set(services) >= {"certs", "postgres", "migrate", "agent1", "agent2"}
    assert services["postgres"]["image"] == "postgres:17"
    assert services["postgres"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for agent in ("agent1", "agent2"):
        assert services[agent]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        argv = argv_invocations(service_argv(agent))
        assert len(argv) == 1 and split_invocation(argv[0])[1:] == ("run", ["--no-migration"])
        assert any(str(v).endswith(":/var/lib/situation") for v in services[agent]["volumes"]), "the agent id must persist"
    for name in SITUATION_SERVICES:
        assert services[name]["image"] == "situation:local" and services[name]["build"] == "."


def test_compose_migrate_then_grants():
    commands = [(split_invocation(a)[1], a) for a in argv_invocations(service_argv("migrate"))]
    assert [c for c, _ in commands] == ["migrate", "grant", "grant"]
    assert sorted(a[1] for c, a in commands if c == "grant") == ["agent1", "agent2"]
    assert re.fullmatch(r"-\w*e\w*c", service_argv("migrate")[1]), "the script must stop at the first failure"


def service_dsn(name: str) -> str:
    environment = compose()["services"][name].get("environment", {})
    return environment.get("SITUATION_DB", "")


def test_compose_connections_verify_the_server():
    owner = service_dsn("migrate")
    assert "situation_owner@" in owner and "sslmode=verify-full" in owner and "sslrootcert=" in owner
    agent2 = service_dsn("agent2")
    for key in ("user=agent2", "sslmode=verify-full", "sslrootcert=", "sslcert=", "sslkey="):
        assert key in agent2
    assert "password" not in agent2
    agent1 = compose()["services"]["agent1"]
    assert agent1["environment"]["SITUATION_DB_FILE"] == "/run/secrets/agent1_dsn"
    assert "agent1_dsn" in agent1["secrets"]
    assert "SITUATION_DB" not in agent1["environment"]
    setup = setup_script()
    assert "user=agent1" in setup and "sslmode=verify-full" in setup and "sslrootcert=" in setup


def test_compose_keeps_secrets_out():
    document = compose()
    for name, secret in document["secrets"].items():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/"), name
    strings: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                strings.append(str(key))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            strings.append(node)

    walk(document)
    for text in strings:
        assert not re.search(r"password\s*=\s*['\"]?\w", text, re.IGNORECASE), text
        assert not re.search(r"PASSWORD\s+'", text), text
        assert "BEGIN" not in text or "PRIVATE KEY" not in text
    postgres_env = document["services"]["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in postgres_env and postgres_env["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")


def pg_hba_lines() -> list[list[str]]:
    content = compose()["configs"]["pg_hba"]["content"]
    return [line.split() for line in content.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_compose_postgres_tls_and_pg_hba():
    service = compose()["services"]["postgres"]
    command = service["command"]
    settings = dict(command[i + 1].split("=", 1) for i, word in enumerate(command) if word == "-c")
    assert settings["ssl"] == "on"
    for key in ("ssl_cert_file", "ssl_key_file", "ssl_ca_file"):
        assert settings[key].startswith("/tls/")
    targets = {c["source"]: c["target"] for c in service["configs"]}
    assert settings["hba_file"] == targets["pg_hba"]
    assert targets["init_roles"].startswith("/docker-entrypoint-initdb.d/") and targets["init_roles"].endswith(".sql")
    assert "pg_isready" in service["healthcheck"]["test"]

    lines = pg_hba_lines()
    kinds = {line[0] for line in lines}
    assert kinds <= {"local", "hostssl", "hostnossl"}, "no plain `host` line: TLS or nothing"
    assert ["hostnossl", "all", "all", "0.0.0.0/0", "reject"] in lines
    assert ["hostnossl", "all", "all", "::/0", "reject"] in lines
    by_user = {line[2]: line[-1] for line in lines if line[0] == "hostssl"}
    assert by_user == {"situation_owner": "scram-sha-256", "agent1": "scram-sha-256", "agent2": "cert"}
    assert all(line[-1] != "trust" for line in lines if line[0] != "local")


def test_compose_init_sql():
    sql = compose()["configs"]["init_roles"]["content"]
    assert re.search(r"CREATE ROLE situation_owner LOGIN CREATEROLE\b", sql)
    assert "CREATE DATABASE situation OWNER situation_owner" in sql
    assert re.search(r"CREATE ROLE agent1 LOGIN .*PASSWORD :'agent1_password'", sql)
    assert re.search(r"CREATE ROLE agent2 LOGIN(?!.*PASSWORD)", sql)
    assert "`cat /run/secrets/" in sql


def test_compose_key_ownership():
    script = certs_script()
    assert "subjectAltName = DNS:postgres, DNS:localhost" in script
    assert 'issue agent2 agent2' in script
    assert re.search(r"put server\.key .*POSTGRES_UID.* 0600", script)
    assert re.search(r"put agent2\.key .*AGENT_UID.* 0600", script)
    assert "POSTGRES_UID:-999" in script and "AGENT_UID:-10001" in script
    services = compose()["services"]
    assert any(v.startswith("pki:") for v in services["certs"]["volumes"])
    for name, service in services.items():
        if name != "certs":
            assert not any(str(v).startswith("pki:") for v in service.get("volumes", [])), f"{name} sees the CA key"


def test_compose_network_choice_is_explained():
    text = COMPOSE.read_text()
    assert "network_mode: host" in text
    for name in ("agent1", "agent2"):
        assert "network_mode" not in compose()["services"][name], "the demo keeps agents on the compose network"


# -- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile():
    assert dockerfile_values("FROM")[0].split()[0] == "python:3.11-slim"
    runs = " ".join(dockerfile_values("RUN"))
    assert "pip install --no-cache-dir ." in runs
    assert "--uid 10001" in runs
    (user,) = dockerfile_values("USER")
    assert user.split(":")[0] in ("10001", "situation")
    assert image_entrypoint() == ["situation"]
    assert image_cmd() == ["run"]
    assert healthcheck_command() == ["situation", "health"]
    env = " ".join(dockerfile_values("ENV"))
    assert "SITUATION_STATE_DIR=/var/lib/situation" in env
    labels = " ".join(dockerfile_values("LABEL"))
    for key in ("title", "description", "version"):
        assert f"org.opencontainers.image.{key}=" in labels
    for keyword, rest in dockerfile():
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|SITUATION_DB\b|SITUATION_DB=", rest, re.IGNORECASE), rest


def test_dockerfile_copies_exist_and_build_a_complete_wheel(tmp_path):
    """The files the image copies are enough to build the wheel, with the SQL inside."""
    context = tmp_path / "context"
    context.mkdir()
    for rest in dockerfile_values("COPY"):
        *sources, _target = rest.split()
        for source in sources:
            assert not source.startswith("--"), "no COPY --from/--chown expected"
            path = REPO / source
            assert path.exists(), source
            if path.is_dir():
                shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("situation-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "situation/identity.py" in names and "situation/notify.py" in names
    assert any(re.fullmatch(r"situation/sql/postgres/0001_\w+\.sql", n) for n in names)


# -- deploy/situation.service -------------------------------------------------------------------


REQUIRED_UNIT = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "AmbientCapabilities": "CAP_NET_RAW",
    "CapabilityBoundingSet": "CAP_NET_RAW",
    "StateDirectory": "situation",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
}


def test_unit_directives():
    service = unit()["Service"]
    for key, value in REQUIRED_UNIT.items():
        assert service.get(key) == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert service["WatchdogSec"] and service["RestartSec"]
    assert service.get("DynamicUser") == "yes" or service.get("User") == "situation"
    assert "MemoryDenyWriteExecute" not in service
    environment = unit_values("Service", "Environment")
    assert "SITUATION_STATE_DIR=%S/situation" in environment
    credential = unit_values("Service", "LoadCredential")
    env_file = unit_values("Service", "EnvironmentFile")
    assert ("SITUATION_DB_FILE=%d/db" in environment and credential == ["db:/etc/situation/db"]) or env_file
    (exec_start,) = unit_values("Service", "ExecStart")
    assert shlex.split(exec_start) == ["/usr/local/bin/situation", "run", "--no-migration"]
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_watchdog_leaves_room_for_the_pings():
    text = unit()["Service"]["WatchdogSec"]
    match = re.fullmatch(r"(\d+)\s*(min|s|m|h)?", text)
    assert match, text
    seconds = int(match.group(1)) * {"min": 60, "m": 60, "h": 3600, "s": 1, None: 1}[match.group(2)]
    assert seconds >= 60


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path):
    """systemd-analyze verify; the binary path is pointed at an executable that exists here."""
    executable = tmp_path / "situation"
    executable.write_text("#!/bin/sh\nexit 0\n")
    executable.chmod(0o755)
    copy = tmp_path / "situation.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/situation", str(executable)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    about_ours = [line for line in (result.stdout + result.stderr).splitlines() if "situation.service" in line]
    assert result.returncode == 0 and about_ours == [], result.stdout + result.stderr


# -- the compose flow against a real cluster ---------------------------------------------------


def certs_script() -> str:
    argv = compose()["services"]["certs"]["command"]
    return argv[-1].replace("$$", "$")


def setup_script() -> str:
    text = COMPOSE.read_text(encoding="utf-8")
    match = re.search(r"^# --- setup\n(.*?)^# --- end setup$", text, re.MULTILINE | re.DOTALL)
    assert match, "the secrets setup block is missing from docker-compose.yml"
    return "".join(line[1:].removeprefix("  ") + "\n" for line in match.group(1).splitlines())


def _need_cluster_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the certificate script chowns keys to other users: needs root")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    from support.cluster import ClusterError, find_pg_bin

    try:
        find_pg_bin()
    except ClusterError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def compose_flow(tmp_path_factory):
    """Run the compose services' setup on this machine; yield what the agents need."""
    _need_cluster_tools()
    from support.cluster import Cluster, clean_environ

    base = tmp_path_factory.mktemp("compose")
    services = compose()["services"]

    # certs: named volumes become directories; the script's defaults name the mounts.
    volumes = {}
    for spec in services["certs"]["volumes"]:
        volume, mount = spec.split(":")[:2]
        volumes[mount] = base / "volumes" / volume
        volumes[mount].mkdir(parents=True)
    script = certs_script()
    env = clean_environ()
    for variable, default in re.findall(r"(\w+)=\$\{\1:-(/[^}]+)\}", script):
        env[variable] = str(volumes[default])
    for _ in range(2):  # idempotent: a second run keeps the CA and fixes modes
        result = subprocess.run(["sh", "-euc", script], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    volume_dir = {path.name: path for path in volumes.values()}

    # secrets: the header's setup block, run where the compose file would be.
    project = base / "project"
    project.mkdir()
    result = subprocess.run(["sh", "-euc", setup_script()], cwd=project, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    secret_file = {name: project / spec["file"] for name, spec in compose()["secrets"].items()}

    class ComposeCluster(Cluster):
        def _hba(self) -> str:
            rows = [" ".join(line) for line in pg_hba_lines() if line[0] != "local"]
            # The harness logs in as the superuser over the socket (the image uses peer).
            return "local all all trust\n" + "\n".join(rows) + "\n"

    class Tls:
        ca_crt = volume_dir["pki"] / "ca.crt"
        server_crt = volume_dir["pki"] / "server.crt"
        server_key = volume_dir["pki"] / "server.key"

    import tempfile

    cluster = ComposeCluster(Path(tempfile.mkdtemp(prefix="sit-pg-compose-", dir="/tmp")), tls=True, certs=Tls, name="compose")
    try:
        cluster.start()

        def localize(text: str, service: str) -> str:
            text = text.replace("$$", "$")
            text = text.replace("host=postgres port=5432", f"host=localhost port={cluster.port}")
            text = text.replace("@postgres:5432/", f"@localhost:{cluster.port}/")
            for name, path in secret_file.items():
                text = text.replace(f"/run/secrets/{name}", str(path))
            for spec in services[service].get("volumes", []):
                volume, mount = spec.split(":")[:2]
                if volume in volume_dir:
                    text = re.sub(rf"{re.escape(mount)}(?=/)", str(volume_dir[volume]), text)
            return text

        # postgres: the init SQL, as the image runs it on first start.
        cluster.psql(localize(compose()["configs"]["init_roles"]["content"], "postgres"))

        # `situation` on PATH, as in the image.
        bin_dir = base / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "situation"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m situation "$@"\n')
        wrapper.chmod(0o755)
        home = base / "home"
        home.mkdir()

        def service_env(service: str) -> dict[str, str]:
            environment = services[service].get("environment", {}) or {}
            return clean_environ(
                HOME=str(home), PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                **{key: localize(str(value), service) for key, value in environment.items()},
            )

        # migrate: the service's own script (migrate and grant only: no agent cycle).
        argv = service_argv("migrate")
        refuse_agent_cycles(argv_invocations(argv))
        result = subprocess.run(
            [*argv[:-1], localize(argv[-1], "migrate")], env=service_env("migrate"), cwd=REPO,
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "agent1 is now a member of situation_agent" in result.stdout
        assert "agent2 is now a member of situation_agent" in result.stdout

        # agent1's DSN file, as the agent sees it.
        agent1_dsn = base / "agent1.dsn"
        agent1_dsn.write_text(localize(secret_file["agent1_dsn"].read_text(), "agent1"))
        agent1_dsn.chmod(0o600)

        yield {
            "cluster": cluster,
            "env": service_env,
            "agent1_dsn": agent1_dsn,
            "volumes": volume_dir,
            "secrets": secret_file,
        }
    finally:
        cluster.destroy()


def refuse_agent_cycles(invocations: list[list[str]]) -> None:
    """Fail the test if any `situation` invocation would run the agent (DEVELOPERS.md, rule 1)."""
    for argv in invocations:
        _global_flags, command, flags = split_invocation(argv)
        if command in (None, "run", "scan") and "--help" not in flags:
            pytest.fail(f"refusing to run {' '.join(['situation', *argv])} outside an isolated host")


def run_situation(flow, service: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    refuse_agent_cycles([list(args)])
    environ = flow["env"](service)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "situation", *args], env=environ, cwd=REPO,
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def test_compose_certificates(compose_flow):
    from cryptography import x509

    volumes = compose_flow["volumes"]
    server = x509.load_pem_x509_certificate((volumes["postgres-tls"] / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["postgres", "localhost"]
    client = x509.load_pem_x509_certificate((volumes["agent2-tls"] / "agent2.crt").read_bytes())
    assert client.subject.rfc4514_string() == "CN=agent2"
    key = (volumes["postgres-tls"] / "server.key").stat()
    assert (key.st_uid, stat.S_IMODE(key.st_mode)) == (999, 0o600)
    key = (volumes["agent2-tls"] / "agent2.key").stat()
    assert (key.st_uid, stat.S_IMODE(key.st_mode)) == (10001, 0o600)
    assert sorted(p.name for p in volumes["ca"].iterdir()) == ["ca.crt"]
    assert not any(p.name.startswith("ca.key") for v in ("postgres-tls", "ca", "agent2-tls") for p in volumes[v].iterdir())


def test_compose_secrets_setup(compose_flow):
    secrets = compose_flow["secrets"]
    for path in secrets.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert path.read_text().strip()
    assert stat.S_IMODE(secrets["agent1_dsn"].parent.stat().st_mode) == 0o700
    password = secrets["agent1_password"].read_text().strip()
    assert f"password={password} " in secrets["agent1_dsn"].read_text()


def test_compose_agent1_connects_with_its_password(compose_flow):
    result = run_situation(compose_flow, "agent1", "check", "--json", SITUATION_DB_FILE=str(compose_flow["agent1_dsn"]))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["role"] == "agent1"
    assert report["tls"] is True and report["verification"] == "chain and host name"
    assert report["can_change_schema"] is False
    assert report["schema_version"] == report["expected_version"]
    assert report["notes"] == []


def test_compose_agent2_connects_with_its_certificate(compose_flow):
    result = run_situation(compose_flow, "agent2", "check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["role"] == "agent2"
    assert "CN=agent2" in (report["client_certificate"] or "")
    assert report["can_change_schema"] is False
    assert report["schema_version"] == report["expected_version"]
    assert report["notes"] == []


def test_compose_refuses_plaintext_and_the_superuser(compose_flow):
    port = compose_flow["cluster"].port
    password = compose_flow["secrets"]["agent1_password"].read_text().strip()
    plaintext = f"host=localhost port={port} dbname=situation user=agent1 sslmode=disable"
    result = run_situation(compose_flow, "agent1", "check", "--db", plaintext, PGPASSWORD=password)
    assert result.returncode != 0
    assert "pg_hba.conf" in result.stderr or "rejected" in result.stderr, result.stderr
    superuser = f"host=localhost port={port} dbname=postgres user=postgres sslmode=verify-full " \
                f"sslrootcert={compose_flow['volumes']['ca'] / 'ca.crt'}"
    result = run_situation(compose_flow, "agent1", "check", "--db", superuser, PGPASSWORD="x")
    assert result.returncode != 0


def test_the_guard_refuses_agent_cycles():
    refuse_agent_cycles([["migrate"], ["--log-format", "json", "check"], ["run", "--help"]])
    for argv in (["run", "--once"], [], ["--log-level", "debug"], ["run", "--no-migration"]):
        with pytest.raises(pytest.fail.Exception, match="outside an isolated host"):
            refuse_agent_cycles([argv])
