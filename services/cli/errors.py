"""The CLI's one error table: every failure ends in one line on stderr and a documented exit code.

  UserMistake (services/errors.py)   its message, its class's exit code (2 usage, 1 check failed, 3 not yet)
  InvariantBroken (the stored log)   the position and rule the replay refuses, exit 1
  argparse mistakes                  one line naming the option, exit 2
  anything else                      one line naming the error class, the traceback written to a file, exit 70
`--debug` re-raises instead, so a developer sees the traceback in the terminal.
"""

import argparse
import os
import sys
import tempfile
import traceback

from ledger.errors import InvariantBroken
from services import errors


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (the usage is one `--help` away) and takes no
    abbreviated options (a typo must not silently become another option)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(errors.EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _write_traceback(error: BaseException) -> str:
    fd, path = tempfile.mkstemp(prefix="reserve-ledger-error-", suffix=".txt")
    with os.fdopen(fd, "w") as out:
        traceback.print_exception(error, file=out)
    return path


def run_command(run, args, prog: str = "reserve-ledger") -> int:
    """Run one parsed command and turn any failure into one line and an exit code."""
    try:
        return run(args)
    except errors.UserMistake as mistake:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {mistake}", file=sys.stderr)
        return mistake.exit_code
    except InvariantBroken as broken:  # the stored log breaks a rule: a finding about the data, not a crash
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: the replay refuses the log: {broken}; run `reserve-ledger verify` for every "
              "finding", file=sys.stderr)
        return errors.EXIT_CHECK_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, traceback to a file
        if getattr(args, "debug", False):
            raise
        where = _write_traceback(error)
        summary = str(error).splitlines()[0] if str(error) else ""
        print(f"{prog}: unexpected {type(error).__name__}: {summary[:200]} (traceback in {where})", file=sys.stderr)
        return errors.EXIT_UNEXPECTED
