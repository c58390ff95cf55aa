"""
Writing the files that the scripts make, so that a failure never leaves a half-written one behind.

- replaced_atomically(*paths, what): temporary paths to write, renamed over paths once they are whole and on
  disk; if writing fails (a full disk, an I/O error), the temporary files are removed, paths stay as they
  were, and the script ends with one line that says so.
- make_dir(path, what): a folder to write into, or one line that says why there cannot be one.
"""

import os
from contextlib import contextmanager

from configurator import fail


@contextmanager
def replaced_atomically(*paths, what):
    tmps = [path + ".tmp" for path in paths]
    try:
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb+") as f:  # on disk before the rename, so that a crash cannot leave an empty file
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        io_error = e if isinstance(e, OSError) else e.__context__  # torch.save wraps the file's OSError
        if not isinstance(io_error, OSError):
            raise
        kept = f"; the previous {what} is intact" if all(os.path.exists(path) for path in paths) else ""
        fail(f"could not write {what} {', '.join(paths)}: {io_error.strerror or io_error}{kept}")
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def make_dir(path, what):
    """Create the folder path (and its parents) unless it exists; fail in one line if it cannot be written to."""
    if os.path.exists(path) and not os.path.isdir(path):
        fail(f"cannot create {what} {path}: a file of that name is in the way")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {what} {path}: {e.strerror}")
    if not os.access(path, os.W_OK):
        fail(f"cannot write to {what} {path}: permission denied")
