"""Preprocessing and class names in checkpoints, --eval-only's report, and the shipped weights:
``python -m minires.weights.package``, ``models.create(name, pretrained=True)``, ``--eval-only
--pretrained``, the sha256 check, and the weights inside the built wheel."""
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy
import pytest

import minires
from minires import backend as mb
from minires import models, train, weights
from minires.data import channel_stats, load_cifar10, pixel_mean
from minires.nn import init
from minires import rng as minires_rng
from minires.weights import package as packaging
from conftest import has_matplotlib, run_main

pytestmark = pytest.mark.usefixtures("_leave_globals_alone")  # conftest.py

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# ResNet-20 on 64 tiny images for one epoch: a real run of the CLI in a few seconds.
TINY = ["--model", "resnet20", "--limit-train", "64", "--limit-test", "64", "--batch-size", "32", "--no-progress",
        "--recipe", "fast", "--epochs", "1"]


@pytest.fixture(scope="module")
def run(tiny_cifar10_dir, tmp_path_factory):
    """The --out folder of a finished one-epoch ResNet-20 run on the tiny data set."""
    out = tmp_path_factory.mktemp("run")
    rng, previous = init.get_rng(), mb.get_backend()
    try:
        assert run_main(*TINY, "--data-dir", tiny_cifar10_dir, "--out", out) == 0
    finally:
        minires_rng._rng = rng
        mb.set_backend(previous)
    return out


@pytest.fixture
def shipped(run, tmp_path, monkeypatch):
    """The run packaged into a temporary weights folder that minires.weights reads."""
    folder = tmp_path / "weights"
    monkeypatch.setattr(weights, "WEIGHTS_DIR", folder)
    manifest = packaging.package(str(run / "last.npz"), "resnet20", commit="0123abc", dest=folder, log=lambda *a: None)
    return folder, manifest


def error_line(capsys, prog=train.build_parser().prog):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


# --- checkpoints store their preprocessing and class names -----------------------------------

def test_checkpoints_store_the_normalisation_and_the_class_names(run, tiny_cifar10_dir):
    x_train = load_cifar10(tiny_cifar10_dir)[0][:64]
    mean, std = channel_stats(x_train)
    for name in ("last.npz", "best.npz"):
        checkpoint = minires.load(run / name)
        entry = checkpoint["preprocessing"]
        assert entry["normalization"] == "channel"
        assert entry["mean"].dtype == numpy.float64 and entry["std"].dtype == numpy.float64
        numpy.testing.assert_array_equal(entry["mean"], mean)
        numpy.testing.assert_array_equal(entry["std"], std)
        assert checkpoint["classes"] == CLASSES


def test_a_pixel_mean_run_stores_the_mean_image(tiny_cifar10_dir, tmp_path):
    out = tmp_path / "pm"
    argv = [a if a != "fast" else "paper" for a in TINY]
    assert run_main(*argv, "--data-dir", tiny_cifar10_dir, "--out", out) == 0
    entry = minires.load(out / "last.npz")["preprocessing"]
    assert entry["normalization"] == "pixel_mean" and entry["std"] is None
    numpy.testing.assert_array_equal(entry["mean"], pixel_mean(load_cifar10(tiny_cifar10_dir)[0][:64]))


def test_eval_only_uses_the_stored_normalisation_not_the_training_set(run, tiny_cifar10_dir, monkeypatch, capsys):
    last_acc = float((run / "metrics.csv").read_text().splitlines()[-1].split(",")[4])

    def no_training_set(*args, **kwargs):
        raise AssertionError("the training set was read")

    monkeypatch.setattr("minires.data.loader.load_cifar10", no_training_set)
    assert run_main("--eval-only", "--resume", run / "last.npz", "--data-dir", tiny_cifar10_dir,
                    "--out", "report") == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * last_acc:.2f}%  (64 images)" in out


