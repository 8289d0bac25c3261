"""The training loop: ``fit`` runs epochs of ``train_epoch`` and ``evaluate`` on a ``TrainState``.

It takes plain values (no command-line arguments) and does only the loop; the pieces it calls
each live in their own module: ``progress`` (the bar), ``guard`` (nan/inf), ``stop`` (Ctrl-C).
Everything else (last.npz, best.npz, metrics.csv, curves.png, the epoch line) is done by the
``extensions`` it is given.

A variant of the loop, such as data-parallel training over several processes, plugs in through
``LoopHooks`` rather than by copying it.
"""
import contextlib
import math
import time

import numpy

from .. import functional as F
from ..backend import get_array_module, to_numpy
from ..autograd import Tensor, no_grad
from ..nn import fuse_conv_bn
from .errors import Interrupted, NonFiniteError, OutOfMemoryError, TrainingError
from .extensions import Snapshot, default_extensions, epoch_triggered, iteration_triggered
from .folder import RunFolder, same_folder
from .guard import check_loss
from .metrics import epoch_row
from .progress import progress_bar
from .state import fresh_partial
from .stop import StopRequest


# Batches between two reads of the training loss and accuracy when the batches live on a device:
# each read waits for the device to finish, so the loop reads only every READ_EVERY batches (and
# at the end of an epoch, and before a checkpoint). NumPy batches are read after every batch:
# their numbers are on the host already, and a nan then stops the run before it changes the
# weights.
READ_EVERY = 50


class LoopHooks:
    """Where a variant of the loop plugs in. These defaults are those of a single process.

    A data-parallel run (one process per device, ranks 0 .. size-1, each with its own shard of
    the data) passes as ``hooks=`` to ``fit``, ``train_epoch`` and ``evaluate`` an object with
    these attributes (a subclass, or any class that has them all, as
    ``minires.distributed.DataParallelHooks``, which does not import ``training``):

    - ``is_main``: False on every process but rank 0. Such a process writes no file (no
      checkpoint, metrics.csv or curves.png), shows no progress bar and prints nothing.
    - ``after_backward(model, optimizer, share)``: called in every batch after ``loss.backward()``
      and before ``optimizer.step()``; the gradients (of this process's mean loss) are in
      ``p.grad``, and ``share`` is this process's part of the batch (its images / all images; 1
      on one process). E.g. replace them by the share-weighted sum over the processes (an
      all-reduce), the gradient of the whole batch's mean loss, so every process takes that step.
    - ``any(flag)``: combine a per-process bool so that every process gets the same answer:
      True when it is True on any process (an all-reduce with max). The loop calls it with the
      Ctrl-C request before every batch and at the end of every epoch, and where it reads the
      losses (see ``READ_EVERY``: after every batch on NumPy) with "a loss is not finite", so
      all processes stop at the same batch.
    - ``sum(values)``: a list of numbers summed over the processes, element by element. The loop
      calls it where it reads the losses, with each unread batch's loss sum, correct and seen
      (so that the running sums of the epoch, and a checkpoint of them, cover the whole batch on
      every process), and in a batch it does not read, with its number of images (for the
      share) unless the loader knows the whole batch's (``ArrayLoader.batch_total``); the same
      of an evaluation. Every process makes the same calls in the same order.
    - ``forward_without_images``: a process whose share of a batch is empty (a last batch
      smaller than the number of processes) still takes part in every exchange: its gradients
      count with share 0. With True it also runs the model's forward and backward on its empty
      share, for a model that exchanges inside them (SyncBatchNorm); with False (plain
      BatchNorm, which cannot normalise zero images) it skips them.
    """

    is_main = True
    forward_without_images = False

    def after_backward(self, model, optimizer, share):
        pass

    def any(self, flag):
        return bool(flag)

    def sum(self, values):
        return list(values)


