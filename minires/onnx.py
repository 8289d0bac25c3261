"""Export a model to ONNX: ``minires.onnx.export(model, "r20.onnx", input_shape=(1, 3, 32, 32))``.

Needs the optional packages ``onnx`` (and ``onnxruntime`` to run the result):
``pip install -e ".[onnx]"``. From the command line: ``python -m minires.export CKPT OUT.onnx``.

How it works: one forward pass of a zero batch in eval mode records the graph of Functions,
the same graph ``backward`` would walk (``minires.tracing``). Each recorded Function becomes
one or two standard ONNX operators, by the rule registered for its class in ``RULES``:

    minires Function                  ONNX
    Conv2dFunction (and ...Winograd)  Conv
    BatchNormEvalFunction             BatchNormalization (the running statistics)
    ReLUFunction                      Relu
    LeakyReLU/Sigmoid/TanhFunction    LeakyRelu, Sigmoid, Tanh
    (Log)SoftmaxFunction              Softmax, LogSoftmax (axis)
    MaxPool2dFunction, AvgPool2d...   MaxPool (dilations, ceil_mode), AveragePool (ceil_mode,
                                      count_include_pad)
    GlobalAvgPool2dFunction           GlobalAveragePool + Flatten
    LinearFunction                    Gemm (transB=1)
    Add, Sub, Mul, Div                Add, Sub, Mul, Div
    Reshape (flatten)                 Flatten, or Reshape with the batch dimension copied
    PadChannelsFunction (option A)    Slice (every stride-th pixel) + Pad (zero channels)

Dropout records nothing in eval mode (it is the identity there), so it exports as nothing.

Parameters and running statistics become initializers named by their state-dict keys
(``layer1.0.conv1.weight``), and nodes are named after the module that owns their weights, so
the exported file reads like the model. All tensors are float32; the batch dimension is
dynamic (``N``). A Function without a rule raises ``UnsupportedOperatorError`` naming it.
"""
import numpy

from . import autograd, backend, tracing
from .functional.activation import LeakyReLUFunction, ReLUFunction, SigmoidFunction, TanhFunction
from .functional.conv import Conv2dFunction, Conv2dSimpleFunction
from .functional.winograd import Conv2dWinogradFunction
from .functional.linear import LinearFunction
from .functional.loss import LogSoftmaxFunction, SoftmaxFunction
from .functional.normalization import BatchNormEvalFunction
from .functional.pooling import AvgPool2dFunction, GlobalAvgPool2dFunction, MaxPool2dFunction
from .functional.residual import PadChannelsFunction
from .data.transforms import unit_scale_stats
from .utils.finite import non_finite
from .utils.io import atomic_write

OPSET = 18  # ai.onnx opset of the exported graphs (ONNX >= 1.13, onnxruntime >= 1.14)
# The opsets whose export rules are tested (onnx.checker and onnxruntime, every rule in each):
# from 11, where Slice takes its steps and Pad its pads as inputs, as the rules write them.
MIN_OPSET, MAX_OPSET = 11, 28


