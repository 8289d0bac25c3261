"""Inference without batch-norm passes: a convolution followed by batch norm folded into one.

In evaluation mode batch norm is a fixed per-channel affine map of the convolution's output,
    bn(z)[n, o] = z[n, o] * scale[o] + shift[o],
    scale = gamma / sqrt(running_var + eps),  shift = beta - running_mean * scale,
and a convolution is linear in its weights, so for z = conv(x; W, b)
    bn(conv(x; W, b)) = conv(x; W * scale[:, None, None, None], b * scale + shift)
(b = 0 when the convolution has no bias): one convolution, and none of the two passes over its
output that batch norm costs.

``model.fuse()`` marks every (convolution, batch norm) pair that a module declares in its
``conv_bn_pairs`` (``Sequential`` finds adjacent pairs itself). The folded path is taken only
when both layers are in evaluation mode and no graph is being recorded (inside ``no_grad()``),
so training, and gradients taken in evaluation mode, always see the unfolded layers. The folded
weights are computed on first use and kept until any array they came from (W, b, gamma, beta,
the running statistics) changes: each folded call compares those arrays with the copies it
folded (a few hundred thousand numbers for ResNet-20, far cheaper than the convolution).
"""
import numpy

from .. import autograd, backend


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


def _same(a, b):
    """True when arrays a and b hold the same values in the same dtype, shape and backend."""
    return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
            and bool(backend.get_array_module(a).array_equal(a, b)))


class ConvBNFold:
    """The link between one Conv2d and the BatchNorm2d after it, with the folded weights."""

    def __init__(self, conv, bn):
        self.conv, self.bn = conv, bn
        self.sources = None  # copies of the arrays the folded weights were made from
        self.W = self.b = None

    def active(self):
        """Whether to run folded now: both layers in eval mode and no graph being recorded."""
        return not self.conv.training and not self.bn.training and not autograd.is_grad_enabled()

    def _current(self):
        conv, bn = self.conv, self.bn
        return [conv.weight.data, None if conv.bias is None else conv.bias.data, bn.weight.data,
                bn.bias.data, bn.running_mean, bn.running_var]

    def weights(self):
        """(W, b) of the folded convolution, refolded when any source array has changed."""
        current = self._current()
        if self.sources is None or not all(
                (a is None and s is None) or (a is not None and s is not None and _same(a, s))
                for a, s in zip(current, self.sources)):
            self.W, self.b = fold_conv_bn(*current, self.bn.eps)
            self.sources = [None if a is None else a.copy() for a in current]
        return self.W, self.b


def conv_bn_pairs(model):
    """(conv, bn) for every pair declared by ``model`` or its descendants, in module order."""
    from .layers import BatchNorm2d, Conv2d, Sequential

    for m in model.modules():
        if isinstance(m, Sequential):
            layers = list(m)
            names = [(a, b) for a, b in zip(layers, layers[1:])]
        else:
            names = [(getattr(m, c), getattr(m, b)) for c, b in m.conv_bn_pairs]
        for conv, bn in names:
            if (isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d)
                    and conv.out_channels == bn.num_features):
                yield conv, bn


def fuse(model, enabled=True):
    """Fold each declared conv + batch-norm pair of ``model`` for inference (or undo it); returns model."""
    for conv, bn in conv_bn_pairs(model):
        fold = ConvBNFold(conv, bn) if enabled else None
        conv.fold = bn.fold = fold
    return model
