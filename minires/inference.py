"""Classify your own images: ``minires.predict(model, images)`` (this module's ``predict``), or
from the command line (``main``, run by ``minires/predict.py``)

    python -m minires.predict photo.jpg my_pictures/ --pretrained resnet20 --topk 3
    python -m minires.predict photo.jpg --checkpoint runs/resnet20/last.npz

The function and the command line live here, not in ``minires/predict.py``: importing a
submodule makes it an attribute of its package, which would replace the function
``minires.predict`` by the module. Images are read as ``minires.image`` defines (upright, RGB, centre square, 32x32 with
antialiasing), normalised as the model was trained (the preprocessing its checkpoint or shipped
weights store), and classified in eval mode; the softmax of the logits gives the probabilities.
"""
import argparse
import sys
from pathlib import Path

import numpy

from . import backend, image, models
from .autograd import Tensor, no_grad
from .data import CIFAR10_CLASSES, normalize
from .training import read_checkpoint
from .weights import attach
from .utils.cli import HelpFormatter

PROG = "python -m minires.predict"


def _softmax(z):
    """Row-wise softmax of logits z (N, K), float64: exp(z - max) / sum, so no exp overflows."""
    z = z - z.max(axis=1, keepdims=True)
    e = numpy.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_model(checkpoint_path):
    """The model of a training checkpoint (``last.npz``, ``best.npz``) with its weights, and its
    ``preprocessing`` and ``classes`` attached (``minires.weights.attach``) for ``predict``."""
    # Imported here: ``import minires`` imports this module, and a CLI module imported with the
    # package makes ``python -m minires.export`` warn that it was imported before it ran.
    from .export import model_from_checkpoint
    checkpoint = read_checkpoint(checkpoint_path, training=False)
    if "preprocessing" not in checkpoint:
        raise ValueError(f"checkpoint {checkpoint_path} stores no preprocessing (it was written before checkpoints "
                         f"did), so new images cannot be normalised as its training images were")
    model, state = model_from_checkpoint(checkpoint)
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as e:
        raise ValueError(f"checkpoint {checkpoint_path} does not fit {type(model).__name__}: {e}") from None
    return attach(model, checkpoint["preprocessing"], checkpoint.get("classes") or CIFAR10_CLASSES)


def predict(model, images, topk=5, preprocessing=None, classes=None, batch_size=256):
    """The ``topk`` most probable classes of each image.

    ``images``: a list of file paths, PIL images and uint8 (H, W, 3) RGB arrays (or one of
    them). ``preprocessing`` (a checkpoint's "preprocessing" entry) and ``classes`` default to
    ``model.preprocessing`` and ``model.classes``, which ``models.create(name, pretrained=True)``
    and ``load_model`` set. Returns one list per image of ``(class name, probability)`` pairs,
    most probable first.
    """
    preprocessing = preprocessing if preprocessing is not None else getattr(model, "preprocessing", None)
    classes = classes if classes is not None else getattr(model, "classes", None)
    if preprocessing is None:
        raise ValueError("predict needs the input normalisation the model was trained with: load it with "
                         "models.create(name, pretrained=True) or minires.predict.load_model(checkpoint), "
                         "or pass preprocessing=checkpoint['preprocessing']")
    if isinstance(images, (str, Path, numpy.ndarray)) or hasattr(images, "convert"):
        images = [images]  # one image
    x = image.load_images(list(images))
    params = list(model.parameters())
    xp = backend.get_array_module(params[0].data)
    was_training = model.training
    model.eval()
    logits = []
    try:
        with no_grad():
            for i in range(0, len(x), batch_size):
                xb = normalize(xp.asarray(x[i:i + batch_size]), preprocessing["mean"], preprocessing["std"],
                               dtype=params[0].dtype)
                logits.append(backend.to_numpy(model(Tensor(xb)).data).astype(numpy.float64))
    finally:
        model.train(was_training)
    if not logits:
        return []
    p = _softmax(numpy.concatenate(logits))
    k = p.shape[1]
    if not 1 <= topk <= k:
        raise ValueError(f"topk must lie in 1..{k} (the model has {k} classes), got {topk}")
    names = list(classes) if classes is not None else [str(j) for j in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a model of {k} outputs")
    best = numpy.argsort(-p, axis=1, kind="stable")[:, :topk]  # (N, topk), most probable first
    return [[(names[j], float(p[i, j])) for j in row] for i, row in enumerate(best)]


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, any size) or folders of them")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a last.npz or best.npz of python -m minires.train")
    which.add_argument("--pretrained", metavar="NAME", help="the weights that ship with minires for NAME (resnet20)")
    p.add_argument("--topk", type=int, default=3, help="how many classes to print per image")
    p.add_argument("--backend", choices=("numpy", "cupy"), help="array backend (default: $MINIRES_BACKEND or numpy)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.backend:
            backend.set_backend(args.backend)
        files = image.image_files(args.images)
        if args.pretrained:
            model = models.create(args.pretrained, pretrained=True)
        else:
            model = load_model(args.checkpoint)
        if args.backend:
            model.to(args.backend)
        results = predict(model, files, topk=args.topk)
    except (ValueError, OSError, ImportError, backend.BackendError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for path, top in zip(files, results):
        print(f"{path}: " + ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
