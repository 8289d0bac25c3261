"""Train a ResNet on CIFAR-10: ``python -m minires.train --depth 20 --backend cupy``.

The defaults are the recipe of He et al. 2015 for CIFAR ResNets: SGD with momentum 0.9, batch
128, lr 0.1 divided by 10 at 50% and 75% of training (the paper's 32k and 48k of 64k
iterations), weight decay 1e-4, per-pixel mean subtraction, 4-pixel pad + random crop + flip,
164 epochs (64k iterations); ResNet-110 warms up at lr 0.01 for its first 400 iterations.
``--optimizer adam`` or ``adamw`` trains with Adam or AdamW instead (lr 1e-3 unless --lr says).
``--recipe fast`` (``RECIPES``) trains 50 epochs instead: cosine, Nesterov, weight decay 5e-4,
label smoothing 0.1, per-channel standardisation; ``--recipe keras`` the Keras CIFAR-10 ResNet
example's (Adam, batch 32, 200 epochs, ``--schedule keras``); options written beside it win.

Everything a run produces goes to ``--out``: metrics.csv (one row per epoch), config.json,
last.npz (model, optimizer, schedule, data position; written atomically at every epoch end and
on Ctrl-C), best.npz (the weights with the best test accuracy, or with --val-split the best
validation accuracy) and curves.png when matplotlib
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
and schedule, composes the extensions (``build_extensions``: snapshot, best.npz, metrics, curves,
epoch log, and on request profiler, early stopping, lr on plateau) and hands them to
``minires.training.fit`` (the loop: progress bar, NaN guard, Ctrl-C).
"""
import argparse
import math
import os
import pickle
import sys
import traceback

import numpy

from . import backend, distributed, models, weights
from .data import DatasetNotFoundError, make_cifar10_loaders, make_cifar10_test_loader
from .nn import SyncBatchNorm
from .rng import manual_seed
from .optim import SGD, Adam, AdamW, ConstantLR, CosineLR, MultiStepLR, PiecewiseLR
from .training import (CheckpointError, Interrupted, NonFiniteError, OutOfMemoryError, TrainingError,
                       TrainState, evaluate, fit, read_checkpoint)
from .training import extensions as ext
from .training.confusion import class_table, plot_confusion
from .training.folder import RunFolder, same_folder
from .training.guard import non_finite
from .training.metrics import write_config
from .utils.cli import HelpFormatter

# Bounds that catch a typo before it starts a run that cannot work: a learning rate above
# MAX_LR diverges on any of these networks, momentum >= 1 makes the steps grow without end,
# and weight decay >= 1 shrinks every weight to 0 faster than the gradient can move it.
MAX_LR = 10.0
MAX_EPOCHS = 10_000  # the paper trains 164; 10,000 epochs of ResNet-20 are weeks on a GPU
CIFAR10_TRAIN_IMAGES = 50_000

# --lr and --weight-decay when the command line does not give them: the paper's for SGD; for Adam
# torch's lr with the paper's L2; for AdamW torch's lr and decoupled decay.
OPTIMIZER_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 1e-4},
                      "adam": {"lr": 1e-3, "weight_decay": 1e-4},
                      "adamw": {"lr": 1e-3, "weight_decay": 1e-2}}


class _Parser(argparse.ArgumentParser):
    """Fills in the defaults of --lr and --weight-decay, which depend on --optimizer."""

    def parse_known_args(self, args=None, namespace=None):
        args, rest = super().parse_known_args(args, namespace)
        for name, value in OPTIMIZER_DEFAULTS[args.optimizer].items():
            if not hasattr(args, name):  # argparse.SUPPRESS: not on the command line
                setattr(args, name, value)
        return args, rest


