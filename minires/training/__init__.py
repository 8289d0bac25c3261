"""Training, split as ``chainer/training`` is: a loop that takes plain values, and small pieces
a reader finds each in one place.

- ``loop``: ``fit`` (epochs, evaluation, checkpoints), ``train_epoch``, ``evaluate``, and
  ``LoopHooks``, where a distributed variant plugs in (gradient all-reduce, rank 0 only writes,
  stop flags combined across processes).
- ``state``: ``TrainState``, the resumable state as one object (``state_dict`` /
  ``load_state_dict``).
- ``extensions``: what ``fit`` does besides training, one extension each, called after every
  epoch: ``Snapshot`` (last.npz), ``BestSnapshot`` (best.npz), ``MetricsCSV``, ``Curves``,
  ``EpochLog``, ``Profiler``, ``EarlyStopping``, ``ReduceLROnPlateau``.
- ``snapshot``: writing last.npz and best.npz, never with non-finite numbers;
  ``read_checkpoint`` checks a checkpoint file before it is used.
- ``metrics``: metrics.csv and config.json. ``curves``: curves.png (with matplotlib).
- ``folder``: ``RunFolder``, one run at a time in an output folder, never over another run.
- ``progress``: the tqdm bar. ``guard``: nan/inf. ``stop``: Ctrl-C. ``errors``: how a run ends.

``minires.train`` is the command line built on them.
"""
from .errors import CheckpointError, Interrupted, NonFiniteError, OutOfMemoryError, RunFolderError, TrainingError
from .folder import RunFolder
from .extensions import (BestSnapshot, Curves, EarlyStopping, EpochLog, Extension, MetricsCSV, Profiler,
                         ReduceLROnPlateau, Snapshot, default_extensions)
from .loop import LoopHooks, evaluate, fit, train_epoch
from .snapshot import read_checkpoint
from .state import TrainState, fresh_partial
from .stop import StopRequest

__all__ = ["CheckpointError", "Interrupted", "NonFiniteError", "OutOfMemoryError", "RunFolderError",
           "TrainingError", "RunFolder",
           "BestSnapshot", "Curves", "EarlyStopping", "EpochLog", "Extension", "MetricsCSV", "Profiler",
           "ReduceLROnPlateau", "Snapshot",
           "default_extensions",
           "LoopHooks", "evaluate", "fit", "train_epoch", "read_checkpoint", "TrainState",
           "fresh_partial", "StopRequest"]
