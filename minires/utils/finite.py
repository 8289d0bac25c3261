"""Which arrays hold a nan or an inf: what a checkpoint must not save and an export must not write."""
from ..backend import get_array_module


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