# Named sets of option values (--recipe NAME); an option written on the command line wins over
# its recipe. An option that another recipe sets and this one does not takes the parser's default
# (recipe_defaults), so switching recipes leaves nothing behind.
# paper: He et al. 2015, the parser's defaults. fast: 50 epochs of cosine from 0.1 with
# Nesterov momentum, weight decay 5e-4 and label smoothing 0.1 on per-channel standardised
# inputs: the paper's 91.25% in under a third of its 164 epochs (ResNet-20 reached 91.33% with
# it, benchmarks/RESULTS.md; 30 such epochs reach 90.55% in PyTorch). keras: the training of
# Keras's CIFAR-10 ResNet example (Adam, KERAS_LR_STEPS, ReduceLROnPlateau(factor=sqrt(0.1),
# patience=5, min_lr=0.5e-6) on the test loss, l2(1e-4) on the Conv2D kernels, which adds
# 1e-4 * sum(w^2) to the loss: a gradient of 2e-4 * w). A recipe's --lr and --weight-decay are
# its optimizer's: with another --optimizer, parse_args takes that optimizer's defaults
# (OPTIMIZER_DEFAULTS).
RECIPES = {
    "paper": {"epochs": 164, "schedule": "multistep", "nesterov": False, "weight_decay": 1e-4,
              "label_smoothing": 0.0, "normalization": "pixel_mean"},
    "fast": {"epochs": 50, "schedule": "cosine", "nesterov": True, "weight_decay": 5e-4,
             "label_smoothing": 0.1, "normalization": "channel"},
    "keras": {"epochs": 200, "schedule": "keras", "nesterov": False, "weight_decay": 2e-4,
              "label_smoothing": 0.0, "normalization": "pixel_mean", "optimizer": "adam", "lr": 1e-3,
              "eps": 1e-7, "batch_size": 32, "conv_decay_only": True, "reduce_lr_on_plateau": 5,
              "plateau_factor": math.sqrt(0.1), "min_lr": 0.5e-6, "monitor": "loss"},
}

# Keras's lr_schedule(epoch): the lr times FACTOR once the 0-based epoch exceeds EPOCH.
KERAS_LR_STEPS = ((80, 0.1), (120, 1e-2), (160, 1e-3), (180, 0.5e-3))


def describe_recipe(name):
    """``--epochs 50 --schedule cosine --nesterov ...``: the recipe as the flags it stands for."""
    words = []
    for key, value in RECIPES[name].items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is False:
            words.append("--no-" + flag[2:])
        elif isinstance(value, float):
            short = f"{value:g}"  # unless that loses digits (sqrt(0.1)): the flag gives the same value
            words.append(f"{flag} {short if float(short) == value else repr(value)}")
        else:
            words.append(f"{flag} {value}")
    return " ".join(words)


def recipe_defaults(name, optimizer=None):
    """The option values --recipe ``name`` stands for: its own, and the parser's defaults for every
    option that only other recipes set. --lr and --weight-decay are the recipe's for its own
    optimizer; for another ``optimizer`` they are that one's defaults (OPTIMIZER_DEFAULTS)."""
    plain = build_parser()
    values = {key: plain.get_default(key) for recipe in RECIPES.values() for key in recipe}
    values.update(RECIPES[name])
    optimizer = optimizer or values["optimizer"]
    for key, value in OPTIMIZER_DEFAULTS[optimizer].items():
        if optimizer != values["optimizer"] or key not in RECIPES[name]:
            values[key] = value
    values["optimizer"] = optimizer
    return values


