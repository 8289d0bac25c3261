"""Writing files so that a crash never leaves half of one: ``atomic_write``.

Every file minires writes for the user (checkpoints, metrics.csv, config.json, curves.png, the
CIFAR-10 download) goes through ``atomic_write``: the bytes go to a temporary file in the same
folder, are flushed and fsync'ed, and the finished file is renamed over the target with
``os.replace``. A reader therefore sees the old file or the new one, never a mixture. The
temporary file is removed when the write fails; a crash that leaves no time for that (kill -9,
power loss) leaves one behind, named ``.<target>.<12 hex digits>.tmp``, and
``remove_stale_temporaries`` deletes those at the next start.
"""
import contextlib
import errno
import os
import re
import secrets
import shutil

__all__ = ["atomic_write", "temporary_path", "remove_stale_temporaries"]

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
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes a whole new file: mode must be 'wb' or 'w', not {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "cannot write: no such directory", directory)
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


def remove_stale_temporaries(directory, name=None):
    """Delete what interrupted atomic writes left in ``directory`` (temporaries of ``name`` only,
    when given); return the paths removed. Call it where no other write to the same files can be
    under way, e.g. when a run starts in its output folder."""
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
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            pass  # gone already, or not ours to remove: the next start tries again
    return removed
