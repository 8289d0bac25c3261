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


class _HistoryFile(Extension):
    """A file in ``out`` rewritten from the whole history after every epoch (a resumed run's at
    once) by ``write(path, history)``."""

    filename = None

    def __init__(self, out):
        self.path = os.path.join(out, self.filename)

    def initialize(self, state, epochs):
        if state.history:
            self.write(self.path, state.history)

    def on_epoch_end(self, state, row):
        self.write(self.path, state.history)


class MetricsCSV(_HistoryFile):
    """``out/metrics.csv``: one row per finished epoch."""

    filename = "metrics.csv"
    write = staticmethod(write_metrics)


class Curves(_HistoryFile):
    """``out/curves.png`` (where matplotlib is installed)."""

    filename = "curves.png"
    write = staticmethod(plot_curves)


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

    priority = EDITOR + 100  # the epoch's line before what the editors say about it

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


class _Plateau(Extension):
    """What EarlyStopping and ReduceLROnPlateau share: the best value of ``monitor`` (a column of
    the metrics row) so far and ``wait``, the epochs since it last improved by more than
    ``min_delta``. ``mode``: "max" (accuracies), "min" (losses) or "auto" (by the name)."""

    priority = EDITOR
    main_only = False  # every process decides, on the same summed metrics

    def __init__(self, monitor, patience, mode="auto", min_delta=0.0, log=None):
        if mode == "auto":
            mode = "min" if monitor.endswith("loss") else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', found {mode!r}")
        if patience < 1:
            raise ValueError(f"patience must be at least 1, found {patience}")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.log = log or (lambda line: None)
        self.best, self.wait = None, 0

    def _update(self, row):
        """Take the epoch's row; True when the monitored value has not improved for ``patience`` epochs."""
        value = row[self.monitor]
        if self.best is None:
            improved = True
        else:
            improved = (value - self.best if self.mode == "max" else self.best - value) > self.min_delta
        if improved:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        return self.wait >= self.patience

    def state_dict(self):
        return {} if self.best is None else {"best": float(self.best), "wait": int(self.wait)}

    def load_state_dict(self, state_dict):
        self.best, self.wait = float(state_dict["best"]), int(state_dict["wait"])


class EarlyStopping(_Plateau):
    """Ends ``fit`` (normally, as if ``epochs`` were reached) when ``monitor`` ("test_acc", or
    "val_acc" / "val_loss" with a validation split) has not improved for ``patience`` epochs,
    as Keras's EarlyStopping. ``stop_training`` says that it has."""

    def __init__(self, monitor="test_acc", patience=10, mode="auto", min_delta=0.0, log=None):
        super().__init__(monitor, patience, mode, min_delta, log)
        self.stop_training = False

    def initialize(self, state, epochs):
        self.stop_training = self.wait >= self.patience  # a run that had stopped stays stopped

    def on_epoch_end(self, state, row):
        if self._update(row):
            self.stop_training = True
            self.log(f"early stopping: {self.monitor} has not improved on {self.best:.4f} for "
                     f"{self.wait} epochs")


class ReduceLROnPlateau(_Plateau):
    """Multiplies the learning rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs (Keras's and PyTorch's ReduceLROnPlateau), never below ``min_lr``.

    It scales the base lrs of ``schedule`` (an ``optim.LRSchedule``; build this before loading
    a checkpoint into it, so that it sees the unscaled ones), so the schedule goes on working on
    top of it: a multistep drop still divides by 10, a cosine still decays. ``scale`` (the
    product of the reductions so far) is its state, with the best value and the epochs waited;
    ``min_lr`` bounds the scaled base lr.

    ``reset_each_epoch``: the schedule sets the lr afresh at the start of every epoch, as Keras's
    LearningRateScheduler does when it follows this callback (the Keras CIFAR-10 ResNet example):
    a reduction made at an epoch's end is overwritten before the next epoch's first iteration, so
    no iteration trains with it. The extension then tracks ``monitor`` and logs each reduction
    Keras would make, and ``scale`` stays 1."""

    def __init__(self, schedule, monitor="test_acc", factor=0.1, patience=10, min_lr=0.0, mode="auto",
                 min_delta=0.0, log=None, reset_each_epoch=False):
        super().__init__(monitor, patience, mode, min_delta, log)
        if not 0 < factor < 1:
            raise ValueError(f"factor must lie in (0, 1), found {factor}")
        if not min_lr >= 0:
            raise ValueError(f"min_lr must be >= 0, found {min_lr}")
        self.schedule, self.factor, self.min_lr = schedule, factor, min_lr
        self.base_lrs = list(schedule.base_lrs)
        self.scale = 1.0
        self.reset_each_epoch = reset_each_epoch

    def _apply(self):
        """Write the scaled base lrs into the schedule (which sets the optimizer's lr for the
        iteration it is at)."""
        self.schedule.load_state_dict({"step": self.schedule.step_count,
                                       "base_lrs": [lr * self.scale for lr in self.base_lrs]})

    def on_epoch_end(self, state, row):
        if not self._update(row):
            return
        self.wait = 0
        if self.reset_each_epoch:
            lr = self.schedule.lr_at(max(self.schedule.step_count - 1, 0))  # the lr the epoch trained with
            if lr > self.min_lr:  # Keras's condition for a reduction
                self.log(f"reduce lr on plateau: {self.monitor} has not improved on {self.best:.4f} for "
                         f"{self.patience} epochs; lr {lr:.4g} -> {max(lr * self.factor, self.min_lr):.4g} "
                         f"until the schedule sets it again at the next epoch's start, as in Keras")
            return
        scale = max(self.scale * self.factor, self.min_lr / self.base_lrs[0])
        if scale < self.scale * (1 - 1e-12):  # not yet at min_lr
            self.scale = scale
            self._apply()
            self.log(f"reduce lr on plateau: {self.monitor} has not improved on {self.best:.4f} for "
                     f"{self.patience} epochs; base lr now {self.base_lrs[0] * self.scale:.4g}")

    def state_dict(self):
        return {**super().state_dict(), "scale": float(self.scale)} if self.best is not None else {}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.scale = float(state_dict["scale"])
        self._apply()
