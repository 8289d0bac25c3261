"""Train a ResNet on CIFAR-10: ``python -m minires.train --depth 20 --backend cupy``.

The defaults are the recipe of He et al. 2015 for CIFAR ResNets: SGD with momentum 0.9, batch
128, lr 0.1 divided by 10 at 50% and 75% of training (the paper's 32k and 48k of 64k
iterations), weight decay 1e-4, per-pixel mean subtraction, 4-pixel pad + random crop + flip,
164 epochs (64k iterations); ResNet-110 warms up at lr 0.01 for its first 400 iterations.

Everything a run produces goes to ``--out``: metrics.csv (one row per epoch), config.json,
last.npz (model, optimizer, schedule, data position; written atomically at every epoch end and
on Ctrl-C), best.npz (the weights with the best test accuracy) and curves.png when matplotlib
is installed. ``--resume OUT/last.npz`` continues a run exactly where it stopped (and writes
to OUT unless --out says otherwise). One run per folder: an OUT that holds another run's files is
refused unless this run resumes that one, and so is an OUT that a live run holds (OUT/.lock).
The checkpoint supplies the state (weights, momentum,
iteration, data position, history) and, for every option not written on the command line, the
value its run used; an option that is written, such as a lower --lr after a loss that blew up,
applies from the next iteration on. A larger --epochs extends a finished run.

``mpiexec -n N python -m minires.train --distributed ...`` trains data-parallel on N processes
(``minires.distributed``): --batch-size stays the total batch of an iteration, each process
takes its share, and the run computes what one process would (exactly so with --sync-bn). Only
rank 0 prints and writes files; checkpoints move freely between 1-process and N-process runs.

This file is the command line only: it checks the options, builds the model, data, optimizer
and schedule, and hands them to ``minires.training.fit`` (the loop and its pieces: snapshot,
metrics, curves, progress bar, NaN guard, Ctrl-C).
"""
import argparse
import math
import os
import pickle
import re
import sys
import traceback

import numpy

from . import backend, distributed, models
from .data import DatasetNotFoundError, make_cifar10_loaders
from .nn import SyncBatchNorm
from .nn.init import manual_seed
from .optim import SGD, ConstantLR, CosineLR, MultiStepLR
from .training import (CheckpointError, Interrupted, NonFiniteError, OutOfMemoryError, TrainingError,
                       TrainState, evaluate, fit, read_checkpoint)
from .training.folder import RunFolder, same_folder
from .training.guard import non_finite
from .training.metrics import write_config

# Bounds that catch a typo before it starts a run that cannot work: a learning rate above
# MAX_LR diverges on any of these networks, momentum >= 1 makes the steps grow without end,
# and weight decay >= 1 shrinks every weight to 0 faster than the gradient can move it.
MAX_LR = 10.0
MAX_EPOCHS = 10_000  # the paper trains 164; 10,000 epochs of ResNet-20 are weeks on a GPU
CIFAR10_TRAIN_IMAGES = 50_000


