"""Stateless operations on Tensors. Each is a ``Function`` subclass named ``...Function`` (the
autograd node: forward and backward on raw arrays) and a lower-case function that checks its
arguments and applies it (``conv2d`` applies ``Conv2dFunction``); ``minires.nn`` wraps them in
Modules that hold the parameters (``nn.Conv2d``).

Files by topic: ``conv`` (convolution, plain and fast), ``linear``, ``normalization`` (batch
norm), ``activation`` (ReLU, leaky ReLU, sigmoid, tanh, dropout), ``pooling``, ``shape``
(flatten), ``residual`` (the residual add, alone or fused with the ReLU after it, and the
option-A shortcut), ``loss`` (softmax,
log-softmax, cross-entropy, NLL), ``dtypes`` (the dtypes ops
compute in).
"""
from ..utils.conv import col2im, im2col
from .activation import dropout, leaky_relu, relu, sigmoid, tanh
from .conv import conv2d, conv2d_simple
from .linear import linear
from .loss import cross_entropy, log_softmax, nll_loss, softmax
from .normalization import batch_norm
from .pooling import avg_pool2d, global_avg_pool2d, max_pool2d
from .residual import add, add_relu, pad_channels
from .shape import flatten

__all__ = ["relu", "conv2d", "conv2d_simple", "im2col", "col2im", "linear", "flatten", "add", "add_relu", "pad_channels",
           "cross_entropy", "batch_norm", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
           "sigmoid", "tanh", "leaky_relu", "dropout", "softmax", "log_softmax", "nll_loss"]
