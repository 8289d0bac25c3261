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
from conftest import run_main


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


# --- EarlyStopping and ReduceLROnPlateau ----------------------------------------------------

def rows(*values, column="test_acc"):
    return [{column: v} for v in values]


def test_early_stopping_waits_patience_epochs_without_improvement():
    from minires.training import EarlyStopping
    stopper = EarlyStopping("test_acc", patience=2)
    stopped = []
    for row in rows(0.3, 0.5, 0.5, 0.4):
        stopper.on_epoch_end(None, row)
        stopped.append(stopper.stop_training)
    assert stopped == [False, False, False, True]
    assert stopper.state_dict() == {"best": 0.5, "wait": 2}
    losses = EarlyStopping("val_loss", patience=1)  # "auto": a loss improves downwards
    for row in rows(2.0, 1.5, column="val_loss"):
        losses.on_epoch_end(None, row)
    assert not losses.stop_training and losses.best == 1.5


def test_reduce_lr_on_plateau_scales_the_schedule_which_keeps_working():
    from minires.optim import MultiStepLR
    from minires.training import ReduceLROnPlateau
    weight = minires.Tensor(np.zeros(3, dtype=np.float32), requires_grad=True)
    optimizer = SGD([weight], lr=0.1)
    schedule = MultiStepLR(optimizer, [10], gamma=0.1)
    plateau = ReduceLROnPlateau(schedule, "test_loss", factor=0.5, patience=2, min_lr=0.02)
    for row in rows(1.0, 1.0, 1.0, column="test_loss"):  # two epochs without improvement
        plateau.on_epoch_end(None, row)
    assert plateau.scale == 0.5 and optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    for _ in range(10):
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)  # the milestone still divides by 10
    for row in rows(1.0, 1.0, 1.0, 1.0, column="test_loss"):
        plateau.on_epoch_end(None, row)
    assert plateau.scale == pytest.approx(0.2)  # min_lr 0.02 = 0.2 x the base lr 0.1, not 0.125
    assert plateau.state_dict() == {"best": 1.0, "wait": 0, "scale": plateau.scale}


def plateau_run(tmp_path, epochs, resume=None):
    """A tiny run whose lr is halved after every epoch but the first (min_delta 1: an accuracy
    never improves by more), saving last.npz; ``resume``: a last.npz to go on from."""
    from minires.training import ReduceLROnPlateau, Snapshot
    state, test = tiny_state(lr=0.05)
    plateau = ReduceLROnPlateau(state.schedule, "test_acc", factor=0.5, patience=1, min_delta=1.0)
    if resume is not None:
        state.load_state_dict(load(resume))
    fit(state, test, epochs=epochs, out=tmp_path, progress=False, resumed_from=resume,
        extensions=[plateau, Snapshot(tmp_path, resume)])
    return state.history


def test_a_run_stopped_right_after_a_reduction_resumes_exactly(tmp_path):
    """Stopped after epoch 2, whose end halved the lr, before any step at the new lr."""
    straight = plateau_run(tmp_path / "straight", 3)
    assert [row["lr"] for row in straight] == [0.05, 0.05, 0.025]  # halved at the end of epoch 2
    plateau_run(tmp_path / "stopped", 2)
    saved = load(tmp_path / "stopped" / "last.npz")
    assert saved["extensions"]["ReduceLROnPlateau"] == {"best": straight[0]["test_acc"], "wait": 0, "scale": 0.5}
    resumed = plateau_run(tmp_path / "stopped", 3, resume=tmp_path / "stopped" / "last.npz")
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
           [{k: v for k, v in r.items() if k not in timing} for r in straight]


# --- the command line -----------------------------------------------------------------------