def build_parser(exit_on_error=True):
    p = argparse.ArgumentParser(
        prog="python -m minires.train",
        description="Train a ResNet on CIFAR-10 with minires. Defaults reproduce He et al. 2015 (ResNet-20).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, exit_on_error=exit_on_error)
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
    r.add_argument("--out", default=None, help="output folder (default: runs/<model>); one that holds another "
                                               "run is refused, unless --resume continues that run")
    r.add_argument("--resume", help="checkpoint to continue from (an OUT/last.npz, or the OUT folder)")
    r.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint on the test set and exit")
    r.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    g = p.add_argument_group("data-parallel training (start N processes with mpiexec -n N)")
    g.add_argument("--distributed", action="store_true",
                   help="be one process of an mpiexec job: MPI between CPU processes, NCCL between GPUs with "
                        "--backend cupy; --batch-size is the total, each process takes batch-size / N")
    g.add_argument("--sync-bn", action="store_true",
                   help="BatchNorm statistics over the whole batch of all processes (as one process computes "
                        "them); without it each process normalises its own share, as the paper's 2-GPU runs did")
    g.add_argument("--dist-timeout", type=float, default=600.0,
                   help="seconds one exchange may wait for the other processes before the job is ended")
    return p


def _check_range(args, name, low, high, low_open=False, high_open=True):
    """--name must be a finite number in [low, high) (or (low, high) with ``low_open``)."""
    value = getattr(args, name)
    flag = "--" + name.replace("_", "-")
    if not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number, got {value}")
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{flag} must lie in {interval}, got {value:g}")


def check_args(args):
    """Reject values that would fail later, or train nothing useful, with a one-line reason."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("limit_train", "limit_test"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    _check_range(args, "lr", 0, MAX_LR, low_open=True, high_open=False)
    _check_range(args, "warmup_lr", 0, MAX_LR, low_open=True, high_open=False)
    _check_range(args, "momentum", 0, 1)
    _check_range(args, "weight_decay", 0, 1)
    _check_range(args, "label_smoothing", 0, 1)
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    if (args.warmup or 0) < 0:
        raise ValueError(f"--warmup must not be negative, got {args.warmup}")
    if args.epochs > MAX_EPOCHS:
        images = min(args.limit_train or CIFAR10_TRAIN_IMAGES, CIFAR10_TRAIN_IMAGES)
        iterations = args.epochs * math.ceil(images / args.batch_size)
        raise ValueError(f"--epochs {args.epochs} is more than {MAX_EPOCHS:,} (the paper trains 164): "
                         f"{iterations:.3g} iterations would not finish")
    if args.eval_only and not args.resume:
        raise ValueError("--eval-only needs --resume CHECKPOINT")
    if not args.dist_timeout > 0:
        raise ValueError(f"--dist-timeout must be positive, got {args.dist_timeout:g}")


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_size(args):
    """Refuse a --depth whose weights alone would not fit in this machine's memory (a typo such as
    6000002 would otherwise spend hours building a model that cannot train), with the estimate.

    A CIFAR ResNet v1 of depth 6n+2 has about 97,000 parameters per n (3 stages of 2 convs of
    3x3, 16/32/64 channels: 9 * 2 * (16^2 + 32^2 + 64^2) = 97,344); training keeps the weights,
    their gradients, the momentum and a temporary, 4 copies, before any activation.
    """
    if args.model is not None or args.depth < 2 or (args.depth - 2) % 6:
        return  # the registry's models are of known size; a wrong depth fails in models
    n = (args.depth - 2) // 6
    parameters = 97_344 * n
    need = 4 * parameters * numpy.dtype(args.dtype).itemsize
    have = physical_memory()
    if have is not None and need > have:
        raise ValueError(f"--depth {args.depth} would build a ResNet of about {parameters:.3g} parameters, "
                         f"whose training needs at least {need / 2**30:,.0f} GiB before any activation; "
                         f"this machine has {have / 2**30:,.0f} GiB (the paper's deepest is 1202)")


# Settings a checkpoint is tied to. The weights were trained on inputs normalised with the
# statistics of the first --limit-train images; and the saved data position counts batches of
# one --batch-size in an order drawn from --seed (with or without augmentation), so continuing
# it with other values would silently train on other images than the stopped run would have.
SAME_INPUTS = ("limit_train", "normalization")
SAME_BATCHES = ("batch_size", "seed", "no_augment")


def check_resume(args, checkpoint, path):
    """Reject a --resume checkpoint made with other values of the settings above."""
    config = checkpoint.get("config") or {}
    names = SAME_INPUTS if args.eval_only else SAME_INPUTS + SAME_BATCHES
    for name in names:
        if name in config and config[name] != getattr(args, name):
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(f"checkpoint {path} was made with {flag}={config[name]}, this run has "
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


def checkpoint_path(resume):
    """--resume names a checkpoint file or the folder of a run (then its last.npz)."""
    return os.path.join(resume, "last.npz") if os.path.isdir(resume) else resume


def restart_hint(good):
    """How to take up a run that cannot go on: from ``good``, the newest checkpoint, if any."""
    if good is None:
        return "starting again (no checkpoint had been saved yet)"
    return f"going on from the last good checkpoint with --resume {good}"


def evaluate_checkpoint(args, checkpoint, path, model, shard, hooks):
    """--eval-only: the test loss and accuracy of the checkpoint's weights."""
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit {model_name(args)}: {e}") from None
    bad = non_finite(checkpoint["model"])
    if bad:  # read_checkpoint refuses these already; a model must never report an accuracy for them
        raise CheckpointError(f"checkpoint {path}: {bad[0]} holds nan or inf")
    _, test_loader, info = make_cifar10_loaders(
        args.data_dir, args.batch_size, args.seed, limit_train=args.limit_train, limit_test=args.limit_test,
        normalization=args.normalization, dtype=args.dtype, download=args.download, augment=False, **shard)
    loss, acc = evaluate(model, test_loader, args.label_smoothing, hooks)
    print(f"test loss {loss:.4f}  test accuracy {100 * acc:.2f}%  ({info['n_test']} images)")
    return {"test_loss": loss, "test_acc": acc}


