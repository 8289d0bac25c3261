"""``summary(model, input_shape)``: a layer-by-layer table of a model, like torchinfo's.

It runs one forward pass of a batch of one zero image under ``no_grad`` in eval mode and
records, for every module call, the output shape, the parameters and the multiply-adds. Calls
are observed with forward hooks (``Module.register_forward_pre_hook`` opens a row,
``register_forward_hook`` fills it in), removed afterwards with the training modes restored,
so the model is left as it was.

``python -m minires.summary`` (``minires/summary.py``) runs ``main`` below: the function and
the command have one name, so the function lives in this module and ``import minires`` never
imports the command's.
"""
import math
from dataclasses import dataclass, field

import numpy

from . import backend, nn
from .autograd import Tensor, no_grad
from .utils.cli import HelpFormatter

MB = 1e6  # torchinfo's megabyte


@dataclass
class LayerInfo:
    """One module call: its dotted ``name`` ("" for the model), class ``type``, nesting ``depth``
    (0 for the model), ``output_shape`` (batch first), ``params`` (its own and its children's)
    and ``mult_adds`` (for the whole batch, its children's included)."""

    name: str
    type: str
    depth: int
    output_shape: list = None
    params: int = 0
    mult_adds: int = 0


@dataclass
class ModelSummary:
    """What ``summary`` measured. Sizes are in MB (10^6 bytes); ``mult_adds`` is for ``batch_size`` images."""

    rows: list = field(default_factory=list)
    batch_size: int = 1
    total_params: int = 0
    trainable_params: int = 0
    mult_adds: int = 0
    input_size_mb: float = 0.0
    forward_backward_size_mb: float = 0.0
    params_size_mb: float = 0.0
    total_size_mb: float = 0.0
    max_depth: int = None

    @property
    def non_trainable_params(self):
        return self.total_params - self.trainable_params

    def __repr__(self):
        # One line: summary() has printed the table already (str() gives it again), and a
        # notebook would otherwise show every row's dataclass after it.
        model = self.rows[0].type if self.rows else "model"
        return (f"<ModelSummary of {model}: {self.total_params:,} parameters, {self.mult_adds / 1e6:,.2f} M "
                f"mult-adds for {self.batch_size} image(s), {self.total_size_mb:.2f} MB; print() it for the table>")

    def __str__(self):
        widths = (48, 22, 14, 16)
        rule = "=" * sum(widths)
        lines = [rule, _columns(("Layer (type (name))", "Output Shape", "Param #", "Mult-Adds"), widths), rule]
        for row in self.rows:
            if self.max_depth is not None and row.depth > self.max_depth:
                continue
            label = row.type if row.depth == 0 else f"{row.type} ({row.name.rsplit('.', 1)[-1]})"
            lines.append(_columns(("  " * row.depth + label, str(row.output_shape),
                                   f"{row.params:,}" if row.params else "--",
                                   f"{row.mult_adds:,}" if row.mult_adds else "--"), widths))
        lines += [rule,
                  f"Total params: {self.total_params:,}",
                  f"Trainable params: {self.trainable_params:,}",
                  f"Non-trainable params: {self.non_trainable_params:,}",
                  f"Total mult-adds (M): {self.mult_adds / 1e6:.2f}",
                  rule,
                  f"Input size (MB): {self.input_size_mb:.2f}",
                  f"Forward/backward pass size (MB): {self.forward_backward_size_mb:.2f}",
                  f"Params size (MB): {self.params_size_mb:.2f}",
                  f"Estimated Total Size (MB): {self.total_size_mb:.2f}",
                  rule]
        return "\n".join(lines)


def _columns(cells, widths):
    return "".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()


