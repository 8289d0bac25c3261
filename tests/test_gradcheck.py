"""Tests of the gradient checker itself: it must pass correct backwards and catch wrong ones."""
import re

import numpy as np
import pytest

from minires import Function, GradcheckError, Tensor, gradcheck
from minires import backend as mb

MODES = ["full", "directional"]


def leaf(backend, a, requires_grad=True):
    return Tensor(mb.to_backend(np.asarray(a, dtype=np.float64), backend), requires_grad=requires_grad)


def host(a):
    """A NumPy copy of a NumPy or CuPy array, independent of minires.backend.to_numpy."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


# --- test-local Functions ---------------------------------------------------------------------

class Cube(Function):
    """y = x^3 with a selectable backward: correct, sign flipped or off by a factor 2."""

    def __init__(self, bug=None):
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x ** 3

    def backward(self, gy):
        g = 3 * self.x ** 2 * gy
        if self.bug == "sign":
            return -g
        if self.bug == "factor2":
            return 2 * g
        return g


class BroadcastMul(Function):
    """y = a * b with b broadcast over a's leading axis.

    ``bug``: None (correct: b's gradient sums over the broadcast copies), "first" (only the first
    copy's gradient: right shape, wrong values), "unreduced" (the un-summed gradient, wrong shape).
    """

    def __init__(self, bug=None):
        self.bug = bug

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        ga = gy * self.b
        gb_full = gy * self.a
        if self.bug == "first":
            gb = gb_full[:1]
        elif self.bug == "unreduced":
            gb = gb_full
        else:
            gb = gb_full.sum(axis=0, keepdims=True)
        return ga, gb


class MixesElements(Function):
    """y = 2 x, with a backward that is right only when the upstream gradient is uniform."""

    def forward(self, x):
        return 2 * x

    def backward(self, gy):
        return 2 * gy.mean() * (gy * 0 + 1)


def _numbers(message):
    m = re.search(r"numeric (\S+) vs analytic (\S+)", message)
    assert m, f"message does not show numeric and analytic values: {message}"
    return float(m.group(1)), float(m.group(2).rstrip(";,")), m


# --- correct backwards pass -------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_correct_backward_passes(backend, mode):
    rng = np.random.default_rng(0)
    x = leaf(backend, rng.uniform(0.5, 1.5, (3, 4)))
    assert gradcheck(lambda t: Cube()(t), [x], mode=mode) is True
    a = leaf(backend, rng.standard_normal((3, 4)))
    b = leaf(backend, rng.standard_normal((1, 4)))
    assert gradcheck(lambda p, q: BroadcastMul()(p, q), [a, b], mode=mode) is True


@pytest.mark.parametrize("mode", MODES)
def test_inputs_are_restored_after_check(backend, mode):
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0.5, 1.5, (2, 5))
    x = leaf(backend, x0)
    gradcheck(lambda t: Cube()(t), [x], mode=mode)
    np.testing.assert_array_equal(host(x.data), x0)


# --- wrong backwards are caught, with numbers in the message ----------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bug", ["sign", "factor2"])
def test_wrong_backward_raises(backend, mode, bug):
    rng = np.random.default_rng(2)
    x = leaf(backend, rng.uniform(0.5, 1.5, (3, 4)))
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: Cube(bug)(t), [x], mode=mode)
    numeric, analytic, _ = _numbers(str(info.value))
    assert numeric != 0
    expected_ratio = -1.0 if bug == "sign" else 2.0
    assert analytic / numeric == pytest.approx(expected_ratio, rel=1e-4)


def test_full_mode_message_names_input_and_index(backend):
    x0 = np.array([[0.5, 1.0], [1.5, 2.0]])
    x = leaf(backend, x0)
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: Cube("sign")(t), [x], mode="full", grad_output=mb.to_backend(np.ones((2, 2)), backend))
    msg = str(info.value)
    numeric, analytic, _ = _numbers(msg)
    # With a uniform upstream gradient the worst element is the largest |3 x^2|: x = 2 at (1, 1).
    assert "input 0" in msg and "(2, 2)" in msg and "(1, 1)" in msg
    assert numeric == pytest.approx(12.0, rel=1e-6)
    assert analytic == pytest.approx(-12.0, rel=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_backward_that_drops_broadcast_copies_raises(backend, mode):
    """A gradient of the right shape that forgets to sum over the broadcast copies."""
    rng = np.random.default_rng(3)
    a = leaf(backend, rng.standard_normal((4, 3)))
    b = leaf(backend, rng.standard_normal((1, 3)))
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda p, q: BroadcastMul("first")(p, q), [a, b], mode=mode)
    _numbers(str(info.value))


@pytest.mark.parametrize("mode", MODES)
def test_backward_that_ignores_broadcasting_raises_gradcheck_error(mode):
    rng = np.random.default_rng(4)
    a = leaf("numpy", rng.standard_normal((4, 3)))
    b = leaf("numpy", rng.standard_normal((1, 3)))
    with pytest.raises(GradcheckError):
        gradcheck(lambda p, q: BroadcastMul("unreduced")(p, q), [a, b], mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_wrong_shape_gradient_for_intermediate_is_caught(mode):
    rng = np.random.default_rng(5)
    a = leaf("numpy", rng.standard_normal((4, 3)))
    b = leaf("numpy", rng.standard_normal((3,)))
    # b * 1.0 is an intermediate of shape (3,); reshape makes it (1, 3) for BroadcastMul.
    with pytest.raises((GradcheckError, RuntimeError, ValueError)):
        gradcheck(lambda p, q: BroadcastMul("unreduced")(p * 1.0, (q * 1.0).reshape(1, 3) * 1.0), [a, b], mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_default_upstream_gradient_is_non_uniform(backend, mode):
    x = leaf(backend, np.random.default_rng(6).standard_normal((3, 3)))
    ones = mb.to_backend(np.ones((3, 3)), backend)
    # With a uniform upstream gradient the element-mixing backward is indistinguishable ...
    assert gradcheck(lambda t: MixesElements()(t), [x], mode=mode, grad_output=ones)
    # ... the checker's default (non-uniform) upstream gradient exposes it.
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: MixesElements()(t), [x], mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_only_inputs_requiring_grad_are_checked(backend, mode):
    """A constant input is held fixed; a wrong gradient for it is not looked at."""

    class GoodForA(Function):
        def forward(self, a, b):
            self.b = b
            return a * b

        def backward(self, gy):
            return gy * self.b, gy * 12345.0  # b's gradient is nonsense

    rng = np.random.default_rng(7)
    a = leaf(backend, rng.standard_normal((2, 3)))
    b = leaf(backend, rng.standard_normal((2, 3)), requires_grad=False)
    assert gradcheck(lambda p, q: GoodForA()(p, q), [a, b], mode=mode)
    b.requires_grad = True
    with pytest.raises(GradcheckError):
        gradcheck(lambda p, q: GoodForA()(p, q), [a, b], mode=mode)


# --- argument checks ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_float32_inputs_are_rejected(backend, mode):
    x = Tensor(mb.to_backend(np.ones((2, 2), np.float32), backend), requires_grad=True)
    with pytest.raises(ValueError, match="float64"):
        gradcheck(lambda t: t * t, [x], mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_nothing_requiring_grad_is_rejected(backend, mode):
    x = leaf(backend, np.ones((2, 2)), requires_grad=False)
    with pytest.raises(ValueError, match="requires grad"):
        gradcheck(lambda t: t * t, [x], mode=mode)
    with pytest.raises(ValueError):
        gradcheck(lambda: Tensor(np.ones(2)), [], mode=mode)


def test_unknown_mode_is_rejected():
    x = leaf("numpy", np.ones(2))
    with pytest.raises(ValueError, match="mode"):
        gradcheck(lambda t: t * t, [x], mode="sideways")
