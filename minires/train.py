"""Train a ResNet on CIFAR-10: ``python -m minires.train --depth 20 --backend cupy``.

The defaults are the recipe of He et al. 2015 for CIFAR ResNets: SGD with momentum 0.9, batch
128, lr 0.1 divided by 10 at 50% and 75% of training (the paper's 32k and 48k of 64k
iterations), weight decay 1e-4, per-pixel mean subtraction, 4-pixel pad + random crop + flip,
164 epochs (64k iterations); ResNet-110 warms up at lr 0.01 for its first 400 iterations.

Everything a run produces goes to ``--out``: metrics.csv (one row per epoch), config.json,
last.npz (model, optimizer, schedule, data position; written atomically at every epoch end and
on Ctrl-C), best.npz (the weights with the best test accuracy) and curves.png when matplotlib
is installed. ``--resume OUT/last.npz`` continues a run exactly where it stopped (and writes
to OUT unless --out says otherwise). The checkpoint supplies the state (weights, momentum,
iteration, data position, history) and, for every option not written on the command line, the
value its run used; an option that is written, such as a lower --lr after a loss that blew up,
applies from the next iteration on. A larger --epochs extends a finished run.
"""
import argparse
import csv
import json
import math
import os
import re
import signal
import sys
import threading
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


class Interrupted(Exception):
    """Ctrl-C stopped a training epoch. ``resumable``: the model, optimizer, schedule and loader
    in memory agree, so a checkpoint of them continues the run as if it had not stopped."""

    def __init__(self, resumable):
        super().__init__("interrupted")
        self.resumable = resumable


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


# Settings a checkpoint is tied to. The weights were trained on inputs normalised with the
# statistics of the first --limit-train images; and the saved data position counts batches of
# one --batch-size in an order drawn from --seed (with or without augmentation), so continuing
# it with other values would silently train on other images than the stopped run would have.
SAME_INPUTS = ("limit_train", "normalization")
SAME_BATCHES = ("batch_size", "seed", "no_augment")


def check_resume(args, checkpoint, path):
    """Reject a --resume checkpoint that cannot continue this run: one without the training state
    (best.npz holds the weights only), or one made with other values of the settings above."""
    if not args.eval_only:
        missing = [k for k in ("optimizer", "schedule", "loader", "epoch", "partial", "best_acc")
                   if k not in checkpoint]
        if missing:
            raise TrainingError(f"{path} has no training state ({', '.join(missing)}) to resume from; "
                                f"resume from a last.npz, or evaluate it with --eval-only")
    config = checkpoint.get("config") or {}
    names = SAME_INPUTS if args.eval_only else SAME_INPUTS + SAME_BATCHES
    for name in names:
        if name in config and config[name] != getattr(args, name):
            flag = "--" + name.replace("_", "-")
            raise TrainingError(f"checkpoint {path} was made with {flag}={config[name]}, this run has "
                                f"{flag}={getattr(args, name)}; pass the same {flag}")


def model_name(args):
    return args.model or f"resnet{args.depth}"


