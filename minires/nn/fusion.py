"""Inference without batch-norm passes: ``fuse_conv_bn(model)``, a copy of an eval-mode model in
which each convolution and the batch norm after it are one convolution.

In evaluation mode batch norm is a fixed per-channel affine map of the convolution's output,
    bn(z)[n, o] = z[n, o] * scale[o] + shift[o],
    scale = gamma / sqrt(running_var + eps),  shift = beta - running_mean * scale,
and a convolution is linear in its weights, so for z = conv(x; W, b)
    bn(conv(x; W, b)) = conv(x; W * scale[:, None, None, None], b * scale + shift)
(b = 0 when the convolution has no bias): one convolution, and none of the two passes over its
output that batch norm costs.

``fuse_conv_bn`` is a transform, as PyTorch's ``fuse_conv_bn_eval`` (and ``fuse_modules``):
it returns a deep copy that shares no array with ``model``, in which each folded convolution
holds W * scale and a bias, and each folded batch norm is an ``Identity``. ``model`` itself is
not changed, and the copy is a snapshot: changing ``model`` afterwards (training it, a new
``eps``, other running statistics) does not reach the copy; fuse again for a new one. The
pairs are those a module declares in its ``conv_bn_pairs`` (a class attribute of (conv name,
batch-norm name) pairs where the batch norm directly follows the convolution, as the ResNet
blocks have) and adjacent (Conv2d, BatchNorm2d) in a ``Sequential``. ``SyncBatchNorm`` is plain
batch norm in eval mode and folds the same way.
"""
import copy

import numpy

from .. import backend
from .layers import BatchNorm2d, Conv2d, Identity, Sequential
from .module import Parameter
from .sync_batchnorm import SyncBatchNorm


def fold_conv_bn(W, b, gamma, beta, running_mean, running_var, eps):
    """The weight (O, C, kh, kw) and bias (O,) of conv followed by eval-mode batch norm.

    Computed in float64 and returned in W's dtype, so float32 folding adds only one rounding.
    """
    xp = backend.get_array_module(W)
    scale = gamma.astype(numpy.float64) / xp.sqrt(running_var.astype(numpy.float64) + eps)  # (O,)
    shift = beta.astype(numpy.float64) - running_mean.astype(numpy.float64) * scale
    Wf = W.astype(numpy.float64) * scale.reshape(-1, 1, 1, 1)
    bf = shift if b is None else b.astype(numpy.float64) * scale + shift
    return Wf.astype(W.dtype), bf.astype(W.dtype)


def conv_bn_pairs(model):
    """(parent, conv name, batch-norm name) for every pair declared by ``model`` or its
    descendants, in module order."""
    for m in model.modules():
        if isinstance(m, Sequential):
            names = list(m._modules)
            declared = zip(names, names[1:])
        else:
            declared = getattr(m, "conv_bn_pairs", ())
        for c, b in declared:
            conv, bn = getattr(m, c), getattr(m, b)
            if (isinstance(conv, Conv2d) and isinstance(bn, (BatchNorm2d, SyncBatchNorm))
                    and conv.out_channels == bn.num_features):
                yield m, c, b


def fuse_conv_bn(model):
    """A new model: a deep copy of the eval-mode ``model`` with each declared conv + batch-norm
    pair folded into the conv and the batch norm replaced by ``Identity`` (see the module's
    docstring). Same outputs in fewer passes; ``model`` is left as it was. The copy has no
    gradients and is in eval mode. Raises ValueError for a model (or part) in training mode,
    whose batch norms use batch statistics that no fixed weights can hold."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"fuse_conv_bn needs a model in eval mode (folding uses the running statistics), "
                         f"but {training[0]} is in training mode: call model.eval() first")
    # A communicator is a handle on the other processes, not data: the copy shares it (in eval
    # mode SyncBatchNorm does not use it), and some (MPI, NCCL, a watchdog thread) cannot be copied.
    shared = {id(m.comm): m.comm for m in model.modules() if isinstance(m, SyncBatchNorm)}
    fused = copy.deepcopy(model, shared)
    for p in fused.parameters():
        p.grad = None
    for parent, c, b in list(conv_bn_pairs(fused)):
        conv, bn = getattr(parent, c), getattr(parent, b)
        W, bias = fold_conv_bn(conv.weight.data, None if conv.bias is None else conv.bias.data, bn.weight.data,
                               bn.bias.data, bn.running_mean, bn.running_var, bn.eps)
        conv.weight.data = W
        if conv.bias is None:
            conv.bias = Parameter(bias)
        else:
            conv.bias.data = bias
        # In the batch norm's place (setattr would move a replaced child to the end of the order).
        parent._modules[b] = Identity().eval()
    return fused
