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
import sys

from . import models
from .data.transforms import check_preprocessing
from .onnx import OPSET, UnsupportedOperatorError, export
from .serialization import load
from .weights import pretrained_checkpoint
from .utils.cli import HelpFormatter


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minires.export", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a .npz from python -m minires.train, or a saved state dict")
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--pretrained", metavar="NAME", help="instead of a checkpoint: the weights that ship with "
                                                        "minires for NAME (e.g. resnet20)")
    p.add_argument("--model", help="model name (minires.models.names()); default: the checkpoint's run config")
    p.add_argument("--shortcut", choices=("A", "B"), help="CIFAR v1 shortcut, with --model "
                                                          "(default: the checkpoint's, else A)")
    p.add_argument("--input-shape", type=int, nargs=3, default=(3, 32, 32), metavar=("C", "H", "W"),
                   help="shape of one image")
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="normalise inside the graph as the checkpoint's run did: the input is then RGB in [0, 1]")
    return p


IMAGENET_FAMILY = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                   "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def model_from_checkpoint(checkpoint, name=None, shortcut=None):
    """(model, state dict) for a training checkpoint or a bare state dict.

    The model is named by ``name``, else by the checkpoint's run config; its number of classes
    is read from the ``fc.weight`` of the state.
    """
    state, config = checkpoint, {}
    if isinstance(checkpoint.get("model"), dict):
        state, config = checkpoint["model"], checkpoint.get("config") or {}
    kwargs = {}
    if name is None and config.get("model") is None and config.get("depth") is not None:
        name = "cifar_resnet"  # trained with --depth (and --shortcut)
        kwargs = {"depth": int(config["depth"]), "shortcut": config.get("shortcut", "A")}
    elif name is None:
        name = config.get("model")
    if name is None:
        raise ValueError("the checkpoint does not name its model (a bare state dict?): pass --model, "
                         f"one of {', '.join(models.names())}")
    if shortcut is not None:
        if name in IMAGENET_FAMILY or name.endswith("v2") or name == "preact_resnet":
            raise ValueError(f"--shortcut applies to the CIFAR ResNets v1 (resnet20 ... resnet1202), not {name}")
        kwargs["shortcut"] = shortcut
    if "fc.weight" in state:
        kwargs["num_classes"] = int(state["fc.weight"].shape[0])
    if name in IMAGENET_FAMILY and "conv1.weight" in state:
        kwargs["stem"] = "imagenet" if state["conv1.weight"].shape[-1] == 7 else "cifar"
    model = models.create(name, **kwargs)
    return model, state


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.pretrained is None):
        parser.error("give a checkpoint or --pretrained NAME (one of them)")
    try:
        if args.pretrained:
            checkpoint, args.checkpoint = pretrained_checkpoint(args.pretrained)
        else:
            checkpoint = load(args.checkpoint)
        model, state = model_from_checkpoint(checkpoint, args.model, args.shortcut)
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
        export(model, args.output, input_shape=(1,) + tuple(args.input_shape), opset=args.opset,
               preprocessing=preprocessing)
    except (OSError, ValueError, ImportError, UnsupportedOperatorError) as e:
        print(f"minires.export: error: {e}", file=sys.stderr)
        return 2
    what = "RGB in [0, 1], normalised inside" if args.with_preprocessing else "preprocessed as in training"
    print(f"wrote {args.output} ({type(model).__name__}, opset {args.opset}, input (N, "
          f"{', '.join(map(str, args.input_shape))}), {what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
