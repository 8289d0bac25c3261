"""Stateless operations on Tensors: each is a ``Function`` with a forward and a backward."""
from .activation import relu
from .conv import col2im, conv2d, im2col
from .linear import add, flatten, linear, pad_channels
from .loss import cross_entropy
from .normalization import batch_norm
from .pooling import avg_pool2d, global_avg_pool2d, max_pool2d

__all__ = ["relu", "conv2d", "im2col", "col2im", "linear", "flatten", "add", "pad_channels",
           "cross_entropy", "batch_norm", "max_pool2d", "avg_pool2d", "global_avg_pool2d"]
