"""The data pipeline's CuPy kernel, checked without a GPU (see tests/kernel_harness.py):
``minires_normalize_crop_flip``, the CuPy path of ``data.normalize_crop_flip``, compiled by NVRTC
and its generated source run on the CPU against its NumPy twin (the gather, ``normalize`` and
``crop_flip_at``), in every element order."""
import numpy as np
import pytest

from minires.data.loader import training_stats
from minires.data.transforms import _NORMALIZE_CROP_FLIP, normalize_crop_flip, normalize_crop_flip_args
from kernel_harness import ORDERS, compile_nvrtc, run_on_cpu


def plan(m=13, n=7, c=3, h=5, w=6, pad=2, seed=0):
    """M images (uint8) and a batch of n of them with offsets and flips (odd sizes, h != w)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(m, c, h, w), dtype=np.uint8)
    idx = rng.permutation(m)[:n].astype(np.int64)
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flip = rng.random(n) < 0.5
    flip[:2] = (True, False)
    return x, idx, np.ascontiguousarray(offsets[:, 0]), np.ascontiguousarray(offsets[:, 1]), flip, pad


def kernel_args(x, idx, top, left, flip, mean, std, dtype, pad):
    """The arguments normalize_crop_flip gives the kernel on CuPy, built with NumPy arrays."""
    return normalize_crop_flip_args(np, x, idx, top, left, flip, mean, std, dtype, pad)


@pytest.mark.parametrize("normalization", ["pixel_mean", "channel", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ORDERS)
def test_minires_normalize_crop_flip_equals_its_numpy_twin(normalization, dtype, order):
    x, idx, top, left, flip, pad = plan()
    mean, std = training_stats(x, normalization)
    y = run_on_cpu(_NORMALIZE_CROP_FLIP, kernel_args(x, idx, top, left, flip, mean, std, dtype, pad), order)
    expected = normalize_crop_flip(x, idx, top, left, flip, mean, std, dtype, pad)
    assert expected.dtype == y.dtype == dtype
    # The same operations in the same type (x / 255, - mean, / std): equal to the bit.
    np.testing.assert_array_equal(y, expected)


def test_minires_normalize_crop_flip_on_float_images_and_a_full_padding_offset():
    """Images given as float32 (X = float) and offsets at both ends of [0, 2 * pad]."""
    x, idx, top, left, flip, pad = plan(m=9, n=9, c=2, h=7, w=3, pad=3, seed=4)
    x = x.astype(np.float32)
    top[:3], left[:3] = (0, 6, 3), (6, 0, 3)
    mean, std = training_stats(x.astype(np.uint8), "channel")
    for order in ORDERS:
        y = run_on_cpu(_NORMALIZE_CROP_FLIP, kernel_args(x, idx, top, left, flip, mean, std, np.float32, pad), order)
        np.testing.assert_array_equal(y, normalize_crop_flip(x, idx, top, left, flip, mean, std, "float32", pad))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_minires_normalize_crop_flip_compiles_with_nvrtc(arch, dtype):
    x, idx, top, left, flip, pad = plan()
    mean, std = training_stats(x, "pixel_mean")
    cubin = compile_nvrtc(_NORMALIZE_CROP_FLIP, kernel_args(x, idx, top, left, flip, mean, std, dtype, pad), arch)
    assert bytes(cubin[:4]) == b"\x7fELF"
