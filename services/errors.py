"""Mistakes a user can make at the command line or in configuration, with the exit code each one ends in.

Adapters raise these with a message that says what is wrong and how to fix it; the CLI's one error
table (services/cli/errors.py) prints the message on one line and exits with the class's code.
"""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1      # a check ran and found a problem (verify, audit, rebuild)
EXIT_USAGE = 2             # the command line or the configuration is wrong; nothing was changed
EXIT_NOT_YET = 3           # what was asked for does not exist yet (e.g. no confirmed anchor covers the event)
EXIT_UNEXPECTED = 70       # a bug or an environment failure; the traceback is written to a file


class UserMistake(Exception):
    """A mistake the user can fix; `str(error)` is the whole message, one line."""

    exit_code = EXIT_USAGE


class ConfigurationInvalid(UserMistake):
    """An option or combination of options cannot work (checked before anything is opened)."""


class NothingStoredHere(UserMistake):
    """A command that reads stored data was pointed at a place where nothing is stored."""


class AlreadyExists(UserMistake):
    """A command that creates something would overwrite what is already there."""


class NotYetAvailable(UserMistake):
    """What was asked for does not exist yet; asking again later may succeed."""

    exit_code = EXIT_NOT_YET


class CheckFailed(UserMistake):
    """A check ran to the end and found a problem."""

    exit_code = EXIT_CHECK_FAILED


class StoreFormatUnsupported(UserMistake):
    """The data directory or database holds events in a format this version does not read (docs/FORMATS.md §1)."""
