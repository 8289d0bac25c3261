"""Stateful layers (``Module`` subclasses) that hold parameters and buffers, and ``fuse_conv_bn``,
the inference transform that folds each batch norm into the convolution before it."""
from . import init
from .layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Identity,
                     LeakyReLU, Linear, LogSoftmax, MaxPool2d, ReLU, Sequential, Sigmoid, Softmax, Tanh)
from .module import Module, Parameter
from .sync_batchnorm import SyncBatchNorm
from .fusion import fuse_conv_bn

__all__ = ["init", "Module", "Parameter", "Sequential", "Conv2d", "BatchNorm2d", "BatchNorm1d", "ReLU",
           "SyncBatchNorm", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Linear", "Flatten", "Identity",
           "Sigmoid", "Tanh", "LeakyReLU", "Dropout", "Softmax", "LogSoftmax", "fuse_conv_bn"]
