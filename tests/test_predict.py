"""minires.predict and python -m minires.predict on PNG/JPEG files made here; the image
preprocessing they share with export (minires.image); export --with-preprocessing."""
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import minires
from minires import Tensor, image, models, nn
from minires.data import normalize, preprocessing_entry
from minires.inference import load_model, main

Image = pytest.importorskip("PIL.Image", reason="reading image files needs Pillow (pip install -e '.[image]')")

REPO = Path(__file__).resolve().parents[1]
PROG = "python -m minires.predict"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CHANNEL = preprocessing_entry(numpy.array([125.307, 122.950, 113.865]), numpy.array([62.993, 62.089, 66.705]))


def trained_like(seed=0):
    """A ResNet-20 with random weights and non-trivial BatchNorm statistics (eval mode is real)."""
    minires.manual_seed(seed)
    model = models.create("resnet20")
    rng = numpy.random.default_rng(seed)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean[...] = rng.normal(0, 0.1, bn.num_features)
        bn.running_var[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.bias.data[...] = rng.normal(0, 0.1, bn.num_features)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as python -m minires.train writes one (the entries predict reads)."""
    path = tmp_path_factory.mktemp("ckpt") / "last.npz"
    minires.save({"model": trained_like().state_dict(), "config": {"model": "resnet20"},
                  "preprocessing": CHANNEL, "classes": CLASSES}, path)
    return path


def save(array, path, mode=None, **kwargs):
    Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return path


def hwc(x):
    return x.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)


# --- reading images: modes, crop, resize, orientation ----------------------------------------

def test_grey_becomes_rgb(tmp_path):
    path = save(numpy.full((40, 50), 77, numpy.uint8), tmp_path / "grey.png")
    assert (image.to_array(path) == 77).all()


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    grey = numpy.full((32, 32), 40000, numpy.uint16)
    grey[:16] = 65535
    path = save(grey, tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")  # a 16-bit file, not an 8-bit one
    x = image.to_array(path)
    assert (x[:, :16] == 255).all() and (x[:, 16:] == 156).all()  # 40000 / 257 = 155.6


def test_palette_images_keep_their_colours(tmp_path):
    colours = numpy.array([[200, 30, 40], [10, 220, 90], [20, 40, 250]], numpy.uint8)
    rgb = colours[numpy.arange(48 * 48).reshape(48, 48) // (48 * 16)]  # three bands, (48, 48, 3)
    path = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
    assert Image.open(path).mode == "P"
    x = hwc(image.to_array(path))
    assert (x[2] == colours[0]).all() and (x[16] == colours[1]).all() and (x[-3] == colours[2]).all()


def test_transparency_is_composited_over_white(tmp_path):
    rgba = numpy.zeros((32, 32, 4), numpy.uint8)
    rgba[:, :8] = (200, 10, 10, 255)   # opaque red
    rgba[:, 8:16] = (0, 0, 0, 0)       # transparent: white
    rgba[:, 16:] = (0, 0, 0, 128)      # half-transparent black: grey
    x = hwc(image.to_array(save(rgba, tmp_path / "rgba.png")))
    assert (x[:, :8] == (200, 10, 10)).all()
    assert (x[:, 8:16] == 255).all()
    assert (numpy.abs(x[:, 16:].astype(int) - 127) <= 1).all()
    grey_alpha = numpy.stack([numpy.full((32, 32), 50, numpy.uint8), numpy.zeros((32, 32), numpy.uint8)], -1)
    assert (image.to_array(save(grey_alpha, tmp_path / "la.png", "LA")) == 255).all()
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    palette.save(tmp_path / "ptrans.png", transparency=1)
    assert (image.to_array(tmp_path / "ptrans.png") == 255).all()


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_non_square_images_are_centre_cropped(tmp_path, shape):
    h, w = shape
    x = numpy.zeros((h, w, 3), numpy.uint8)
    thirds = numpy.arange(max(h, w)) * 3 // max(h, w)  # 0, 1, 2 along the long side
    colour = numpy.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], numpy.uint8)[thirds]
    x[...] = colour[None, :] if w > h else colour[:, None]
    out = hwc(image.to_array(save(x, tmp_path / "wide.png")))
    assert out.shape == (32, 32, 3)
    assert (out == (0, 255, 0)).all()  # only the middle square, all green


def test_large_images_are_resized_with_antialiasing(tmp_path):
    """A 1-pixel checkerboard averages to grey; sampling it (nearest) would give black or white."""
    board = ((numpy.indices((320, 320)).sum(axis=0) % 2) * 255).astype(numpy.uint8)
    x = image.to_array(save(board, tmp_path / "board.png"))
    assert numpy.abs(x.astype(int) - 127.5).max() <= 4


def test_exif_orientation_is_applied(tmp_path):
    """Stored landscape (red top half, blue bottom) with orientation 6 ("rotate 90 clockwise to
    view"): upright it is portrait with red on the right, so the centre square is blue | red."""
    x = numpy.zeros((32, 64, 3), numpy.uint8)
    x[:16] = (255, 0, 0)
    x[16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(x).save(path, "JPEG", exif=exif, quality=95)
    out = hwc(image.to_array(path)).astype(int)
    assert (numpy.abs(out[:, :12] - (0, 0, 255)).max()) < 40   # left: blue
    assert (numpy.abs(out[:, -12:] - (255, 0, 0)).max()) < 40  # right: red


def test_paths_pil_images_and_arrays_give_the_same_pixels(tmp_path):
    x = numpy.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=numpy.uint8)
    path = save(x, tmp_path / "x.png")
    batch = image.load_images([path, Image.open(path), x])
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == numpy.uint8
    assert (batch[0] == batch[1]).all() and (batch[0] == batch[2]).all()
    small = x[:32, :32]
    numpy.testing.assert_array_equal(image.to_array(small), small.transpose(2, 0, 1))  # 32x32: as it is
    with pytest.raises(ValueError, match=r"uint8 of shape \(H, W, 3\).*float64 of shape \(32, 32, 3\)"):
        image.to_array(small.astype(float))


# --- predict -------------------------------------------------------------------------------

def test_predict_gives_the_top_classes_of_the_models_softmax(tmp_path, checkpoint):
    rng = numpy.random.default_rng(1)
    arrays = [rng.integers(0, 256, (40 + 8 * i, 50, 3), dtype=numpy.uint8) for i in range(3)]
    paths = [save(a, tmp_path / f"{i}.png") for i, a in enumerate(arrays)]
    model = load_model(checkpoint)
    assert model.classes == tuple(CLASSES)
    results = minires.predict(model, paths, topk=3)

    x = normalize(image.load_images(paths), CHANNEL["mean"], CHANNEL["std"])
    model.eval()
    with minires.no_grad():
        logits = model(Tensor(x)).numpy().astype(numpy.float64)
    p = numpy.exp(logits) / numpy.exp(logits).sum(axis=1, keepdims=True)
    assert len(results) == 3
    for row, top in zip(p, results):
        order = numpy.argsort(-row)[:3]
        assert [name for name, _ in top] == [CLASSES[j] for j in order]
        numpy.testing.assert_allclose([prob for _, prob in top], row[order], rtol=1e-12)
    (alone,), = minires.predict(model, paths[0], topk=1)  # one image (float32 sums of another batch size)
    assert alone[0] == results[0][0][0] and alone[1] == pytest.approx(results[0][0][1], rel=1e-5)


def test_probabilities_stay_finite_for_huge_logits(checkpoint):
    model = load_model(checkpoint)
    model.fc.weight.data *= 1e6  # logits of order 1e6: a plain exp overflows
    (top,) = minires.predict(model, [numpy.zeros((32, 32, 3), numpy.uint8)], topk=10)
    probs = numpy.array([p for _, p in top])
    assert numpy.isfinite(probs).all() and probs.sum() == pytest.approx(1.0) and probs[0] == pytest.approx(1.0)
    assert list(probs) == sorted(probs, reverse=True)


def test_predict_needs_the_models_preprocessing():
    with pytest.raises(ValueError, match="predict needs the input normalisation"):
        minires.predict(trained_like(), [numpy.zeros((32, 32, 3), numpy.uint8)])


def test_predict_leaves_a_training_model_in_training_mode(checkpoint):
    model = load_model(checkpoint).train()
    minires.predict(model, [numpy.zeros((32, 32, 3), numpy.uint8)])
    assert model.training


def test_minires_predict_stays_callable_after_importing_the_command_line_module(checkpoint):
    """``import minires.predict`` binds the package's attribute to that module; it must still
    classify as the function does (in a child process: the binding lasts for the interpreter)."""
    code = ("import sys, numpy, minires\n"
            "from minires.inference import load_model, predict\n"
            "import minires.predict\n"
            "model, x = load_model(sys.argv[1]), [numpy.full((40, 40, 3), 90, numpy.uint8)]\n"
            "assert minires.predict(model, x, topk=3) == predict(model, x, topk=3), 'differs'\n"
            "from minires import predict as p; print(len(p(model, x, topk=2)[0]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr


# --- the command line ----------------------------------------------------------------------

def images_folder(folder):
    folder.mkdir()
    rng = numpy.random.default_rng(2)
    save(rng.integers(0, 256, (64, 48, 3), dtype=numpy.uint8), folder / "b.png")
    save(rng.integers(0, 256, (30, 30), dtype=numpy.uint8), folder / "a.png")
    save(rng.integers(0, 256, (50, 70, 3), dtype=numpy.uint8), folder / "c.JPG", format="JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_cli_classifies_files_and_folders(tmp_path, checkpoint, capsys):
    folder = images_folder(tmp_path / "pictures")
    one = save(numpy.zeros((32, 32, 3), numpy.uint8), tmp_path / "black.png")
    assert main([str(one), str(folder), "--checkpoint", str(checkpoint), "--topk", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    files = [one, folder / "a.png", folder / "b.png", folder / "c.JPG"]
    assert [line.split(": ")[0] for line in lines] == [str(f) for f in files]
    expected = minires.predict(load_model(checkpoint), files, topk=2)
    for line, top in zip(lines, expected):
        assert line.split(": ")[1] == ", ".join(f"{name} {100 * p:.1f}%" for name, p in top)


def cli_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: error: ")
    return lines[0]


def test_cli_errors_are_one_line(tmp_path, checkpoint, capsys):
    assert main([str(tmp_path / "missing.png"), "--checkpoint", str(checkpoint)]) == 2
    assert f"image not found: {tmp_path / 'missing.png'}" in cli_error(capsys)
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--checkpoint", str(checkpoint)]) == 2
    assert "holds no images" in cli_error(capsys)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main([str(tmp_path / "broken.png"), "--checkpoint", str(checkpoint)]) == 2
    assert "cannot read image" in cli_error(capsys)
    old = tmp_path / "old.npz"
    minires.save({"model": trained_like().state_dict(), "config": {"model": "resnet20"}}, old)
    png = save(numpy.zeros((32, 32, 3), numpy.uint8), tmp_path / "x.png")
    assert main([str(png), "--checkpoint", str(old)]) == 2
    assert "stores no preprocessing" in cli_error(capsys)
    assert main([str(png), "--checkpoint", str(checkpoint), "--topk", "11"]) == 2
    assert "topk must lie in 1..10" in cli_error(capsys)


def test_cli_without_pillow_says_how_to_install_it(tmp_path, checkpoint, monkeypatch, capsys):
    png = save(numpy.zeros((32, 32, 3), numpy.uint8), tmp_path / "x.png")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    assert main([str(png), "--checkpoint", str(checkpoint)]) == 2
    assert 'needs Pillow: pip install "minires[image]"' in cli_error(capsys)


def test_python_m_minires_predict_runs_without_warnings(tmp_path, checkpoint):
    png = save(numpy.zeros((32, 32, 3), numpy.uint8), tmp_path / "x.png")
    done = subprocess.run([sys.executable, "-m", "minires.predict", str(png), "--checkpoint", str(checkpoint)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(f"{png}: ")
    assert callable(minires.predict)  # the function, not the command line's module


# --- export with preprocessing -------------------------------------------------------------

@pytest.mark.parametrize("entry", [CHANNEL, preprocessing_entry(
    numpy.random.default_rng(3).uniform(90, 160, (3, 32, 32)))], ids=["channel", "pixel_mean"])
def test_export_with_preprocessing_matches_minires_to_1e5(tmp_path, entry, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from minires import export as export_cli
    path = tmp_path / "ckpt.npz"
    model = trained_like()
    model.fc.weight.data *= 0.2  # logits of a trained model's size (|z| < 10), which 1e-5 is meant for
    minires.save({"model": model.state_dict(), "config": {"model": "resnet20"}, "preprocessing": entry,
                  "classes": CLASSES}, path)
    assert export_cli.main([str(path), str(tmp_path / "m.onnx"), "--with-preprocessing"]) == 0
    assert "RGB in [0, 1]" in capsys.readouterr().out
    rng = numpy.random.default_rng(4)
    x = image.load_images([rng.integers(0, 256, (40, 40, 3), dtype=numpy.uint8) for _ in range(8)])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": image.to_unit(x)})[0]
    model.eval()
    with minires.no_grad():
        ours = model(Tensor(normalize(x, entry["mean"], entry["std"]))).numpy()
    assert 1 < numpy.abs(ours).max() < 10
    assert numpy.abs(theirs - ours).max() <= 1e-5
    assert (theirs.argmax(1) == ours.argmax(1)).all()
    import onnx
    ops = [node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops[:3] == (["Sub", "Div", "Conv"] if entry["std"] is not None else ["Sub", "Conv", "BatchNormalization"])


def test_export_with_preprocessing_needs_a_checkpoint_that_stores_it(tmp_path, capsys):
    pytest.importorskip("onnx")
    from minires import export as export_cli
    path = tmp_path / "bare.npz"
    minires.save(trained_like().state_dict(), path)
    assert export_cli.main([str(path), str(tmp_path / "m.onnx"), "--model", "resnet20", "--with-preprocessing"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minires.export: error: ") and "stores no preprocessing" in err and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()
