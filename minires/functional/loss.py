"""Softmax and log-softmax, and the losses on integer class labels: softmax cross-entropy and
the negative log-likelihood of log-probabilities (``nll_loss(log_softmax(x), y)`` equals
``cross_entropy(x, y)``).

The losses take PyTorch's options: ``weight`` (one per class), ``ignore_index`` (a label whose
rows count for nothing) and ``reduction``. With ``reduction="mean"`` the sum is divided by the
total weight of the counted rows, sum_n w[labels[n]] (N without weights), as PyTorch does; a
batch with nothing counted gives NaN and zero gradients, as there.

On CuPy, cross-entropy's element-wise parts are kernels (``minires_softmax_exp``,
``minires_ce_rows``, ``minires_ce_backward``) beside their NumPy twins, its row maxima and sums
CuPy reductions; the labels of both losses are not checked on the host there (that would read
them back every step): a label outside [0, K) that is not ``ignore_index`` makes its row's loss
and gradient NaN.
"""
import numpy

from .. import backend
from ..autograd import Function, Tensor
from .dtypes import check_floating

REDUCTIONS = ("mean", "sum", "none")


def _log_softmax(x, axis):
    """x - max - log sum exp(x - max) along ``axis``: stable for large logits."""
    xp = backend.get_array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


class SoftmaxFunction(Function):
    """y = exp(x) / sum exp(x) along ``dim`` (computed from x - max, so exp never overflows);
    gx = y * (gy - sum(gy * y)) along ``dim``."""

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        xp = backend.get_array_module(x)
        y = xp.exp(x - x.max(axis=self.dim, keepdims=True))
        y /= y.sum(axis=self.dim, keepdims=True)
        if self.needs_input_grad[0]:
            self.y = y
        return y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


class LogSoftmaxFunction(Function):
    """y = x - log sum exp(x) along ``dim`` (as x - max - log sum exp(x - max));
    gx = gy - exp(y) * sum(gy) along ``dim``."""

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        y = _log_softmax(x, self.dim)
        if self.needs_input_grad[0]:
            self.y = y
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.dim, keepdims=True)


class _ClassLossFunction(Function):
    """What the two losses share: which rows count, with what weight, and the reduction.

    labels (N,) int64; weight (K,) or None; rows whose label is ``ignore_index`` count 0.
    """

    def __init__(self, labels, weight=None, ignore_index=-100, reduction="mean"):
        self.labels, self.weight, self.ignore_index, self.reduction = labels, weight, ignore_index, reduction

    def targets(self, x):
        """(target, counted, w_target), each (N,): the label (0 where ignored, so it can index),
        1.0 or 0.0 whether the row counts, and its class weight (0 where ignored)."""
        xp = backend.get_array_module(x)
        valid = self.labels != self.ignore_index
        target = xp.where(valid, self.labels, 0)
        counted = valid.astype(x.dtype)
        w_target = counted if self.weight is None else self.weight[target] * counted
        return target, counted, w_target

    def reduce(self, loss, w_target):
        """loss (N,) -> the loss as ``reduction`` asks; keeps the mean's denominator for backward."""
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum().reshape(())
        self.denominator = w_target.sum()
        with numpy.errstate(invalid="ignore", divide="ignore"):  # nothing counted: NaN, as in PyTorch
            return (loss.sum() / self.denominator).reshape(())

    def scale(self, gy):
        """d(reduced loss) / d(loss[n]) times gy, shaped to multiply (N, K) row by row."""
        xp = backend.get_array_module(gy)
        if self.reduction == "none":
            return gy.reshape(-1, 1)  # (N,) -> (N, 1)
        if self.reduction == "sum":
            return gy
        d = self.denominator
        return gy / xp.where(d == 0, 1, d)  # nothing counted: every row's term is 0, so is the gradient


# e = exp(x - mx[n]) for logits x (N, K) and their row maxima mx (N,)
_softmax_exp_kernel = backend.ElementwiseKernel(
    "T x, raw T mx, int32 K", "T e", "e = exp(x - mx[i / K])", "minires_softmax_exp")


def softmax_exp(x, mx):
    """The NumPy twin of ``minires_softmax_exp``."""
    return numpy.exp(x - mx[:, None])  # (N,) -> (N, 1)