class UnreadSums:
    """The loss and correct count of each batch since the last read, left on the device.

    ``add`` keeps a batch's loss (the 0-d array of its mean loss) and correct count (a 0-d
    integer array) as they are, without waiting for them; ``read`` brings all of them to the
    host in one transfer, sums each batch over the processes, checks that the losses are finite
    and adds them to ``sums`` batch by batch, in order: the same float64 sums, in the same order,
    as reading each batch on its own gives, whichever batches are read together.
    """

    def __init__(self):
        self.batches = []

    def add(self, loss, correct, n, where):
        """``loss`` and ``correct`` arrays (None for a process with no images in the batch), its
        ``n`` images, and ``where`` (e.g. "at epoch 2, iteration 5") for the error message."""
        self.batches.append((loss, correct, n, where))

    def read(self, sums, hooks):
        """Add the unread batches to ``sums`` (a dict with "loss_sum", "correct" and "seen"), each
        batch summed over the processes (``hooks``: one ``any``, whether a loss is not finite,
        and one ``sum``). Returns the number of images of the last batch (on all processes).

        Raises NonFiniteError, naming the first batch whose loss is not finite on any process,
        before any of the batches is added."""
        batches = self.take()
        if not batches:  # the same on every process: they have seen the same batches
            return None
        anywhere = hooks.any(not all(math.isfinite(value) for value, _, _, _ in batches))
        summed = hooks.sum([x for value, correct, n, _ in batches for x in (value * n, correct, n)])
        if anywhere:
            for k, (value, _, _, where) in enumerate(batches):
                check_loss(value, where, not math.isfinite(summed[3 * k]))
        for k in range(len(batches)):
            sums["loss_sum"] += summed[3 * k]
            sums["correct"] += int(summed[3 * k + 1])
            sums["seen"] += int(summed[3 * k + 2])
        return summed[-1]

    def take(self):
        """The unread batches as host numbers, ``[(loss, correct, n, where), ...]`` (a loss of
        0.0 and 0 correct for a process with no images), and none left unread."""
        batches, self.batches = self.batches, []
        arrays = [a for loss, correct, _, _ in batches if loss is not None for a in (loss, correct)]
        values = iter([])
        if arrays:
            xp = get_array_module(*arrays)
            # One transfer for all of them: each is a float32 loss or an int64 count (< 2**53),
            # both exact in float64.
            values = iter(to_numpy(xp.stack([a.astype(xp.float64) for a in arrays])).tolist())
        return [(next(values), next(values), n, where) if loss is not None else (0.0, 0.0, n, where)
                for loss, _, n, where in batches]


def _add_confusion(counts, y, predicted, k):
    """counts (K, K) int64 (None: zeros) plus the pairs (y[n], predicted[n]) of a batch, on y's
    device: counts[i, j] += sum_n [y_n = i] [predicted_n = j] = (Y^T P)[i, j] with the one-hot
    rows Y, P (N, K) of the labels and predictions. A float64 product of 0s and 1s is exact; a
    scatter would read the device (CuPy's bincount) or add atomically."""
    xp = get_array_module(y)
    classes = xp.arange(k)
    onehot_y = (y[:, None] == classes).astype(xp.float64)  # (N,) -> (N, 1) == (K,) -> (N, K)
    onehot_p = (predicted[:, None] == classes).astype(xp.float64)
    batch = (onehot_y.T @ onehot_p).astype(xp.int64)
    if counts is None:
        return batch
    counts += batch
    return counts