TINY = ["--depth", "8", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--no-progress"]


def test_the_cli_composes_plateau_and_early_stopping(tiny_cifar10_dir, tmp_path, capsys, _leave_globals_alone):
    out = tmp_path / "run"
    argv = [*TINY, "--data-dir", tiny_cifar10_dir, "--out", out, "--epochs", 3, "--monitor", "loss",
            "--reduce-lr-on-plateau", 1, "--plateau-factor", 0.5, "--early-stopping", 2, "--schedule", "constant"]
    assert run_main(*argv) == 0
    text = capsys.readouterr().out
    saved = load(out / "last.npz")
    history = saved["history"]
    assert set(saved["extensions"]) == {"ReduceLROnPlateau", "EarlyStopping"}
    plateau = saved["extensions"]["ReduceLROnPlateau"]
    assert plateau["best"] == min(row["test_loss"] for row in history)
    # the saved scale is the product of the reductions the run printed
    reductions = text.count("reduce lr on plateau")
    assert plateau["scale"] == 0.5 ** reductions
    assert ("stopped early" in text) == (len(history) < 3)
    config = __import__("json").loads((out / "config.json").read_text())
    assert (config["reduce_lr_on_plateau"], config["early_stopping"], config["monitor"]) == (1, 2, "loss")


@pytest.mark.parametrize("flag, value, reason", [
    ("--early-stopping", "0", "--early-stopping must be at least 1"),
    ("--reduce-lr-on-plateau", "-1", "--reduce-lr-on-plateau must be at least 1"),
    ("--plateau-factor", "1", "--plateau-factor must lie in (0, 1), got 1"),
    ("--min-lr", "nan", "--min-lr must be a finite number"),
])
def test_bad_plateau_flags_are_one_line(tmp_path, capsys, flag, value, reason, _leave_globals_alone):
    assert run_main("--data-dir", tmp_path / "none", flag, value, "--out", tmp_path / "out") == 2
    assert reason in capsys.readouterr().err


def test_help_documents_the_new_flags(capsys):
    assert run_main("--help") == 0
    text = capsys.readouterr().out
    for flag in ("--early-stopping", "--reduce-lr-on-plateau", "--plateau-factor", "--min-lr", "--monitor",
                 "--profile"):
        assert flag in text


# --- a validation split (--val-split) -------------------------------------------------------

def test_a_validation_split_is_held_out_of_the_training_images(tiny_cifar10_dir):
    from minires.data import make_cifar10_loaders
    train, _, info = make_cifar10_loaders(tiny_cifar10_dir, 16, seed=3, limit_train=64, val_split=16)
    whole, _, _ = make_cifar10_loaders(tiny_cifar10_dir, 16, seed=3, limit_train=64)
    val = info["val_loader"]
    assert (info["n_train"], info["n_val"], len(train.x), len(val.x)) == (48, 16, 48, 16)
    images = lambda x: [bytes(row) for row in np.ascontiguousarray(x).reshape(len(x), -1)]
    assert sorted(images(train.x) + images(val.x)) == sorted(images(whole.x))  # a partition
    again = make_cifar10_loaders(tiny_cifar10_dir, 16, seed=3, limit_train=64, val_split=16)[2]["val_loader"]
    other = make_cifar10_loaders(tiny_cifar10_dir, 16, seed=4, limit_train=64, val_split=16)[2]["val_loader"]
    assert images(again.x) == images(val.x) and images(other.x) != images(val.x)  # seeded
    assert val.shuffle is False
    with pytest.raises(ValueError, match="val_split must lie in"):
        make_cifar10_loaders(tiny_cifar10_dir, 16, limit_train=64, val_split=64)


def test_the_cli_watches_the_validation_split(tiny_cifar10_dir, tmp_path, capsys, _leave_globals_alone):
    argv = [*TINY, "--data-dir", tiny_cifar10_dir, "--val-split", 16, "--schedule", "constant", "--lr", 0.05,
            "--early-stopping", 5, "--monitor", "loss"]
    assert run_main(*argv, "--epochs", 2, "--out", tmp_path / "straight") == 0
    text = capsys.readouterr().out
    assert "48 training / 16 validation / 32 test images" in text and "val loss" in text
    rows = json_rows(tmp_path / "straight")
    assert list(rows[0])[:5] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    best = load(tmp_path / "straight" / "best.npz")
    accs = [r["val_acc"] for r in rows]
    assert best["val_acc"] == max(accs) and best["epoch"] == 1 + accs.index(max(accs))
    stopper = load(tmp_path / "straight" / "last.npz")["extensions"]["EarlyStopping"]
    assert stopper["best"] == min(r["val_loss"] for r in rows)  # the validation loss, not the test loss
    # resumed after one epoch: exactly the straight run's numbers
    assert run_main(*argv, "--epochs", 1, "--out", tmp_path / "resumed") == 0
    assert run_main(*argv, "--epochs", 2, "--resume", tmp_path / "resumed") == 0
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in json_rows(tmp_path / "resumed")] == \
           [{k: v for k, v in r.items() if k not in timing} for r in rows]
    # another split would train on other images: refused
    capsys.readouterr()
    assert run_main(*argv, "--epochs", 3, "--resume", tmp_path / "resumed", "--val-split", 8) == 2
    assert "was made with --val-split=16, this run has --val-split=8" in capsys.readouterr().err


def json_rows(out):
    return load(out / "last.npz")["history"]


# --- distributed plugs in without importing training ----------------------------------------

def _package_imports(package):
    """The minires packages and modules (two levels: minires.x) that ``package``'s files import."""
    import os
    from test_bn_reduce import imports_of
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *package.split("."))
    imported = set()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                imported.update(m for m in imports_of(f.read(), package) if m.split(".")[0] == "minires")
    return {".".join(m.split(".")[:2]) for m in imported}


def test_training_and_distributed_do_not_import_each_other():
    assert "minires.training" not in _package_imports("minires.distributed")
    assert "minires.distributed" not in _package_imports("minires.training")


def test_data_parallel_hooks_meet_the_loops_hook_protocol_without_subclassing():
    from minires.distributed import DataParallelHooks
    from minires.training import LoopHooks
    assert not issubclass(DataParallelHooks, LoopHooks)
    for name in ("after_backward", "any", "sum"):
        assert callable(getattr(DataParallelHooks, name)), name
    source = __import__("inspect").getsource(DataParallelHooks.__init__)
    assert "self.is_main =" in source and "self.forward_without_images =" in source
