"""The fully connected (affine) layer."""
from ..autograd import Function
from .dtypes import check_floating


class LinearFunction(Function):
    """y = x W^T + b, x (N, in), W (out, in), b (out,) -> y (N, out).

    gx = gy W, gW = gy^T x, gb = sum of gy over the batch.
    """

    def forward(self, x, W, b=None):
        y = x @ W.T
        self.has_bias = b is not None
        if self.has_bias:
            y += b
        if any(self.needs_input_grad):
            self.x, self.W = x, W
        return y

    def backward(self, gy):
        gx = gy @ self.W if self.needs_input_grad[0] else None
        gW = gy.T @ self.x if self.needs_input_grad[1] else None
        if not self.has_bias:
            return gx, gW
        gb = gy.sum(axis=0) if self.needs_input_grad[2] else None
        return gx, gW, gb


def linear(x, W, b=None):
    """Affine map y = x W^T + b with x (N, in), W (out, in), b (out,) or None."""
    check_floating("linear", x, W, b)
    if x.ndim != 2 or W.ndim != 2:
        raise ValueError(f"linear expects x (N, in) and W (out, in), got x {tuple(x.shape)} and W {tuple(W.shape)}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"linear: x has {x.shape[1]} features (shape {tuple(x.shape)}) but W expects "
                         f"{W.shape[1]} (shape {tuple(W.shape)})")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"linear: bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    return LinearFunction()(x, W) if b is None else LinearFunction()(x, W, b)
