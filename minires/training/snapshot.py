"""Checkpoints of a run: ``last.npz`` (to resume) and ``best.npz`` (the best weights), and
``read_checkpoint``, which checks a checkpoint file before anything is taken from it.

Both also hold what a model needs to be used on new images without the training data: the
input normalisation it was trained with ("preprocessing": kind, mean and std on the 0..255
scale, see ``minires.data.preprocessing_entry``) and the names of its classes ("classes").

Nothing that is not a finite number is ever written over a checkpoint: ``Snapshot.save`` checks
the weights, BatchNorm statistics and optimizer state (momentum, Adam's moments) first (a
diverging run that is stopped with Ctrl-C keeps its last good checkpoint). Files are written
atomically by ``minires.save``.
"""
import math
import numbers
import os

import numpy

from ..data.transforms import check_preprocessing
from ..serialization import load, save
from .errors import CheckpointError, NonFiniteError
from .guard import non_finite

# What a checkpoint needs besides "model" to continue a run (best.npz has none of it).
TRAINING_ENTRIES = ("optimizer", "schedule", "loader", "epoch", "partial", "best_acc", "history", "config")
# The metrics of a finished epoch, each a number, in every row of "history".
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s")


def checkpoint_arrays(checkpoint):
    """The arrays the guard checks: the model's entries and the optimizer's per-parameter arrays
    (SGD's momentum buffers, Adam's moments)."""
    arrays = {f"model/{k}": v for k, v in checkpoint.get("model", {}).items()}
    for i, entry in checkpoint.get("optimizer", {}).get("state", {}).items():
        arrays.update({f"optimizer/state/{i}/{name}": v for name, v in entry.items() if name != "step"})
    return arrays


def inference_entries(loader):
    """{"preprocessing": ..., "classes": [...]} of the training ``loader`` (an ArrayLoader),
    what a checkpoint stores beside the weights; empty for a loader that does not say."""
    entries = {}
    if hasattr(loader, "preprocessing"):
        entries["preprocessing"] = loader.preprocessing()
    if getattr(loader, "classes", None) is not None:
        entries["classes"] = list(loader.classes)
    return entries


class CheckpointWriter:
    """Writes ``out/last.npz`` and ``out/best.npz`` (for the ``Snapshot`` and ``BestSnapshot``
    extensions); ``good`` is the newest good checkpoint (the one a run that cannot go on is taken
    up from; at first the one it was resumed from)."""

    def __init__(self, out, good=None):
        self.last = os.path.join(out, "last.npz")
        self.best = os.path.join(out, "best.npz")
        self.good = good

    def _check(self, checkpoint, what):
        bad = non_finite(checkpoint_arrays(checkpoint))
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise NonFiniteError(f"{what} not saved: {', '.join(bad[:3])}{more} hold nan or inf (the loss is "
                                 f"diverging)", checkpoint=self.good)

    def save(self, state):
        """``state`` (a TrainState) into last.npz; NonFiniteError, and nothing written, when any
        of its weights or buffers is not finite. Returns the path."""
        checkpoint = {**state.state_dict(), **inference_entries(state.loader)}
        self._check(checkpoint, self.last)
        save(checkpoint, self.last)
        self.good = self.last
        return self.last

    def save_best(self, state, test_acc, extra=None):
        """The weights of ``state`` into best.npz, with the epoch, test accuracy and ``extra``
        (e.g. the validation accuracy it was chosen by)."""
        checkpoint = {"model": state.model.state_dict(), "epoch": state.epoch, "test_acc": test_acc, **(extra or {}),
                      "config": dict(state.config), **inference_entries(state.loader)}
        self._check(checkpoint, self.best)
        save(checkpoint, self.best)
        return self.best


# --- reading --------------------------------------------------------------------------------

def _is_int(x):
    return isinstance(x, (int, numpy.integer)) and not isinstance(x, (bool, numpy.bool_))


