"""Softmax cross-entropy on integer class labels."""
import numpy

from .. import backend
from ..autograd import Function, Tensor
from .dtypes import check_floating


class CrossEntropyFunction(Function):
    """loss = -(1/N) sum_n sum_k t[n, k] log softmax(x)[n, k],
    t = (1 - eps) onehot(labels) + eps / K  (label smoothing eps).

    log softmax is computed as x - max - log sum exp(x - max), stable for large logits.
    gx = gy * (softmax(x) - t) / N.
    """

    def __init__(self, labels, label_smoothing=0.0):
        self.labels, self.eps = labels, label_smoothing

    def forward(self, x):
        xp = backend.get_array_module(x)
        n, k = x.shape
        z = x - x.max(axis=1, keepdims=True)
        logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        rows = xp.arange(n)
        nll = -logp[rows, self.labels]
        loss = nll if self.eps == 0 else (1 - self.eps) * nll - self.eps * logp.mean(axis=1)
        if self.needs_input_grad[0]:
            self.logp = logp
        return loss.mean().reshape(())

    def backward(self, gy):
        xp = backend.get_array_module(self.logp)
        n, k = self.logp.shape
        g = xp.exp(self.logp)
        g -= self.eps / k
        g[xp.arange(n), self.labels] -= 1 - self.eps
        g *= gy / n
        return g


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean softmax cross-entropy of ``logits`` (N, K) against integer ``labels`` (N,) in [0, K)."""
    check_floating("cross_entropy", logits)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy expects logits of shape (N, K), got {tuple(logits.shape)}")
    labels = labels.data if isinstance(labels, Tensor) else labels
    xp = backend.get_array_module(logits)
    labels = xp.asarray(labels)
    n, k = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"cross_entropy: labels must have shape ({n},) for logits {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        bad = backend.to_numpy(labels)
        bad = bad[(bad < 0) | (bad >= k)]
        raise ValueError(f"cross_entropy: labels must lie in [0, {k}), found {numpy.unique(bad)[:5].tolist()}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing}")
    return CrossEntropyFunction(labels.astype(xp.int64, copy=False), label_smoothing)(logits)