def build_parser(exit_on_error=True):
    p = _Parser(
        prog="python -m minires.train",
        description="Train a ResNet on CIFAR-10 with minires. Defaults reproduce He et al. 2015 (ResNet-20).",
        formatter_class=HelpFormatter, exit_on_error=exit_on_error)
    p.add_argument("--recipe", choices=tuple(RECIPES), default="paper",
                   help="a set of the options below; options written on the command line win. "
                        + "; ".join(f"{name}: {describe_recipe(name)}" for name in RECIPES)
                        + ". ResNet-20 with fast: 91.33%% test accuracy after its 50 epochs, about 6 hours on 2 CPU "
                          "cores (the weights of --pretrained resnet20)")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="any name from minires.models.names() (e.g. resnet56, resnet110v2, resnet18) "
                                   "or a parametric one (resnet8, resnet11v2, wrn16_4); overrides --depth")
    m.add_argument("--depth", type=int, default=20, help="depth of a CIFAR ResNet v1 (6n+2: 20, 32, 44, 56, 110, ...)")
    m.add_argument("--shortcut", choices=("A", "B"), default="A",
                   help="CIFAR v1 shortcut: A = zero-padding identity (the paper), B = 1x1 conv projection")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=164, help="epochs (164 x 391 iterations = the paper's 64k)")
    o.add_argument("--batch-size", type=int, default=128, help="mini-batch size")
    o.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd",
                   help="sgd: with momentum (the paper); adam: Adam, weight decay as L2 in the gradient; "
                        "adamw: Adam with decoupled weight decay (p *= 1 - lr * wd), as torch.optim")
    o.add_argument("--lr", type=float, default=argparse.SUPPRESS,
                   help="base learning rate (default: 0.1 with sgd, 0.001 with adam and adamw)")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (sgd only)")
    o.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=False,
                   help="Nesterov momentum (sgd only)")
    o.add_argument("--eps", type=float, default=1e-8,
                   help="added to the root of Adam's second moment (adam and adamw only)")
    o.add_argument("--weight-decay", type=float, default=argparse.SUPPRESS,
                   help="weight decay (default: 1e-4 with sgd and adam, 0.01 with adamw)")
    o.add_argument("--no-bn-decay", action="store_true",
                   help="exclude BatchNorm parameters and biases from weight decay (the paper decays all weights)")
    o.add_argument("--conv-decay-only", action=argparse.BooleanOptionalAction, default=False,
                   help="weight decay on the convolution kernels only (Keras's kernel_regularizer on Conv2D)")
    o.add_argument("--schedule", choices=("multistep", "cosine", "constant", "keras"), default="multistep",
                   help="multistep: lr/10 at 50%% and 75%% of the iterations; cosine: to 0 at the end; keras: "
                        "Keras's lr_schedule, lr x0.1, x0.01, x0.001, x0.0005 once the 0-based epoch exceeds 80, "
                        "120, 160, 180, set afresh at every epoch's start as Keras's LearningRateScheduler does, "
                        "so --reduce-lr-on-plateau only logs the reductions Keras makes and overwrites")
    o.add_argument("--warmup", type=int, default=None,
                   help="iterations at --warmup-lr before the schedule starts "
                        "(default: 400 for depth >= 110 with sgd as in the paper, else 0)")
    o.add_argument("--warmup-lr", type=float, default=0.01, help="learning rate during the warm-up")
    o.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy")
    o.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="stop when the --monitor metric has not improved for PATIENCE epochs (Keras's EarlyStopping)")
    o.add_argument("--reduce-lr-on-plateau", type=int, metavar="PATIENCE",
                   help="multiply the lr by --plateau-factor when the --monitor metric has not improved for "
                        "PATIENCE epochs (on top of --schedule, which keeps working)")
    o.add_argument("--plateau-factor", type=float, default=0.1, help="the factor of --reduce-lr-on-plateau")
    o.add_argument("--min-lr", type=float, default=0.0, help="--reduce-lr-on-plateau never takes the base lr below it")
    o.add_argument("--monitor", choices=("acc", "loss"), default="acc",
                   help="what --early-stopping and --reduce-lr-on-plateau watch: the accuracy or loss on the "
                        "--val-split images, or without them the test set's")
    d = p.add_argument_group("data")
    d.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                                      "(default: $MINIRES_DATA, then ~/.cache/minires)")
    d.add_argument("--download", action="store_true", help="download CIFAR-10 (170 MB) if it is not found")
    d.add_argument("--normalization", choices=("pixel_mean", "channel", "none"), default="pixel_mean",
                   help="pixel_mean: subtract the mean image (the paper); channel: per-channel standardisation")
    d.add_argument("--no-augment", action="store_true", help="train without crop and flip")
    d.add_argument("--limit-train", type=int, help="train on the first N images only (smoke runs)")
    d.add_argument("--limit-test", type=int, help="evaluate on the first N test images only")
    d.add_argument("--val-split", type=int, default=0, metavar="N",
                   help="hold N training images out (a permutation drawn from --seed) and evaluate them every "
                        "epoch; best.npz, --early-stopping and --reduce-lr-on-plateau then watch them, and the "
                        "test set is only reported (the paper chose its schedule on 45k/5k)"),
    r = p.add_argument_group("run")
    r.add_argument("--backend", choices=("numpy", "cupy"), default=None,
                   help="array backend (default: $MINIRES_BACKEND or numpy)")
    r.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="floating-point type")
    r.add_argument("--tf32", action="store_true",
                   help="on CuPy, float32 matrix products on TF32 tensor cores (faster, 10-bit mantissa inputs; "
                        "sets CUPY_TF32=1); default: exact float32")
    r.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and augmentation")
    r.add_argument("--out", default=None,
                   help="output folder (default: runs/<model>, or runs/<model>-<recipe> for a --recipe other than "
                        "paper); one that holds another run is refused, unless --resume continues that run")
    r.add_argument("--resume", help="checkpoint to continue from (an OUT/last.npz, or the OUT folder)")
    r.add_argument("--eval-only", action="store_true",
                   help="evaluate the --resume checkpoint (or --pretrained weights) on the test set: accuracy per "
                        "class, and confusion.png in --out (default: beside the checkpoint)")
    r.add_argument("--pretrained", metavar="NAME",
                   help="with --eval-only: the weights that ship with minires for model NAME (e.g. resnet20)")
    r.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    r.add_argument("--profile", action="store_true",
                   help="time every op's forward and backward and print the table per iteration at the end")
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


