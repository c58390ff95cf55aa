"""
Writing the files that the scripts make, so that a failure never leaves a half-written one behind.

- replaced_atomically(path, what): a temporary path to write, renamed over path once it is whole and on disk;
  if writing fails (a full disk, an I/O error), the temporary file is removed, path stays as it was, and the
  script ends with one line that says so.
- make_dir(path, what): a folder to write into, or one line that says why there cannot be one.
"""

import os
from contextlib import contextmanager

from configurator import fail


@contextmanager
def replaced_atomically(path, what="file"):
    tmp = path + ".tmp"
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename, so that a crash cannot leave an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        io_error = e if isinstance(e, OSError) else e.__context__  # torch.save wraps the file's OSError
        if not isinstance(io_error, OSError):
            raise
        kept = f"; the previous {what} is intact" if os.path.exists(path) else ""
        fail(f"could not write {what} {path}: {io_error.strerror or io_error}{kept}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def make_dir(path, what):
    """Create the folder path (and its parents) unless it exists; fail in one line if it cannot be written to."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {what} {path}: {e.strerror}")
    if not os.access(path, os.W_OK):
        fail(f"cannot write to {what} {path}: permission denied")
