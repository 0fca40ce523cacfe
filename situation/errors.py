"""Errors that end a command with one clear line instead of a traceback.

Exit statuses: 1 a failure, 2 bad input (fix the command or its files),
75 a temporary failure (EX_TEMPFAIL: the same command may succeed later, as
when the database is down or another process holds it), 128+N interrupted by
signal N.
"""

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_TEMPORARY = 75


class SituationError(Exception):
    """A failure explained to the user in one line; ``exit_code`` is the process status."""

    exit_code = EXIT_FAILURE


class ConfigError(SituationError):
    """Bad input (a DSN, a flag, a file): the line says what is wrong and how to fix it."""

    exit_code = EXIT_BAD_INPUT


class DsnError(ConfigError):
    """A connection string or PG* variable that libpq would refuse, or that we do not support."""


class ConnectError(SituationError):
    """The database could not be reached, or refused us.

    ``transient`` marks what may pass by itself (server down, starting, full):
    the daemon waits for those and gives up at once on the others.
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient

    @property
    def exit_code(self) -> int:
        return EXIT_TEMPORARY if self.transient else EXIT_FAILURE


class DatabaseBusy(ConnectError):
    """Another process holds the database (an SQLite file locked beyond the busy timeout)."""

    def __init__(self, message: str):
        super().__init__(message, transient=True)


class MigrationError(SituationError):
    """The schema cannot be brought to this build's version."""


class PassFailed(SituationError):
    """A one-shot pass recorded nothing, or its database refused writes."""


class StoreUnavailable(SituationError):
    """The database could not be used, even after retries."""
