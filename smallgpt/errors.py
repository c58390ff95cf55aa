"""
A user's mistakes: library code raises UserError, whose message says what is wrong and how to fix it, and never
exits the process, so that it can be tested, called from a notebook, and composed.

- UserError: the one exception type for a bad setting, file or dataset.
- report_user_errors: make an uncaught UserError end a script with its message as one line on stderr, exit
  status 1 and no traceback (configure installs it for every script). `finally` clauses have run by then.
"""

import sys


class UserError(Exception):
    pass


def report_user_errors():
    sys.excepthook = one_line_user_errors


def one_line_user_errors(kind, error, traceback):
    if issubclass(kind, UserError):
        print(f"error: {error}", file=sys.stderr)  # Python then exits with status 1, as for any uncaught error
    else:
        sys.__excepthook__(kind, error, traceback)