def model_depth(args):
    """The depth of the model: --depth, or the number in the --model name (resnet110v2: 110)."""
    if args.model is None:
        return args.depth
    number = re.search(r"\d+", args.model)
    return int(number.group()) if number else None


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
        # The paper finds lr 0.1 "slightly too large to start converging" for ResNet-110 and
        # warms it (and ResNet-1202) up at 0.01; --help promises this for every depth >= 110.
        depth = model_depth(args)
        warmup = 400 if depth is not None and depth >= 110 else 0
    common = dict(warmup_steps=warmup, warmup_lr=args.warmup_lr)
    if args.schedule == "multistep":
        return MultiStepLR(optimizer, [total_steps // 2, (3 * total_steps) // 4], gamma=0.1, **common)
    if args.schedule == "cosine":
        return CosineLR(optimizer, total_steps, **common)
    return ConstantLR(optimizer, **common)


class StopRequest:
    """Ctrl-C while training, turned into a request to stop where a checkpoint can be written.

    A KeyboardInterrupt can strike between any two bytecodes, e.g. when the optimizer has
    updated half of the weights, and a checkpoint of that state would not continue the run it
    came from. So inside ``with StopRequest() as stop:`` the first Ctrl-C only sets
    ``stop.requested``; the training loop looks at it after every batch and after every epoch.
    A second Ctrl-C raises KeyboardInterrupt at once, for when that wait is too long.
    """

    def __init__(self):
        self.requested = False
        self.installed = False

    def __enter__(self):
        # Only where Ctrl-C would raise KeyboardInterrupt: in the main thread (the only one that
        # may set signal handlers), and not where SIGINT is ignored (a job started in the
        # background by a script) or handled by someone else.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._on_ctrl_c)
            self.installed = True
        return self

    def __exit__(self, *exc_info):
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.installed = False

    def _on_ctrl_c(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this batch (or this evaluation) to save a checkpoint; "
              "Ctrl-C again stops at once, without saving", file=sys.stderr, flush=True)


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


def train_epoch(model, loader, optimizer, schedule, args, epoch, partial, stop):
    """One pass over the training loader. ``partial`` holds the epoch's running sums, so that a
    run stopped in the middle of an epoch resumes with them.

    Raises TrainingError when the loss is not finite (before it changes the weights), and
    Interrupted when ``stop.requested`` (a Ctrl-C, see StopRequest) or a KeyboardInterrupt ends
    the epoch early.
    """
    model.train()
    bar = Progress(len(loader) - loader.batch, f"epoch {epoch + 1}/{args.epochs}", enabled=not args.no_progress)
    start = time.perf_counter()
    # The loader moves on to the next batch before it hands one out, so its state_dict says
    # "after this batch" while the batch is still being worked on. ``position`` is the state
    # of what has really been learnt; an interruption rewinds the loader to it, and the
    # resumed run does the unfinished batch again.
    position = loader.state_dict()
    in_batch = False
    try:
        for xb, yb in loader:
            if stop.requested:
                loader.load_state_dict(position)
                raise Interrupted(resumable=True)
            # From here to the end of the bookkeeping the batch changes the state one piece at a
            # time: BatchNorm's running statistics in the forward pass, then the weights, the
            # momentum, the iteration count and the sums. An exception in between leaves a mix of
            # before and after that no checkpoint can hold.
            in_batch = True
            logits = model(Tensor(xb))
            loss = F.cross_entropy(logits, yb, args.label_smoothing)
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingError(f"the loss became {value} at epoch {epoch + 1}, iteration "
                                    f"{schedule.step_count + 1}; try a lower --lr (now {args.lr:g}) or --warmup")
            optimizer.zero_grad()
            loss.backward()
            with section("optimizer"):
                optimizer.step()
            schedule.step()
            n = len(yb)
            partial["loss_sum"] += value * n
            partial["correct"] += int((logits.data.argmax(axis=1) == yb).sum())
            partial["seen"] += n
            in_batch = False
            position = loader.state_dict()
            elapsed = partial["seconds"] + time.perf_counter() - start
            bar.update(loss=f"{partial['loss_sum'] / partial['seen']:.3f}",
                       acc=f"{partial['correct'] / partial['seen']:.3f}",
                       img_s=f"{partial['seen'] / elapsed:.0f}")
    except KeyboardInterrupt:
        # Not a first Ctrl-C under StopRequest (that only sets stop.requested), but a second
        # one, or one raised by other code. Outside a batch's work (in the loader, in the
        # progress bar) the state is whole, but the loader may have moved on already.
        if in_batch:
            raise Interrupted(resumable=False) from None
        loader.load_state_dict(position)
        raise Interrupted(resumable=True) from None
    finally:
        partial["seconds"] += time.perf_counter() - start
        bar.close()


def fresh_partial():
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


def save_checkpoint(path, model, optimizer, schedule, loader, epoch, partial, best_acc, history, config):
    save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
          "loader": loader.state_dict(), "epoch": epoch, "partial": partial, "best_acc": best_acc,
          "history": history, "config": config}, path)


