"""Exec a command only when this process is NOT in the machine's own network namespace.

Used as the first step of every test that runs a whole agent cycle (DEVELOPERS.md,
rule 1): if the namespace was not set up, the cycle never starts. "The machine's
own namespace" is the one the test runner started in (passed down as
SITUATION_TEST_HOME_NETNS), and PID 1's when it can be read.
"""

import os
import sys

REFUSED = 97


def namespace_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def main() -> None:
    here = namespace_inode("/proc/self/ns/net")
    forbidden = {namespace_inode("/proc/1/ns/net")}
    home = os.environ.get("SITUATION_TEST_HOME_NETNS")
    if not home:
        sys.stderr.write("refusing to run: SITUATION_TEST_HOME_NETNS is not set\n")
        sys.exit(REFUSED)
    forbidden.add(int(home))
    if here is None or here in forbidden:
        sys.stderr.write("refusing to run: this process is in the machine's own network namespace\n")
        sys.exit(REFUSED)
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
