"""The NaN guard: a loss or weights that are no longer finite numbers stop the run.

A run whose loss diverges must not write what it has into a checkpoint: ``check_loss`` stops it
before such a loss changes the weights, and ``non_finite`` finds what a checkpoint must not
hold (it is called before every save, see ``snapshot``, and on every loaded checkpoint).
"""
import math

from ..backend import get_array_module
from .errors import NonFiniteError


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


def non_finite(arrays):
    """The names of the floating-point arrays in ``arrays`` (a dict name -> array, NumPy or CuPy)
    that hold a nan or an inf."""
    bad = []
    for name, x in arrays.items():
        if getattr(x, "dtype", None) is not None and x.dtype.kind in "fc":
            xp = get_array_module(x)
            if not bool(xp.isfinite(x).all()):
                bad.append(name)
    return bad

