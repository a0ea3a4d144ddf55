"""Safe file-system steps shared by every stage.

Three ideas, each with one home:

* a file is either whole or absent: `atomic_path` writes under a temporary
  name in the same folder and renames it into place only once it is complete
  and flushed (`write_json_atomic` and `write_text_atomic` use it);
* a folder has one writer at a time: `FolderLock` holds an exclusive lock
  that the operating system releases when its process dies, so a lock left
  by a killed process is never mistaken for a live one;
* a path read from a file (a manifest, a config, a pointer) stays inside the
  folder that file describes: `inside` refuses anything that escapes it
  through `..`, an absolute path or a symbolic link.
"""
import contextlib
import errno
import json
import os
import re
from collections import Counter

from shards.errors import UserError

# Temporary files are named ".<final name>.tmp-<pid>"; `remove_temp_files`
# recognises them by this pattern (and by it only).
TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")
LOCK_NAME = ".lock"
# errno values that mean "the disk or the file system refused", not a bug.
DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM}


# Test-only hook for the commit-sequence tests: KIBBLE_CRASH_AT=<step>,
# <step>@<tag> (e.g. an epoch) or either with :<n> ends the process at once
# (as kill -9 would: no clean-up, no flush) the first or the n-th time that
# step is reached. Unset, it costs one environment lookup per step.
CRASH_ENV = "KIBBLE_CRASH_AT"
CRASH_EXIT = 86
_crashes_reached = Counter()


def crash_point(step, tag=None):
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name in (step, f"{step}@{tag}"):
        _crashes_reached[name] += 1
        if _crashes_reached[name] == int(nth or 1):
            os._exit(CRASH_EXIT)


def temp_path(path):
    head, tail = os.path.split(os.fspath(path))
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it becomes `path`, on failure it is removed.

    The temporary file lives in the destination folder, so the final rename
    is atomic (same file system). Its content is flushed to disk first.
    """
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)


def write_json_atomic(path, data):
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def remove_temp_files(folder):
    """Delete the temporary files a killed writer left in `folder`; return their names.

    Call it only while holding the folder's `FolderLock`: then no other
    process of ours can be writing there, and every temporary file is stale.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            if TEMP_FILE.match(name):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.remove(os.path.join(folder, name))
                    removed.append(name)
    return removed


def inside(folder, name, what="path"):
    """`folder/name`, after checking that it resolves inside `folder`.

    `name` comes from a file the user may not have written (a manifest from
    someone else, an edited config): an absolute path, `..` or a symbolic
    link leading out of `folder` raises UserError, so nothing outside is
    ever read, overwritten or deleted.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UserError(f"{what} {name!r} in {folder} is not a file name")
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, target]) != root or target == root:
        raise UserError(f"{what} {name!r} points outside {folder}; refusing to use it "
                        "(the file naming it was edited or comes from elsewhere)")
    return os.path.join(folder, name)


def disk_errno(exc):
    """The errno of a write the disk refused (one of DISK_ERRORS), else None.

    h5py and Keras often leave `errno` unset and give it only in their
    message ("errno = 28", "[Errno 27]", "No space left on device"), or
    re-raise it as another type: the exception's causes are searched too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in DISK_ERRORS:
            return exc.errno
        text = str(exc)
        for number in DISK_ERRORS:
            if f"errno = {number}" in text or f"[Errno {number}]" in text or os.strerror(number) in text:
                return number
        exc = exc.__cause__ or exc.__context__
    return None


def disk_error_message(exc, action="write"):
    """One line for an OSError of DISK_ERRORS: which path and what happened."""
    where = exc.filename or "the output folder"
    return f"cannot {action} {where}: {exc.strerror or exc}"


class FolderLock:
    """An exclusive lock on a folder while one command writes it; use as a context manager.

    The lock is an OS file lock (flock) on `folder/.lock`: released by the
    kernel when the holder exits, however it exits, so a lock left by a
    killed process never blocks. A second writer gets a UserError naming
    the holder's process id.
    """

    def __init__(self, folder, what="folder"):
        self.folder = os.fspath(folder)
        self.what = what
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd = None

    def acquire(self):
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UserError(f"{self.what} {self.folder} is being written by another kibble process "
                            f"(pid {holder or 'unknown'}); wait for it to finish, or use another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            with contextlib.suppress(OSError):
                _unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd):
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).decode().strip() or 0) or None
    return None


try:
    import fcntl

    def _lock(fd):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd):
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:  # Windows: msvcrt locks are also released when the process ends
    import msvcrt

    def _lock(fd):
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd):
        os.lseek(fd, 0, 0)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