def parse_args(parser, argv, inherited=None):
    """Parse ``argv`` with ``parser`` (``build_parser()``): every option it does not write takes
    its value from ``inherited`` (a resumed run's options, ``config_defaults``), then from its
    --recipe, then the parser's default."""
    inherited = inherited or {}
    parser.set_defaults(**inherited)  # the run's --recipe, unless written
    recipe = parser.parse_known_args(argv)[0].recipe
    parser.set_defaults(**{**recipe_defaults(recipe), **inherited})  # the recipe's --optimizer, unless written
    optimizer = parser.parse_known_args(argv)[0].optimizer
    parser.set_defaults(**{**recipe_defaults(recipe, optimizer), **inherited})
    return parser.parse_args(argv)


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
    for name in ("limit_train", "limit_test", "early_stopping", "reduce_lr_on_plateau"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    _check_range(args, "lr", 0, MAX_LR, low_open=True, high_open=False)
    _check_range(args, "warmup_lr", 0, MAX_LR, low_open=True, high_open=False)
    _check_range(args, "momentum", 0, 1)
    _check_range(args, "weight_decay", 0, 1)
    _check_range(args, "label_smoothing", 0, 1)
    _check_range(args, "eps", 0, 1, low_open=True)
    _check_range(args, "plateau_factor", 0, 1, low_open=True)
    _check_range(args, "min_lr", 0, MAX_LR)
    if args.nesterov and args.optimizer != "sgd":
        raise ValueError(f"--nesterov is SGD's momentum; --optimizer {args.optimizer} has none")
    if args.val_split < 0:
        raise ValueError(f"--val-split must not be negative, got {args.val_split}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    if (args.warmup or 0) < 0:
        raise ValueError(f"--warmup must not be negative, got {args.warmup}")
    if args.epochs > MAX_EPOCHS:
        images = min(args.limit_train or CIFAR10_TRAIN_IMAGES, CIFAR10_TRAIN_IMAGES)
        iterations = args.epochs * math.ceil(images / args.batch_size)
        raise ValueError(f"--epochs {args.epochs} is more than {MAX_EPOCHS:,} (the paper trains 164): "
                         f"{iterations:.3g} iterations would not finish")
    if args.eval_only and not (args.resume or args.pretrained):
        raise ValueError("--eval-only needs --resume CHECKPOINT or --pretrained NAME")
    if args.pretrained and (not args.eval_only or args.resume):
        raise ValueError("--pretrained NAME goes with --eval-only and without --resume (it evaluates shipped weights)")
    if not args.dist_timeout > 0:
        raise ValueError(f"--dist-timeout must be positive, got {args.dist_timeout:g}")


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_size(args):
    """Refuse a model whose weights alone would not fit in this machine's memory (a typo such as
    --depth 6000002 would otherwise spend hours building a model that cannot train), with the
    estimate. The registry counts the parameters from the architecture, building nothing;
    training keeps the weights, their gradients, the momentum and a temporary, 4 copies, before
    any activation.
    """
    if args.pretrained:
        return  # shipped weights were trained, so they fit
    name, kwargs = model_spec(args)
    parameters = models.info(name).num_params(**kwargs)  # also refuses an unknown name or a wrong depth
    if parameters is None:
        return  # a model registered without a count
    need = 4 * parameters * numpy.dtype(args.dtype).itemsize
    have = physical_memory()
    if have is not None and need > have:
        what = f"--depth {args.depth}" if args.model is None else f"--model {args.model}"
        raise ValueError(f"{what} would build a ResNet of about {parameters:.3g} parameters, "
                         f"whose training needs at least {need / 2**30:,.0f} GiB before any activation; "
                         f"this machine has {have / 2**30:,.0f} GiB (the paper's deepest is 1202)")


# Settings a checkpoint is tied to. The weights were trained on inputs normalised with the
# statistics of the first --limit-train images; and the saved data position counts batches of
# one --batch-size in an order drawn from --seed (with or without augmentation), so continuing
# it with other values would silently train on other images than the stopped run would have.
SAME_INPUTS = ("limit_train", "normalization", "val_split")
SAME_BATCHES = ("batch_size", "seed", "no_augment")
# The optimizer state it holds (momentum buffers, or Adam's moments) is one optimizer's.
SAME_OPTIMIZER = ("optimizer",)


def check_resume(args, checkpoint, path):
    """Reject a --resume checkpoint made with other values of the settings above."""
    config = checkpoint.get("config") or {}
    names = SAME_INPUTS if args.eval_only else SAME_INPUTS + SAME_BATCHES + SAME_OPTIMIZER
    if args.eval_only and "preprocessing" in checkpoint:
        names = ()  # evaluated with the normalisation it stores, whatever these options say
    for name in names:
        if name in config and config[name] != getattr(args, name):
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(f"checkpoint {path} was made with {flag}={config[name]}, this run has "
                                  f"{flag}={getattr(args, name)}; pass the same {flag}")


def model_name(args):
    return args.pretrained or args.model or f"resnet{args.depth}"


def model_spec(args):
    """(registry name, keyword arguments) of the model ``args`` ask for: --pretrained NAME,
    --model NAME, or for --depth N (and --shortcut) the CIFAR ResNet v1 family with depth N
    (its parametric name "resnetN" is torchvision's network for N = 50 and 152)."""
    if args.pretrained:
        return args.pretrained, {}
    if args.model is not None:
        return args.model, {"num_classes": 10}
    return "cifar_resnet", {"depth": args.depth, "shortcut": args.shortcut, "num_classes": 10}


def build_model(args):
    name, kwargs = model_spec(args)
    if args.pretrained:
        return models.create(name, pretrained=True)
    return models.create(name, **kwargs)


def param_groups(model, weight_decay, no_bn_decay, conv_decay_only=False):
    """All parameters decayed (the paper), or BN parameters and biases (1-D arrays) exempt, or
    with ``conv_decay_only`` only the convolution kernels (4-D arrays) decayed."""
    params = list(model.parameters())
    if not (no_bn_decay or conv_decay_only):
        return [{"params": params, "weight_decay": weight_decay}]
    decayed = (lambda p: p.ndim == 4) if conv_decay_only else (lambda p: p.ndim > 1)
    decay = [p for p in params if decayed(p)]
    rest = [p for p in params if not decayed(p)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(args, model):
    groups = param_groups(model, args.weight_decay, args.no_bn_decay, args.conv_decay_only)
    if args.optimizer == "sgd":
        return SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov)
    return (Adam if args.optimizer == "adam" else AdamW)(groups, lr=args.lr, eps=args.eps)


def build_schedule(args, optimizer, total_steps):
    warmup = args.warmup
    if warmup is None:
        # The paper finds lr 0.1 "slightly too large to start converging" for ResNet-110 and
        # warms it (and ResNet-1202) up at 0.01; --help promises this for every depth >= 110.
        # Adam's lr is below that warm-up lr already.
        name, kwargs = model_spec(args)
        depth = kwargs.get("depth", models.info(name).depth)
        warmup = 400 if args.optimizer == "sgd" and depth is not None and depth >= 110 else 0
    common = dict(warmup_steps=warmup, warmup_lr=args.warmup_lr)
    if args.schedule == "multistep":
        return MultiStepLR(optimizer, [total_steps // 2, (3 * total_steps) // 4], gamma=0.1, **common)
    if args.schedule == "cosine":
        return CosineLR(optimizer, total_steps, **common)
    if args.schedule == "keras":  # at fixed epochs, whatever --epochs is, as Keras's
        steps_per_epoch = total_steps // args.epochs
        milestones = [(epoch + 1) * steps_per_epoch for epoch, _ in KERAS_LR_STEPS]
        return PiecewiseLR(optimizer, milestones, [factor for _, factor in KERAS_LR_STEPS], **common)
    return ConstantLR(optimizer, **common)


def build_extensions(args, out, resumed_from, schedule):
    """What the run does at the end of every epoch (``minires.training.extensions``): with
    --reduce-lr-on-plateau and --early-stopping, decide on the lr and on stopping; print its
    line, save best.npz and last.npz, write metrics.csv and curves.png; with --profile, the
    per-op time table at the end."""
    monitor = ("val_" if args.val_split else "test_") + args.monitor
    extensions = []
    if args.reduce_lr_on_plateau:
        extensions.append(ext.ReduceLROnPlateau(schedule, monitor, args.plateau_factor, args.reduce_lr_on_plateau,
                                                args.min_lr, log=print, reset_each_epoch=args.schedule == "keras"))
    if args.early_stopping:
        extensions.append(ext.EarlyStopping(monitor, args.early_stopping, log=print))
    best = ext.BestSnapshot(out, monitor="val_acc" if args.val_split else "test_acc")
    extensions += [ext.EpochLog(), best, ext.Snapshot(out, resumed_from), ext.MetricsCSV(out), ext.Curves(out)]
    if args.profile:
        extensions.append(ext.Profiler())
    return extensions


def checkpoint_path(resume):
    """--resume names a checkpoint file or the folder of a run (then its last.npz)."""
    return os.path.join(resume, "last.npz") if os.path.isdir(resume) else resume


def restart_hint(good):
    """How to take up a run that cannot go on: from ``good``, the newest checkpoint, if any."""
    if good is None:
        return "starting again (no checkpoint had been saved yet)"
    return f"going on from the last good checkpoint with --resume {good}"


# What each process of a --distributed job may set for itself: the folder only rank 0 writes,
# how it shows progress and how long it waits, where its machine keeps the data (the data
# themselves are compared). --resume is compared as given or not: only rank 0 reads the file.
_PER_PROCESS = {"out", "no_progress", "profile", "dist_timeout", "data_dir", "download", "distributed"}


def agreement_fields(args, info=None, loaders=()):
    """What every process of a --distributed job must share (``distributed.check_agreement``):
    the options, and with ``info`` (of ``make_cifar10_loaders``) the data's sizes and checksums
    of the normalisation statistics and of each (name, loader)'s images and labels."""
    fields = [("--" + k.replace("_", "-"), ("given" if v else "not given") if k == "resume" else v)
              for k, v in vars(args).items() if k not in _PER_PROCESS]
    if info is not None:
        stats = [info[k] for k in ("mean", "std") if info.get(k) is not None]
        fields += [("the number of training images", info.get("n_train")), ("the number of test images", info["n_test"]),
                   ("the normalisation statistics", distributed.digest(*stats) if stats else "none")]
        fields += [(f"the {name} images", distributed.digest(loader.x, loader.y)) for name, loader in loaders]
    return fields


def evaluate_checkpoint(args, checkpoint, path, model, shard, hooks, comm=None):
    """--eval-only: the test loss and accuracy of the checkpoint's weights, per class too, with
    the input normalisation the checkpoint stores (a checkpoint from before they stored it:
    recomputed from the training images, as its run did)."""
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit {model_name(args)}: {e}") from None
    bad = non_finite(checkpoint["model"])
    if bad:  # read_checkpoint refuses these already; a model must never report an accuracy for them
        raise CheckpointError(f"checkpoint {path}: {bad[0]} holds nan or inf")
    if "preprocessing" in checkpoint:
        test_loader, info = make_cifar10_test_loader(
            checkpoint["preprocessing"], args.data_dir, args.batch_size, dtype=args.dtype, download=args.download,
            limit_test=args.limit_test, **shard)
    else:
        print(f"note: {path} stores no preprocessing (written before checkpoints did): recomputing its "
              f"--normalization {args.normalization} statistics from the training images", file=sys.stderr)
        _, test_loader, info = make_cifar10_loaders(
            args.data_dir, args.batch_size, args.seed, limit_train=args.limit_train, limit_test=args.limit_test,
            normalization=args.normalization, dtype=args.dtype, download=args.download, augment=False, **shard)
    classes = checkpoint.get("classes") or info["classes"]
    confusion = numpy.zeros((len(classes), len(classes)), dtype=numpy.int64)
    if comm is not None:
        distributed.check_agreement(comm, agreement_fields(args, info, [("test", test_loader)]))
    with numpy.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, in one line
        loss, acc = evaluate(model, test_loader, args.label_smoothing, hooks, confusion=confusion)
    if not math.isfinite(loss):  # finite weights and statistics can still overflow: no accuracy from nan
        raise NonFiniteError(f"checkpoint {path}: the test loss is {loss}: the model's outputs are not finite "
                             f"numbers (weights too large for {args.dtype}?)")
    print(f"test loss {loss:.4f}  test accuracy {100 * acc:.2f}%  ({info['n_test']} images)")
    print("\n".join(class_table(confusion, classes)))
    out = args.out or (os.path.join("runs", model_name(args)) if args.pretrained else os.path.dirname(path) or ".")
    if comm is None or comm.rank == 0:
        os.makedirs(out, exist_ok=True)
        if plot_confusion(os.path.join(out, "confusion.png"), confusion, classes):
            print(f"confusion matrix in {os.path.join(out, 'confusion.png')}")
    return {"test_loss": loss, "test_acc": acc, "confusion": confusion}


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
    if args.pretrained:
        models.info(args.pretrained)  # a name that is no model at all: the registry's one line
        checkpoint, path = weights.pretrained_checkpoint(args.pretrained)
    elif path is not None:
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
        return evaluate_checkpoint(args, checkpoint, path, model, shard, hooks, comm)

    train_loader, test_loader, info = make_cifar10_loaders(
        args.data_dir, args.batch_size, args.seed, limit_train=args.limit_train, limit_test=args.limit_test,
        normalization=args.normalization, dtype=args.dtype, download=args.download, augment=not args.no_augment,
        val_split=args.val_split, **shard)
    if comm is not None:  # before the first exchange of arrays, whose sizes would differ
        distributed.check_agreement(comm, agreement_fields(args, info, [("training", train_loader),
                                                                        ("test", test_loader)]))
    optimizer = build_optimizer(args, model)
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
    held_out = f"{info['n_val']:,} validation / " if args.val_split else ""
    print(f"{name}: {n_params:,} parameters on {backend.get_backend()} ({args.dtype}); "
          f"{info['n_train']:,} training / {held_out}{info['n_test']:,} test images from {info['data_dir']}",
          flush=True)
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
        # A recipe other than the paper's gets a folder of its own, so both can be run one after the other.
        folder_name = name if args.recipe == "paper" else f"{name}-{args.recipe}"
        out = (os.path.dirname(path) or ".") if checkpoint is not None else os.path.join("runs", folder_name)
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
                      progress=not args.no_progress, hooks=hooks, resumed_from=path,
                      extensions=build_extensions(args, out, path, schedule), val_loader=info.get("val_loader"))
    except NonFiniteError as e:
        raise NonFiniteError(f"{e}; try a lower --lr (now {args.lr:g}) or --warmup, {restart_hint(e.checkpoint)}",
                             e.checkpoint) from None
    except OutOfMemoryError as e:
        raise OutOfMemoryError(f"{e}; try a smaller --batch-size (now {args.batch_size})") from None
    finally:
        if folder is not None:
            folder.release()
    if state.epoch < args.epochs:
        print(f"stopped early after epoch {state.epoch} of {args.epochs} (--early-stopping {args.early_stopping})")
    print(f"done: final test accuracy {100 * history[-1]['test_acc']:.2f}% "
          f"(best {100 * state.best_acc:.2f}%); metrics and checkpoints in {out}")
    return history[-1]


# What a resumed run never takes from its checkpoint: where to resume from, and how to show and
# run it (a run of N processes may go on in one, and back).
_NOT_INHERITED = {"resume", "eval_only", "out", "no_progress", "profile", "distributed", "dist_timeout"}


def config_defaults(parser, config, path):
    """The options a resumed run takes from its checkpoint's run ``config``: every entry that
    names an option of ``parser`` (less _NOT_INHERITED, and None: not given), with the value
    that option's flag would give, so that ``--resume OUT/last.npz`` alone continues a run with
    its own options. A value the flag would refuse is reported with the checkpoint named."""
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    defaults = {}
    for key, value in config.items():
        if key not in actions or key in _NOT_INHERITED or value is None:
            continue
        action, flag = actions[key], "--" + key.replace("_", "-")
        if not isinstance(value, (bool, int, float, str)):
            raise CheckpointError(f"checkpoint {path}: config entry {key!r} must be a number, string or "
                                  f"true/false, found {type(value).__name__}")
        switch = action.nargs == 0  # store_true and --flag/--no-flag take true/false, the others a value
        try:
            if switch != isinstance(value, bool):
                raise ValueError
            if not switch:
                value = action.type(str(value)) if action.type else str(value)
                if action.choices is not None and value not in action.choices:
                    raise ValueError
        except (TypeError, ValueError):
            raise CheckpointError(f"checkpoint {path}: config entry {key!r} is not a valid {flag}: "
                                  f"{config[key]!r}") from None
        defaults[key] = value
    return defaults


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
    args = parse_args(parser, argv)
    if args.tf32:
        backend.set_tf32(True)  # before CuPy's first matrix product
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
    except distributed.RanksDisagree as e:
        # every rank found it in the same exchange: all stop together, with no abort
        if comm.rank == 0:
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
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
        if comm is not None:  # the command lines, before rank 0 sends the --resume checkpoint
            distributed.check_agreement(comm, agreement_fields(args))
        if args.resume:
            path = checkpoint_path(args.resume)
            checkpoint = read_checkpoint_once(path, not args.eval_only, comm)
            # The checkpoint's options, where this command line does not write one.
            args = parse_args(parser, argv, config_defaults(parser, checkpoint.get("config") or {}, path))
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
