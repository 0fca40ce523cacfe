"""`id`, `refresh-id`, `defaults`, `health` and `version` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from support.cluster import clean_environ

from situation import __version__


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "situation", *args], env=env, capture_output=True, text=True, timeout=60)


def state_env(tmp_path, **extra):
    return clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"), **extra)


def test_id_is_created_once_and_kept(tmp_path):
    env = state_env(tmp_path)
    first = cli("id", env=env)
    assert first.returncode == 0 and len(first.stdout.strip()) == 32
    assert cli("id", env=env).stdout == first.stdout
    stored = tmp_path / "state" / "agent-id"
    assert stored.stat().st_mode & 0o777 == 0o600


def test_refresh_id(tmp_path):
    env = state_env(tmp_path)
    old = cli("id", env=env).stdout.strip()
    fresh = cli("refresh-id", env=env).stdout.strip()
    assert fresh != old and cli("id", env=env).stdout.strip() == fresh
    chosen = "00112233445566778899AABBCCDDEEFF"
    assert cli("refresh-id", chosen, env=env).stdout.strip() == chosen.lower()
    assert cli("id", env=env).stdout.strip() == chosen.lower()
    bad = cli("refresh-id", "xyz", env=env)
    assert bad.returncode != 0 and bad.stderr.startswith("situation: error:") and len(bad.stderr.splitlines()) == 1
    short = cli("refresh-id", "0011", env=env)
    assert short.returncode != 0 and "16 bytes" in short.stderr


def test_agent_id_override(tmp_path):
    env = state_env(tmp_path, SITUATION_AGENT_ID="AA" * 16)
    assert cli("id", env=env).stdout.strip() == "aa" * 16


def test_defaults_lists_every_setting_with_flag_and_env(tmp_path):
    env = state_env(tmp_path, SITUATION_INTERVAL="90s", SITUATION_NO_MODULE_CHASSIS="true",
                    SITUATION_DB="postgresql://u:hunter2@db/x")
    result = cli("defaults", env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["interval"] == {**document["interval"], "default": "15m", "value": "90s", "flag": "--interval",
                                    "env": "SITUATION_INTERVAL"}
    assert document["no-module-chassis"]["value"] is True
    assert document["no-module-chassis"]["env_aliases"] == ["NO_MODULE_CHASSIS"]
    assert document["db"]["flag"] == "--db" and "hunter2" not in result.stdout
    for name in ("fingerprint", "host-basic", "host-network"):
        assert f"no-module-{name}" in document
    help_text = cli("run", "--help", env=env).stdout
    for setting in document.values():
        assert setting["flag"] in help_text


def test_health(tmp_path):
    env = state_env(tmp_path)
    missing = cli("health", env=env)
    assert missing.returncode != 0 and "no health record" in missing.stderr
    (tmp_path / "state").mkdir(exist_ok=True)
    record = {"finished_at": time.time(), "next_cycle_before": time.time() + 60, "database": "up"}
    (tmp_path / "state" / "health.json").write_text(json.dumps(record))
    assert cli("health", env=env).returncode == 0
    record["next_cycle_before"] = time.time() - 1
    (tmp_path / "state" / "health.json").write_text(json.dumps(record))
    assert "overdue" in cli("health", env=env).stderr
    (tmp_path / "state" / "health.json").write_text("[]")
    assert "damaged" in cli("health", env=env).stderr


def test_health_says_why_a_full_database_is_unhealthy_in_one_inert_line(tmp_path):
    env = state_env(tmp_path)
    (tmp_path / "state").mkdir()
    record = {"next_cycle_before": time.time() + 60, "database": "full",
              "problem": "OperationalError: database or disk is full\x1b[2J\nforged line"}
    (tmp_path / "state" / "health.json").write_text(json.dumps(record))
    result = cli("health", env=env)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("situation: error: the daemon's database has no room for its writes (OperationalError: "
                           "database or disk is full") and "\x1b" not in line


def test_health_record_that_is_not_a_finite_time_or_not_text_is_unhealthy(tmp_path):
    env = state_env(tmp_path)
    record = tmp_path / "state" / "health.json"
    record.parent.mkdir()
    for content in (b'{"next_cycle_before": NaN, "database": "up"}', b'{"next_cycle_before": Infinity, "database": "up"}',
                    b'{"next_cycle_before": true, "database": "up"}', b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary"):
        record.write_bytes(content)
        result = cli("health", env=env)
        assert result.returncode == 1 and result.stdout == "", content
        assert result.stderr.splitlines() == [
            f"situation: error: the health record at {record} is damaged; the daemon rewrites it after its next cycle"
        ], content


def test_version(tmp_path):
    assert cli("version", env=state_env(tmp_path)).stdout.strip() == f"situation {__version__}"
    assert __version__ in cli("--version", env=state_env(tmp_path)).stdout


def test_migrate_an_sqlite_file(tmp_path):
    env = state_env(tmp_path)
    database = tmp_path / "inventory.sqlite"
    assert cli("migrate", "--db", str(database), env=env).stdout.strip() == "applied 0001_initial.sql"
    assert cli("migrate", "--db", str(database), env=env).stdout.strip() == "schema is up to date"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    result = cli("migrate", "--db", str(garbage), env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "SQLite database" in result.stderr
    check = cli("check", "--db", str(database), env=env)
    assert check.returncode == 2 and "needs a PostgreSQL DSN" in check.stderr


def test_importing_main_module_starts_nothing(tmp_path):
    # Tools that import every module (pkgutil.walk_packages, doc generators) must
    # not start the agent. Should the guard ever break, the interval setting below
    # is refused at start, so even then no cycle runs.
    env = clean_environ() | {"SITUATION_INTERVAL": "not-a-duration", "SITUATION_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "import situation.__main__"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
