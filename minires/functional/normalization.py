"""Batch normalisation (Ioffe & Szegedy 2015) over the channel axis of (N, C) or (N, C, H, W).

On NumPy each pass runs over cache-sized batch slices on every core; on CuPy the per-channel
sums are CuPy reductions and the element-wise passes two kernels (``minires_bn_affine``,
``minires_bn_backward``), written beside their NumPy twins ``bn_affine``/``bn_backward``.
"""
import math

import numpy

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
    channel, with the unbiased variance var * M / (M - 1) for running_var (as PyTorch); nothing
    changes when M = 0.

    ``m`` is a Python int (a count taken from shapes) or a 0-d array (the count summed over
    processes by batch norm's ``reduce``), which stays where it is: reading it back would stall
    a GPU's queue every step."""
    if isinstance(m, int):
        if m == 0:
            return
        f_mean, f_var = momentum, momentum * m / max(m - 1, 1)
    else:
        xp = backend.get_array_module(running_mean)
        f_mean = xp.where(m > 0, momentum, 0.0).astype(running_mean.dtype)
        f_var = (f_mean * m / xp.maximum(m - 1, 1)).astype(running_var.dtype)
    running_mean *= 1 - f_mean
    running_mean += f_mean * mean.astype(running_mean.dtype)
    running_var *= 1 - f_mean
    running_var += f_var * var.astype(running_var.dtype)


def _inverse_count(m, xp, dtype):
    """1 / max(M, 1): a Python float for a count known on the host (NumPy 1.x would promote
    float32 / int above 65535 to float64), else a 0-d array of ``dtype`` computed where M is."""
    if isinstance(m, int):
        return 1.0 / max(m, 1)
    return (1.0 / xp.maximum(m, 1)).astype(dtype)


# y = x * scale[c] + shift[c] for x (N, C, H*W) flattened, c = (i / HW) % C. Training applies it
# to the centred xc with scale = gamma * inv_std, shift = beta (normalise, scale and shift in one
# pass: xc is needed before, for the variance, and kept for backward); evaluation to x itself.
_bn_affine_kernel = backend.ElementwiseKernel(
    "T x, raw T scale, raw T shift, int32 C, int32 HW", "T y",
    "const int c = (i / HW) % C; y = x * scale[c] + shift[c];",
    "minires_bn_affine")


def bn_affine(x, scale, shift):
    """The NumPy twin of ``minires_bn_affine``: x * scale + shift, per channel."""
    return x * per_channel(scale, x) + per_channel(shift, x)


# gx = a gy + (-a inv_std (S_gy_xc inv_std) inv_m) xc + (-a S_gy inv_m), a = gamma inv_std: the
# training backward of BatchNormTrainFunction, its per-channel coefficients computed per element
# from the (C,) vectors rather than by six small launches over C.
_bn_backward_kernel = backend.ElementwiseKernel(
    "T gy, T xc, raw T gamma, raw T inv_std, raw T sum_gy, raw T sum_gy_xc, T inv_m, int32 C, int32 HW",
    "T gx",
    """const int c = (i / HW) % C;
    const T s = inv_std[c];
    const T a = gamma[c] * s;
    gx = gy * a + (xc * (-a * s * (sum_gy_xc[c] * s) * inv_m) + (-a * sum_gy[c] * inv_m));""",
    "minires_bn_backward")


def bn_backward(gy, xc, gamma, inv_std, sum_gy, sum_gy_xc, inv_m):
    """The NumPy twin of ``minires_bn_backward`` (the same operations in the same order)."""
    a = gamma * inv_std
    cc = -a * inv_std * (sum_gy_xc * inv_std) * inv_m
    cb = -a * sum_gy * inv_m
    return gy * per_channel(a, gy) + (xc * per_channel(cc, gy) + per_channel(cb, gy))


def _kernel_sizes(x):
    """(C, H*W) as the int32 scalars of the batch norm kernels."""
    return numpy.int32(x.shape[1]), numpy.int32(math.prod(x.shape[2:]))


def _sum_over_batch(fn, x, shape):
    """The sum of fn(rows) over cache-sized slices of x's batch on every core
    (``threads.over_batch``); zeros of ``shape`` for an empty batch (a process without images)."""
    s = threads.over_batch(fn, x)
    return backend.get_array_module(x).zeros(shape, x.dtype) if s is None else s


class BatchNormTrainFunction(Function):
    """Training mode: normalise with the batch's own statistics.

    mean = E[x], var = E[(x - mean)^2] over the M = N*H*W values of each channel (biased),
    xhat = (x - mean) / sqrt(var + eps), y = gamma * xhat + beta.
    Backward (for each channel):
      gbeta = sum(gy), ggamma = sum(gy * xhat),
      gx = gamma / sqrt(var + eps) / M * (M * gy - gbeta - xhat * ggamma).
    The running statistics are updated in place (momentum m): running = (1 - m) running + m batch,
    with the unbiased variance var * M / (M - 1) for running_var.

    ``reduce``: the hook of synchronised batch norm (``nn.SyncBatchNorm``), for a batch split over
    processes. Each per-channel sum above (and M) is this process's, summed over the processes by
    ``reduce(buf)``, which returns the float64 1-D array ``buf`` summed over them (a communicator's
    ``allreduce``); None: this process holds the whole batch. Backward: with M_r of the M values
    here, this process's gy is the gradient of its own mean loss, and the batch's loss is
    sum_r w_r loss_r with w_r = M_r / M (the weights of ``distributed.GradientAllreducer``), so
    w_r sum(gy_r) and w_r sum(gy_r * xhat_r) are reduced to the batch's gbeta and ggamma, and gx
    is returned in this process's units (divided by w_r):
      gx_r = gamma / sqrt(var + eps) / M_r * (M_r * gy_r - gbeta - xhat_r * ggamma),
    the formula above when w_r = 1. gamma's and beta's gradients stay this process's own sums (the
    gradient all-reduce weighs and adds them as every parameter's). A process with M_r = 0 (a last
    batch smaller than the processes) joins every exchange with zeros; if M = 0, the statistics
    are 0 and the running ones stay.

    Written for few passes over memory: the centred xc = x - mean is kept (xhat = xc * inv_std
    is never stored), the variance is one dot product (of the centred values, not
    E[x^2] - mean^2, which loses float32's digits to cancellation), and y = xc * (gamma *
    inv_std) + beta. Each pass runs over cache-sized batch slices on every core
    (``utils.threads.over_batch``), the per-channel sums of the slices added up. On CuPy
    (``_forward_cupy``, ``_backward_cupy``) the sums are CuPy reductions over the whole batch and y
    and gx one kernel each; a count summed by ``reduce`` stays on the device.
    """

    def __init__(self, running_mean=None, running_var=None, momentum=0.1, eps=1e-5, reduce=None):
        self.running_mean, self.running_var = running_mean, running_var
        self.momentum, self.eps, self.reduce = momentum, eps, reduce

    def _reduce(self, sums, count=0, share=None):
        """(sums, count) of the whole batch from this process's per-channel sums (K, C) and count:
        the same without ``reduce``; else summed by it in one float64 message of K*C + 1 numbers,
        whatever x's dtype (sums over many processes keep their digits), the sums times ``share``
        first if given. The count comes back as a 0-d float64 array, never read on the host."""
        if self.reduce is None:
            return sums, count
        xp = backend.get_array_module(sums)
        buf = xp.empty(sums.size + 1, xp.float64)
        buf[:-1] = sums.reshape(-1)  # (K, C) -> (K*C,)
        if share is not None:
            buf[:-1] *= share
        buf[-1] = count
        buf = self.reduce(buf)
        return buf[:-1].reshape(sums.shape).astype(sums.dtype), buf[-1:].reshape(())  # (K*C,) -> (K, C)

    def forward(self, x, gamma, beta):
        xp = backend.get_array_module(x)
        if xp is not numpy:
            return self._forward_cupy(xp, x, gamma, beta)
        c = x.shape[1]
        m_local = x.size // c
        sum_x = _sum_over_batch(lambda r: channel_sum(x[r]), x, c)
        (sum_x,), m = self._reduce(sum_x[None], m_local)  # (C,) -> (1, C)
        inv_m = _inverse_count(m, xp, x.dtype)
        mean = sum_x * inv_m
        xc = xp.empty_like(x)

        def center(r):
            xp.subtract(x[r], per_channel(mean, x), out=xc[r])
            return channel_dot(xc[r], xc[r])  # while xc[r] is in cache

        (sq,), _ = self._reduce(_sum_over_batch(center, x, c)[None])  # (C,) -> (1, C)
        var = sq * inv_m
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        scale, shift = per_channel(gamma * inv_std, x), per_channel(beta, x)
        y = xp.empty_like(x)

        def affine(r):
            xp.multiply(xc[r], scale, out=y[r])
            y[r] += shift

        threads.over_batch(affine, x)
        return self._finish_forward(x, y, xc, mean, var, inv_std, gamma, m)

    def _forward_cupy(self, xp, x, gamma, beta):
        """The same on CuPy: reductions for the sums, then one kernel for y."""
        x = xp.ascontiguousarray(x)  # the kernels index it as (N, C, H*W)
        c = x.shape[1]
        axes = _axes(x)
        (sum_x,), m = self._reduce(x.sum(axis=axes)[None], x.size // c)  # (C,) -> (1, C)
        inv_m = _inverse_count(m, xp, x.dtype)
        mean = sum_x * inv_m
        xc = x - per_channel(mean, x)
        (sq,), _ = self._reduce(xp.square(xc).sum(axis=axes)[None])  # (C,) -> (1, C)
        var = sq * inv_m
        inv_std = 1.0 / xp.sqrt(var + x.dtype.type(self.eps))
        gamma, beta = gamma.astype(x.dtype, copy=False), beta.astype(x.dtype, copy=False)  # one T per kernel
        y = _bn_affine_kernel(xc, gamma * inv_std, beta, *_kernel_sizes(x))
        return self._finish_forward(x, y, xc, mean, var, inv_std, gamma, m)

    def _finish_forward(self, x, y, xc, mean, var, inv_std, gamma, m):
        if self.running_mean is not None:
            update_running_stats(self.running_mean, self.running_var, mean, var, m, self.momentum)
        self.running_mean = self.running_var = None
        if any(self.needs_input_grad):
            self.xc, self.inv_std, self.gamma, self.m = xc, inv_std, gamma, m
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if xp is not numpy:
            return self._backward_cupy(xp, gy)
        xc, inv_std, gamma = self.xc, self.inv_std, self.gamma
        m_local = gy.size // gy.shape[1]
        # (2, C): sum(gy) and sum(gy * xc) per channel, in one pass over gy
        sums = _sum_over_batch(lambda r: xp.stack([channel_sum(gy[r]), channel_dot(gy[r], xc[r])]), gy,
                               (2, gy.shape[1]))
        gbeta, ggamma = sums[0], sums[1] * inv_std  # this process's: gamma's and beta's gradients
        gx = None
        if self.needs_input_grad[0]:
            (sum_gy, sum_gy_xc), _ = self._reduce(sums, share=self._share(xp, m_local))
            inv_m = 1.0 / max(m_local, 1)  # a float, as in forward
            # gx = a * gy + c * xc + b, per channel, with a = gamma * inv_std,
            # c = -a * inv_std * ggamma / M_r, b = -a * gbeta / M_r (the batch's gbeta, ggamma)
            a = gamma * inv_std
            ca = per_channel(a, gy)
            cc = per_channel(-a * inv_std * (sum_gy_xc * inv_std) * inv_m, gy)
            cb = per_channel(-a * sum_gy * inv_m, gy)
            gx = xp.empty_like(gy)

            def combine(r):
                xp.multiply(gy[r], ca, out=gx[r])
                t = xc[r] * cc
                t += cb
                gx[r] += t

            threads.over_batch(combine, gy)
        return gx, ggamma, gbeta

    def _backward_cupy(self, xp, gy):
        """The same on CuPy: reductions for the sums, then one kernel for gx."""
        gy = xp.ascontiguousarray(gy)  # the kernel indexes it as (N, C, H*W)
        axes = _axes(gy)
        m_local = gy.size // gy.shape[1]
        sums = xp.stack([gy.sum(axis=axes), (gy * self.xc).sum(axis=axes)])  # (2, C)
        gbeta, ggamma = sums[0], sums[1] * self.inv_std
        gx = None
        if self.needs_input_grad[0]:
            (sum_gy, sum_gy_xc), _ = self._reduce(sums, share=self._share(xp, m_local))
            gx = _bn_backward_kernel(gy, self.xc, self.gamma, self.inv_std, sum_gy, sum_gy_xc,
                                     gy.dtype.type(1.0 / max(m_local, 1)), *_kernel_sizes(gy))
        return gx, ggamma, gbeta

    def _share(self, xp, m_local):
        """This process's share M_r / M of the batch, by which its sum(gy) and sum(gy * xc) are
        weighted before they are summed over the processes into the batch's (None: no ``reduce``)."""
        return None if self.reduce is None else m_local / xp.maximum(self.m, 1)


class BatchNormEvalFunction(Function):
    """Evaluation mode: a fixed per-channel affine map from the running statistics.

    y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta = x * scale + shift.
    gx = gy * scale, ggamma = sum(gy * (x - running_mean) / sqrt(running_var + eps)), gbeta = sum(gy).
    """

    def __init__(self, running_mean, running_var, eps=1e-5):
        self.running_mean, self.running_var, self.eps = running_mean, running_var, eps

    def forward(self, x, gamma, beta):
        xp = backend.get_array_module(x)
        inv_std = 1.0 / xp.sqrt(self.running_var.astype(x.dtype) + x.dtype.type(self.eps))
        scale = gamma * inv_std
        shift = beta - self.running_mean.astype(x.dtype) * scale
        if xp is not numpy:
            y = _bn_affine_kernel(xp.ascontiguousarray(x), scale.astype(x.dtype, copy=False),
                                  shift.astype(x.dtype, copy=False), *_kernel_sizes(x))
        else:
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


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5,
               reduce=None):
    """Batch normalisation of x (N, C) or (N, C, H, W) with per-channel gamma, beta (C,).

    ``training``: normalise with batch statistics and update ``running_mean``/``running_var``
    (raw arrays, changed in place) if given; otherwise normalise with the running statistics.
    ``reduce``: in training, for x that is this process's part of a batch split over processes,
    a function that sums a float64 1-D array over them (a communicator's ``allreduce``), so that
    the statistics are the whole batch's (see ``BatchNormTrainFunction``); x may then be empty.
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
        if reduce is None and x.size // c < 2:
            raise ValueError(f"batch_norm in training needs more than one value per channel, got x of shape {tuple(x.shape)}")
        return BatchNormTrainFunction(running_mean, running_var, momentum, eps, reduce)(x, gamma, beta)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm in evaluation mode needs running_mean and running_var")
    return BatchNormEvalFunction(running_mean, running_var, eps)(x, gamma, beta)
