"""Turn a finished training run into shipped weights: ``NAME.npz`` + ``NAME.json`` in minires/weights.

    python -m minires.weights.package runs/resnet20/last.npz --name resnet20 --commit SHA

The run's folder must hold its ``last.npz`` after the final epoch and its ``metrics.csv``. The
shipped file keeps the final weights only (no optimizer state, not the best of the test
evaluations); the manifest records the final epoch's test accuracy from metrics.csv, the
run's options and recipe, its preprocessing and class names, and the commit that trained it
(``--commit``, else the run's config). A checkpoint written before checkpoints stored their
preprocessing has it recomputed from the training data (``--data-dir``), as the run computed it.
"""
import argparse
import csv
import json
import os
import sys

from .. import models
from ..data import (DatasetNotFoundError, find_cifar10, load_cifar10, load_class_names, preprocessing_entry,
                    training_stats)
from ..serialization import save
from ..training import read_checkpoint
from ..utils.io import atomic_write
from . import WEIGHTS_DIR, file_sha256, preprocessing_to_json
from ..utils.cli import HelpFormatter

PROG = "python -m minires.weights.package"


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="last.npz of a finished python -m minires.train run (or its folder)")
    p.add_argument("--name", help="the model name the weights ship under (default: the run's model, e.g. resnet20)")
    p.add_argument("--commit", help="the git commit that trained the run (default: the run's config)")
    p.add_argument("--data-dir", help="CIFAR-10, to recompute the preprocessing of an old checkpoint that "
                                      "does not store it")
    p.add_argument("--dest", default=str(WEIGHTS_DIR), help="folder to write NAME.npz and NAME.json into")
    return p


def model_spec(config):
    """(registry name, keyword arguments) of the model a run trained, from its config."""
    if config.get("model"):
        return config["model"], {}
    if config.get("depth") is None:
        raise ValueError("the run's config names no model and no depth")
    depth, kwargs = int(config["depth"]), {"shortcut": config.get("shortcut", "A")}
    if models.info(f"resnet{depth}").family != "cifar_v1":  # resnet50, resnet152: torchvision's names
        return "cifar_resnet", {"depth": depth, **kwargs}
    return f"resnet{depth}", kwargs


def recipe_of(config):
    """(the --recipe the run used, {option: value} where its options differ from that recipe).
    For a run from before --recipe existed: the recipe that differs from its options least."""
    from ..train import RECIPES  # the command line's table; imported here, it pulls in the CLI

    def changes(name):
        return {k: config.get(k) for k, v in RECIPES[name].items() if config.get(k) != v}

    name = config.get("recipe")
    if name not in RECIPES:
        name = min(RECIPES, key=lambda n: len(changes(n)))
    return name, changes(name)


def final_test_accuracy(folder, epoch):
    """The test accuracy of ``epoch`` in ``folder/metrics.csv``."""
    path = os.path.join(folder, "metrics.csv")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ValueError(f"{path} not found: the run's metrics.csv gives the accuracy to record") from None
    for row in rows:
        if row.get("epoch") and int(row["epoch"]) == epoch:
            return float(row["test_acc"])
    raise ValueError(f"{path} has no row for epoch {epoch}, the checkpoint's")


def package(checkpoint_path, name=None, commit=None, data_dir=None, dest=WEIGHTS_DIR, log=print):
    """Write ``dest/NAME.npz`` (the weights) and ``dest/NAME.json`` (the manifest) from the
    finished run whose last checkpoint is ``checkpoint_path``; returns the manifest."""
    if os.path.isdir(checkpoint_path):
        checkpoint_path = os.path.join(checkpoint_path, "last.npz")
    checkpoint = read_checkpoint(checkpoint_path, training=False)
    config = checkpoint.get("config")
    if not config:
        raise ValueError(f"{checkpoint_path} has no run config: package the last.npz of a python -m minires.train run")
    epoch = int(checkpoint.get("epoch", -1))
    if epoch != config.get("epochs"):
        raise ValueError(f"{checkpoint_path} has finished {epoch} of the run's {config.get('epochs')} epochs: "
                         f"package the last.npz of a finished run")
    model_name, kwargs = model_spec(config)
    if name is not None and name != model_name:
        raise ValueError(f"--name {name}: the run trained {model_name}")
    state = checkpoint["model"]
    if "fc.weight" in state:
        kwargs["num_classes"] = int(state["fc.weight"].shape[0])
    try:
        models.create(model_name, **kwargs).load_state_dict(state)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{checkpoint_path} does not fit {model_name}: {e}") from None
    commit = commit or config.get("commit")
    if not commit:
        raise ValueError("the run's config records no commit: pass --commit SHA (the commit that trained it)")

    preprocessing, classes = checkpoint.get("preprocessing"), checkpoint.get("classes")
    if preprocessing is None or classes is None:
        folder = find_cifar10(data_dir)
        if preprocessing is None:
            log(f"note: {checkpoint_path} stores no preprocessing; recomputing its {config.get('normalization')} "
                f"statistics from the training images in {folder}")
            x_train = load_cifar10(folder)[0][:config.get("limit_train")]
            preprocessing = preprocessing_entry(*training_stats(x_train, config.get("normalization", "pixel_mean")))
        if classes is None:
            classes = list(load_class_names(folder))

    recipe, recipe_changes = recipe_of(config)
    os.makedirs(dest, exist_ok=True)
    weights_path = os.path.join(dest, f"{model_name}.npz")
    save(state, weights_path)
    manifest = {
        "model": model_name, "kwargs": kwargs, "file": os.path.basename(weights_path),
        "sha256": file_sha256(weights_path), "test_acc": final_test_accuracy(os.path.dirname(checkpoint_path), epoch),
        "test_images": config.get("limit_test") or 10000, "epochs": epoch, "recipe": recipe,
        "recipe_changes": recipe_changes,
        "commit": commit, "classes": list(classes), "preprocessing": preprocessing_to_json(preprocessing),
        "config": config,
    }
    with atomic_write(os.path.join(dest, f"{model_name}.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    log(f"wrote {weights_path} ({os.path.getsize(weights_path) / 1e6:.2f} MB) and {model_name}.json: "
        f"test accuracy {100 * manifest['test_acc']:.2f}% after {epoch} epochs, recipe {recipe}"
        f"{''.join(f', {k}={v}' for k, v in recipe_changes.items())}; "
        f"commit {commit}")
    return manifest


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        package(args.checkpoint, args.name, args.commit, args.data_dir, args.dest)
    except (ValueError, OSError, DatasetNotFoundError) as e:
        print(f"{PROG}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
