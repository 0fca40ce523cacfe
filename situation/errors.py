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
    """The database could not be reached, or refused us."""


class MigrationError(SituationError):
    """The schema cannot be brought to this build's version."""
