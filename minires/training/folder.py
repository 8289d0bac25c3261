"""The output folder of a run (``--out``, ``fit(out=...)``): one run at a time, and never over
another run.

``RunFolder(out, resuming)`` holds ``out`` for this process (``minires.utils.io.lock_folder``:
a second run into it is refused, naming the holder's pid), then refuses a folder that holds the
files of another run unless this run continues it, and only then removes what a killed run's
interrupted writes left there. A process that already holds the folder (the command line,
whose ``fit`` takes it again) just counts one more holder.
"""
import os

from ..utils.io import FolderBusyError, lock_folder, remove_stale_temporaries
from .errors import RunFolderError

# What a run writes into its folder; any of them there means another run has used it.
RUN_FILES = ("config.json", "metrics.csv", "last.npz", "best.npz")

_held = {}  # real path -> [lock file descriptor, holders] of the folders this process holds


def same_folder(path, folder):
    """True when the file ``path`` lies directly in ``folder`` (a checkpoint of that run)."""
    return os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(folder)


class RunFolder:
    """Holds the folder ``out`` (created if need be) until ``release()`` (or the end of a
    ``with`` block).

    ``resuming``: this run continues the one whose files are in ``out``. ``ways_on``: what the
    refusal suggests instead (the command line names its flags). Raises RunFolderError when
    another process holds ``out``, or when ``out`` holds another run's files and ``resuming``
    is false.
    """

    def __init__(self, out, resuming=False, ways_on=None):
        self.key, self.held = os.path.realpath(out), True
        if self.key in _held:
            _held[self.key][1] += 1
            return
        os.makedirs(out, exist_ok=True)
        try:
            fd = lock_folder(out)
        except FolderBusyError as e:
            raise RunFolderError(f"{e}; wait for that run to end, or give this one another output folder") from None
        try:
            found = [name for name in RUN_FILES if os.path.lexists(os.path.join(out, name))]
            if found and not resuming:
                ways_on = ways_on or "continue it (fit(..., resumed_from=its last.npz)), or pass another out"
                raise RunFolderError(f"{out} holds the files of another run ({', '.join(found)}); it is left as "
                                     f"it is: {ways_on}")
            remove_stale_temporaries(out)  # what a run killed in the middle of a write left behind
        except BaseException:
            os.close(fd)
            raise
        _held[self.key] = [fd, 1]

    def release(self):
        entry = _held.get(self.key)
        if not self.held or entry is None:
            return
        self.held = False
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.key]
            os.close(entry[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