class UnsupportedOperatorError(NotImplementedError):
    """A recorded Function that has no ONNX export rule."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError('ONNX export needs the onnx package: pip install -e ".[onnx]"') from None
    return onnx


class _Builder:
    """Collects the ONNX nodes and initializers of one graph and names its values."""

    def __init__(self, onnx, state_names, opset=OPSET):
        self.onnx, self.state_names, self.opset = onnx, state_names, opset
        self.nodes, self.initializers, self.values = [], [], {}
        self.used = set()

    def fresh(self, base):
        """A value or node name not used before: ``base``, else ``base_1``, ``base_2`` ..."""
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def constant(self, array, base):
        """An initializer holding ``array`` (as float32 when it is floating point); its name."""
        array = backend.to_numpy(array)
        if array.dtype.kind == "f":
            array = array.astype(numpy.float32)
        name = self.fresh(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(numpy.ascontiguousarray(array), name))
        return name

    def state(self, array, fallback):
        """The initializer of a parameter or buffer, named by its state-dict key (made once)."""
        key = id(array)
        if key not in self.values:
            self.values[key] = self.constant(array, self.state_names.get(key, fallback))
        return self.values[key]

    def input_name(self, x):
        """The ONNX value that a recorded Function input refers to."""
        if x.creator is not None:
            return self.values[(id(x.creator), x.creator_index)]
        return self.state(x, "constant")

    def node(self, op, inputs, name, **attributes):
        """Append one node; returns the name of its (single) output."""
        out = self.fresh(name)  # the node and its output share the name (ONNX keeps them apart)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attributes))
        return out


def _owner(b, f, index=1, default="node"):
    """The module path of the parameter at input ``index`` of ``f`` ("layer1.0.conv1" for its
    weight), to name the node after it; ``default`` when it is not a named parameter."""
    if len(f.inputs) > index:
        name = b.state_names.get(id(f.inputs[index]))
        if name is not None:
            return name.rsplit(".", 1)[0]
    return default


# -- the rules: (builder, recorded Function, ONNX names of its inputs) -> ONNX name of its output --

def _conv(b, f, xs):
    kh, kw = f.inputs[1].shape[2:]  # W (O, C, kh, kw)
    return b.node("Conv", xs, _owner(b, f), kernel_shape=[kh, kw], strides=[f.sy, f.sx],
                  pads=[f.ph, f.pw, f.ph, f.pw], dilations=[f.dy, f.dx], group=f.groups)


def _batch_norm(b, f, xs):
    owner = _owner(b, f)
    mean = b.state(f.running_mean, owner + ".running_mean")
    var = b.state(f.running_var, owner + ".running_var")
    return b.node("BatchNormalization", xs + [mean, var], owner, epsilon=float(f.eps))


def _relu(b, f, xs):
    return b.node("Relu", xs, "relu")


def _leaky_relu(b, f, xs):
    return b.node("LeakyRelu", xs, "leakyrelu", alpha=f.negative_slope)


def _softmax(op):
    def rule(b, f, xs):
        last = len(f.output_meta[0][0]) - 1
        if b.opset >= 13 or f.dim == last:
            return b.node(op, xs, op.lower(), axis=f.dim)
        # Before opset 13 (Log)Softmax normalises over all the axes from ``axis`` on, as one:
        # move ``dim`` last, normalise over it, and move it back.
        perm = [a for a in range(last + 1) if a != f.dim] + [f.dim]
        inverse = [perm.index(a) for a in range(last + 1)]
        y = b.node("Transpose", xs, "softmax_dim_last", perm=perm)
        y = b.node(op, [y], op.lower(), axis=last)
        return b.node("Transpose", [y], "softmax_dim_back", perm=inverse)
    return rule


def _max_pool(b, f, xs):
    return b.node("MaxPool", xs, "maxpool", kernel_shape=[f.kh, f.kw], strides=[f.sy, f.sx],
                  pads=[f.ph, f.pw, f.ph, f.pw], dilations=[f.dy, f.dx], ceil_mode=int(f.ceil_mode))


def _avg_pool(b, f, xs):
    return b.node("AveragePool", xs, "avgpool", kernel_shape=[f.kh, f.kw], strides=[f.sy, f.sx],
                  pads=[f.ph, f.pw, f.ph, f.pw], count_include_pad=int(f.count_include_pad),
                  ceil_mode=int(f.ceil_mode))


def _global_avg_pool(b, f, xs):
    y = b.node("GlobalAveragePool", xs, "avgpool")  # (N, C, 1, 1)
    return b.node("Flatten", [y], "flatten", axis=1)  # (N, C), as minires returns it


def _linear(b, f, xs):
    return b.node("Gemm", xs, _owner(b, f), transB=1)  # y = x W^T + b


def _elementwise(op):
    def rule(b, f, xs):
        return b.node(op, xs, op.lower())
    return rule


def _reshape(b, f, xs):
    batch = f.in_shape[0]
    shape = list(f.shape)
    if shape and shape[0] == batch:
        if len(shape) == 2 and shape[1] in (-1, int(numpy.prod(f.in_shape[1:]))):
            return b.node("Flatten", xs, "flatten", axis=1)  # (N, ...) -> (N, prod(...))
        shape[0] = 0  # ONNX Reshape: 0 copies the input's dimension, so the batch stays dynamic
    target = b.constant(numpy.array(shape, numpy.int64), "shape")
    return b.node("Reshape", xs + [target], "reshape")


def _pad_channels(b, f, xs):
    """Option A: y = x[:, :, ::s, ::s] with zero channels before and after."""
    c = f.inputs[0].shape[1]
    y = xs[0]
    if f.stride != 1:
        big = numpy.iinfo(numpy.int64).max  # "to the end" for Slice
        starts = b.constant(numpy.array([0, 0], numpy.int64), "starts")
        ends = b.constant(numpy.array([big, big], numpy.int64), "ends")
        axes = b.constant(numpy.array([2, 3], numpy.int64), "axes")
        steps = b.constant(numpy.array([f.stride, f.stride], numpy.int64), "steps")
        y = b.node("Slice", [y, starts, ends, axes, steps], "shortcut_subsample")
    after = f.out_channels - c - f.before
    pads = b.constant(numpy.array([0, f.before, 0, 0, 0, after, 0, 0], numpy.int64), "pads")  # begins, ends
    return b.node("Pad", [y, pads], "shortcut_pad", mode="constant")


RULES = {
    Conv2dFunction: _conv,
    Conv2dSimpleFunction: _conv,
    Conv2dWinogradFunction: _conv,
    BatchNormEvalFunction: _batch_norm,
    ReLUFunction: _relu,
    LeakyReLUFunction: _leaky_relu,
    SigmoidFunction: _elementwise("Sigmoid"),
    TanhFunction: _elementwise("Tanh"),
    SoftmaxFunction: _softmax("Softmax"),
    LogSoftmaxFunction: _softmax("LogSoftmax"),
    MaxPool2dFunction: _max_pool,
    AvgPool2dFunction: _avg_pool,
    GlobalAvgPool2dFunction: _global_avg_pool,
    LinearFunction: _linear,
    PadChannelsFunction: _pad_channels,
    autograd.Add: _elementwise("Add"),
    autograd.Sub: _elementwise("Sub"),
    autograd.Mul: _elementwise("Mul"),
    autograd.Div: _elementwise("Div"),
    autograd.Reshape: _reshape,
}


def check_opset(opset, flag="opset"):
    """Refuse an opset outside MIN_OPSET..MAX_OPSET, or newer than the installed onnx knows
    (ValueError naming ``flag`` and the range)."""
    known = _onnx().defs.onnx_opset_version()
    high = min(MAX_OPSET, known)
    if isinstance(opset, bool) or not isinstance(opset, (int, numpy.integer)) or not MIN_OPSET <= opset <= high:
        newest = f"; the installed onnx knows up to {known}" if known < MAX_OPSET else ""
        raise ValueError(f"{flag} {opset!r} is not one of {MIN_OPSET}..{high}, the opsets whose export rules are "
                         f"tested (onnx.checker and onnxruntime){newest}")


def to_onnx(model, input_shape=(1, 3, 32, 32), opset=OPSET, dynamic_batch=True, preprocessing=None):
    """The ONNX ModelProto of ``model`` in eval mode for inputs of ``input_shape`` (batch first).

    The graph has one input "input" (N, C, H, W) and one output "output"; with ``dynamic_batch``
    N is a symbolic dimension, so any batch size runs. ``preprocessing`` (a checkpoint's entry,
    see ``minires.data.preprocessing_entry``) puts the input normalisation into the graph: Sub
    (mean / 255) and Div (std / 255) nodes before the network, the constants of
    ``minires.data.unit_scale_stats``, so the input is then images in [0, 1] (``minires.image.to_unit``).
    ``opset``: MIN_OPSET..MAX_OPSET. A model whose weights or running statistics hold nan or inf
    is refused (ValueError naming them).
    """
    onnx = _onnx()
    check_opset(opset)
    input_shape = tuple(int(n) for n in input_shape)
    params = list(model.parameters())
    if not params:
        raise ValueError("to_onnx: the model has no parameters")
    bad = non_finite(model.state_dict())
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(f"cannot export: nan or inf in {', '.join(bad[:3])}{more}; the exported model "
                         f"would output nan")
    xp = backend.get_array_module(params[0].data)
    x, y = tracing.trace(model, xp.zeros(input_shape, params[0].dtype))
    b = _Builder(onnx, tracing.state_names(model), opset)
    b.values[id(x)] = b.fresh("input")
    if preprocessing is not None:
        mean, std = unit_scale_stats(preprocessing["mean"], preprocessing["std"], input_shape[1], "float32")
        if mean is not None:  # (C, 1, 1) or (C, H, W) -> (1, ...): broadcasts over the batch
            b.values[id(x)] = b.node("Sub", [b.values[id(x)], b.constant(mean[None], "preprocessing.mean")],
                                     "normalize_mean")
        if std is not None:
            b.values[id(x)] = b.node("Div", [b.values[id(x)], b.constant(std[None], "preprocessing.std")],
                                     "normalize_std")
    for f in tracing.functions(y):
        rule = RULES.get(type(f))
        if rule is None:
            raise UnsupportedOperatorError(
                f"cannot export to ONNX: the model uses {type(f).__name__} ({type(f).__module__}), "
                f"which has no ONNX export rule; the supported Functions are "
                f"{', '.join(sorted(c.__name__ for c in RULES))}")
        b.values[(id(f), 0)] = rule(b, f, [b.input_name(v) for v in f.inputs])
    out = b.values[(id(y.creator), y.creator_index)]
    b.nodes.append(onnx.helper.make_node("Identity", [out], ["output"], name="output"))

    batch = "N" if dynamic_batch else input_shape[0]
    float32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        b.nodes, type(model).__name__, [onnx.helper.make_tensor_value_info("input", float32, (batch,) + input_shape[1:])],
        [onnx.helper.make_tensor_value_info("output", float32, (batch,) + tuple(y.shape[1:]))], b.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="minires")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model, path, input_shape=(1, 3, 32, 32), opset=OPSET, dynamic_batch=True, preprocessing=None):
    """Write ``model`` as an ONNX inference graph to ``path`` (atomically); returns the ModelProto.

    ``input_shape`` is the shape of one traced batch, e.g. (1, 3, 32, 32); the exported batch
    dimension is dynamic unless ``dynamic_batch=False``. The ONNX model expects the same
    preprocessed input as the minires model (for a model from ``python -m minires.train``: the
    normalisation the run used), unless ``preprocessing`` puts it into the graph (see ``to_onnx``).
    """
    proto = to_onnx(model, input_shape, opset, dynamic_batch, preprocessing)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return proto