def evaluate(model, loader, label_smoothing=0.0, hooks=None, confusion=None):
    """Mean loss and accuracy over a loader, in eval mode and without a graph. ``model`` is not
    changed (its train/eval modes included): what runs is ``nn.fuse_conv_bn`` of it in eval
    mode, a copy with each batch norm folded into the convolution before it (the same outputs in
    fewer passes; copying ResNet-56 takes milliseconds, an evaluation seconds).
    ``confusion``: a (K, K) int64 NumPy array to which the count of every (label, prediction)
    pair is added (summed over the processes of a distributed run); the counts stay on the
    loader's device until the last batch."""
    hooks = hooks or LoopHooks()
    modes = [(m, m.training) for m in model.modules()]
    try:
        fused = fuse_conv_bn(model.eval())
    finally:
        for m, mode in modes:
            m.training = mode
    unread = UnreadSums()
    counts = None  # the confusion counts of the batches so far, on their device
    with no_grad():
        for xb, yb in loader:
            if not len(yb):  # this process's share of a last batch smaller than the processes
                continue
            try:
                logits = fused(Tensor(xb))
                n = len(yb)
                loss = F.cross_entropy(logits, yb, label_smoothing)
            except MemoryError as e:
                raise OutOfMemoryError(f"out of memory evaluating a batch of {len(yb)} images: {e}") from None
            predicted = logits.data.argmax(axis=1)
            unread.add(loss.data, (predicted == yb).sum(), n, None)
            if confusion is not None:
                counts = _add_confusion(counts, yb, predicted, confusion.shape[0])
    # Read once, at the end: the same sums, in the same order, as reading every batch.
    total_loss, correct, seen = 0.0, 0, 0
    for value, batch_correct, n, _ in unread.take():
        total_loss += value * n
        correct += int(batch_correct)
        seen += n
    if confusion is not None:
        if counts is not None:
            confusion += to_numpy(counts)
        confusion[...] = numpy.reshape(hooks.sum(confusion.ravel().tolist()), confusion.shape)
    total_loss, correct, seen = hooks.sum([total_loss, correct, seen])
    if seen == 0:
        raise ValueError("evaluate: the loader gave no images to evaluate")
    return total_loss / seen, correct / seen


def train_epoch(state, stop, epochs, label_smoothing=0.0, progress=True, hooks=None, extensions=(),
                read_every=None):
    """One pass over ``state.loader`` (from where it stands: a resumed run may start mid-epoch).

    ``state.partial`` holds the epoch's running sums, so that a run stopped in the middle of an
    epoch resumes with them. ``stop``: a StopRequest (``stop.requested`` is looked at before
    every batch). ``epochs``: the run's total, for the bar. ``extensions``: those whose
    ``on_iteration`` runs after the iterations their trigger names.

    The losses and correct counts stay on the device until they are read (``UnreadSums``):
    after every ``read_every``-th iteration (None: after every one for NumPy batches,
    ``READ_EVERY`` for device batches), at the end of the epoch and when the epoch is interrupted
    (before its checkpoint). Nothing else in the loop waits for the device. An extension's
    ``on_iteration`` sees ``state.partial`` as of the last read.

    Raises NonFiniteError when a loss read is not finite (naming the iteration it came from; on
    NumPy, read after every batch, before it changes the weights), OutOfMemoryError when a batch
    does not fit, and Interrupted when ``stop.requested`` or a KeyboardInterrupt ends the epoch
    early.
    """
    hooks = hooks or LoopHooks()
    model, loader, optimizer, schedule, partial = (state.model, state.loader, state.optimizer,
                                                   state.schedule, state.partial)
    model.train()
    bar = progress_bar(len(loader), f"epoch {state.epoch + 1}/{epochs}", enabled=progress and hooks.is_main,
                       done=loader.batch)
    start = time.perf_counter()
    unread = UnreadSums()

    def read():
        """Bring the unread sums into ``partial`` and show them on the bar; returns the number of
        images of the last batch read (on all processes)."""
        seen = unread.read(partial, hooks)
        elapsed = partial["seconds"] + time.perf_counter() - start
        if partial["seen"]:
            bar.set_postfix_str(f"loss={partial['loss_sum'] / partial['seen']:.3f} "
                                f"acc={partial['correct'] / partial['seen']:.3f} "
                                f"img_s={partial['seen'] / elapsed:.0f}", refresh=False)
        return seen

    # The loader moves on to the next batch before it hands one out, so its state_dict says
    # "after this batch" while the batch is still being worked on. ``position`` is the state
    # of what has really been learnt; an interruption rewinds the loader to it, and the
    # resumed run does the unfinished batch again.
    position = loader.state_dict()
    in_batch = False
    try:
        for xb, yb in loader:
            if hooks.any(stop.requested):
                read()
                loader.load_state_dict(position)
                raise Interrupted(resumable=True)
            if read_every is None:
                read_every = 1 if get_array_module(xb) is numpy else READ_EVERY
            # From here to the end of the bookkeeping the batch changes the state one piece at a
            # time: BatchNorm's running statistics in the forward pass, then the weights, the
            # momentum, the iteration count and the sums. An exception in between leaves a mix of
            # before and after that no checkpoint can hold.
            in_batch = True
            where = f"at epoch {state.epoch + 1}, iteration {schedule.step_count + 1}"
            try:
                n = len(yb)
                loss = None
                if n or hooks.forward_without_images:
                    logits = model(Tensor(xb))
                    # no images: a loss of 0 whose backward still runs the model's exchanges
                    loss = F.cross_entropy(logits, yb, label_smoothing) if n else logits.sum()
                    unread.add(loss.data, (logits.data.argmax(axis=1) == yb).sum(), n, where)
                else:
                    unread.add(None, None, n, where)
                if (schedule.step_count + 1) % read_every == 0:
                    seen = read()  # before this batch's loss changes the weights
                elif getattr(loader, "batch_total", None) is not None:
                    seen = loader.batch_total  # the images of the whole batch, known to every process
                else:
                    seen = hooks.sum([n])[0]  # a loader that does not know them: ask the processes
                optimizer.zero_grad()
                if loss is not None:
                    loss.backward()
                hooks.after_backward(model, optimizer, n / seen)
                optimizer.step()
            except MemoryError as e:
                raise OutOfMemoryError(f"out of memory {where}, in a batch of {len(yb)} images: {e}") from None
            schedule.step()
            in_batch = False
            position = loader.state_dict()
            bar.update(1)
            for e in extensions:
                if iteration_triggered(e, schedule.step_count):
                    e.on_iteration(state)
        read()
    except KeyboardInterrupt:
        # Not a first Ctrl-C under StopRequest (that only sets stop.requested), but a second
        # one, or one raised by other code. Outside a batch's work (in the loader, in the
        # progress bar) the state is whole, but the loader may have moved on already.
        if in_batch:
            raise Interrupted(resumable=False) from None
        read()
        loader.load_state_dict(position)
        raise Interrupted(resumable=True) from None
    finally:
        partial["seconds"] += time.perf_counter() - start
        bar.close()


