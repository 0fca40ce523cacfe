"""The `situation` entry point, kept free of imports so Ctrl-C is guarded from the start.

Importing the command line (Click, asyncpg, uvloop, every module) takes a noticeable
moment; a Ctrl-C meanwhile must end the process like any interrupted command (status
130, no traceback), so the import happens inside the guard.
"""

import sys

INTERRUPTED = 128 + 2  # SIGINT


def main(argv: list[str] | None = None) -> None:
    try:
        from situation.cli import main as run_command_line

        run_command_line(argv)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
