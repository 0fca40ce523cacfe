"""`situation task`: the cron line or systemd units it writes, always under a temporary root.

Nothing here executes the scheduled `run --once`: only its text is checked, so no network
namespace is needed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import clean_environ

from situation.module import parse_duration
from situation.task import Schedule

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "situation.service"
# Directives of the daemon's unit that belong to the daemon only (notify, watchdog, restarts,
# the optional settings file) or that the task sets its own way.
DAEMON_ONLY = {"Type", "NotifyAccess", "ExecStart", "WatchdogSec", "TimeoutStartSec", "TimeoutStopSec", "Restart",
               "RestartSec", "EnvironmentFile", "LoadCredential", "Environment", "Description", "WantedBy"}


def task(root: Path, *args: str, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "situation", "task", "--root", str(root), *args],
                          env=env or clean_environ(), capture_output=True, text=True, timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def systemd_root(tmp_path: Path) -> Path:
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    return tmp_path


def test_cron_line_has_the_user_field_and_forwards_run_flags(tmp_path):
    result = task(tmp_path, "--task-start", "3:04PM", "--task-days", "2", "--task-log-level", "debug",
                  "--interval", "5m", "--no-module-ping", "--discovery-rate", "50", "--db", "/var/lib/x.sqlite")
    assert result.returncode == 0, result.stderr
    cron = tmp_path / "etc/cron.d/situation"
    assert mode(cron) == 0o600
    line = [ln for ln in cron.read_text().splitlines() if not ln.startswith("#")]
    assert len(line) == 1
    fields = shlex.split(line[0])
    assert fields[:6] == ["4", "15", "*/2", "*", "*", "root"]
    command = fields[6:]
    assert command[:3] == [sys.executable, "-m", "situation"]
    assert command[3:7] == ["--log-level", "debug", "run", "--once"]
    forwarded = command[7:]
    assert forwarded[forwarded.index("--interval") + 1] == "5m"
    assert forwarded[forwarded.index("--discovery-rate") + 1] == "50"
    assert "--no-module-ping" in forwarded and forwarded[-2:] == ["--db", "/var/lib/x.sqlite"]
    assert "--no-module-arp" not in forwarded and "--task-days" not in forwarded
    assert "wrote" in result.stdout and str(cron) in result.stdout
    assert not (tmp_path / "etc/systemd").exists()


def test_flags_from_the_environment_are_forwarded_too(tmp_path):
    result = task(tmp_path, "--task-start", "01:02", env=clean_environ(SITUATION_NO_MODULE_ARP="1"))
    assert result.returncode == 0, result.stderr
    assert "--no-module-arp" in (tmp_path / "etc/cron.d/situation").read_text()


@pytest.mark.parametrize("period, fields", [("0", "4 15 * * *"), ("30m", "*/30 15 * * *"), ("2h", "4 */2 * * *"),
                                            ("90m", "4 */2 * * *")])
def test_period_fields(period, fields):
    assert Schedule(15, 4, 0, period=parse_duration(period)).cron_fields() == fields


def test_cron_escapes_percent_and_quotes(tmp_path):
    dsn = "postgresql://agent:p%40ss word@db.example/situation"
    assert task(tmp_path, "--task-start", "0:00", "--db", dsn).returncode == 0
    text = (tmp_path / "etc/cron.d/situation").read_text()
    assert "p\\%40ss" in text and "'postgresql://agent:p\\%40ss word@db.example/situation'" in text


def test_systemd_timer_and_hardened_oneshot(tmp_path):
    root = systemd_root(tmp_path)
    dsn = "postgresql://agent:s3cret@db.example/situation?sslmode=verify-full"
    result = task(root, "--task-start", "15:04:05", "--task-period", "30m", "--fail-fast", "--db", dsn)
    assert result.returncode == 0, result.stderr
    units = root / "etc/systemd/system"
    service, timer = (units / "situation-task.service").read_text(), (units / "situation-task.timer").read_text()
    assert mode(units / "situation-task.service") == 0o644 and mode(units / "situation-task.timer") == 0o644
    assert "OnCalendar=*-*-* 15:00/30:00\n" in timer and "Unit=situation-task.service" in timer
    assert "Type=oneshot\n" in service
    exec_start = re.search(r"^ExecStart=(.*)$", service, re.MULTILINE).group(1)
    assert "run --once --fail-fast" in exec_start and "--log-level error" in exec_start
    # The DSN (a password) stays out of the world-readable unit, in a root-only environment file.
    assert "s3cret" not in service and "EnvironmentFile=/etc/situation/task.env" in service
    env_file = root / "etc/situation/task.env"
    assert mode(env_file) == 0o600 and env_file.read_text() == f"SITUATION_DB={dsn}\n"
    # Every hardening directive of deploy/situation.service, with the same value.
    daemon = dict(re.findall(r"^([A-Za-z]+)=(.*)$", UNIT.read_text(), re.MULTILINE))
    ours = dict(re.findall(r"^([A-Za-z]+)=(.*)$", service, re.MULTILINE))
    for key, value in daemon.items():
        if key not in DAEMON_ONLY:
            assert ours.get(key) == value, key
    assert not (root / "etc/cron.d").exists()


def test_db_file_becomes_a_credential(tmp_path):
    root = systemd_root(tmp_path)
    assert task(root, "--task-start", "1:00", "--db-file", "/etc/situation/db").returncode == 0
    service = (root / "etc/systemd/system/situation-task.service").read_text()
    assert "LoadCredential=db:/etc/situation/db\n" in service and "Environment=SITUATION_DB_FILE=%d/db\n" in service
    assert not (root / "etc/situation/task.env").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("days, period", [(1, "0"), (3, "2h"), (1, "15m")])
def test_on_calendar_is_valid(tmp_path, days, period):
    assert task(tmp_path, "--scheduler", "systemd", "--task-start", "7:30AM", "--task-days", str(days),
                "--task-period", period).returncode == 0
    timer = (tmp_path / "etc/systemd/system/situation-task.timer").read_text()
    expression = re.search(r"^OnCalendar=(.*)$", timer, re.MULTILINE).group(1)
    result = subprocess.run(["systemd-analyze", "calendar", expression], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert expression.startswith("*-*-*" if days == 1 else f"*-*-1/{days}")


def test_uninstall(tmp_path):
    root = systemd_root(tmp_path)
    assert task(root, "--task-start", "1:00", "--db", "postgresql://a@b/c").returncode == 0
    result = task(root, "--uninstall")
    assert result.returncode == 0 and result.stdout.count("removed") == 3, result.stdout
    assert not list((root / "etc").rglob("situation-task.*")) and not (root / "etc/situation/task.env").exists()
    again = task(root, "--uninstall")
    assert again.returncode == 2 and again.stderr.startswith("situation: error: no scheduled task")
    assert len(again.stderr.splitlines()) == 1
    cron_alias = subprocess.run([sys.executable, "-m", "situation", "cron", "--root", str(root), "--scheduler", "cron",
                                 "--task-start", "1:00"], env=clean_environ(), capture_output=True, text=True, timeout=60)
    assert cron_alias.returncode == 0 and (root / "etc/cron.d/situation").exists()
    assert task(root, "--uninstall").returncode == 0 and not (root / "etc/cron.d/situation").exists()


@pytest.mark.parametrize("args, wanted", [
    (["--task-start", "25:00"], "--task-start"),
    (["--task-period", "soon"], "--task-period"),
    (["--task-period", "25h"], "out of range"),
    (["--task-days", "0"], "--task-days"),
    (["--db", "postgresql://a@b/c\n* * * * * root rm -rf /"], "line break"),
])
def test_bad_input_is_one_line(tmp_path, args, wanted):
    result = task(tmp_path, *args)
    assert result.returncode == 2 and wanted in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "etc").exists() or not list((tmp_path / "etc").rglob("*situation*"))


def test_writes_nothing_outside_the_root(tmp_path):
    before = os.path.exists("/etc/cron.d/situation"), os.path.exists("/etc/systemd/system/situation-task.timer")
    assert task(tmp_path, "--task-start", "1:00").returncode == 0
    assert (os.path.exists("/etc/cron.d/situation"), os.path.exists("/etc/systemd/system/situation-task.timer")) == before
