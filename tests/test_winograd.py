"""Winograd F(2x2, 3x3) convolution: the same outputs and gradients as a direct convolution."""
import numpy as np
import pytest

import minires
from minires import Tensor, gradcheck
from minires import backend as mb
from minires.functional.winograd import conv2d_winograd


def direct_conv(x, W, b, ph, pw):
    """Sum over the 9 taps of a plain channel contraction: the definition, no im2col."""
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = xpad.shape[2] - 2, xpad.shape[3] - 2
    y = sum(np.einsum("nchw,oc->nohw", xpad[:, :, i:i + ho, j:j + wo], W[:, :, i, j])
            for i in range(3) for j in range(3))
    return y if b is None else y + b.reshape(1, -1, 1, 1)


CASES = [((2, 3, 6, 6), 4, (1, 1)), ((2, 3, 7, 5), 4, (1, 1)), ((1, 2, 5, 6), 3, (0, 0)),
         ((2, 2, 4, 5), 2, (0, 1)), ((1, 1, 3, 3), 1, (0, 0))]


@pytest.mark.parametrize("shape, o, padding", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_matches_direct_convolution(backend, shape, o, padding, bias):
    rng = np.random.default_rng(sum(shape) + o)
    x, W, b = rng.standard_normal(shape), rng.standard_normal((o, shape[1], 3, 3)), rng.standard_normal(o)
    with minires.no_grad():
        y = conv2d_winograd(Tensor(mb.to_backend(x, backend)), Tensor(mb.to_backend(W, backend)),
                            Tensor(mb.to_backend(b, backend)) if bias else None, padding=padding)
    expected = direct_conv(x, W, b if bias else None, *padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(mb.to_numpy(y.data), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, o, padding", CASES[:4])
def test_winograd_gradcheck(backend, shape, o, padding):
    rng = np.random.default_rng(len(shape) + o)
    inputs = [Tensor(mb.to_backend(a, backend), requires_grad=True)
              for a in (rng.standard_normal(shape), rng.standard_normal((o, shape[1], 3, 3)), rng.standard_normal(o))]
    assert gradcheck(lambda x, W, b: conv2d_winograd(x, W, b, padding=padding), inputs)


def test_winograd_float32_close_to_float64():
    rng = np.random.default_rng(3)
    x, W = rng.standard_normal((4, 16, 8, 8)), rng.standard_normal((16, 16, 3, 3))
    with minires.no_grad():
        y = conv2d_winograd(Tensor(x.astype(np.float32)), Tensor(W.astype(np.float32)))
    assert y.dtype == np.float32
    expected = direct_conv(x, W, None, 1, 1)
    np.testing.assert_allclose(y.data, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_winograd_rejects_other_kernels():
    with pytest.raises(ValueError, match="3x3 kernel"):
        conv2d_winograd(Tensor(np.zeros((1, 2, 5, 5))), Tensor(np.zeros((2, 2, 5, 5))))


def test_conv2d_takes_winograd_only_where_enabled_and_wide_enough(monkeypatch):
    from minires import profiler
    from minires.functional import conv
    rng = np.random.default_rng(4)
    x, W = rng.standard_normal((1, 8, 4, 4)), rng.standard_normal((8, 8, 3, 3))

    def run():
        with profiler.profile() as prof, minires.no_grad():
            y = conv.conv2d(Tensor(x), Tensor(W), padding=1)
        return y.data, {op for op, *_ in prof.rows()}

    monkeypatch.setattr(conv, "WINOGRAD", True)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 8)
    y_wino, ops = run()
    assert ops == {"Conv2dWinogradFunction"}
    monkeypatch.setattr(conv, "WINOGRAD", False)
    y_im2col, ops = run()
    assert ops == {"Conv2dFunction"}
    np.testing.assert_allclose(y_wino, y_im2col, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(conv, "WINOGRAD", True)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 9)
    assert run()[1] == {"Conv2dFunction"}
