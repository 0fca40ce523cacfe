"""A live host with hostile names stores no control character (issue 14 item 3, issue 12 item 5).

Inside a test-made network namespace, an interface is named with an OSC title
sequence, and inside a UTS namespace of its own the kernel host name holds
escapes, a C1 character and bytes that are not UTF-8. A whole ``run --once``
cycle then runs there (behind the namespace guard) into SQLite, and no text
value in any table may hold a control character.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from support.stored_text import sqlite_control_characters

INTERFACE = "\x1b]0;pw\x07"
# ESC, BEL, undecodable bytes, CSI as C1 (UTF-8 c2 9b), DEL.
HOSTNAME = b"h\x1b]0;x\x07\xff\xfen\xc2\x9bq\x7f"
# sethostname in a new UTS namespace, then the agent: what `unshare -u` and `hostname` would do,
# but `hostname` refuses names like this one.
SET_HOSTNAME_THEN_RUN = (
    "import os, socket, sys; socket.sethostname(bytes.fromhex(sys.argv[1])); "
    "os.execv(sys.executable, [sys.executable, '-m', 'situation', *sys.argv[2:]])"
)


def test_hostile_interface_and_host_names_are_stored_without_control_characters(test_host, tmp_path):
    made = subprocess.run(["ip", "-n", test_host.name, "link", "add", INTERFACE, "type", "veth", "peer", "name",
                           "sitpeer0"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    subprocess.run(["ip", "-n", test_host.name, "link", "set", INTERFACE, "up"], check=True)
    database = tmp_path / "live.sqlite"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SITUATION_STATE_DIR": str(tmp_path / "state")}
    result = test_host.run("unshare", "-u", sys.executable, "-c", SET_HOSTNAME_THEN_RUN, HOSTNAME.hex(),
                           "run", "--once", "--db", str(database), env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert not [line for line in result.stderr.splitlines() if '"level":"error"' in line], result.stderr
    assert sqlite_control_characters(database) == []
    with sqlite3.connect(database) as db:
        names = {name for (name,) in db.execute("SELECT name FROM network_interfaces")}
        hostnames = [hostname for (hostname,) in db.execute("SELECT hostname FROM machines")]
    assert "]0;pw" in names
    # The undecodable bytes come out as "?" or U+FFFD, depending on where the host name is decoded.
    [hostname] = hostnames
    assert hostname.startswith("h]0;x") and hostname.endswith("nq") and len(hostname) in (9, 10)