def run(args, checkpoint=None, comm=None):
    """Train (or with --eval-only evaluate) as ``args`` say. ``checkpoint``: the --resume file,
    already read by ``read_checkpoint`` (main reads it once, for its options too). ``comm``: the
    communicator of a --distributed run (see ``main``), None for one process."""
    check_args(args)
    check_size(args)
    if args.backend:
        backend.set_backend(args.backend)
    dtype = numpy.dtype(args.dtype)
    name = model_name(args)
    path = checkpoint_path(args.resume) if args.resume else None
    if path is not None:
        if checkpoint is None:
            checkpoint = read_checkpoint(path, training=not args.eval_only)
        check_resume(args, checkpoint, path)
    manual_seed(args.seed)
    model = build_model(args)
    if dtype != numpy.float32:
        model.astype(dtype)
    # Data parallel: each process takes its shard of every batch and the hooks keep the models
    # identical; with --sync-bn, BatchNorm's statistics span all the shards.
    shard, hooks, is_main = {}, None, True
    if comm is not None:
        shard = {"rank": comm.rank, "world_size": comm.size}
        if args.sync_bn:
            model = SyncBatchNorm.convert_sync_batchnorm(model, comm)
        hooks, is_main = distributed.DataParallelHooks(model, comm), comm.rank == 0
    if args.eval_only:
        return evaluate_checkpoint(args, checkpoint, path, model, shard, hooks)

    train_loader, test_loader, info = make_cifar10_loaders(
        args.data_dir, args.batch_size, args.seed, limit_train=args.limit_train, limit_test=args.limit_test,
        normalization=args.normalization, dtype=args.dtype, download=args.download, augment=not args.no_augment,
        **shard)
    optimizer = SGD(param_groups(model, args.weight_decay, args.no_bn_decay), lr=args.lr,
                    momentum=args.momentum, nesterov=args.nesterov)
    schedule = build_schedule(args, optimizer, args.epochs * len(train_loader))
    state = TrainState(model, optimizer, schedule, train_loader)
    if checkpoint is not None:
        # Momentum buffers and the iteration count from the checkpoint, hyperparameters (lr,
        # momentum, weight decay, ...) from this command line (see the module docstring).
        try:
            state.load_state_dict(checkpoint, keep_hyperparameters=True)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} does not fit {name}: {e}") from None
        if state.epoch > args.epochs:
            raise CheckpointError(f"checkpoint {path} has finished {state.epoch} epochs, more than "
                                  f"--epochs {args.epochs}; pass --epochs {state.epoch} or more")
    if comm is not None:
        distributed.broadcast_state(model, comm)  # rank 0's weights everywhere, whatever each drew
    n_params = sum(p.size for p in model.parameters())
    print(f"{name}: {n_params:,} parameters on {backend.get_backend()} ({args.dtype}); "
          f"{info['n_train']:,} training / {info['n_test']:,} test images from {info['data_dir']}", flush=True)
    if comm is not None:
        fewest, most = args.batch_size // comm.size, -(-args.batch_size // comm.size)
        print(f"data parallel on {comm.size} process{'es' if comm.size > 1 else ''} ({type(comm).__name__}): "
              f"batch {args.batch_size} = "
              f"{fewest if fewest == most else f'{fewest}-{most}'} images per process, "
              f"{'SyncBatchNorm' if args.sync_bn else 'BatchNorm per process'}", flush=True)
    if checkpoint is not None:
        print(f"resumed from {path} at epoch {state.epoch + 1}, iteration {schedule.step_count}", flush=True)
    if state.epoch == args.epochs:
        print(f"nothing to do: {path} has finished all {args.epochs} epochs; a larger --epochs trains on")
        return state.history[-1] if state.history else None

    # A resumed run writes beside its checkpoint unless told otherwise, so "--resume OUT/last.npz"
    # (what an interrupted run prints) is all it takes to continue in the same folder.
    out = args.out
    if out is None:
        out = (os.path.dirname(path) or ".") if checkpoint is not None else os.path.join("runs", name)
    state.config = dict(vars(args), out=out, model_name=name, parameters=int(n_params),
                        backend_used=backend.get_backend(), processes=1 if comm is None else comm.size)
    # One run per folder: held until the run ends, and never written over by a run that does not
    # continue the one there (fit holds it again, as this run).
    folder = None
    if is_main:
        folder = RunFolder(out, resuming=path is not None and same_folder(path, out),
                           ways_on=f"continue that run with --resume {out}, or give this one a new --out")
    try:
        if is_main:
            write_config(os.path.join(out, "config.json"), state.config)
        history = fit(state, test_loader, args.epochs, out=out, label_smoothing=args.label_smoothing,
                      progress=not args.no_progress, hooks=hooks, resumed_from=path)
    except NonFiniteError as e:
        raise NonFiniteError(f"{e}; try a lower --lr (now {args.lr:g}) or --warmup, {restart_hint(e.checkpoint)}",
                             e.checkpoint) from None
    except OutOfMemoryError as e:
        raise OutOfMemoryError(f"{e}; try a smaller --batch-size (now {args.batch_size})") from None
    finally:
        if folder is not None:
            folder.release()
    print(f"done: final test accuracy {100 * history[-1]['test_acc']:.2f}% "
          f"(best {100 * state.best_acc:.2f}%); metrics and checkpoints in {out}")
    return history[-1]


