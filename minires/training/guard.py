"""The NaN guard: a loss or weights that are no longer finite numbers stop the run.

A run whose loss diverges must not write what it has into a checkpoint: ``check_loss`` stops it
before such a loss changes the weights, and ``non_finite`` finds what a checkpoint must not
hold (it is called before every save, see ``snapshot``, and on every loaded checkpoint).
"""
import math

from ..utils.finite import non_finite
from .errors import NonFiniteError

# non_finite lives in utils, so that exporting (minires.onnx) does not import training.
__all__ = ["check_loss", "non_finite"]


def check_loss(value, where, anywhere=None):
    """Raise NonFiniteError when the loss ``value`` (a float) is nan or inf; ``where`` says when,
    e.g. "at epoch 2, iteration 5". ``anywhere``: whether the loss is not finite on any of the
    processes of a distributed run (default: on this one), so that all of them stop together."""
    finite = math.isfinite(value)
    if anywhere is None:
        anywhere = not finite
    if anywhere:
        what = value if not finite else "nan or inf on another process"
        raise NonFiniteError(f"the loss became {what} {where}")
