"""Errors a user can fix. The CLI prints their message as one line and exits with code 2."""


class NormlabError(Exception):
    """Bad input that the user can correct: the message says what is wrong and how to fix it."""


class ConfigError(NormlabError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class DataError(NormlabError):
    """A dataset cannot be loaded (missing files, no network, unreadable folder)."""