# One row n of cross-entropy (CrossEntropyFunction's loss[n] with t = y[n], w_t = w[t]):
#   lse = mx + log s (s = sum_k exp(x[n, k] - mx)),
#   loss = -(1 - eps) w_t (x[n, t] - lse) - (eps / K) (xw - wsum lse), xw = sum_k w[k] x[n, k];
# loss = wt = 0 for a row labelled ignore_index, NaN for another label outside [0, K) (there is
# no host check of the labels on CuPy).
_ce_rows_kernel = backend.ElementwiseKernel(
    "int64 y, T mx, T s, T xw, raw T x, raw T w, raw T wsum, int32 K, int64 ignore_index, T eps",
    "T loss, T lse, T wt",
    """lse = mx + log(s);
    if (y == ignore_index) {
        loss = 0;
        wt = 0;
    } else if (y < 0 || y >= K) {
        loss = wt = (T)nan("");
    } else {
        const T w_t = w[y];
        T l = -((T)1 - eps) * w_t * (x[i * K + y] - lse);
        if (eps != (T)0) l -= eps / K * (xw - wsum[0] * lse);
        loss = l;
        wt = w_t;
    }""",
    "minires_ce_rows")


def _label_masks(y, k, ignore_index):
    """(counted, inside, t) of labels y: not ignore_index, in [0, k), and y where inside else 0."""
    inside = (y >= 0) & (y < k)
    return y != ignore_index, inside, numpy.where(inside, y, 0)


def ce_rows(y, mx, s, xw, x, w, wsum, ignore_index, eps):
    """The NumPy twin of ``minires_ce_rows``: (loss, lse, wt), each (N,)."""
    n, k = x.shape
    counted, inside, t = _label_masks(y, k, ignore_index)
    lse = mx + numpy.log(s)
    w_t = w[t]
    loss = -(1 - eps) * w_t * (x[numpy.arange(n), t] - lse)
    if eps != 0:
        loss -= eps / k * (xw - wsum[0] * lse)
    nan = numpy.array(numpy.nan, x.dtype)
    loss = numpy.where(counted, numpy.where(inside, loss, nan), 0).astype(x.dtype)
    wt = numpy.where(counted, numpy.where(inside, w_t, nan), 0).astype(x.dtype)
    return loss, lse, wt


# gx[n, k] = g (t_sum p[n, k] - t[n, k]) with p = exp(x - lse[n]) the softmax, t[n, k] the target
# weights of CrossEntropyFunction and t_sum = sum_k t[n, k]; g = g[n] (reduction "none") or g[0];
# 0 in a row labelled ignore_index, NaN in a row with another label outside [0, K).
_ce_backward_kernel = backend.ElementwiseKernel(
    "T x, raw T lse, raw int64 y, raw T w, raw T wsum, raw T g, int32 K, int64 ignore_index, T eps, "
    "int32 g_per_row",
    "T gx",
    """const ptrdiff_t n = i / K;
    const int k = i % K;
    const long long t = y[n];
    if (t == ignore_index) {
        gx = 0;
    } else if (t < 0 || t >= K) {
        gx = (T)nan("");
    } else {
        const T p = exp(x - lse[n]);
        const T t_sum = ((T)1 - eps) * w[t] + eps / K * wsum[0];
        T t_k = eps / K * w[k];
        if (k == t) t_k += ((T)1 - eps) * w[t];
        gx = (t_sum * p - t_k) * g[g_per_row ? n : 0];
    }""",
    "minires_ce_backward")


def ce_backward(x, lse, y, w, wsum, g, ignore_index, eps, g_per_row):
    """The NumPy twin of ``minires_ce_backward``: gx (N, K)."""
    n, k = x.shape
    counted, inside, t = _label_masks(y, k, ignore_index)
    p = numpy.exp(x - lse[:, None])  # (N,) -> (N, 1)
    t_sum = (1 - eps) * w[t] + eps / k * wsum[0]
    t_k = numpy.repeat((eps / k * w)[None], n, axis=0)  # (K,) -> (N, K)
    t_k[numpy.arange(n), t] += (1 - eps) * w[t]
    g = g.reshape(-1, 1) if g_per_row else g[0]  # (N,) -> (N, 1)
    gx = (t_sum[:, None] * p - t_k) * g  # t_sum (N,) -> (N, 1)
    nan = numpy.array(numpy.nan, x.dtype)
    return numpy.where(counted[:, None], numpy.where(inside[:, None], gx, nan), 0).astype(x.dtype)


