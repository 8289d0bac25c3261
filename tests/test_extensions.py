"""Training extensions (issue 16, item 3): ``fit`` calls them, their state travels in last.npz,
and what ``fit`` wrote before (last.npz, best.npz, metrics.csv, the epoch line) is theirs now."""
import numpy as np
import pytest

import minires
import minires.training.loop as loop
from minires.data.loader import ArrayLoader
from minires.optim import SGD, ConstantLR
from minires.serialization import load
from minires.training import Extension, Profiler, TrainState, default_extensions, fit


def tiny_state(lr=0.01, n=32, seed=0):
    """ResNet-8 on 32 random 8x8 images in batches of 8: 4 iterations per epoch."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=n)
    minires.manual_seed(seed)
    model = minires.models.cifar_resnet(8)
    optimizer = SGD(model.parameters(), lr=lr, momentum=0.9)
    train = ArrayLoader(x, y, batch_size=8, shuffle=True, seed=seed)
    test = ArrayLoader(x[:16], y[:16], batch_size=8)
    return TrainState(model, optimizer, ConstantLR(optimizer), train), test


class Recorder(Extension):
    """Records every call; its state is the number of epochs it has seen."""

    def __init__(self, trigger=(1, "epoch")):
        self.trigger, self.calls, self.seen = trigger, [], 0

    def initialize(self, state, epochs):
        self.calls.append(("initialize", epochs))

    def on_iteration(self, state):
        self.calls.append(("iteration", state.schedule.step_count))

    def on_epoch_end(self, state, row):
        assert state.history[-1] is row
        self.seen += 1
        self.calls.append(("epoch", row["epoch"]))

    def finalize(self, state):
        self.calls.append(("finalize",))

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state_dict):
        self.seen = state_dict["seen"]


def test_fit_calls_extensions_at_their_triggers(capsys):
    state, test = tiny_state()
    every_epoch, every_3_iterations, every_2_epochs = Recorder(), Recorder((3, "iteration")), Recorder((2, "epoch"))
    fit(state, test, epochs=2, progress=False, extensions=[every_epoch, every_3_iterations, every_2_epochs])
    assert every_epoch.calls == [("initialize", 2), ("epoch", 1), ("epoch", 2), ("finalize",)]
    assert every_3_iterations.calls == [("initialize", 2), ("iteration", 3), ("epoch", 1), ("iteration", 6),
                                        ("epoch", 2), ("finalize",)]
    assert every_2_epochs.calls == [("initialize", 2), ("epoch", 2), ("finalize",)]
    assert capsys.readouterr().out == ""  # extensions given: no default epoch line


def test_an_extensions_state_is_saved_in_last_npz_and_given_back_on_resume(tmp_path):
    from minires.training import Snapshot
    state, test = tiny_state()
    recorder = Recorder()
    fit(state, test, epochs=1, out=tmp_path, progress=False, extensions=[recorder, Snapshot(tmp_path)])
    saved = load(tmp_path / "last.npz")
    assert saved["extensions"] == {"Recorder": {"seen": 1}}
    resumed, test = tiny_state()
    resumed.load_state_dict(saved)
    again = Recorder()
    fit(resumed, test, epochs=2, out=tmp_path, progress=False, resumed_from=tmp_path / "last.npz",
        extensions=[again, Snapshot(tmp_path, tmp_path / "last.npz")])
    assert again.seen == 2 and load(tmp_path / "last.npz")["extensions"] == {"Recorder": {"seen": 2}}


def test_finalize_runs_when_fit_ends_with_an_error(monkeypatch):
    state, test = tiny_state()
    recorder = Recorder()

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(loop, "evaluate", broken)
    with pytest.raises(RuntimeError):
        fit(state, test, epochs=1, progress=False, extensions=[recorder])
    assert recorder.calls[-1] == ("finalize",)


def test_default_extensions_write_the_files_fit_always_wrote(tmp_path, capsys):
    names = [type(e).__name__ for e in default_extensions(tmp_path)]
    assert names == ["EpochLog", "BestSnapshot", "Snapshot", "MetricsCSV", "Curves"]
    assert [type(e).__name__ for e in default_extensions()] == ["EpochLog"]
    state, test = tiny_state()
    fit(state, test, epochs=1, out=tmp_path, progress=False)
    assert {"last.npz", "best.npz", "metrics.csv"} <= {p.name for p in tmp_path.iterdir()}
    assert "epoch   1/1" in capsys.readouterr().out


def test_profiler_logs_the_table_per_iteration():
    state, test = tiny_state()
    lines = []
    fit(state, test, epochs=1, progress=False, extensions=[Profiler(log=lines.append)])
    assert len(lines) == 1 and lines[0].startswith("profile per iteration over 4 iterations")
    rows = [line.split() for line in lines[0].splitlines()]
    assert rows[1][:5] == ["op", "phase", "calls/step", "ms/step", "share"]
    # each of the 4 training forwards runs the stem convolution once (evaluation runs a fused copy,
    # whose convolutions count too: 2 batches of the test set)
    conv = [r for r in rows if r[:2] == ["Conv2dFunction", "backward"]]
    assert conv and float(conv[0][2]) == pytest.approx(7.0)  # ResNet-8: 7 convolutions, 1 backward each
    assert not minires.autograd.function_hooks()  # removed at the end


def test_the_loop_does_not_import_the_profiler():
    import inspect
    assert "profiler" not in inspect.getsource(loop)
