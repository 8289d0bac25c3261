"""``TrainState``: everything a stopped run needs to go on exactly, as one object.

The pieces are the model (weights and BatchNorm statistics), the optimizer (momentum buffers),
the schedule (iteration count), the training loader (seed, epoch and batch: which images come
next), and the bookkeeping of the loop: the epoch, the running sums of the unfinished epoch
(``partial``), the best test accuracy, the metrics of the finished epochs (``history``) and the
run's configuration, and the state of the training extensions (best values, counters: see
``extensions``). ``state_dict()`` gathers them into the checkpoint that ``snapshot`` saves;
``load_state_dict()`` puts a checkpoint back, once, after ``snapshot.read_checkpoint`` has
checked its structure.
"""


def fresh_partial():
    """The running sums of an epoch that has not started."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


class TrainState:
    """The resumable state of a run. ``epoch`` counts finished epochs."""

    def __init__(self, model, optimizer, schedule, loader, config=None):
        self.model, self.optimizer, self.schedule, self.loader = model, optimizer, schedule, loader
        self.config = dict(config or {})
        self.epoch = 0
        self.partial = fresh_partial()
        self.best_acc = -1.0
        self.history = []
        # The extensions ``fit`` runs (their state goes into the checkpoint), and the states a
        # loaded checkpoint holds for them, until ``fit`` hands them over.
        self.extensions = []
        self.extension_states = {}

    def state_dict(self):
        """The checkpoint: a dict of plain data and NumPy arrays that ``minires.save`` can write."""
        checkpoint = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "schedule": self.schedule.state_dict(), "loader": self.loader.state_dict(),
                      "epoch": self.epoch, "partial": dict(self.partial), "best_acc": self.best_acc,
                      "history": [dict(row) for row in self.history], "config": dict(self.config)}
        states = self._extension_states()
        if states:
            checkpoint["extensions"] = states
        return checkpoint

    def _extension_states(self):
        """{name: state} of the extensions that have state (those that have none add nothing)."""
        states = {e.name: e.state_dict() for e in self.extensions}
        return {name: value for name, value in states.items() if value}

    def load_state_dict(self, checkpoint, keep_hyperparameters=True):
        """Continue from ``checkpoint`` (what ``state_dict`` returned, as read back from a file).

        With ``keep_hyperparameters`` the optimizer keeps the lr, momentum, weight decay, ... it
        was built with (the command line's) and takes only its momentum buffers from the
        checkpoint, and the schedule keeps its base lr and takes only the iteration count: a
        run resumed with a lower lr uses it from its next iteration on. ``config`` stays this
        run's. A ValueError says what does not fit (another model, other parameter groups).
        """
        self.model.load_state_dict(checkpoint["model"])
        hyperparameters = [{k: v for k, v in group.items() if k != "params"}
                           for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if keep_hyperparameters:
            for group, values in zip(self.optimizer.param_groups, hyperparameters):
                group.update(values)
            self.schedule.load_state_dict({"step": checkpoint["schedule"]["step"],
                                           "base_lrs": self.schedule.base_lrs})
        else:
            self.schedule.load_state_dict(checkpoint["schedule"])
        self.loader.load_state_dict(checkpoint["loader"])
        self.epoch = int(checkpoint["epoch"])
        self.partial = {**fresh_partial(), **checkpoint["partial"]}
        self.best_acc = float(checkpoint["best_acc"])
        self.history = [dict(row) for row in checkpoint["history"]]
        self.extension_states = {name: dict(value) for name, value in checkpoint.get("extensions", {}).items()}
