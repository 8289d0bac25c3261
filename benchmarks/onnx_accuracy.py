"""Test accuracy of a trained checkpoint in minires and of its ONNX export in onnxruntime.

    python -m minires.train --depth 20 --epochs 1 --limit-train 5000 --out /tmp/r20run
    python -m minires.export /tmp/r20run/last.npz /tmp/r20run/r20.onnx
    python -m benchmarks.onnx_accuracy /tmp/r20run/last.npz /tmp/r20run/r20.onnx --data-dir ../shared/data

Both see the same test images, normalised as the training run did: with the statistics the
checkpoint stores (a checkpoint from before they were stored: recomputed from its run's
--normalization and --limit-train). With --with-preprocessing the ONNX file is one exported with
``python -m minires.export --with-preprocessing`` and gets the raw images in [0, 1]
(``minires.image.to_unit``), normalising them itself. The script reports both accuracies, how
many predictions differ and the largest logit difference. The weights that ship with minires
are checked the same way:

    python -m minires.export --pretrained resnet20 --with-preprocessing /tmp/r20p.onnx
    python -m benchmarks.onnx_accuracy --pretrained resnet20 /tmp/r20p.onnx --with-preprocessing --data-dir ../shared/data
"""
import argparse
import time

import numpy as np

import minires
from minires.data import find_cifar10, load_batch, load_cifar10, normalize, training_stats
from minires.export import model_from_checkpoint
from minires.image import to_unit
from minires.weights import pretrained_checkpoint


def statistics(checkpoint, data_dir):
    """(mean, std) of the checkpoint's input normalisation."""
    if "preprocessing" in checkpoint:
        return checkpoint["preprocessing"]["mean"], checkpoint["preprocessing"]["std"]
    config = checkpoint["config"]
    x_train = load_cifar10(data_dir)[0][:config.get("limit_train")]
    return training_stats(x_train, config.get("normalization", "pixel_mean"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", help="last.npz or best.npz of a python -m minires.train run")
    p.add_argument("onnx", help="the same checkpoint exported by python -m minires.export")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    p.add_argument("--pretrained", metavar="NAME", help="instead of a checkpoint: the weights that ship with "
                                                        "minires for NAME (e.g. resnet20)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--with-preprocessing", action="store_true",
                   help="the ONNX file normalises its input itself (export --with-preprocessing)")
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.pretrained is None):
        p.error("give a checkpoint or --pretrained NAME (one of them)")

    import onnxruntime

    try:
        if args.pretrained:
            minires.models.info(args.pretrained)  # a name that is no model at all: the registry's one line
            checkpoint, args.checkpoint = pretrained_checkpoint(args.pretrained)
        else:
            checkpoint = minires.load(args.checkpoint)
    except (OSError, ValueError) as e:
        p.error(str(e))
    model, state = model_from_checkpoint(checkpoint)
    model.load_state_dict(state)
    model.eval()
    if args.with_preprocessing and "preprocessing" not in checkpoint:
        p.error(f"{args.checkpoint} stores no preprocessing, so it cannot have been exported --with-preprocessing")
    mean, std = statistics(checkpoint, args.data_dir)
    folder = find_cifar10(args.data_dir)
    x_test, y_test = load_batch(folder / "test_batch")
    session = onnxruntime.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])

    correct = {"minires": 0, "onnxruntime": 0}
    disagree, max_diff, seen, seconds = 0, 0.0, 0, {"minires": 0.0, "onnxruntime": 0.0}
    for i in range(0, len(y_test), args.batch_size):
        raw, yb = x_test[i:i + args.batch_size], y_test[i:i + args.batch_size]
        xb = normalize(raw, mean, std)
        start = time.perf_counter()
        with minires.no_grad():
            ours = model(minires.Tensor(xb)).numpy()
        seconds["minires"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs = session.run(None, {"input": to_unit(raw) if args.with_preprocessing else xb})[0]
        seconds["onnxruntime"] += time.perf_counter() - start
        correct["minires"] += int((ours.argmax(1) == yb).sum())
        correct["onnxruntime"] += int((theirs.argmax(1) == yb).sum())
        disagree += int((ours.argmax(1) != theirs.argmax(1)).sum())
        max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
        seen += len(yb)

    inside = ", normalised inside the ONNX graph" if args.with_preprocessing else ""
    print(f"{type(model).__name__} from {args.checkpoint}: {seen} test images from {folder}{inside}")
    for name in correct:
        print(f"  {name:12s} accuracy {100 * correct[name] / seen:.2f}%  ({correct[name]}/{seen}, "
              f"{seen / seconds[name]:.0f} img/s)")
    print(f"  predictions that differ: {disagree}; largest logit difference {max_diff:.2e}")


if __name__ == "__main__":
    main()
