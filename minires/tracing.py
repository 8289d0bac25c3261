"""Reading a recorded graph: the Functions behind a tensor, and the names of its leaves.

A forward pass that records (some input requires grad) leaves behind the graph that backward
walks: every computed tensor's ``creator`` Function lists its ``inputs``, each either a leaf
Tensor (a parameter, the input batch, a constant) or an edge to the Function that produced it.
The ONNX exporter (``minires.onnx``) and the graph drawer (``minires.viz``) both read that graph
here, before any backward frees it.
"""
from . import autograd
from .autograd import Tensor


def functions(y):
    """The Functions that computed the tensor ``y``, each after every Function it reads from.

    Raises ValueError when ``y`` was not recorded (computed under ``no_grad`` or from tensors
    that do not require grad) or when a backward has already freed its graph.
    """
    if not isinstance(y, Tensor) or y.creator is None:
        raise ValueError("this tensor has no recorded graph: compute it with grad enabled and from "
                         "parameters or inputs that require grad, and read the graph before backward()")
    try:
        return autograd.post_order(y.creator)
    except RuntimeError:
        raise ValueError("this graph was freed by backward(); read it before calling backward()") from None


def output_shape(f, index=0):
    """The shape of output ``index`` of the recorded Function ``f``."""
    return tuple(f.output_meta[index][0])


def state_names(model):
    """{id: name} for the Parameters and buffer arrays of ``model``, by their state-dict names."""
    names = {}
    for name, p in model.named_parameters():
        names[id(p)] = name
    for name, b in model.named_buffers():
        names.setdefault(id(b), name)
    return names


def trace(model, x):
    """Run ``model`` on ``x`` in eval mode with the graph recorded; return (input, output) Tensors.

    ``x`` (an array or Tensor) is made a leaf that requires grad, so that even a model without
    parameters records every Function. The model's train/eval modes are restored afterwards.
    """
    data = x.data if isinstance(x, Tensor) else x
    x = Tensor(data, requires_grad=True)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        y = model(x)
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(y, Tensor):
        raise ValueError(f"the model returned a {type(y).__name__}, not one Tensor")
    return x, y