def _mult_adds_per_image(module, out):
    """Multiply-adds of one image through ``module``: conv Ho*Wo*O*C*kh*kw, linear in*out (bias not counted)."""
    if isinstance(module, nn.Conv2d):
        return int(numpy.prod(out.shape[1:])) * (module.weight.size // module.out_channels)
    if isinstance(module, nn.Linear):
        return int(numpy.prod(out.shape[1:])) * module.in_features
    return 0


def _shape(out, batch_size):
    """The output's shape with the batch of one replaced by ``batch_size`` (a list per output for tuples)."""
    if isinstance(out, (tuple, list)):
        return [_shape(o, batch_size) for o in out]
    shape = list(getattr(out, "shape", ()))
    return [batch_size] + shape[1:] if shape else shape


def _output_bytes(out, batch_size):
    if isinstance(out, (tuple, list)):
        return sum(_output_bytes(o, batch_size) for o in out)
    return out.data.nbytes * batch_size if isinstance(out, Tensor) else 0


def summary(model, input_shape, batch_size=1, print_fn=print, dtype="float32", max_depth=None):
    """Print and return a ``ModelSummary`` of ``model`` for inputs of shape (batch_size, *input_shape).

    ``input_shape`` excludes the batch, e.g. (3, 32, 32). The forward pass runs on one image on
    the model's backend; shapes, mult-adds and activation sizes are scaled to ``batch_size``.
    Forward/backward pass size counts every leaf layer's output twice (values and gradients),
    as torchinfo does. ``max_depth`` limits the printed rows (not the figures); ``print_fn=None``
    prints nothing.
    """
    input_shape = tuple(int(n) for n in input_shape)
    params = list(model.parameters())
    xp = backend.get_array_module(params[0].data) if params else backend.default_module()
    x = Tensor(xp.zeros((1,) + input_shape, dtype=dtype))

    names = {}
    for name, m in model.named_modules():
        names.setdefault(id(m), (name, m))
    modules = [m for _, m in names.values()]

    rows, stack, activations = [], [], [0]

    def open_row(m, args):
        name = names[id(m)][0]
        row = LayerInfo(name, type(m).__name__, len(stack), params=sum(p.size for p in m.parameters()))
        rows.append(row)
        stack.append(row)

    def close_row(m, args, out):
        row = stack.pop()
        row.output_shape = _shape(out, batch_size)
        if isinstance(out, Tensor):
            work = _mult_adds_per_image(m, out) * batch_size
            row.mult_adds += work
            for parent in stack:
                parent.mult_adds += work
        if not m._modules:  # a leaf: its output is an activation kept for backward
            activations[0] += _output_bytes(out, batch_size)

    training = [(m, m.training) for m in modules]
    handles = []
    try:
        for m in modules:
            handles += [m.register_forward_pre_hook(open_row), m.register_forward_hook(close_row)]
        model.eval()
        with no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in training:
            m.training = mode

    result = ModelSummary(rows=rows, batch_size=batch_size, max_depth=max_depth)
    result.total_params = sum(p.size for p in params)
    result.trainable_params = sum(p.size for p in params if p.requires_grad)
    result.mult_adds = rows[0].mult_adds if rows else 0
    result.input_size_mb = x.data.nbytes * batch_size / MB
    result.forward_backward_size_mb = 2 * activations[0] / MB
    result.params_size_mb = sum(p.data.nbytes for p in params) / MB
    result.total_size_mb = result.input_size_mb + result.forward_backward_size_mb + result.params_size_mb
    if print_fn is not None:
        print_fn(str(result))
    return result


def check_input_shape(shape, flag="--input-shape"):
    """Refuse an image shape (C, H, W) with a size below 1, or one whose tracing cannot fit in
    this machine's memory: the image in float32 and the im2col copy that the first convolution
    (3x3 or larger) makes of it, 10 times the image, before any other activation."""
    words = " ".join(map(str, shape))
    if any(n < 1 for n in shape):
        raise ValueError(f"{flag} {words}: every size must be at least 1")
    from .train import physical_memory  # the command line's estimate of what fits

    image = 4 * math.prod(shape)
    have = physical_memory()
    if have is not None and 10 * image > have:
        raise ValueError(f"{flag} {words}: one image is {image / 2**30:,.1f} GiB in float32 and tracing it needs "
                         f"at least 10 times that; this machine has {have / 2**30:,.0f} GiB")


def main(argv=None):
    """``python -m minires.summary --model resnet20 --graph r20.svg``: the table, and the graph drawn."""
    import argparse
    import sys

    from . import models, viz

    p = argparse.ArgumentParser(prog="python -m minires.summary",
                                description="Print a model's layer table and optionally draw its graph.",
                                formatter_class=HelpFormatter)
    p.add_argument("--model", default="resnet20", help="a name from minires.models.names()")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="the shape of one input image (default: the model's, 3 32 32 for the CIFAR stem)")
    p.add_argument("--max-depth", type=int, help="print rows nested at most this deep (default: all)")
    p.add_argument("--graph", metavar="FILE", help="draw the eval-mode graph to FILE: .svg, .png or .pdf "
                                                   "(needs Graphviz), or .dot (DOT text)")
    p.add_argument("--no-collapse", action="store_true", help="draw every block, not each run of identical ones once")
    args = p.parse_args(argv)
    try:
        if args.input_shape is None:
            args.input_shape = models.info(args.model).input_size()
        check_input_shape(args.input_shape)
        model = models.create(args.model)
        try:
            summary(model, args.input_shape, max_depth=args.max_depth)
            if args.graph:
                dot = viz.model_graph(model, (1,) + tuple(args.input_shape), collapse=not args.no_collapse)
                print(f"wrote {viz.render(dot, args.graph)}")
        except MemoryError as e:
            raise ValueError(f"out of memory tracing one image of --input-shape "
                             f"{' '.join(map(str, args.input_shape))} ({e}); try a smaller one") from None
    except (ValueError, OSError, ImportError, RuntimeError) as e:
        print(f"minires.summary: error: {e}", file=sys.stderr)
        return 2
    return 0