def test_eval_only_prints_accuracy_per_class_and_draws_the_confusion_matrix(run, tiny_cifar10_dir, tmp_path, capsys):
    report = tmp_path / "report"
    result = train.run(train.parse_args(train.build_parser(), [
        "--eval-only", "--resume", str(run / "last.npz"), "--model", "resnet20", "--data-dir", str(tiny_cifar10_dir),
        "--limit-test", "64", "--out", str(report)]))
    out = capsys.readouterr().out
    confusion = result["confusion"]
    y_test = load_cifar10(tiny_cifar10_dir)[3][:64]
    # rows are the true classes: each sums to that class's number of test images
    numpy.testing.assert_array_equal(confusion.sum(axis=1), numpy.bincount(y_test, minlength=10))
    assert numpy.trace(confusion) / 64 == result["test_acc"]
    for k, name in enumerate(CLASSES):
        total = int(confusion[k].sum())
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert re.search(rf"^{name}\s+{100 * confusion[k, k] / total:.2f}%\s+{total}\s", line), line
    if has_matplotlib():
        assert (report / "confusion.png").stat().st_size > 0
        assert f"confusion matrix in {report / 'confusion.png'}" in out
    else:
        assert not (report / "confusion.png").exists()




def test_an_old_checkpoint_without_preprocessing_still_evaluates_with_a_note(run, tiny_cifar10_dir, tmp_path,
                                                                             capsys):
    old = tmp_path / "old.npz"
    checkpoint = minires.load(run / "last.npz")
    del checkpoint["preprocessing"], checkpoint["classes"]
    minires.save(checkpoint, old)
    last_acc = float((run / "metrics.csv").read_text().splitlines()[-1].split(",")[4])
    assert run_main("--eval-only", "--resume", old, "--data-dir", tiny_cifar10_dir) == 0
    captured = capsys.readouterr()
    assert f"test accuracy {100 * last_acc:.2f}%" in captured.out
    assert "stores no preprocessing" in captured.err and "recomputing" in captured.err


def test_a_damaged_preprocessing_entry_is_one_line(run, tiny_cifar10_dir, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    checkpoint = minires.load(run / "last.npz")
    checkpoint["preprocessing"]["std"] = numpy.zeros(3)
    minires.save(checkpoint, bad)
    assert run_main("--eval-only", "--resume", bad, "--data-dir", tiny_cifar10_dir) == 2
    assert "preprocessing/std must hold finite numbers, all positive" in error_line(capsys)


# --- packaging a run and loading it as pretrained weights ------------------------------------

def test_package_writes_the_final_weights_and_a_manifest(run, shipped):
    folder, manifest = shipped
    checkpoint = minires.load(run / "last.npz")
    state = minires.load(folder / "resnet20.npz")
    assert set(state) == set(checkpoint["model"])  # the weights only: no optimizer state
    for k in state:
        numpy.testing.assert_array_equal(state[k], checkpoint["model"][k])
    written = json.loads((folder / "resnet20.json").read_text())
    assert written == json.loads(json.dumps(manifest))
    assert written["sha256"] == weights.file_sha256(folder / "resnet20.npz")
    assert written["test_acc"] == checkpoint["history"][-1]["test_acc"]  # the final epoch, from metrics.csv
    assert (written["model"], written["recipe"], written["commit"], written["epochs"]) == ("resnet20", "fast",
                                                                                         "0123abc", 1)
    assert written["recipe_changes"] == {"epochs": 1}  # the run's --recipe fast --epochs 1
    assert written["test_images"] == 64 and written["classes"] == CLASSES
    assert written["preprocessing"]["normalization"] == "channel"
    assert written["preprocessing"]["mean"] == checkpoint["preprocessing"]["mean"].tolist()  # exact round trip


def test_create_pretrained_loads_the_shipped_weights_with_preprocessing_and_classes(run, shipped):
    model = models.create("resnet20", pretrained=True)
    checkpoint = minires.load(run / "last.npz")
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(minires.to_numpy(v), checkpoint["model"][k])
    assert model.classes == tuple(CLASSES)
    numpy.testing.assert_array_equal(model.preprocessing["std"], checkpoint["preprocessing"]["std"])
    assert weights.names() == ["resnet20"]


def test_eval_only_pretrained_reproduces_the_stated_accuracy(shipped, tiny_cifar10_dir, capsys):
    _, manifest = shipped
    assert run_main("--eval-only", "--pretrained", "resnet20", "--data-dir", tiny_cifar10_dir,
                    "--limit-test", manifest["test_images"]) == 0
    assert f"test accuracy {100 * manifest['test_acc']:.2f}%  (64 images)" in capsys.readouterr().out


def test_a_changed_weights_file_fails_its_sha256_in_one_line(shipped, tiny_cifar10_dir, capsys):
    folder, _ = shipped
    path = folder / "resnet20.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: sha256 [0-9a-f]{{64}} differs from") as e:
        models.create("resnet20", pretrained=True)
    assert "\n" not in str(e.value)
    assert run_main("--eval-only", "--pretrained", "resnet20", "--data-dir", tiny_cifar10_dir) == 2
    assert "sha256" in error_line(capsys)


