"""Stateless operations on Tensors. Each is a ``Function`` subclass named ``...Function`` (the
autograd node: forward and backward on raw arrays) and a lower-case function that checks its
arguments and applies it (``conv2d`` applies ``Conv2dFunction``); ``minires.nn`` wraps them in
Modules that hold the parameters (``nn.Conv2d``).

Files by topic: ``conv`` (convolution, plain and fast), ``linear``, ``normalization`` (batch
norm), ``activation`` (ReLU), ``pooling``, ``shape`` (flatten), ``residual`` (the residual add and
the option-A shortcut), ``loss`` (softmax cross-entropy), ``dtypes`` (the dtypes ops compute in).
"""
from ..utils.conv import col2im, im2col
from .activation import relu
from .conv import conv2d, conv2d_simple
from .linear import linear
from .loss import cross_entropy
from .normalization import batch_norm
from .pooling import avg_pool2d, global_avg_pool2d, max_pool2d
from .residual import add, pad_channels
from .shape import flatten

__all__ = ["relu", "conv2d", "conv2d_simple", "im2col", "col2im", "linear", "flatten", "add", "pad_channels",
           "cross_entropy", "batch_norm", "max_pool2d", "avg_pool2d", "global_avg_pool2d"]