class CrossEntropyFunction(_ClassLossFunction):
    """loss[n] = -sum_k t[n, k] log softmax(x)[n, k] for x (N, K), with the target weights
    t[n, k] = (1 - eps) w[y_n] onehot(y_n)[k] + (eps / K) w[k]   (label smoothing eps; w = 1
    without ``weight``; t[n] = 0 for a row labelled ``ignore_index``).

    gx[n] = (sum_k t[n, k]) softmax(x)[n] - t[n], times d(reduced)/d(loss[n]): gy, or gy over
    the mean's denominator sum_n w[y_n] (N when nothing is weighted or ignored, where
    gx = gy (softmax(x) - t) / N).
    """

    def __init__(self, labels, label_smoothing=0.0, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(labels, weight, ignore_index, reduction)
        self.eps = label_smoothing

    def forward(self, x):
        xp = backend.get_array_module(x)
        if xp is not numpy:
            return self._forward_cupy(xp, x)
        n, k = x.shape
        logp = _log_softmax(x, 1)
        target, counted, w_target = self.targets(x)
        loss = -(1 - self.eps) * w_target * logp[xp.arange(n), target]
        if self.eps != 0:
            smooth = logp.sum(axis=1) if self.weight is None else logp @ self.weight  # (N,)
            loss -= (self.eps / k) * counted * smooth
        if self.needs_input_grad[0]:
            self.logp, self.target, self.counted, self.w_target = logp, target, counted, w_target
        return self.reduce(loss, w_target)

    def _forward_cupy(self, xp, x):
        """The same on CuPy: row maxima, sums and x @ w by CuPy, the rest in one kernel over the
        logits (the shifted exponentials) and one over the rows (loss, log-sum-exp, weight)."""
        x = xp.ascontiguousarray(x)  # the kernels index it as (N, K)
        n, k = x.shape
        w = xp.ones(k, x.dtype) if self.weight is None else self.weight
        wsum = w.sum().reshape(1)  # () -> (1,): a raw kernel argument
        mx = x.max(axis=1)
        s = _softmax_exp_kernel(x, mx, numpy.int32(k)).sum(axis=1)
        self.labels = xp.ascontiguousarray(self.labels)
        loss, lse, w_target = _ce_rows_kernel(self.labels, mx, s, x @ w, x, w, wsum, numpy.int32(k),
                                              numpy.int64(self.ignore_index), x.dtype.type(self.eps))
        if self.needs_input_grad[0]:
            self.x, self.lse, self.w, self.wsum = x, lse, w, wsum
        return self.reduce(loss, w_target)

    def _backward_cupy(self, xp, gy):
        x = self.x
        g = xp.ascontiguousarray(self.scale(gy), dtype=x.dtype).reshape(-1)  # (N,) or (1,)
        return _ce_backward_kernel(x, self.lse, self.labels, self.w, self.wsum, g, numpy.int32(x.shape[1]),
                                   numpy.int64(self.ignore_index), x.dtype.type(self.eps),
                                   numpy.int32(self.reduction == "none"))

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if xp is not numpy:
            return self._backward_cupy(xp, gy)
        n, k = self.logp.shape
        eps, counted = self.eps, self.counted
        w_sum = k if self.weight is None else self.weight.sum()
        t_sum = (1 - eps) * self.w_target + (eps / k) * w_sum * counted  # (N,): sum_k t[n, k]
        g = xp.exp(self.logp)
        g *= t_sum.reshape(n, 1)
        if eps != 0:
            w = 1 if self.weight is None else self.weight.reshape(1, k)
            g -= (eps / k) * counted.reshape(n, 1) * w
        g[xp.arange(n), self.target] -= (1 - eps) * self.w_target
        g *= self.scale(gy)
        return g


class NLLLossFunction(_ClassLossFunction):
    """loss[n] = -w[y_n] x[n, y_n] for log-probabilities x (N, K) (0 for a row labelled
    ``ignore_index``); gx[n, y_n] = -w[y_n] times d(reduced)/d(loss[n]), 0 elsewhere.

    On CuPy the labels are not checked on the host: a row whose label lies outside [0, K) and is
    not ``ignore_index`` has a NaN loss, weight and gradient row (as cross-entropy's there)."""

    def forward(self, x):
        xp = backend.get_array_module(x)
        n, k = x.shape
        self.bad = None
        if xp is not numpy:
            self.bad = (self.labels != self.ignore_index) & ((self.labels < 0) | (self.labels >= k))
            self.labels = xp.where(self.bad, 0, self.labels)  # no read past the row or the weights
        target, _, w_target = self.targets(x)
        if self.bad is not None:
            w_target = xp.where(self.bad, x.dtype.type(numpy.nan), w_target)
        loss = -w_target * x[xp.arange(n), target]
        if self.needs_input_grad[0]:
            self.shape, self.target, self.w_target = x.shape, target, w_target
        return self.reduce(loss, w_target)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        n = self.shape[0]
        g = xp.zeros(self.shape, self.w_target.dtype)
        g[xp.arange(n), self.target] = -self.w_target
        g *= self.scale(gy)
        if self.bad is not None:
            g = xp.where(self.bad[:, None], g.dtype.type(numpy.nan), g)  # (N,) -> (N, 1)
        return g


def _dim(x, dim, name):
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{name}: dim {dim} is out of range for a tensor of shape {tuple(x.shape)}")
    return dim % x.ndim


def softmax(x, dim=-1):
    """exp(x) / sum exp(x) along ``dim``: probabilities that sum to 1 (from logits)."""
    check_floating("softmax", x)
    return SoftmaxFunction(_dim(x, dim, "softmax"))(x)


def log_softmax(x, dim=-1):
    """log softmax(x) along ``dim``, computed stably: log-probabilities (for ``nll_loss``)."""
    check_floating("log_softmax", x)
    return LogSoftmaxFunction(_dim(x, dim, "log_softmax"))(x)


def _class_loss_args(name, x, labels, weight, ignore_index, reduction, check_range=True):
    """Checked labels (N,) int64 and weight (K,) of x's backend and dtype (or None); their range
    only if ``check_range`` (it reads them on the host)."""
    check_floating(name, x)
    if x.ndim != 2:
        raise ValueError(f"{name} expects {'logits' if name == 'cross_entropy' else 'log_probs'} of shape (N, K), "
                         f"got {tuple(x.shape)}")
    labels = labels.data if isinstance(labels, Tensor) else labels
    xp = backend.get_array_module(x)
    labels = xp.asarray(labels)
    n, k = x.shape
    if labels.shape != (n,):
        raise ValueError(f"{name}: labels must have shape ({n},) for input {tuple(x.shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    outside = ((labels < 0) | (labels >= k)) & (labels != ignore_index) if check_range else None
    if check_range and n and bool(outside.any()):
        bad = backend.to_numpy(labels[outside])
        raise ValueError(f"{name}: labels must lie in [0, {k}) or equal ignore_index ({ignore_index}), "
                         f"found {numpy.unique(bad)[:5].tolist()}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if weight is not None:
        weight = xp.asarray(weight.data if isinstance(weight, Tensor) else weight, dtype=x.dtype)
        if weight.shape != (k,):
            raise ValueError(f"{name}: weight must have shape ({k},) (one per class), got {tuple(weight.shape)}")
    return labels.astype(xp.int64, copy=False), weight


def cross_entropy(logits, labels, label_smoothing=0.0, weight=None, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy of ``logits`` (N, K) against integer ``labels`` (N,) in [0, K), as
    ``torch.nn.functional.cross_entropy``: ``weight`` (K,) per class, rows labelled
    ``ignore_index`` skipped, ``reduction`` "mean" (over the weight of the counted rows), "sum"
    or "none" (the loss of each row, (N,)).

    A label outside [0, K) that is not ``ignore_index`` raises on NumPy; on CuPy it makes its
    row's loss NaN instead (checking would read the labels back to the host every step)."""
    on_numpy = backend.get_array_module(logits) is numpy
    labels, weight = _class_loss_args("cross_entropy", logits, labels, weight, ignore_index, reduction,
                                      check_range=on_numpy)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing}")
    return CrossEntropyFunction(labels, label_smoothing, weight, ignore_index, reduction)(logits)


def nll_loss(log_probs, labels, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of ``log_probs`` (N, K) (e.g. ``log_softmax(logits)``) at integer
    ``labels`` (N,), with ``cross_entropy``'s ``weight``, ``ignore_index`` and ``reduction``.

    A label outside [0, K) that is not ``ignore_index`` raises on NumPy; on CuPy its row's loss
    and gradient are NaN instead, as ``cross_entropy``'s."""
    on_numpy = backend.get_array_module(log_probs) is numpy
    labels, weight = _class_loss_args("nll_loss", log_probs, labels, weight, ignore_index, reduction,
                                      check_range=on_numpy)
    return NLLLossFunction(labels, weight, ignore_index, reduction)(log_probs)
