"""Export a checkpoint to ONNX: ``python -m minires.export runs/resnet20/best.npz r20.onnx``.

The checkpoint is read with ``minires.load`` (no pickle). A checkpoint written by
``python -m minires.train`` (``last.npz`` or ``best.npz``) names its model in its run config; a
bare state dict (``minires.save(model.state_dict(), path)``) needs ``--model``.

``--with-preprocessing`` puts the input normalisation the checkpoint stores into the graph, whose
input is then float32 (N, 3, 32, 32) RGB in [0, 1] (``minires.image.to_unit`` of
``minires.image.load_images``: the images ``minires.predict`` reads). ``--pretrained resnet20``
exports the weights that ship with minires instead of a checkpoint.
"""
import argparse
import numbers
import sys

from . import models
from .data.transforms import check_preprocessing
from .onnx import MAX_OPSET, MIN_OPSET, OPSET, UnsupportedOperatorError, check_opset, export
from .serialization import load
from .model_summary import check_input_shape
from .train import check_size
from .utils.cli import HelpFormatter
from .weights import pretrained_checkpoint


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minires.export", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a .npz from python -m minires.train, or a saved state dict")
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--pretrained", metavar="NAME", help="instead of a checkpoint: the weights that ship with "
                                                        "minires for NAME (e.g. resnet20)")
    p.add_argument("--model", help="model name (minires.models.names(), or a parametric one such as "
                                   "resnet8); default: the checkpoint's run config")
    p.add_argument("--shortcut", choices=("A", "B"), help="CIFAR v1 shortcut, with --model "
                                                          "(default: the checkpoint's, else A)")
    p.add_argument("--input-shape", type=int, nargs=3, default=(3, 32, 32), metavar=("C", "H", "W"),
                   help="shape of one image")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="normalise inside the graph as the checkpoint's run did: the input is then RGB in [0, 1]")
    return p


def _read_config(config, path):
    """The run config's model, depth and shortcut, each checked (ValueError naming the entry)."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: entry 'config' must be a dict (the options of its run), "
                         f"found {type(config).__name__}")
    for key in ("model", "shortcut"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise ValueError(f"{path}: config entry {key!r} must be a string, found {type(config[key]).__name__}")
    depth = config.get("depth")
    if depth is not None:
        if not isinstance(depth, numbers.Integral) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"{path}: config entry 'depth' must be a positive integer, found {depth!r}")
        depth = int(depth)
    if depth is not None and config.get("model") is None:
        try:  # a typo such as 600000002 would otherwise take minutes to build, then fail
            check_size(argparse.Namespace(model=None, pretrained=None, depth=depth,
                                          shortcut=config.get("shortcut") or "A", dtype="float32"))
        except ValueError as e:
            raise ValueError(f"{path}: its config has depth {depth}: {e}") from None
    return config.get("model"), depth, config.get("shortcut")


def _array_entry(state, key, ndim, what, path):
    """``state[key]`` when it is an array of ``ndim`` dimensions, None when absent."""
    value = state.get(key)
    if value is not None and getattr(value, "ndim", None) != ndim:
        found = f"shape {value.shape}" if hasattr(value, "shape") else f"a {type(value).__name__}"
        raise ValueError(f"{path}: entry {key!r} must be a {ndim}-d array {what}, found {found}")
    return value


def model_from_checkpoint(checkpoint, name=None, shortcut=None, path="the checkpoint"):
    """(model, state dict) for a training checkpoint or a bare state dict.

    The model is named by ``name``, else by the checkpoint's run config; its number of classes
    is read from the ``fc.weight`` of the state. ``path`` names the file in the errors.
    """
    state, config = checkpoint, {}
    if isinstance(checkpoint.get("model"), dict):
        state = checkpoint["model"]
        config = checkpoint.get("config") if checkpoint.get("config") is not None else {}
    config_model, depth, config_shortcut = _read_config(config, path)
    kwargs = {}
    if name is None and config_model is None and depth is not None:
        name = "cifar_resnet"  # trained with --depth (and --shortcut)
        kwargs = {"depth": depth, "shortcut": config_shortcut or "A"}
    elif name is None:
        name = config_model
    if name is None:
        raise ValueError("the checkpoint does not name its model (a bare state dict?): pass --model, "
                         f"one of {', '.join(models.names())}")
    info = models.info(name)  # the registry's facts: what the model takes, which stems
    if shortcut is not None:
        if "shortcut" not in info.kwargs:
            raise ValueError(f"--shortcut applies to the CIFAR ResNets v1 (resnet20 ... resnet1202), not {name}")
        kwargs["shortcut"] = shortcut
    fc = _array_entry(state, "fc.weight", 2, "(classes, features)", path)
    if fc is not None:
        kwargs["num_classes"] = int(fc.shape[0])
    conv1 = _array_entry(state, "conv1.weight", 4, "(out, in, kh, kw)", path)
    if "stem" in info.kwargs and conv1 is not None and info.stem_of(conv1.shape[-1]) is not None:
        kwargs["stem"] = info.stem_of(conv1.shape[-1])
    model = models.create(name, **kwargs)
    return model, state


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.pretrained is None):
        parser.error("give a checkpoint or --pretrained NAME (one of them)")
    try:
        check_opset(args.opset, "--opset")
        check_input_shape(args.input_shape)
        if args.pretrained:
            models.info(args.pretrained)  # a name that is no model at all: the registry's one line
            checkpoint, args.checkpoint = pretrained_checkpoint(args.pretrained)
        else:
            checkpoint = load(args.checkpoint)
        model, state = model_from_checkpoint(checkpoint, args.model, args.shortcut, args.checkpoint)
        try:
            model.load_state_dict(state)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{args.checkpoint} does not fit {type(model).__name__}: {e}") from None
        preprocessing = None
        if args.with_preprocessing:
            preprocessing = checkpoint.get("preprocessing")
            if preprocessing is None:
                raise ValueError(f"{args.checkpoint} stores no preprocessing (a bare state dict, or a checkpoint "
                                 f"written before checkpoints did): export it without --with-preprocessing")
            check_preprocessing(preprocessing, f"{args.checkpoint}: preprocessing")
        try:
            export(model, args.output, input_shape=(1,) + tuple(args.input_shape), opset=args.opset,
                   preprocessing=preprocessing)
        except MemoryError as e:
            shape = " ".join(map(str, args.input_shape))
            raise ValueError(f"out of memory tracing one image of --input-shape {shape} ({e}); "
                             f"try a smaller one") from None
    except (OSError, ValueError, ImportError, UnsupportedOperatorError) as e:
        print(f"minires.export: error: {e}", file=sys.stderr)
        return 2
    what = "RGB in [0, 1], normalised inside" if args.with_preprocessing else "preprocessed as in training"
    print(f"wrote {args.output} ({type(model).__name__}, opset {args.opset}, input (N, "
          f"{', '.join(map(str, args.input_shape))}), {what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
