"""Test accuracy of a trained checkpoint in minires and of its ONNX export in onnxruntime.

    python -m minires.train --depth 20 --epochs 1 --limit-train 5000 --out /tmp/r20run
    python -m minires.export /tmp/r20run/last.npz /tmp/r20run/r20.onnx
    python -m benchmarks.onnx_accuracy /tmp/r20run/last.npz /tmp/r20run/r20.onnx --data-dir ../shared/data

Both see the same test batches, preprocessed as the training run did (the normalisation and
--limit-train of its config decide the mean image), and the script reports both accuracies, how
many predictions differ and the largest logit difference.
"""
import argparse
import time

import numpy as np

import minires
from minires.data import make_cifar10_loaders
from minires.export import model_from_checkpoint


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="last.npz or best.npz of a python -m minires.train run")
    p.add_argument("onnx", help="the same checkpoint exported by python -m minires.export")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    p.add_argument("--batch-size", type=int, default=500)
    args = p.parse_args(argv)

    import onnxruntime

    checkpoint = minires.load(args.checkpoint)
    model, state = model_from_checkpoint(checkpoint)
    model.load_state_dict(state)
    model.eval()
    config = checkpoint["config"]
    _, test_loader, info = make_cifar10_loaders(
        args.data_dir, args.batch_size, limit_train=config.get("limit_train"),
        normalization=config.get("normalization", "pixel_mean"), augment=False)
    session = onnxruntime.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])

    correct = {"minires": 0, "onnxruntime": 0}
    disagree, max_diff, seen, seconds = 0, 0.0, 0, {"minires": 0.0, "onnxruntime": 0.0}
    for xb, yb in test_loader:
        start = time.perf_counter()
        with minires.no_grad():
            ours = model(minires.Tensor(xb)).numpy()
        seconds["minires"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs = session.run(None, {"input": np.asarray(xb, np.float32)})[0]
        seconds["onnxruntime"] += time.perf_counter() - start
        correct["minires"] += int((ours.argmax(1) == yb).sum())
        correct["onnxruntime"] += int((theirs.argmax(1) == yb).sum())
        disagree += int((ours.argmax(1) != theirs.argmax(1)).sum())
        max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
        seen += len(yb)

    print(f"{type(model).__name__} from {args.checkpoint}: {seen} test images from {info['data_dir']}")
    for name in correct:
        print(f"  {name:12s} accuracy {100 * correct[name] / seen:.2f}%  ({correct[name]}/{seen}, "
              f"{seen / seconds[name]:.0f} img/s)")
    print(f"  predictions that differ: {disagree}; largest logit difference {max_diff:.2e}")


if __name__ == "__main__":
    main()
