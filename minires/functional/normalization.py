"""Batch normalisation (Ioffe & Szegedy 2015) over the channel axis of (N, C) or (N, C, H, W)."""
from .. import backend
from ..autograd import Function
from ..utils import threads
from .dtypes import check_floating


def _axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def per_channel(v, x):
    """(C,) -> a shape that broadcasts against x's channel axis: (1, C) or (1, C, 1, 1)."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def channel_sum(a):
    """Sum over every axis but the channel axis 1: (N, C[, H, W]) -> (C,)."""
    return a.sum(axis=_axes(a))


def channel_dot(a, b):
    """sum over (N, H, W) of a * b, per channel, in one pass without a temporary."""
    xp = backend.get_array_module(a)
    n, c = a.shape[:2]
    return xp.einsum("nci,nci->c", a.reshape(n, c, -1), b.reshape(n, c, -1))


def update_running_stats(running_mean, running_var, mean, var, m, momentum):
    """In place: running = (1 - momentum) running + momentum batch, over M = ``m`` values per
    channel, with the unbiased variance var * M / (M - 1) for running_var (as PyTorch)."""
    running_mean *= 1 - momentum
    running_mean += momentum * mean.astype(running_mean.dtype)
    running_var *= 1 - momentum
    running_var += (momentum * m / max(m - 1, 1)) * var.astype(running_var.dtype)


class BatchNormTrainFunction(Function):
    """Training mode: normalise with the batch's own statistics.

    mean = E[x], var = E[(x - mean)^2] over the M = N*H*W values of each channel (biased),
    xhat = (x - mean) / sqrt(var + eps), y = gamma * xhat + beta.
    Backward (for each channel):
      gbeta = sum(gy), ggamma = sum(gy * xhat),
      gx = gamma / sqrt(var + eps) / M * (M * gy - gbeta - xhat * ggamma).
    The running statistics are updated in place (momentum m): running = (1 - m) running + m batch,
    with the unbiased variance var * M / (M - 1) for running_var.

    Written for few passes over memory: the centred xc = x - mean is kept (xhat = xc * inv_std
    is never stored), the variance is one dot product, and y = xc * (gamma * inv_std) + beta.
    Each pass runs over cache-sized batch slices on every core (``utils.threads.over_batch``),
    the per-channel sums of the slices added up.
    """

    def __init__(self, running_mean=None, running_var=None, momentum=0.1, eps=1e-5):
        self.running_mean, self.running_var = running_mean, running_var
        self.momentum, self.eps = momentum, eps

    def forward(self, x, gamma, beta):
        xp = backend.get_array_module(x)
        m = x.size // x.shape[1]
        # 1/M as a Python float: NumPy 1.x promotes float32 / int above 65535 to float64
        inv_m = 1.0 / m
        mean = threads.over_batch(lambda r: channel_sum(x[r]), x) * inv_m
        xc = xp.empty_like(x)

        def center(r):
            xp.subtract(x[r], per_channel(mean, x), out=xc[r])
            return channel_dot(xc[r], xc[r])  # while xc[r] is in cache

        var = threads.over_batch(center, x) * inv_m
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        scale, shift = per_channel(gamma * inv_std, x), per_channel(beta, x)
        y = xp.empty_like(x)

        def affine(r):
            xp.multiply(xc[r], scale, out=y[r])
            y[r] += shift

        threads.over_batch(affine, x)
        if self.running_mean is not None:
            update_running_stats(self.running_mean, self.running_var, mean, var, m, self.momentum)
        self.running_mean = self.running_var = None
        if any(self.needs_input_grad):
            self.xc, self.inv_std, self.gamma = xc, inv_std, gamma
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        xc, inv_std, gamma = self.xc, self.inv_std, self.gamma
        inv_m = 1.0 / (gy.size // gy.shape[1])  # a float, as in forward
        # (2, C): sum(gy) and sum(gy * xc) per channel, in one pass over gy
        sums = threads.over_batch(lambda r: xp.stack([channel_sum(gy[r]), channel_dot(gy[r], xc[r])]), gy)
        gbeta, ggamma = sums[0], sums[1] * inv_std
        gx = None
        if self.needs_input_grad[0]:
            # gx = a * gy + c * xc + b, per channel, with a = gamma * inv_std,
            # c = -a * inv_std * ggamma / M, b = -a * gbeta / M
            a = gamma * inv_std
            ca = per_channel(a, gy)
            cc = per_channel(-a * inv_std * ggamma * inv_m, gy)
            cb = per_channel(-a * gbeta * inv_m, gy)
            gx = xp.empty_like(gy)

            def combine(r):
                xp.multiply(gy[r], ca, out=gx[r])
                t = xc[r] * cc
                t += cb
                gx[r] += t

            threads.over_batch(combine, gy)
        return gx, ggamma, gbeta


class BatchNormEvalFunction(Function):
    """Evaluation mode: a fixed per-channel affine map from the running statistics.

    y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta = x * scale + shift.
    gx = gy * scale, ggamma = sum(gy * (x - running_mean) / sqrt(running_var + eps)), gbeta = sum(gy).
    """

    def __init__(self, running_mean, running_var, eps=1e-5):
        self.running_mean, self.running_var, self.eps = running_mean, running_var, eps

    def forward(self, x, gamma, beta):
        xp = backend.get_array_module(x)
        inv_std = 1.0 / xp.sqrt(self.running_var.astype(x.dtype) + self.eps)
        scale = gamma * inv_std
        shift = beta - self.running_mean.astype(x.dtype) * scale
        y = x * per_channel(scale, x)
        y += per_channel(shift, x)
        if any(self.needs_input_grad):
            self.x, self.scale, self.inv_std = x, scale, inv_std
        return y

    def backward(self, gy):
        axes = _axes(gy)
        gbeta = gy.sum(axis=axes)
        ggamma = None
        if self.needs_input_grad[1]:
            xhat = (self.x - per_channel(self.running_mean.astype(gy.dtype), gy)) * per_channel(self.inv_std, gy)
            ggamma = (gy * xhat).sum(axis=axes)
        gx = gy * per_channel(self.scale, gy) if self.needs_input_grad[0] else None
        return gx, ggamma, gbeta


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """Batch normalisation of x (N, C) or (N, C, H, W) with per-channel gamma, beta (C,).

    ``training``: normalise with batch statistics and update ``running_mean``/``running_var``
    (raw arrays, changed in place) if given; otherwise normalise with the running statistics.
    """
    check_floating("batch_norm", x, gamma, beta, running_mean, running_var)
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm expects x of shape (N, C) or (N, C, H, W), got {tuple(x.shape)}")
    c = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},) for x of shape {tuple(x.shape)}, "
                             f"got {tuple(v.shape)}")
    if gamma is None or beta is None:
        xp = backend.get_array_module(x)
        gamma = xp.ones(c, x.dtype) if gamma is None else gamma
        beta = xp.zeros(c, x.dtype) if beta is None else beta
    if training:
        if x.size // c < 2:
            raise ValueError(f"batch_norm in training needs more than one value per channel, got x of shape {tuple(x.shape)}")
        return BatchNormTrainFunction(running_mean, running_var, momentum, eps)(x, gamma, beta)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm in evaluation mode needs running_mean and running_var")
    return BatchNormEvalFunction(running_mean, running_var, eps)(x, gamma, beta)
