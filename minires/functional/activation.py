"""Element-wise non-linearities."""
from .. import backend
from ..autograd import Function


class ReLUFunction(Function):
    """y = max(x, 0); gx = gy where y > 0, else 0 (the subgradient 0 is taken at x = 0)."""

    def forward(self, x):
        xp = backend.get_array_module(x)
        y = xp.maximum(x, 0)
        if self.needs_input_grad[0]:
            self.y = y
        return y

    def backward(self, gy):
        return gy * (self.y > 0)  # a boolean factor: several times faster than where() in NumPy


def relu(x):
    """Rectified linear unit, element-wise: max(x, 0)."""
    return ReLUFunction()(x)
