"""Train a ResNet on CIFAR-10: ``python -m minires.train --depth 20 --backend cupy``.

The defaults are the recipe of He et al. 2015 for CIFAR ResNets: SGD with momentum 0.9, batch
128, lr 0.1 divided by 10 at 50% and 75% of training (the paper's 32k and 48k of 64k
iterations), weight decay 1e-4, per-pixel mean subtraction, 4-pixel pad + random crop + flip,
164 epochs (64k iterations); ResNet-110 warms up at lr 0.01 for its first 400 iterations.

Everything a run produces goes to ``--out``: metrics.csv (one row per epoch), config.json,
last.npz (model, optimizer, schedule, data position; written atomically at every epoch end and
on Ctrl-C), best.npz (the weights with the best test accuracy) and curves.png when matplotlib
is installed. ``--resume OUT/last.npz`` continues a run exactly where it stopped.
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import numpy

from . import backend, models
from . import functional as F
from .autograd import Tensor, no_grad
from .data import DatasetNotFoundError, make_cifar10_loaders
from .nn.init import manual_seed
from .optim import SGD, ConstantLR, CosineLR, MultiStepLR
from .profiler import section
from .serialization import load, save


class TrainingError(RuntimeError):
    """A run that cannot go on (a loss that is no longer finite, a checkpoint that does not fit)."""


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minires.train",
        description="Train a ResNet on CIFAR-10 with minires. Defaults reproduce He et al. 2015 (ResNet-20).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", help="any name from minires.models.names() (e.g. resnet56, resnet110v2, resnet18); "
                                   "overrides --depth")
    m.add_argument("--depth", type=int, default=20, help="depth of a CIFAR ResNet v1 (6n+2: 20, 32, 44, 56, 110, ...)")
    m.add_argument("--shortcut", choices=("A", "B"), default="A",
                   help="CIFAR v1 shortcut: A = zero-padding identity (the paper), B = 1x1 conv projection")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=164, help="epochs (164 x 391 iterations = the paper's 64k)")
    o.add_argument("--batch-size", type=int, default=128, help="mini-batch size")
    o.add_argument("--lr", type=float, default=0.1, help="base learning rate")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    o.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    o.add_argument("--weight-decay", type=float, default=1e-4, help="L2 weight decay")
    o.add_argument("--no-bn-decay", action="store_true",
                   help="exclude BatchNorm parameters and biases from weight decay (the paper decays all weights)")
    o.add_argument("--schedule", choices=("multistep", "cosine", "constant"), default="multistep",
                   help="multistep: lr/10 at 50%% and 75%% of the iterations; cosine: to 0 at the end")
    o.add_argument("--warmup", type=int, default=None,
                   help="iterations at --warmup-lr before the schedule starts "
                        "(default: 400 for depth >= 110 as in the paper, else 0)")
    o.add_argument("--warmup-lr", type=float, default=0.01, help="learning rate during the warm-up")
    o.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy")
    d = p.add_argument_group("data")
    d.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                                      "(default: $MINIRES_DATA, then ~/.cache/minires)")
    d.add_argument("--download", action="store_true", help="download CIFAR-10 (170 MB) if it is not found")
    d.add_argument("--normalization", choices=("pixel_mean", "channel", "none"), default="pixel_mean",
                   help="pixel_mean: subtract the mean image (the paper); channel: per-channel standardisation")
    d.add_argument("--no-augment", action="store_true", help="train without crop and flip")
    d.add_argument("--limit-train", type=int, help="train on the first N images only (smoke runs)")
    d.add_argument("--limit-test", type=int, help="evaluate on the first N test images only")
    r = p.add_argument_group("run")
    r.add_argument("--backend", choices=("numpy", "cupy"), default=None,
                   help="array backend (default: $MINIRES_BACKEND or numpy)")
    r.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="floating-point type")
    r.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and augmentation")
    r.add_argument("--out", default=None, help="output folder (default: runs/<model>)")
    r.add_argument("--resume", help="checkpoint to continue from (an OUT/last.npz, or the OUT folder)")
    r.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint on the test set and exit")
    r.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    return p


def check_args(args):
    """Reject values that would fail later, with a one-line reason."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("limit_train", "limit_test"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if args.momentum < 0 or args.weight_decay < 0 or (args.warmup or 0) < 0:
        raise ValueError("--momentum, --weight-decay and --warmup must not be negative")
    if not 0 <= args.label_smoothing < 1:
        raise ValueError(f"--label-smoothing must lie in [0, 1), got {args.label_smoothing}")
    if args.eval_only and not args.resume:
        raise ValueError("--eval-only needs --resume CHECKPOINT")


