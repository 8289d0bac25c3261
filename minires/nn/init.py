"""Weight initialisation. Weights are drawn on the host from minires's seeded generator
(``minires.rng``: a seed gives the same model on every backend) and then moved to the
parameter's backend."""
import math

import numpy

from .. import backend
from ..rng import get_rng, manual_seed

__all__ = ["manual_seed", "get_rng", "fans", "kaiming_normal_", "uniform_", "constant_"]



def fans(shape):
    """(fan_in, fan_out) of a weight: (in * kh * kw, out * kh * kw) for a conv, (in, out) for a linear."""
    receptive = int(numpy.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fill(param, values):
    param.data = backend.to_backend(values.astype(param.dtype), param.backend)
    return param


def kaiming_normal_(param, mode="fan_in"):
    """He et al. 2015: N(0, 2 / fan) keeps the variance of ReLU activations constant with depth."""
    fan_in, fan_out = fans(param.shape)
    std = math.sqrt(2.0 / (fan_in if mode == "fan_in" else fan_out))
    return _fill(param, get_rng().normal(0.0, std, size=param.shape))


def uniform_(param, bound):
    return _fill(param, get_rng().uniform(-bound, bound, size=param.shape))


def constant_(param, value):
    return _fill(param, numpy.full(param.shape, value))
