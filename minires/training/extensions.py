"""Training extensions, as ``chainer.training`` has them: what ``fit`` does besides training.

``fit(..., extensions=[...])`` calls each extension at the end of every epoch with the state and
the epoch's metrics row (``on_epoch_end(state, row)``), and, for those that ask for it with an
iteration ``trigger``, after every n-th training iteration (``on_iteration(state)``). Saving
``last.npz`` and ``best.npz``, writing metrics.csv and curves.png, printing the epoch line and
profiling are each one extension, and so are ``EarlyStopping`` and ``ReduceLROnPlateau``;
``default_extensions(out)`` is the set ``fit`` uses when given none.

An extension with state (a best value, a patience counter, a reduced rate) returns it from
``state_dict()`` as plain numbers; ``Snapshot`` saves it in last.npz ("extensions", by ``name``)
and ``fit`` gives it back through ``load_state_dict`` before the first epoch of a resumed run,
so that the run goes on exactly as it would have without the stop.

Extensions run in order of ``priority``, highest first: ``EDITOR`` (those that change the state,
e.g. the learning rate) before ``WRITER`` (those that save or print it), so that a checkpoint
holds what the editors decided. Those with ``main_only`` (every writer) run only on the main
process of a data-parallel run; the editors run on every process, on the same (summed) metrics,
and so decide the same. None of them reads from the device during an epoch: they look at the
row, computed once per epoch.
"""
import math
import os
import sys

from .. import profiler
from .curves import plot_curves
from .metrics import format_row, write_metrics
from .snapshot import CheckpointWriter

EDITOR, WRITER = 200, 100


class Extension:
    """The base: every method does nothing. ``trigger``: (n, "epoch") calls ``on_epoch_end``
    after every n-th epoch; (n, "iteration") calls ``on_iteration`` after every n-th training
    iteration (and ``on_epoch_end`` after every epoch)."""

    trigger = (1, "epoch")
    priority = WRITER
    main_only = True

    @property
    def name(self):
        """The key of this extension's state in a checkpoint."""
        return type(self).__name__

    def initialize(self, state, epochs):
        """Called once when ``fit`` starts, after ``load_state_dict`` of a resumed run."""

    def on_iteration(self, state):
        """Called after a training iteration (see ``trigger``)."""

    def on_epoch_end(self, state, row):
        """Called after an epoch is evaluated and appended to ``state.history`` as ``row``."""

    def finalize(self, state):
        """Called once when ``fit`` ends, also when it ends with an exception."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


def epoch_triggered(extension, epoch):
    """Whether ``extension`` runs at the end of epoch ``epoch`` (1-based)."""
    n, unit = extension.trigger
    return unit == "iteration" or epoch % n == 0


def iteration_triggered(extension, step):
    """Whether ``extension`` runs after iteration ``step`` (1-based)."""
    n, unit = extension.trigger
    return unit == "iteration" and step % n == 0


class Snapshot(Extension):
    """``out/last.npz``: the whole state (and every extension's), to resume from.

    ``fit`` also calls ``save`` when a run is stopped with Ctrl-C; ``good`` is the newest good
    checkpoint (at first ``resumed_from``, the one the run was resumed from)."""

    def __init__(self, out, resumed_from=None):
        self.writer = CheckpointWriter(out, good=resumed_from)

    @property
    def good(self):
        return self.writer.good

    def save(self, state):
        """Write last.npz now; NonFiniteError, and nothing written, for non-finite weights."""
        return self.writer.save(state)

    def on_epoch_end(self, state, row):
        self.save(state)


class BestSnapshot(Extension):
    """``out/best.npz``: the weights of the epoch with the best ``monitor`` so far ("test_acc",
    or "val_acc" with a validation split). The best so far is read from ``state.history``, so
    it needs no state of its own."""

    def __init__(self, out, monitor="test_acc"):
        self.writer = CheckpointWriter(out)
        self.monitor = monitor

    def on_epoch_end(self, state, row):
        before = [r[self.monitor] for r in state.history[:-1]]
        if not before or row[self.monitor] > max(before):
            extra = {self.monitor: row[self.monitor]} if self.monitor != "test_acc" else None
            self.writer.save_best(state, row["test_acc"], extra)


class MetricsCSV(Extension):
    """``out/metrics.csv``: one row per finished epoch (a resumed run's at once)."""

    def __init__(self, out):
        self.path = os.path.join(out, "metrics.csv")

    def initialize(self, state, epochs):
        if state.history:
            write_metrics(self.path, state.history)

    def on_epoch_end(self, state, row):
        write_metrics(self.path, state.history)


class Curves(Extension):
    """``out/curves.png`` (where matplotlib is installed)."""

    def __init__(self, out):
        self.path = os.path.join(out, "curves.png")

    def initialize(self, state, epochs):
        if state.history:
            plot_curves(self.path, state.history)

    def on_epoch_end(self, state, row):
        plot_curves(self.path, state.history)


def duration(seconds):
    """3d 4h, 2h 13m, 5m 10s or 42s."""
    seconds = int(seconds)
    days, hours, minutes = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds % 60}s" if minutes else f"{seconds}s"


class EpochLog(Extension):
    """The line printed at the end of every epoch (``log``: print), and after the first epoch of
    ``fit`` how long the remaining epochs will take."""

    def __init__(self, log=print):
        self.log = log

    def initialize(self, state, epochs):
        self.epochs, self.first = epochs, True

    def on_epoch_end(self, state, row):
        self.log(format_row(row, self.epochs))
        if self.first and state.epoch < self.epochs:
            self.log(f"about {duration(row['seconds'] * (self.epochs - state.epoch))} to go for the "
                     f"{self.epochs - state.epoch} remaining epochs")
        self.first = False


class Profiler(Extension):
    """Times every op's forward and backward during ``fit`` (``minires.profiler``) and at its
    end logs the table per training iteration (``log``: to stderr). Counting iterations is its
    only per-iteration work."""

    trigger = (1, "iteration")

    def __init__(self, log=None):
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.profile, self.steps = None, 0

    def initialize(self, state, epochs):
        self.profile = profiler.Profiler().add()

    def on_iteration(self, state):
        self.steps += 1

    def finalize(self, state):
        if self.profile is None:
            return
        self.profile.remove()
        if self.profile.seconds and self.steps:
            self.log(f"profile per iteration over {self.steps} iterations:\n" + self.profile.table(self.steps))
        self.profile = None


def default_extensions(out=None, resumed_from=None, log=print):
    """What ``fit`` does when given no extensions: the epoch line, and with ``out`` last.npz,
    best.npz (by test accuracy), metrics.csv and curves.png there."""
    extensions = [EpochLog(log)]
    if out is not None:
        extensions += [BestSnapshot(out), Snapshot(out, resumed_from), MetricsCSV(out), Curves(out)]
    return extensions
