"""Trained weights that ship inside the package: ``models.create("resnet20", pretrained=True)``.

A model NAME with weights has two files in this folder (both go into the wheel):

- ``NAME.npz``: its state dict (``minires.save``): the final weights and BatchNorm statistics
  of a finished training run, no optimizer state;
- ``NAME.json``: its manifest: ``file`` (NAME.npz) and its ``sha256``, ``model`` and ``kwargs``
  (what ``models.create`` builds), ``preprocessing`` (the input normalisation it was trained with:
  ``normalization`` and ``mean`` / ``std`` on the 0..255 scale as nested lists, or null),
  ``classes``, ``test_acc`` on ``test_images`` CIFAR-10 test images with those final weights,
  ``recipe``, ``config`` (every option of the run) and ``commit`` (the git commit that trained it).

The weights file is checked against its sha256 before it is read. ``python -m
minires.weights.package RUN/last.npz --name resnet20`` writes both files from a finished run.
"""
import hashlib
import json
from pathlib import Path

import numpy

from ..data.transforms import check_preprocessing
from ..serialization import load

WEIGHTS_DIR = Path(__file__).resolve().parent


class NoWeightsError(ValueError):
    """No weights ship for the model asked for."""


def names():
    """The models whose weights ship, sorted."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json"))


def manifest_path(name):
    return WEIGHTS_DIR / f"{name}.json"


def read_manifest(name):
    """The manifest of ``name``'s shipped weights, as a dict; NoWeightsError when none ship."""
    path = manifest_path(name)
    if not path.is_file():
        shipped = f" (weights ship for: {', '.join(names())})" if names() else ""
        raise NoWeightsError(f"no weights ship for {name}{shipped}; train them with "
                             f"python -m minires.train --model {name} --recipe fast")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable manifest: {e}") from None
    missing = [k for k in ("file", "sha256", "model", "preprocessing", "classes", "test_acc") if k not in manifest]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return manifest


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preprocessing_from_json(entry, where):
    """A manifest's "preprocessing" with its lists as float64 arrays (``preprocessing_entry``)."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a dict")
    arrays = {k: None if entry.get(k) is None else numpy.asarray(entry[k], dtype=numpy.float64)
              for k in ("mean", "std")}
    return check_preprocessing({"normalization": entry.get("normalization"), **arrays}, where)


def preprocessing_to_json(entry):
    """The inverse of ``preprocessing_from_json``: arrays as nested lists (floats round-trip exactly)."""
    return {"normalization": entry["normalization"],
            **{k: None if entry[k] is None else numpy.asarray(entry[k], dtype=numpy.float64).tolist()
               for k in ("mean", "std")}}


def pretrained_checkpoint(name):
    """``name``'s shipped weights as a weights-only checkpoint, and the path of its file:
    ``({"model": state dict, "preprocessing", "classes", "config", "test_acc", "manifest"}, path)``.

    NoWeightsError when none ship; ValueError (one line, naming the file) when the file is
    missing or its sha256 differs from the manifest's.
    """
    manifest = read_manifest(name)
    path = WEIGHTS_DIR / manifest["file"]
    if not path.is_file():
        raise ValueError(f"{path}: the weights file of {manifest_path(name).name} is missing")
    digest = file_sha256(path)
    if digest != manifest["sha256"]:
        raise ValueError(f"{path}: sha256 {digest} differs from {manifest['sha256']} in "
                         f"{manifest_path(name).name}; the file is damaged or was replaced")
    state = load(path)
    preprocessing = preprocessing_from_json(manifest["preprocessing"], f"{manifest_path(name)}: preprocessing")
    checkpoint = {"model": state, "preprocessing": preprocessing, "classes": list(manifest["classes"]),
                  "config": dict(manifest.get("config") or {}), "test_acc": manifest["test_acc"],
                  "manifest": manifest}
    return checkpoint, path


def attach(model, preprocessing, classes):
    """Give ``model`` what ``minires.predict`` needs to read images for it: ``model.preprocessing``
    (its input normalisation) and ``model.classes`` (the names of its outputs). Returns it."""
    model.preprocessing = preprocessing
    model.classes = tuple(classes)
    return model


def load_pretrained(model, name):
    """Load ``name``'s shipped weights into ``model`` and ``attach`` their preprocessing and
    class names; returns the model. ValueError (one line) when they do not fit it."""
    checkpoint, path = pretrained_checkpoint(name)
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"the shipped weights {path} do not fit this {type(model).__name__}: {e}") from None
    return attach(model, checkpoint["preprocessing"], checkpoint["classes"])