# What a resumed run never takes from its checkpoint: where to resume from, and how to show and
# run it (a run of N processes may go on in one, and back).
_NOT_INHERITED = {"resume", "eval_only", "out", "no_progress", "distributed", "dist_timeout"}


def inherited_argv(args, config, path):
    """The checkpoint run's options as command-line words, for every option this run may inherit,
    so that ``--resume OUT/last.npz`` alone continues a run with its own flags. Each is parsed
    on its own first: a value argparse would refuse is reported with the checkpoint named."""
    words = []
    quiet = build_parser(exit_on_error=False)
    for key, value in config.items():
        if key not in vars(args) or key in _NOT_INHERITED or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if not isinstance(value, (bool, int, float, str)):
            raise CheckpointError(f"checkpoint {path}: config entry {key!r} must be a number, string or "
                                  f"true/false, found {type(value).__name__}")
        option = [flag] if value is True else [flag, str(value)]
        try:
            _, left = quiet.parse_known_args(option)
            if left:
                raise argparse.ArgumentError(None, f"{flag} takes no value, found {left[0]!r}")
        except argparse.ArgumentError as e:
            raise CheckpointError(f"checkpoint {path}: config entry {key!r} is not a valid {flag}: {e}") from None
        words += option
    return words


def read_checkpoint_once(path, training, comm):
    """``read_checkpoint`` on rank 0 only, its result (or its error) sent to every rank: in a
    run over several machines the file need only be on rank 0's."""
    if comm is None:
        return read_checkpoint(path, training=training)
    result = None
    if comm.rank == 0:
        try:
            result = read_checkpoint(path, training=training)
        except (ValueError, OSError, pickle.UnpicklingError) as e:
            result = e
    result = comm.broadcast_object(result)
    if isinstance(result, Exception):
        raise result
    return result


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    comm = None
    if args.distributed:
        try:
            comm = distributed.init(args.backend or backend.get_backend(), args.dist_timeout)
        except (ImportError, backend.BackendError) as e:
            print(f"{parser.prog}: error: --distributed: {e}", file=sys.stderr)
            return 2
        if comm.rank != 0:
            sys.stdout = open(os.devnull, "w")  # only rank 0 prints; errors still reach stderr
    if comm is None or comm.size == 1:
        return _main(parser, args, argv, comm)
    # A rank that cannot go on ends the whole job at once: the others would otherwise wait for
    # it in their next exchange. Only "done" and an agreed Ctrl-C end every rank together.
    try:
        code = _main(parser, args, argv, comm)
    except BaseException:
        traceback.print_exc()
        comm.abort(1)
    if code not in (0, 130):
        comm.abort(code)
    comm.barrier()  # rank 0 may still be writing the last checkpoint
    return code


def _main(parser, args, argv, comm):
    rank = "" if comm is None or comm.size == 1 else f" (rank {comm.rank})"
    try:
        checkpoint = None
        if args.resume:
            path = checkpoint_path(args.resume)
            checkpoint = read_checkpoint_once(path, not args.eval_only, comm)
            # The checkpoint's options first, then this command line's, which win where both
            # give one (argparse keeps the last value of an option).
            args = parser.parse_args(inherited_argv(args, checkpoint.get("config") or {}, path) + argv)
        run(args, checkpoint, comm)
    except Interrupted as e:
        if comm is not None and comm.rank != 0:
            return 130  # rank 0 says what happened, for all
        if e.saved is not None:
            print(f"\ninterrupted: saved {e.saved}; continue with the same flags and --resume {e.saved}",
                  file=sys.stderr)
        else:
            why = e.reason or "interrupted in the middle of a batch, which a checkpoint cannot hold"
            where = (f"continue from the last checkpoint with the same flags and --resume {e.checkpoint}"
                     if e.checkpoint is not None else "no checkpoint had been saved yet")
            print(f"\ninterrupted: {why}: nothing saved; {where}", file=sys.stderr)
        return 130
    except (ValueError, OSError, DatasetNotFoundError, pickle.UnpicklingError, OutOfMemoryError,
            backend.BackendError) as e:
        # Bad input: options, checkpoints, data files. One line (the data search lists its
        # places on the lines after), no traceback.
        print(f"{parser.prog}: error{rank}: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"{parser.prog}: error{rank}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C outside a training batch (loading the data, evaluating, a second Ctrl-C): no
        # new checkpoint, and no half-written one either, since every file is replaced atomically.
        print(f"\n{parser.prog}: interrupted{rank}", file=sys.stderr)
        if rank:  # the other ranks may be anywhere: end them all
            comm.abort(130)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