def _is_number(x):
    if not isinstance(x, numbers.Real) or isinstance(x, (bool, numpy.bool_)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


class _Checker:
    """Raises CheckpointError("checkpoint PATH: entry 'a/b' must be ..., found ...")."""

    def __init__(self, path):
        self.path = path

    def fail(self, where, what, value):
        found = type(value).__name__ if not isinstance(value, numpy.ndarray) else f"an array of {value.dtype}"
        raise CheckpointError(f"checkpoint {self.path}: entry {where!r} must be {what}, found {found}")

    def dict(self, value, where, keys=()):
        if not isinstance(value, dict):
            self.fail(where, "a dict", value)
        missing = [k for k in keys if k not in value]
        if missing:
            raise CheckpointError(f"checkpoint {self.path}: entry {where!r} lacks {', '.join(map(repr, missing))}")
        return value

    def list(self, value, where):
        if not isinstance(value, list):
            self.fail(where, "a list", value)
        return value

    def int(self, value, where, low=0):
        if not _is_int(value) or value < low:
            self.fail(where, f"an integer >= {low}", value)

    def number(self, value, where):
        if not _is_number(value):
            self.fail(where, "a finite number", value)

    def real_array(self, value, where):
        """An array of real numbers (no complex, strings or objects), all finite."""
        if not isinstance(value, numpy.ndarray) or value.dtype.kind not in "fiu":
            self.fail(where, "an array of real numbers", value)
        if value.dtype.kind == "f" and not numpy.isfinite(value).all():
            raise CheckpointError(f"checkpoint {self.path}: {where} holds nan or inf: the run that saved it "
                                  f"had diverged")


def read_checkpoint(path, training=True):
    """Load the checkpoint at ``path`` and check its structure: its "model" entry must map names
    to finite real arrays (BatchNorm's ``running_var`` >= 0), and (with ``training``, for a run that goes on) the optimizer,
    schedule, loader position and bookkeeping entries must be there with the right types.

    Returns the dict. Raises CheckpointError (a ValueError) naming the file and the entry,
    FileNotFoundError or ValueError (from ``minires.load``) for a file that is missing or not
    an archive.
    """
    checkpoint = load(path)
    check = _Checker(path)
    if "model" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry: it is not a minires checkpoint "
                              f"(its entries: {', '.join(sorted(map(str, checkpoint))[:8])})")
    for name, value in check.dict(checkpoint["model"], "model").items():
        check.real_array(value, f"model/{name}")
        if name.rpartition(".")[2] == "running_var" and (value < 0).any():
            # a BatchNorm variance below 0 makes sqrt(var + eps) nan in evaluation, every output with it
            raise CheckpointError(f"checkpoint {path}: model/{name} holds a negative BatchNorm variance "
                                  f"({value.min():g}), which no run can produce")
    if "config" in checkpoint:
        check.dict(checkpoint["config"], "config")
    if "preprocessing" in checkpoint:
        try:
            check_preprocessing(checkpoint["preprocessing"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: entry {e}") from None
    if "classes" in checkpoint:
        classes = check.list(checkpoint["classes"], "classes")
        if not all(isinstance(c, str) for c in classes):
            check.fail("classes", "a list of names", classes)
    if not training:
        return checkpoint
    missing = [k for k in TRAINING_ENTRIES if k not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no training state ({', '.join(missing)}) to resume "
                              f"from; it holds weights only")
    optimizer = check.dict(checkpoint["optimizer"], "optimizer", ("state", "param_groups"))
    for i, entry in check.dict(optimizer["state"], "optimizer/state").items():
        check.int(i, f"optimizer/state/{i} (its key)")
        # SGD keeps a momentum_buffer, Adam a step count and its moments (minires.optim).
        for name, value in check.dict(entry, f"optimizer/state/{i}").items():
            if name == "step":
                check.int(value, f"optimizer/state/{i}/step", low=1)
            else:
                check.real_array(value, f"optimizer/state/{i}/{name}")
    for i, group in enumerate(check.list(optimizer["param_groups"], "optimizer/param_groups")):
        where = f"optimizer/param_groups/{i}"
        check.dict(group, where, ("params", "lr", "weight_decay"))
        for k, value in group.items():
            if k in ("nesterov", "amsgrad", "decoupled_weight_decay"):
                if not isinstance(value, bool):
                    check.fail(f"{where}/{k}", "true or false", value)
            elif k == "betas":
                if not isinstance(value, (tuple, list)) or len(value) != 2:
                    check.fail(f"{where}/betas", "a pair of numbers", value)
                for j, beta in enumerate(value):
                    check.number(beta, f"{where}/betas/{j}")
            elif k != "params":
                check.number(value, f"{where}/{k}")
        for j, index in enumerate(check.list(group["params"], f"{where}/params")):
            check.int(index, f"{where}/params/{j}")
    schedule = check.dict(checkpoint["schedule"], "schedule", ("step", "base_lrs"))
    check.int(schedule["step"], "schedule/step")
    for j, lr in enumerate(check.list(schedule["base_lrs"], "schedule/base_lrs")):
        check.number(lr, f"schedule/base_lrs/{j}")
    loader = check.dict(checkpoint["loader"], "loader", ("seed", "epoch", "batch"))
    for k in ("seed", "epoch", "batch"):
        check.int(loader[k], f"loader/{k}")
    check.int(checkpoint["epoch"], "epoch")
    partial = check.dict(checkpoint["partial"], "partial", ("loss_sum", "correct", "seen", "seconds"))
    for k in ("correct", "seen"):
        check.int(partial[k], f"partial/{k}")
    for k in ("loss_sum", "seconds"):
        check.number(partial[k], f"partial/{k}")
    check.number(checkpoint["best_acc"], "best_acc")
    for name, entry in check.dict(checkpoint.get("extensions", {}), "extensions").items():
        for k, value in check.dict(entry, f"extensions/{name}").items():
            check.number(value, f"extensions/{name}/{k}")
    for j, row in enumerate(check.list(checkpoint["history"], "history")):
        check.dict(row, f"history/{j}", HISTORY_COLUMNS)
        for k in HISTORY_COLUMNS:
            check.number(row[k], f"history/{j}/{k}")
    return checkpoint