def fit(state, test_loader, epochs, out=None, label_smoothing=0.0, progress=True, hooks=None,
        resumed_from=None, log=print, extensions=None, val_loader=None, read_every=None):
    """Train ``state`` (a TrainState) until ``state.epoch == epochs``, evaluating on
    ``test_loader`` after every epoch. Returns ``state.history`` (one metrics row per epoch).

    ``extensions`` (``minires.training.extensions``) do everything besides: after every epoch
    each gets the state and the epoch's row. Without them (None) ``fit`` uses
    ``default_extensions(out, resumed_from, log)``: the epoch line (``log`` prints it) and, with
    ``out``, ``out/last.npz``, ``out/best.npz`` (the best test accuracy so far),
    ``out/metrics.csv`` and ``out/curves.png``. On a process that is not the main one (see
    LoopHooks) only the extensions without ``main_only`` run. ``resumed_from``: the checkpoint
    the state was loaded from (the one to go back to should the run fail before it saves its own).
    ``val_loader``: images held out of the training set, evaluated after every epoch too (the
    row's "val_loss" and "val_acc", which extensions can watch instead of the test set's).
    ``read_every``: iterations between reads of the training loss from the device (see
    ``train_epoch``).

    ``out`` (a folder) is held while the run goes (``folder``): RunFolderError when another
    process holds it, or when a state that has not trained yet, or one resumed from another
    folder, would write over the files of another run there.

    Ends early by raising:
    - ``Interrupted`` on Ctrl-C (see ``stop``): when the state is whole, it has been saved to
      ``last.npz`` first (``saved``) by the ``Snapshot`` extension, if there is one, unless its
      weights are no longer finite (``reason``).
    - ``NonFiniteError`` when the loss, the test loss or the weights stop being finite, before
      anything is saved; ``checkpoint`` names the newest good checkpoint.
    - ``OutOfMemoryError`` when a batch does not fit in memory.
    A KeyboardInterrupt outside the training batches (a second Ctrl-C) propagates as it is.
    An extension such as ``EarlyStopping`` ends it early, and normally, by setting ``stop_training``.
    """
    hooks = hooks or LoopHooks()
    if extensions is None:
        extensions = default_extensions(out, resumed_from, log)
    extensions = sorted(extensions, key=lambda e: -e.priority)
    # Every process keeps the state of every extension (rank 0's are the ones saved).
    state.extensions = extensions
    running = [e for e in extensions if hooks.is_main or not e.main_only]
    snapshots = [e for e in running if isinstance(e, Snapshot)]
    good = (lambda: snapshots[0].good) if snapshots else (lambda: resumed_from)
    folder = contextlib.nullcontext()
    if out is not None and hooks.is_main:
        # A state that has not trained yet starts a new run; one that has continues a run, the
        # one in ``out`` when it was resumed from there.
        fresh = state.epoch == 0 and not state.history and state.schedule.step_count == 0
        folder = RunFolder(out, resuming=same_folder(resumed_from, out) if resumed_from is not None else not fresh)
    with folder, StopRequest(announce=hooks.is_main) as stop:
        for e in extensions:
            if e.name in state.extension_states:
                e.load_state_dict(state.extension_states[e.name])
        try:
            for e in running:
                e.initialize(state, epochs)
            _run_epochs(state, test_loader, val_loader, epochs, label_smoothing, progress, hooks, running, stop,
                        snapshots, good, read_every)
        finally:
            for e in running:
                e.finalize(state)
    return state.history