def test_a_model_without_shipped_weights_says_so_in_one_line(shipped, capsys):
    with pytest.raises(ValueError) as e:
        models.create("resnet56", pretrained=True)
    assert str(e.value) == ("no weights ship for resnet56 (weights ship for: resnet20); train them with "
                            "python -m minires.train --model resnet56 --recipe fast")
    assert run_main("--eval-only", "--pretrained", "resnet56") == 2
    assert "no weights ship for resnet56" in error_line(capsys)


def test_pretrained_needs_eval_only(capsys):
    assert run_main("--pretrained", "resnet20") == 2
    assert "--pretrained NAME goes with --eval-only" in error_line(capsys)


def test_package_recomputes_the_preprocessing_of_an_old_checkpoint(run, tiny_cifar10_dir, tmp_path):
    """A run started before checkpoints stored their preprocessing (issue 18's 50-epoch run)."""
    old = tmp_path / "old"
    old.mkdir()
    checkpoint = minires.load(run / "last.npz")
    del checkpoint["preprocessing"], checkpoint["classes"]
    del checkpoint["config"]["recipe"]  # as the pinned commit wrote it: the recipe is found by its values
    minires.save(checkpoint, old / "last.npz")
    shutil.copy(run / "metrics.csv", old / "metrics.csv")
    notes = []
    manifest = packaging.package(str(old), commit="0123abc", data_dir=str(tiny_cifar10_dir), dest=tmp_path / "w",
                                 log=notes.append)
    assert "stores no preprocessing" in notes[0]
    assert (manifest["recipe"], manifest["recipe_changes"]) == ("fast", {"epochs": 1})
    assert manifest["classes"] == CLASSES
    mean, std = channel_stats(load_cifar10(tiny_cifar10_dir)[0][:64])
    assert manifest["preprocessing"]["mean"] == mean.tolist() and manifest["preprocessing"]["std"] == std.tolist()


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(epoch=0), "has finished 0 of the run's 1 epochs"),
    (lambda c: c["config"].update(epochs=5), "has finished 1 of the run's 5 epochs"),
    (lambda c: c.pop("config"), "has no run config"),
])
def test_package_refuses_what_is_not_a_finished_run(run, tmp_path, capsys, change, message):
    checkpoint = minires.load(run / "last.npz")
    change(checkpoint)
    minires.save(checkpoint, tmp_path / "last.npz")
    shutil.copy(run / "metrics.csv", tmp_path / "metrics.csv")
    assert packaging.main([str(tmp_path / "last.npz"), "--commit", "abc", "--dest", str(tmp_path / "w")]) == 2
    assert message in error_line(capsys, packaging.PROG)
    assert not (tmp_path / "w").exists()


def test_package_needs_the_commit_and_the_right_name(run, tmp_path, capsys):
    assert packaging.main([str(run / "last.npz"), "--dest", str(tmp_path)]) == 2
    assert "pass --commit SHA" in error_line(capsys, packaging.PROG)
    assert packaging.main([str(run / "last.npz"), "--name", "resnet56", "--commit", "a", "--dest", str(tmp_path)]) == 2
    assert "--name resnet56: the run trained resnet20" in error_line(capsys, packaging.PROG)


