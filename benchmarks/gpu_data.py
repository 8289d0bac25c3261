"""The CIFAR-10 subset that travels with ``benchmarks.gpu_check`` to a GPU machine (one 64 MiB transfer).

    python -m benchmarks.gpu_data --data-dir ../shared/data --out .gpudata

writes into OUT four uint8 .npy files and a description:
``train_x.npy`` (15000, 3, 32, 32): 1,500 training images of each class, the first of that class
in the official order; ``train_y.npy`` (15000,); ``test_x.npy`` (5000, 3, 32, 32) and
``test_y.npy`` (5000,): the first 5,000 test images; ``subset.json``: counts, bytes and where the
images came from. About 61.5 MB in all, so that with the working tree (a few MB) it fits the
device machine's 64 MiB carry limit; the command says the total and refuses more than 64 MiB.
``gpu_check`` turns the folder back into the official pickle layout (``write_cifar_folder``), so
the training CLI reads it as it reads CIFAR-10.
"""
import argparse
import json
import os
import pickle
import sys
from pathlib import Path

import numpy

from minires.data import CIFAR10_CLASSES, load_cifar10
from minires.utils.io import atomic_write

CARRY_LIMIT = 64 * 2 ** 20  # bytes one device call may carry, working tree included
FILES = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")


def balanced_subset(y, per_class):
    """Indices of the first ``per_class`` images of every class, in their original order."""
    keep = numpy.concatenate([numpy.flatnonzero(y == c)[:per_class] for c in range(10)])
    if len(keep) != 10 * per_class:
        raise ValueError(f"the training set has fewer than {per_class} images of some class")
    return numpy.sort(keep)


def _save(path, array):
    with atomic_write(path) as f:
        numpy.save(f, array)


def write_subset(data_dir, out, n_train=15000, n_test=5000):
    """Write the subset into ``out`` and return its description (also written as subset.json)."""
    if n_train % 10:
        raise ValueError(f"--train must be a multiple of 10 (the subset is balanced), not {n_train}")
    x_train, y_train, x_test, y_test = load_cifar10(data_dir)
    if n_test > len(y_test):
        raise ValueError(f"--test {n_test} is more than the {len(y_test)} test images there are")
    keep = balanced_subset(y_train, n_train // 10)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"train_x.npy": x_train[keep], "train_y.npy": y_train[keep].astype(numpy.uint8),
              "test_x.npy": x_test[:n_test], "test_y.npy": y_test[:n_test].astype(numpy.uint8)}
    for name, a in arrays.items():
        _save(out / name, numpy.ascontiguousarray(a))
    info = {"train": int(len(keep)), "test": int(n_test), "per_class_train": n_train // 10,
            "train_indices": "the first per_class_train images of each class in data_batch_1..5, in order",
            "test_indices": f"test_batch[:{n_test}]",
            "bytes": {name: os.path.getsize(out / name) for name in FILES}}
    info["total_bytes"] = sum(info["bytes"].values())
    with atomic_write(out / "subset.json", "w") as f:
        json.dump(info, f, indent=2)
    return info


def load_subset(folder):
    """(x_train, y_train, x_test, y_test) from a folder ``write_subset`` wrote: uint8 NCHW images
    and int64 labels. Raises ValueError naming the file when one is missing or malformed."""
    folder = Path(folder)
    arrays = []
    for name in FILES:
        try:
            a = numpy.load(folder / name, allow_pickle=False)
        except FileNotFoundError:
            raise ValueError(f"{folder / name} not found: make the folder with python -m benchmarks.gpu_data") from None
        images = name.endswith("_x.npy")
        if a.dtype != numpy.uint8 or (images and a.shape[1:] != (3, 32, 32)) or (not images and a.ndim != 1):
            raise ValueError(f"{folder / name}: expected uint8 {'(N, 3, 32, 32)' if images else '(N,)'}, "
                             f"found {a.dtype} {a.shape}")
        arrays.append(a if images else a.astype(numpy.int64))
    for x, y, which in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "test")):
        if len(x) != len(y):
            raise ValueError(f"{folder}: {len(x)} {which} images but {len(y)} labels")
    return tuple(arrays)


def write_cifar_folder(subset_dir, dest):
    """The subset as an official ``cifar-10-batches-py`` folder in ``dest`` (which is returned):
    the training images split over data_batch_1..5, the test images in test_batch, so that
    ``minires.train --data-dir dest`` reads them as it reads CIFAR-10."""
    x_train, y_train, x_test, y_test = load_subset(subset_dir)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    parts = numpy.array_split(numpy.arange(len(y_train)), 5)
    batches = [(f"data_batch_{i + 1}", x_train[p], y_train[p]) for i, p in enumerate(parts)]
    for name, x, y in batches + [("test_batch", x_test, y_test)]:
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in y],
             b"data": x.reshape(len(x), 3 * 32 * 32),  # (N, 3, 32, 32) -> (N, 3072), channel-planar rows
             b"filenames": [b"%s_%05d.png" % (name.encode(), i) for i in range(len(y))]}
        with atomic_write(dest / name) as f:
            pickle.dump(d, f, protocol=2)
    with atomic_write(dest / "batches.meta") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f, protocol=2)
    return dest


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (as for minires.train)")
    p.add_argument("--out", required=True, help="folder to write the subset into")
    p.add_argument("--train", type=int, default=15000, help="training images (a multiple of 10, balanced)")
    p.add_argument("--test", type=int, default=5000, help="test images (the first ones)")
    args = p.parse_args(argv)
    try:
        info = write_subset(args.data_dir, args.out, args.train, args.test)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"gpu_data: {e}", file=sys.stderr)
        return 2
    mib = info["total_bytes"] / 2 ** 20
    print(f"wrote {info['train']} training and {info['test']} test images to {args.out}: "
          f"{info['total_bytes']:,} bytes ({mib:.1f} MiB; the working tree travels with it, 64 MiB in all)")
    if info["total_bytes"] > CARRY_LIMIT:
        print(f"gpu_data: {mib:.1f} MiB is more than one device transfer carries (64 MiB); "
              f"use fewer images (--train, --test)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
