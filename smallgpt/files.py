"""
The files a user names and the files the scripts write: each failure a UserError that names the file and says
what is wrong, and a failed write never leaves a half-written file behind.

- open_file(path, what), read_text(path, what): a file the user named, opened or read as UTF-8 text.
- replaced_atomically(*paths, what): temporary paths to write, renamed over paths once they are whole and on
  disk; if writing fails (a full disk, an I/O error), the temporary files are removed, paths stay as they
  were, and a UserError says so.
- make_dir(path, what): a folder to write into, or a UserError that says why there cannot be one.
- download(url, dest, instead): a URL's file, atomically; a UserError that says what went wrong, and what to do
  instead.
"""

import itertools
import os
import urllib.error
import urllib.request
from contextlib import contextmanager

from tqdm import tqdm

from smallgpt.errors import UserError


def open_file(path, what, mode="r"):
    """path opened (as UTF-8 text unless mode is 'rb'); UserError if it is missing, a folder or unreadable."""
    if not os.path.exists(path):
        raise UserError(f"{what} '{path}' not found")
    if os.path.isdir(path):
        raise UserError(f"{what} '{path}' is a folder, not a file")
    try:
        return open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {what} '{path}': {e.strerror}") from None


def read_text(path, what):
    """The whole text of a UTF-8 file that the user named."""
    with open_file(path, what) as f:
        try:
            return f.read()
        except UnicodeDecodeError as e:
            raise UserError(f"{what} '{path}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot be "
                            f"decoded); convert it first, e.g. iconv -f latin1 -t utf-8 {path}") from None


WRITERS = itertools.count()


@contextmanager
def replaced_atomically(*paths, what):
    # a name of its own for each writer, in any process: two may write one file at once, and the last one wins
    tmps = [f"{path}.{os.getpid()}-{next(WRITERS)}.tmp" for path in paths]
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
        raise UserError(f"could not write {what} {', '.join(paths)}: {io_error.strerror or io_error}{kept}") from None
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def make_dir(path, what):
    """Create the folder path (and its parents) unless it exists; UserError if it cannot be written to."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"cannot create {what} {path}: a file of that name is in the way")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"cannot write to {what} {path}: permission denied")


def download(url, dest, instead):
    """Fetch url into dest, atomically: an interrupted download leaves no partial file behind."""
    print(f"downloading {url} to {dest}")
    tmp = f"{dest}.{os.getpid()}.part"  # one per process: several may fetch the same file at once
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, disable=None) as bar:
                while block := response.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise UserError(f"could not download {url}: {reason}; check the address and your connection, "
                        f"or {instead}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
