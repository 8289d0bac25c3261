"""The seeded generator behind minires's random draws (initial weights, dropout masks).

One NumPy generator on the host, so that a seed gives the same numbers on every backend (the
draws are moved to the GPU afterwards). ``minires.manual_seed(seed)`` reseeds it. It sits below
``functional`` and ``nn``, which both draw from it.
"""
import numpy

_rng = numpy.random.default_rng(0)


def manual_seed(seed):
    """Reseed the generator of new parameters and dropout masks."""
    global _rng
    _rng = numpy.random.default_rng(seed)


def get_rng():
    return _rng
