"""`situation task`: install (or remove) a scheduled `situation run --once`.

Where systemd runs (``/run/systemd/system`` exists), a oneshot service and a timer,
hardened like deploy/situation.service; elsewhere one line in ``/etc/cron.d/situation``
with the user field (``root``) that the original agent forgot. Everything is written
under a target root directory (``--root`` / ``SITUATION_TASK_ROOT``, default ``/``);
``systemctl`` is called only when that root is ``/``.

The schedule follows the original's cron line: minute and hour from ``--task-start``,
day of month ``*/N`` for ``--task-days N``, and ``--task-period`` repeating either the
hour field (a period of an hour or more) or, within the start hour, the minute field.
The systemd timer's ``OnCalendar`` expresses the same times.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from situation.errors import ConfigError, SituationError

CRON_FILE = "etc/cron.d/situation"
UNIT_DIR = "etc/systemd/system"
SERVICE = "situation-task.service"
TIMER = "situation-task.timer"
ENV_FILE = "etc/situation/task.env"  # the DSN given to `task`, readable by root only
SYSTEMD_MARKER = "run/systemd/system"
ROOT_ENV = "SITUATION_TASK_ROOT"


@dataclass(frozen=True)
class Schedule:
    hour: int
    minute: int
    second: int
    days: int = 1
    period: float = 0.0  # seconds; 0 = once a day (every `days` days)

    def cron_fields(self) -> str:
        minute, hour = str(self.minute), str(self.hour)
        if self.period >= 3600:
            hour = f"*/{max(1, round(self.period / 3600))}"
        elif self.period > 0:
            minute = f"*/{max(1, round(self.period / 60))}"
        day = "*" if self.days <= 1 else f"*/{self.days}"
        return f"{minute} {hour} {day} * *"

    def on_calendar(self) -> str:
        minute, hour = f"{self.minute:02d}", f"{self.hour:02d}"
        if self.period >= 3600:
            hour = f"00/{max(1, round(self.period / 3600))}"
        elif self.period > 0:
            minute = f"00/{max(1, round(self.period / 60))}"
        day = "*" if self.days <= 1 else f"1/{self.days}"
        second = "00" if self.period > 0 else f"{self.second:02d}"
        return f"*-*-{day} {hour}:{minute}:{second}"


def parse_start(text: str | None, now: datetime | None = None) -> tuple[int, int, int]:
    """``15:04:05``, ``15:04`` or ``3:04PM`` (the original's layouts); the current time when absent."""
    if text is None:
        moment = now or datetime.now()
        return moment.hour, moment.minute, moment.second
    for layout in ("%H:%M:%S", "%H:%M", "%I:%M%p", "%I:%M:%S%p", "%I:%M %p"):
        try:
            parsed = datetime.strptime(text.strip().upper(), layout)
        except ValueError:
            continue
        return parsed.hour, parsed.minute, parsed.second
    raise ConfigError(f"--task-start: {text!r} is not a time of day; use 15:04:05, 15:04 or 3:04PM")


def check_line(arg: str) -> str:
    if "\n" in arg or "\r" in arg or "\0" in arg:
        raise ConfigError("a forwarded flag value holds a line break or NUL; a scheduled job's command is one line")
    return arg


def cron_command(argv: list[str]) -> str:
    # cron hands the command to /bin/sh, and reads an unescaped % as a line break.
    return " ".join(shlex.quote(check_line(a)) for a in argv).replace("%", "\\%")


def systemd_quote(arg: str) -> str:
    """One ExecStart word: specifiers (%), variables ($), quotes and backslashes escaped."""
    check_line(arg)
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if re.search(r"[\s\"'\\;]", arg) or not arg else escaped


def executable() -> list[str]:
    """How the job calls this program: the installed script, or this interpreter with -m."""
    script = Path(sys.argv[0])
    if script.name in ("__main__.py", "-c", "-m") or not script.name.startswith("situation"):
        return [sys.executable, "-m", "situation"]
    return [str(script.resolve())]


def cron_file(schedule: Schedule, argv: list[str]) -> str:
    return (
        "# Installed by `situation task`; remove with `situation task --uninstall`.\n"
        f"{schedule.cron_fields()} root {cron_command(argv)}\n"
    )


def service_unit(argv: list[str], *, env_file: bool, db_file: str | None) -> str:
    lines = [
        "# Installed by `situation task`; remove with `situation task --uninstall`.",
        "# One collection pass, started by situation-task.timer. Hardened like deploy/situation.service.",
        "[Unit]",
        "Description=situation: one inventory pass of this host and its network",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        "ExecStart=" + " ".join(systemd_quote(a) for a in argv),
        "TimeoutStartSec=1h",
        "DynamicUser=yes",
        "StateDirectory=situation",
        "StateDirectoryMode=0700",
        "Environment=SITUATION_STATE_DIR=%S/situation",
    ]
    if env_file:
        lines.append(f"EnvironmentFile=/{ENV_FILE}")
    if db_file:
        lines += [f"LoadCredential=db:{systemd_quote(db_file)}", "Environment=SITUATION_DB_FILE=%d/db"]
    lines += [
        "AmbientCapabilities=CAP_NET_RAW",
        "CapabilityBoundingSet=CAP_NET_RAW",
        "NoNewPrivileges=yes",
        "LimitNOFILE=8192",
        "UMask=0077",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "RemoveIPC=yes",
    ]
    return "\n".join(lines) + "\n"


def timer_unit(schedule: Schedule) -> str:
    return "\n".join([
        "# Installed by `situation task`; remove with `situation task --uninstall`.",
        "[Unit]",
        "Description=situation: scheduled inventory pass",
        "",
        "[Timer]",
        f"OnCalendar={schedule.on_calendar()}",
        "# A pass missed while the machine was off runs at the next boot.",
        "Persistent=true",
        f"Unit={SERVICE}",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]) + "\n"


def uses_systemd(root: Path, choice: str) -> bool:
    if choice != "auto":
        return choice == "systemd"
    return (root / SYSTEMD_MARKER).is_dir()


def write_file(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)  # also when the file existed with another mode


def systemctl(root: Path, *args: str) -> None:
    if root != Path("/"):
        return  # files written into another tree: nothing to tell the running systemd
    try:
        result = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SituationError(f"systemctl {' '.join(args)} failed ({exc}); run it by hand") from None
    if result.returncode != 0:
        reason = " ".join(result.stderr.split()) or f"status {result.returncode}"
        raise SituationError(f"systemctl {' '.join(args)} failed: {reason}")


def install(root: Path, schedule: Schedule, argv: list[str], *, systemd: bool, dsn: str | None,
            db_file: str | None) -> list[str]:
    """Write the job; returns what was written, one line each."""
    if not systemd:
        if db_file:
            argv = [*argv, "--db-file", db_file]
        if dsn:
            argv = [*argv, "--db", dsn]
        path = root / CRON_FILE
        write_file(path, cron_file(schedule, argv), 0o600)
        return [f"wrote {path}: {schedule.cron_fields()} root …"]
    written = []
    env_path = root / ENV_FILE
    if dsn:
        write_file(env_path, f"SITUATION_DB={check_line(dsn)}\n", 0o600)
        written.append(f"wrote {env_path} (the DSN, root only)")
    elif env_path.exists():
        env_path.unlink()
    units = root / UNIT_DIR
    write_file(units / SERVICE, service_unit(argv, env_file=bool(dsn), db_file=db_file), 0o644)
    write_file(units / TIMER, timer_unit(schedule), 0o644)
    written += [f"wrote {units / SERVICE}", f"wrote {units / TIMER}: OnCalendar={schedule.on_calendar()}"]
    systemctl(root, "daemon-reload")
    systemctl(root, "enable", "--now", TIMER)
    return written


def uninstall(root: Path) -> list[str]:
    units = root / UNIT_DIR
    targets = [root / CRON_FILE, units / TIMER, units / SERVICE, root / ENV_FILE]
    present = [path for path in targets if path.exists()]
    if not any(path in present for path in targets[:3]):
        raise ConfigError(f"no scheduled task is installed under {root} (neither {targets[0]} nor {targets[1]})")
    if units / TIMER in present:
        systemctl(root, "disable", "--now", TIMER)
    for path in present:
        path.unlink()
    if units / TIMER in present:
        systemctl(root, "daemon-reload")
    return [f"removed {path}" for path in present]