def _run_epochs(state, test_loader, val_loader, epochs, label_smoothing, progress, hooks, extensions, stop,
                snapshots, good, read_every):
    """The epochs of ``fit``."""
    per_iteration = [e for e in extensions if e.trigger[1] == "iteration"]
    while state.epoch < epochs and not any(getattr(e, "stop_training", False) for e in extensions):
        try:
            train_epoch(state, stop, epochs, label_smoothing, progress, hooks, per_iteration, read_every)
        except Interrupted as e:
            if not e.resumable or not snapshots:
                raise Interrupted(e.resumable, checkpoint=good()) from None
            try:
                saved = snapshots[0].save(state)
            except NonFiniteError as bad:
                raise Interrupted(True, checkpoint=good(), reason=str(bad)) from None
            raise Interrupted(True, saved=saved, checkpoint=saved) from None
        except TrainingError as e:
            e.checkpoint = good()
            raise
        val = evaluate(state.model, val_loader, label_smoothing, hooks) if val_loader is not None else None
        test_loss, test_acc = evaluate(state.model, test_loader, label_smoothing, hooks)
        for what, loss in (("validation", val[0] if val else 0.0), ("test", test_loss)):
            if not math.isfinite(loss):
                # The training loss can stay finite while the weights or the BatchNorm running
                # statistics overflow; such a model must not replace the last good checkpoint.
                raise NonFiniteError(f"the {what} loss became {loss} after epoch {state.epoch + 1}",
                                     checkpoint=good())
        partial = state.partial
        sums = [partial["loss_sum"], partial["correct"], partial["seen"]]
        # The lr of the epoch's last iteration. The optimizer already holds the next
        # iteration's, which is a tenth of it when a multistep drop falls on the boundary.
        row = epoch_row(state.epoch + 1, sums, partial["seconds"],
                        state.schedule.lr_at(state.schedule.step_count - 1), test_loss, test_acc, val)
        state.history.append(row)
        state.epoch, state.partial = state.epoch + 1, fresh_partial()
        state.best_acc = max(state.best_acc, test_acc)
        for e in extensions:
            if epoch_triggered(e, state.epoch):
                e.on_epoch_end(state, row)
        if hooks.any(stop.requested):  # Ctrl-C during the epoch's last batch or its evaluation
            raise Interrupted(True, saved=good() if snapshots else None, checkpoint=good())
