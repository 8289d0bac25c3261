"""The ways a training run ends early, one class each (the CLI maps them to exit codes)."""


class TrainingError(RuntimeError):
    """A run that cannot go on (a loss that is no longer finite, a checkpoint that does not fit).

    ``checkpoint``: the newest good checkpoint, where the run can be taken up again (or None)."""

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


class NonFiniteError(TrainingError):
    """The loss, the test loss or the weights stopped being finite numbers (see ``guard``)."""


class OutOfMemoryError(TrainingError):
    """An array of a batch did not fit in memory; the message names the allocation."""


class CheckpointError(ValueError):
    """A checkpoint file that is not a usable minires training checkpoint; the message names it."""


class RunFolderError(ValueError):
    """The output folder cannot take this run: another process holds it, or it holds the files
    of another run (see ``folder``); the message names the folder and the ways on."""


class Interrupted(Exception):
    """Ctrl-C stopped the run.

    ``resumable``: the model, optimizer, schedule and loader in memory agreed when it stopped,
    so a checkpoint of them continues the run as if it had not stopped. ``saved``: the
    checkpoint written (None when nothing was). ``checkpoint``: the newest good checkpoint,
    where the run can be taken up again (``saved``, or an older one, or None). ``reason``: why
    nothing was saved, when nothing was.
    """

    def __init__(self, resumable, saved=None, checkpoint=None, reason=None):
        super().__init__("interrupted")
        self.resumable, self.saved, self.checkpoint, self.reason = resumable, saved, checkpoint, reason