# --- the wheel and the real shipped weights ---------------------------------------------------

@pytest.mark.slow
def test_the_built_wheel_holds_the_weights_folder(tmp_path):
    """An editable install reads minires/weights from the source tree and would hide missing
    package data: build the wheel of a copy of the tree (with one more weights pair) and look inside."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(REPO / "minires", src / "minires", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    (src / "minires" / "weights" / "extra.npz").write_bytes(b"weights")
    (src / "minires" / "weights" / "extra.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), "-q"], cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheel, = (tmp_path / "dist").glob("minires-*.whl")
    members = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"minires/weights/{p.name}" for p in (src / "minires" / "weights").iterdir()
                if p.suffix in (".npz", ".json", ".py")}
    assert {"minires/weights/extra.npz", "minires/weights/extra.json", "minires/weights/package.py",
            "minires/weights/resnet20.npz", "minires/weights/resnet20.json"} <= expected
    assert expected <= members, sorted(expected - members)


@pytest.mark.slow
def test_the_shipped_resnet20_reproduces_its_accuracy_on_the_test_set(cifar10_dir, capsys):
    """The real shipped weights on the real 10,000 test images give the accuracy their manifest
    states (to 2 images: a later commit may order a sum differently)."""
    assert "resnet20" in weights.names(), "minires/weights/resnet20.npz (issue 18's 50-epoch run) is missing"
    manifest = weights.read_manifest("resnet20")
    assert manifest["test_images"] == 10000
    result = train.run(train.parse_args(train.build_parser(), [
        "--eval-only", "--pretrained", "resnet20", "--data-dir", str(cifar10_dir), "--batch-size", "500",
        "--out", "report"]))
    assert abs(result["test_acc"] - manifest["test_acc"]) * 10000 <= 2, (result["test_acc"], manifest["test_acc"])


# --- the shipped weights in predict and export ------------------------------------------------

def test_predict_and_export_take_the_pretrained_weights(shipped, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    from minires import image
    from minires.inference import main as predict_main
    png = tmp_path / "x.png"
    Image.fromarray(numpy.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=numpy.uint8)).save(png)
    model = models.create("resnet20", pretrained=True)
    (top,) = minires.predict(model, [png], topk=2)
    assert predict_main([str(png), "--pretrained", "resnet20", "--topk", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"{png}: " + ", ".join(f"{n} {100 * p:.1f}%" for n, p in top)

    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from minires import export as export_cli
    assert export_cli.main(["--pretrained", "resnet20", str(tmp_path / "r20.onnx"), "--with-preprocessing"]) == 0
    x = image.load_images([png])
    session = ort.InferenceSession(str(tmp_path / "r20.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": image.to_unit(x)})[0]
    p = numpy.exp(logits - logits.max()) / numpy.exp(logits - logits.max()).sum()
    assert [model.classes[j] for j in numpy.argsort(-p[0])[:2]] == [name for name, _ in top]


def test_the_confusion_matrix_is_summed_over_the_processes(run, tiny_cifar10_dir):
    """A data-parallel evaluation adds every process's counts (here: a stand-in for 2 processes
    that saw the same images), as it adds their correct predictions."""
    from minires.data import make_cifar10_test_loader
    from minires.training import LoopHooks, evaluate

    class TwoProcesses(LoopHooks):
        def sum(self, values):
            return [2 * v for v in values]

    checkpoint = minires.load(run / "last.npz")
    model = models.create("resnet20")
    model.load_state_dict(checkpoint["model"])
    loader, _ = make_cifar10_test_loader(checkpoint["preprocessing"], tiny_cifar10_dir, 32, limit_test=64)
    one, two = numpy.zeros((10, 10), numpy.int64), numpy.zeros((10, 10), numpy.int64)
    _, acc = evaluate(model, loader, confusion=one)
    _, acc2 = evaluate(model, loader, hooks=TwoProcesses(), confusion=two)
    numpy.testing.assert_array_equal(two, 2 * one)
    assert one.sum() == 64 and acc == acc2 == numpy.trace(one) / 64
