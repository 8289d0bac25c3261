"""The training loop does not wait for the device between its reads (issue 17, section 1).

On a GPU every ``.item()``, ``float()``, ``int()`` or ``bool()`` of a device array makes the host
wait for the device. NumPy cannot show the waiting, so these tests run the loop on NumPy arrays
of a subclass that records every conversion to a host number, and check that there is none:
the loop brings its numbers to the host only in ``UnreadSums.take`` (one transfer of the
batches' losses and counts, which a GPU waits for), at its read points (every ``read_every``
iterations and at the end of an epoch), with the same numbers as reading after every batch.
"""
import numpy as np
import pytest

import minires
import minires.functional as F
import minires.training.loop as loop
from minires import nn
from minires.data.loader import ArrayLoader
from minires.optim import SGD, ConstantLR
from minires.serialization import load
from minires.training import NonFiniteError, Snapshot, TrainState, fit
from host_reads import HostReads

CONVERSIONS = []  # (what, iteration) of every host conversion of a Spy array
STATE = {}


class Spy(HostReads):
    """A NumPy array that records each conversion to a host number with the iteration it
    happened in (``schedule.step_count`` of the state under test)."""

    def record(self, what):
        CONVERSIONS.append((what, STATE["state"].schedule.step_count))


class SpyOutput(nn.Module):
    """The model's logits as a Spy array: the loss, the argmax and the correct count computed
    from them are Spy arrays too."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        logits.data = logits.data.view(Spy)
        return logits


def make_state(read_seed=0, n=44, batch_size=4):
    """A small convolutional network on 44 random 8x8 images, 11 iterations per epoch."""
    rng = np.random.default_rng(read_seed)
    x = rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=n)
    minires.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.GlobalAvgPool2d(),
                          nn.Linear(4, 10))
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = ArrayLoader(x, y, batch_size=batch_size, shuffle=True, seed=1)
    test = ArrayLoader(x[:8], y[:8], batch_size=batch_size)
    state = TrainState(SpyOutput(model), optimizer, ConstantLR(optimizer), train)
    STATE["state"] = state
    CONVERSIONS.clear()
    return state, test


def weights(state):
    return {k: v.copy() for k, v in state.model.state_dict().items()}


def test_the_loop_converts_to_host_numbers_only_at_its_read_points(monkeypatch):
    losses, reads = [], []
    original_loss, original_take = F.cross_entropy, loop.UnreadSums.take

    def cross_entropy(*args, **kwargs):
        loss = original_loss(*args, **kwargs)
        losses.append(type(loss.data))
        return loss

    def take(self):
        reads.append(STATE["state"].schedule.step_count)
        return original_take(self)

    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    monkeypatch.setattr(loop.UnreadSums, "take", take)
    state, test = make_state()
    history = fit(state, test, epochs=2, progress=False, extensions=[], read_every=5)
    assert losses and set(losses) == {Spy}  # the loop's losses are watched
    assert not CONVERSIONS, f"host conversions (what, iteration) outside the reads: {CONVERSIONS}"
    # Reads in iterations 5, 10, 15 and 20 (before their step: step_count 4, 9, ...) and at the
    # end of each epoch of 11 iterations (step_count 11 and 22), where the evaluation reads too.
    assert reads == [4, 9, 11, 11, 14, 19, 22, 22]
    assert len(history) == 2
    # The same numbers and weights as reading after every batch.
    again, test = make_state()
    timeless = lambda rows: [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in rows]
    assert timeless(fit(again, test, epochs=2, progress=False, extensions=[], read_every=1)) == timeless(history)
    for name, value in weights(again).items():
        np.testing.assert_array_equal(value, weights(state)[name], err_msg=name)


def test_a_nan_loss_is_found_at_the_next_read_and_named_by_its_iteration(tmp_path, monkeypatch):
    original = F.cross_entropy
    calls = {"n": 0}

    def nan_from_the_seventh_batch(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 7 else loss

    monkeypatch.setattr(F, "cross_entropy", nan_from_the_seventh_batch)
    state, test = make_state()
    with pytest.raises(NonFiniteError, match="the loss became nan at epoch 1, iteration 7"):
        fit(state, test, epochs=2, out=tmp_path, progress=False, extensions=[Snapshot(tmp_path)], read_every=5)
    assert calls["n"] == 10  # found when iteration 10 reads, before its step
    assert not (tmp_path / "last.npz").exists()


def test_an_interrupted_epoch_reads_its_sums_before_the_checkpoint(tmp_path):
    def interrupted_after(k, read_every, out):
        state, test = make_state()

        class StopAt(minires.training.Extension):
            trigger = (1, "iteration")

            def on_iteration(self, st):
                if st.schedule.step_count == k:
                    raise KeyboardInterrupt  # between batches: a resumable interruption

        with pytest.raises(minires.training.Interrupted) as stopped:
            fit(state, test, epochs=1, out=out, progress=False, extensions=[StopAt(), Snapshot(out)],
                read_every=read_every)
        assert stopped.value.saved == str(out / "last.npz")
        return load(out / "last.npz")

    late = interrupted_after(7, 5, tmp_path / "every5")
    every = interrupted_after(7, 1, tmp_path / "every1")
    assert int(late["partial"]["seen"]) == 28
    for key in ("loss_sum", "correct", "seen"):
        assert late["partial"][key] == every["partial"][key], key
