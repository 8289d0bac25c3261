"""Writing files so that a crash never leaves half of one: ``atomic_write``.

Every file minires writes for the user (checkpoints, metrics.csv, config.json, curves.png, the
CIFAR-10 download) goes through ``atomic_write``: the bytes go to a temporary file in the same
folder, are flushed and fsync'ed, and the finished file is renamed over the target with
``os.replace``. A reader therefore sees the old file or the new one, never a mixture. The
temporary file is removed when the write fails; a crash that leaves no time for that (kill -9,
power loss) leaves one behind, named ``.<target>.<12 hex digits>.tmp``, and
``remove_stale_temporaries`` deletes those at the next start.

A target that is a symlink is written through: its target gets the new content and the link
stays. A target that exists and is not a regular file (a device such as /dev/null, a FIFO, a
socket, a folder) is refused: renaming a file over it would replace it.

``lock_folder`` holds a folder for one process (an advisory ``fcntl.flock`` on
``<folder>/.lock``, which holds the holder's pid), so that two runs never write into one folder.
"""
import contextlib
import errno
import os
import re
import secrets
import shutil
import stat

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: folders are not locked there
    fcntl = None

__all__ = ["atomic_write", "temporary_path", "remove_stale_temporaries", "lock_folder", "FolderBusyError",
           "LOCK_NAME"]

# ".<name>.<12 hex digits>.tmp": what temporary_path makes, and nothing a user would name a file.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")


def temporary_path(path):
    """A fresh name in ``path``'s folder for a temporary file (or folder) that becomes ``path``."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """``with atomic_write(path) as f: f.write(...)``: ``path`` gets the new content only when the
    block finishes; an exception (KeyboardInterrupt included) leaves the old file as it was.

    ``mode`` is "wb" or "w" (text; ``open_kwargs`` such as ``newline=""`` go to ``open``).
    A symlink ``path`` is written through to its target; a ``path`` that exists and is not a
    regular file raises FileExistsError, and is left as it is.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes a whole new file: mode must be 'wb' or 'w', not {mode!r}")
    path = os.path.realpath(os.fspath(path))  # through a symlink: the temporary goes beside its target
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "cannot write: no such directory", directory)
    _refuse_special(path)
    tmp = temporary_path(path)
    # O_EXCL: never write into a file someone else made; 0o666 lets the umask decide, as open() would
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _refuse_special(path):
    """An existing ``path`` must be a regular file: os.replace would put a file in place of a
    device, FIFO or socket (a folder fails only later, with a less clear message)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise FileExistsError(errno.EEXIST, f"cannot write: it exists and is {kind}, not a regular file; "
                                            f"choose another path", path)


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); not possible, and not needed, on Windows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory, name=None, folders=False):
    """Delete what interrupted atomic writes left in ``directory`` (temporaries of ``name`` only,
    when given); return the paths removed. Only regular files are removed (and, with
    ``folders``, folders, such as an interrupted extraction leaves), never a symlink. Call it
    where no other write to the same files can be under way: in a run's folder, only while
    holding it (``lock_folder``)."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or (name is not None and match.group("name") != name):
            continue
        try:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if not folders:
                    continue
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue  # a FIFO, socket or device named like a temporary is not one of ours
            removed.append(entry.path)
        except OSError:
            pass  # gone already, or not ours to remove: the next start tries again
    return removed


LOCK_NAME = ".lock"


class FolderBusyError(OSError):
    """Another process holds the folder (``pid``: its process id, None when it cannot be read)."""

    def __init__(self, directory, pid):
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(errno.EWOULDBLOCK, f"{directory} is in use by {holder} (it holds "
                                            f"{os.path.join(directory, LOCK_NAME)})")
        self.directory, self.pid = directory, pid

    def __str__(self):
        return self.strerror


def lock_folder(directory):
    """Hold ``directory`` (which must exist) for this process; returns the open lock file's
    descriptor: ``os.close`` it to let go. Raises FolderBusyError naming the holder's pid when
    another process holds it.

    The lock is ``fcntl.flock`` on ``directory/.lock``, and the file holds the pid of the
    process that holds it. The file is never deleted (a process that opened it before the
    deletion would lock a file no one else sees); the kernel lets go of the lock of a process
    that dies, kill -9 included, so there is never a stale lock to clean up.
    """
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    if fcntl is None:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise FolderBusyError(directory, pid) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd):
    """The pid in a lock file, or None (a holder that has not written it yet, or not a number)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