def model_name(args):
    return args.model or f"resnet{args.depth}"


def build_model(args):
    if args.model is not None:
        return models.create(args.model, num_classes=10)
    return models.cifar_resnet(args.depth, shortcut=args.shortcut, num_classes=10)


def param_groups(model, weight_decay, no_bn_decay):
    """All parameters decayed (the paper), or BN parameters and biases (1-D arrays) exempt."""
    params = list(model.parameters())
    if not no_bn_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_schedule(args, optimizer, total_steps):
    warmup = args.warmup
    if warmup is None:
        warmup = 400 if ("110" in model_name(args) or "1202" in model_name(args)) else 0
    common = dict(warmup_steps=warmup, warmup_lr=args.warmup_lr)
    if args.schedule == "multistep":
        return MultiStepLR(optimizer, [total_steps // 2, (3 * total_steps) // 4], gamma=0.1, **common)
    if args.schedule == "cosine":
        return CosineLR(optimizer, total_steps, **common)
    return ConstantLR(optimizer, **common)


class Progress:
    """A one-line progress bar: tqdm when installed, else a carriage-return line on stderr."""

    def __init__(self, total, desc, enabled=True):
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, **metrics):
        self.n += 1
        if not self.enabled:
            return
        text = " ".join(f"{k}={v}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.n == self.total or self.n % 5 == 0:
            print(f"\r{self.desc} {self.n}/{self.total} {text}   ", end="", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print("\r" + " " * 100 + "\r", end="", file=sys.stderr, flush=True)


def evaluate(model, loader, label_smoothing=0.0):
    """Mean loss and accuracy over a loader, in eval mode and without a graph."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with no_grad():
        for xb, yb in loader:
            logits = model(Tensor(xb))
            n = len(yb)
            total_loss += F.cross_entropy(logits, yb, label_smoothing).item() * n
            correct += int((logits.data.argmax(axis=1) == yb).sum())
            seen += n
    return total_loss / seen, correct / seen


def train_epoch(model, loader, optimizer, schedule, args, epoch, partial):
    """One pass over the training loader. ``partial`` holds the epoch's running sums, so that a
    run stopped in the middle of an epoch resumes with them."""
    model.train()
    bar = Progress(len(loader) - loader.batch, f"epoch {epoch + 1}/{args.epochs}", enabled=not args.no_progress)
    start = time.perf_counter()
    try:
        for xb, yb in loader:
            logits = model(Tensor(xb))
            loss = F.cross_entropy(logits, yb, args.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            with section("optimizer"):
                optimizer.step()
            schedule.step()
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingError(f"the loss became {value} at epoch {epoch + 1}, iteration {schedule.step_count}; "
                                    f"try a lower --lr (now {args.lr}) or --warmup; the last good checkpoint is kept")
            n = len(yb)
            partial["loss_sum"] += value * n
            partial["correct"] += int((logits.data.argmax(axis=1) == yb).sum())
            partial["seen"] += n
            elapsed = partial["seconds"] + time.perf_counter() - start
            bar.update(loss=f"{partial['loss_sum'] / partial['seen']:.3f}",
                       acc=f"{partial['correct'] / partial['seen']:.3f}",
                       img_s=f"{partial['seen'] / elapsed:.0f}")
    finally:
        partial["seconds"] += time.perf_counter() - start
        bar.close()


def fresh_partial():
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


def save_checkpoint(path, model, optimizer, schedule, loader, epoch, partial, best_acc, history, config):
    save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
          "loader": loader.state_dict(), "epoch": epoch, "partial": partial, "best_acc": best_acc,
          "history": history, "config": config}, path)


def write_metrics(out, history):
    """metrics.csv (rewritten whole, atomically) and, with matplotlib, curves.png."""
    path = os.path.join(out, "metrics.csv")
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [100 * (1 - h["train_acc"]) for h in history], label="train")
    ax2.plot(epochs, [100 * (1 - h["test_acc"]) for h in history], label="test")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("error (%)"), ax2.legend()
    fig.tight_layout()
    tmp = os.path.join(out, "curves.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, os.path.join(out, "curves.png"))


def run(args):
    check_args(args)
    if args.backend:
        backend.set_backend(args.backend)
    dtype = numpy.dtype(args.dtype)
    resume = None
    if args.resume:
        path = os.path.join(args.resume, "last.npz") if os.path.isdir(args.resume) else args.resume
        resume = load(path)
    manual_seed(args.seed)
    model = build_model(args)
    if dtype != numpy.float32:
        model.astype(dtype)
    train_loader, test_loader, info = make_cifar10_loaders(
        args.data_dir, args.batch_size, args.seed, limit_train=args.limit_train, limit_test=args.limit_test,
        normalization=args.normalization, dtype=args.dtype, download=args.download, augment=not args.no_augment)
    optimizer = SGD(param_groups(model, args.weight_decay, args.no_bn_decay), lr=args.lr,
                    momentum=args.momentum, nesterov=args.nesterov)
    schedule = build_schedule(args, optimizer, args.epochs * len(train_loader))
    name = model_name(args)
    n_params = sum(p.size for p in model.parameters())
    print(f"{name}: {n_params:,} parameters on {backend.get_backend()} ({args.dtype}); "
          f"{info['n_train']:,} training / {info['n_test']:,} test images from {info['data_dir']}", flush=True)

    epoch, partial, best_acc, history = 0, fresh_partial(), -1.0, []
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
        except (KeyError, ValueError) as e:
            raise TrainingError(f"checkpoint {args.resume} does not fit {name}: {e}") from None
        if args.eval_only:
            loss, acc = evaluate(model, test_loader, args.label_smoothing)
            print(f"test loss {loss:.4f}  test accuracy {100 * acc:.2f}%  ({info['n_test']} images)")
            return {"test_loss": loss, "test_acc": acc}
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        train_loader.load_state_dict(resume["loader"])
        epoch, partial, best_acc = int(resume["epoch"]), dict(resume["partial"]), float(resume["best_acc"])
        history = list(resume.get("history", []))
        print(f"resumed from {args.resume} at epoch {epoch + 1}, iteration {schedule.step_count}", flush=True)

    out = args.out or os.path.join("runs", name)
    os.makedirs(out, exist_ok=True)
    config = {k: v for k, v in vars(args).items()}
    config.update(model_name=name, parameters=int(n_params), backend_used=backend.get_backend())
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    last = os.path.join(out, "last.npz")

    def checkpoint():
        save_checkpoint(last, model, optimizer, schedule, train_loader, epoch, partial, best_acc, history, config)

    while epoch < args.epochs:
        try:
            train_epoch(model, train_loader, optimizer, schedule, args, epoch, partial)
        except KeyboardInterrupt:
            checkpoint()
            print(f"\ninterrupted: saved {last}; continue with --resume {last}", file=sys.stderr)
            raise SystemExit(130)
        test_loss, test_acc = evaluate(model, test_loader, args.label_smoothing)
        row = {"epoch": epoch + 1,
               "train_loss": partial["loss_sum"] / partial["seen"], "train_acc": partial["correct"] / partial["seen"],
               "test_loss": test_loss, "test_acc": test_acc,
               "lr": optimizer.param_groups[0]["lr"], "seconds": partial["seconds"],
               "images_per_s": partial["seen"] / partial["seconds"]}
        history.append(row)
        print(f"epoch {row['epoch']:3d}/{args.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
              f"test loss {test_loss:.4f} acc {100 * test_acc:.2f}%  lr {row['lr']:.4g}  "
              f"{row['seconds']:.1f}s ({row['images_per_s']:.0f} img/s)", flush=True)
        epoch, partial = epoch + 1, fresh_partial()
        if test_acc > best_acc:
            best_acc = test_acc
            save({"model": model.state_dict(), "epoch": epoch, "test_acc": test_acc, "config": config},
                 os.path.join(out, "best.npz"))
        checkpoint()
        write_metrics(out, history)
    if history:
        print(f"done: final test accuracy {100 * history[-1]['test_acc']:.2f}% "
              f"(best {100 * best_acc:.2f}%); metrics and checkpoints in {out}")
    return history[-1] if history else None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, TrainingError, OSError, DatasetNotFoundError, backend.BackendError) as e:
        # DatasetNotFoundError and checkpoint problems land here too: one line, no traceback.
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TrainingError) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