def restart_hint(good):
    """How to take up a run whose loss blew up: from ``good``, the newest checkpoint, if any."""
    if good is None:
        return "starting again (no checkpoint had been saved yet)"
    return f"going on from the last good checkpoint with --resume {good}"


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
    name = model_name(args)
    resume = path = None
    if args.resume:
        path = os.path.join(args.resume, "last.npz") if os.path.isdir(args.resume) else args.resume
        resume = load(path)
        check_resume(args, resume, path)
    manual_seed(args.seed)
    model = build_model(args)
    if dtype != numpy.float32:
        model.astype(dtype)
    if resume is not None:
        # Before the data is loaded: a checkpoint that does not fit fails at once.
        try:
            model.load_state_dict(resume["model"])
        except (KeyError, ValueError) as e:
            raise TrainingError(f"checkpoint {args.resume} does not fit {name}: {e}") from None
    train_loader, test_loader, info = make_cifar10_loaders(
        args.data_dir, args.batch_size, args.seed, limit_train=args.limit_train, limit_test=args.limit_test,
        normalization=args.normalization, dtype=args.dtype, download=args.download, augment=not args.no_augment)
    optimizer = SGD(param_groups(model, args.weight_decay, args.no_bn_decay), lr=args.lr,
                    momentum=args.momentum, nesterov=args.nesterov)
    schedule = build_schedule(args, optimizer, args.epochs * len(train_loader))
    n_params = sum(p.size for p in model.parameters())
    print(f"{name}: {n_params:,} parameters on {backend.get_backend()} ({args.dtype}); "
          f"{info['n_train']:,} training / {info['n_test']:,} test images from {info['data_dir']}", flush=True)

    epoch, partial, best_acc, history = 0, fresh_partial(), -1.0, []
    if resume is not None:
        if args.eval_only:
            loss, acc = evaluate(model, test_loader, args.label_smoothing)
            print(f"test loss {loss:.4f}  test accuracy {100 * acc:.2f}%  ({info['n_test']} images)")
            return {"test_loss": loss, "test_acc": acc}
        # Momentum buffers and the iteration count from the checkpoint, hyperparameters (lr,
        # momentum, weight decay, ...) from this command line (see the module docstring).
        hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(resume["optimizer"])
        for group, values in zip(optimizer.param_groups, hyperparameters):
            group.update(values)
        schedule.load_state_dict({"step": resume["schedule"]["step"], "base_lrs": schedule.base_lrs})
        train_loader.load_state_dict(resume["loader"])
        epoch, partial, best_acc = int(resume["epoch"]), dict(resume["partial"]), float(resume["best_acc"])
        history = list(resume.get("history", []))
        print(f"resumed from {args.resume} at epoch {epoch + 1}, iteration {schedule.step_count}", flush=True)

    # A resumed run writes beside its checkpoint unless told otherwise, so "--resume OUT/last.npz"
    # (what an interrupted run prints) is all it takes to continue in the same folder.
    out = args.out
    if out is None:
        out = (os.path.dirname(path) or ".") if resume is not None else os.path.join("runs", name)
    os.makedirs(out, exist_ok=True)
    config = {k: v for k, v in vars(args).items()}
    config.update(out=out, model_name=name, parameters=int(n_params), backend_used=backend.get_backend())
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    last = os.path.join(out, "last.npz")
    good = path  # the newest checkpoint, where a run that cannot go on can be taken up again
    if history:  # a resumed run's metrics.csv is complete at once, also in a new --out
        write_metrics(out, history)

    def checkpoint():
        nonlocal good
        save_checkpoint(last, model, optimizer, schedule, train_loader, epoch, partial, best_acc, history, config)
        good = last

    with StopRequest() as stop:
        while epoch < args.epochs:
            try:
                train_epoch(model, train_loader, optimizer, schedule, args, epoch, partial, stop)
            except Interrupted as e:
                if e.resumable:
                    checkpoint()
                    print(f"\ninterrupted: saved {last}; continue with the same flags and --resume {last}",
                          file=sys.stderr)
                else:
                    where = (f"continue from the last checkpoint with the same flags and --resume {good}"
                             if good is not None else "no checkpoint had been saved yet")
                    print(f"\ninterrupted in the middle of a batch, which a checkpoint cannot hold: "
                          f"nothing saved; {where}", file=sys.stderr)
                raise SystemExit(130)
            except TrainingError as e:
                raise TrainingError(f"{e}, {restart_hint(good)}") from None
            test_loss, test_acc = evaluate(model, test_loader, args.label_smoothing)
            if not math.isfinite(test_loss):
                # The training loss can stay finite while the weights or the BatchNorm running
                # statistics overflow; such a model must not replace the last good checkpoint.
                raise TrainingError(f"the test loss became {test_loss} after epoch {epoch + 1}; try a lower "
                                    f"--lr (now {args.lr:g}) or --warmup, {restart_hint(good)}")
            row = {"epoch": epoch + 1,
                   "train_loss": partial["loss_sum"] / partial["seen"], "train_acc": partial["correct"] / partial["seen"],
                   "test_loss": test_loss, "test_acc": test_acc,
                   # The lr of the epoch's last iteration. The optimizer already holds the next
                   # iteration's, which is a tenth of it when a multistep drop falls on the boundary.
                   "lr": schedule.lr_at(schedule.step_count - 1), "seconds": partial["seconds"],
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
            if stop.requested:  # Ctrl-C during the epoch's last batch or its evaluation
                print(f"\ninterrupted: saved {last} at the end of epoch {epoch}; continue with the same flags "
                      f"and --resume {last}", file=sys.stderr)
                raise SystemExit(130)
    if history:
        print(f"done: final test accuracy {100 * history[-1]['test_acc']:.2f}% "
              f"(best {100 * best_acc:.2f}%); metrics and checkpoints in {out}")
    return history[-1] if history else None


def given_options(argv):
    """The options written on the command line (parsed again with every default suppressed)."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


# What a resumed run never takes from its checkpoint: where to resume from, and how to show it.
_NOT_INHERITED = {"resume", "eval_only", "out", "no_progress"}


def inherit_checkpoint_options(args, given):
    """Options not written on this command line take the values of the run that wrote the
    checkpoint, so ``--resume OUT/last.npz`` alone continues a run with its own flags."""
    path = os.path.join(args.resume, "last.npz") if os.path.isdir(args.resume) else args.resume
    config = load(path).get("config") or {}
    for key, value in config.items():
        if key in vars(args) and key not in given and key not in _NOT_INHERITED:
            setattr(args, key, value)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.resume:
            inherit_checkpoint_options(args, given_options(argv))
        run(args)
    except (ValueError, TrainingError, OSError, DatasetNotFoundError, backend.BackendError) as e:
        # DatasetNotFoundError and checkpoint problems land here too: one line, no traceback.
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TrainingError) else 2
    except KeyboardInterrupt:
        # Ctrl-C outside a training batch (loading the data, evaluating, a second Ctrl-C): no
        # new checkpoint, and no half-written one either, since save() replaces files atomically.
        print(f"\n{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
