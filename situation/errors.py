"""Errors that end a command with one clear line instead of a traceback."""


class SituationError(Exception):
    """A failure explained to the user in one line; ``exit_code`` is the process status."""

    exit_code = 1


class ConfigError(SituationError):
    """Bad input (a DSN, a flag, a file): the line says what is wrong and how to fix it."""

    exit_code = 2


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


class MigrationError(SituationError):
    """The schema cannot be brought to this build's version."""
