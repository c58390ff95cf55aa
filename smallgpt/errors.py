"""
A user's mistakes: library code raises UserError, whose message says what is wrong and how to fix it, and never
exits the process, so that it can be tested, called from a notebook, and composed.

- UserError: the one exception type for a bad setting, file or dataset.
- report_user_errors: make an uncaught UserError end a script with its message as one line on stderr, exit
  status 1 and no traceback (configure installs it for every script). `finally` clauses have run by then. Ctrl-C
  and a reader that went away (`| head`) end it quietly too, as command-line tools end.
"""

import os
import sys


class UserError(Exception):
    pass


def report_user_errors():
    sys.excepthook = one_line_user_errors


def one_line_user_errors(kind, error, traceback):
    if issubclass(kind, UserError):
        print(f"error: {error}", file=sys.stderr)  # Python then exits with status 1, as for any uncaught error
    elif issubclass(kind, (KeyboardInterrupt, BrokenPipeError)):
        end_quietly(130 if issubclass(kind, KeyboardInterrupt) else 141)  # as a shell reports SIGINT and SIGPIPE
    else:
        sys.__excepthook__(kind, error, traceback)


def end_quietly(status):
    """Exit with status and no word: what stdout holds goes out if it can, nothing more is written to it, and the
    interpreter's teardown is skipped (a generator still open, torch's, would complain in it)."""
    try:
        sys.stdout.flush()
    except OSError:  # its reader is gone
        pass
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.stderr.flush()
    os._exit(status)
