"""The optimizers' fused update kernels (minires/optim.py: minires_sgd_step,
minires_sgd_momentum_step, minires_adam_step, minires_adam_amsgrad_step): compiled by NVRTC for
sm_80 and sm_90, run on the CPU in every element order against their NumPy twins
(``sgd_update``, ``adam_update``), and whole optimizer steps taken through the kernels' call
sites (the CuPy branch, the kernels run on the CPU) equal to the NumPy path."""
import numpy as np
import pytest

from minires import nn, optim
from minires.optim import SGD, Adam, AdamW, adam_update, sgd_update
from kernel_harness import ORDERS, compile_nvrtc, run_on_cpu

KERNELS = {"minires_sgd_step": optim._sgd_kernel, "minires_sgd_momentum_step": optim._sgd_momentum_kernel,
           "minires_adam_step": optim._adam_kernel, "minires_adam_amsgrad_step": optim._adam_amsgrad_kernel}
TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=2e-6, atol=1e-7)}


def arrays(dtype, n=37, seed=0):
    """p, g, buf / m, v, v_max of n elements (odd), v > 0."""
    rng = np.random.default_rng(seed)
    p, g, buf = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = (rng.standard_normal(n) ** 2).astype(dtype)
    v_max = np.where(rng.random(n) < 0.5, v * 2, v / 2).astype(dtype)
    return p, g, buf, v, v_max


SGD_CASES = [dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, fresh=False),
             dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=True, fresh=False),
             dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2, nesterov=False, fresh=False),
             dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2, nesterov=False, fresh=True)]


def sgd_args(dtype, case):
    p, g, buf, _, _ = arrays(dtype)
    T = np.dtype(dtype).type
    args = (g, T(case["lr"]), T(case["momentum"]), T(1 - case["dampening"]), T(case["weight_decay"]),
            np.int32(case["nesterov"]), np.int32(case["fresh"]), p, buf)
    want_p, want_buf = p.copy(), buf.copy()
    sgd_update(want_p, g, want_buf, case["fresh"], case["lr"], case["momentum"], case["dampening"],
               case["weight_decay"], case["nesterov"])
    return args, (want_p, want_buf)


def plain_sgd_args(dtype, weight_decay):
    p, g, _, _, _ = arrays(dtype)
    T = np.dtype(dtype).type
    want = p.copy()
    sgd_update(want, g, None, False, 0.1, 0.0, 0.0, weight_decay, False)
    return (g, T(0.1), T(weight_decay), p), (want,)


ADAM_CASES = [dict(t=1, weight_decay=0.0, decoupled=False), dict(t=3, weight_decay=0.05, decoupled=False),
              dict(t=7, weight_decay=0.05, decoupled=True)]


def adam_args(dtype, case, amsgrad, lr=0.01, betas=(0.8, 0.9), eps=1e-6):
    p, g, m, v, v_max = arrays(dtype)
    T = np.dtype(dtype).type
    t, wd = case["t"], case["weight_decay"]
    b1, b2 = betas
    args = (g, T(b1), T(1 - b1), T(b2), T(1 - b2), T(wd), np.int32(case["decoupled"]), T(1 - lr * wd),
            T(np.sqrt(1 - b2 ** t)), T(eps), T(lr / (1 - b1 ** t)), p, m, v) + ((v_max,) if amsgrad else ())
    want = [a.copy() for a in (p, m, v, v_max)]
    adam_update(want[0], g, want[1], want[2], want[3] if amsgrad else None, t, lr, betas, eps, wd, case["decoupled"])
    return args, tuple(want if amsgrad else want[:3])


def every_call(dtype):
    """(kernel, args, NumPy twin's outputs) for each kernel and case."""
    calls = [(optim._sgd_kernel, *plain_sgd_args(dtype, wd)) for wd in (0.0, 1e-3)]
    calls += [(optim._sgd_momentum_kernel, *sgd_args(dtype, case)) for case in SGD_CASES]
    calls += [(optim._adam_kernel, *adam_args(dtype, case, False)) for case in ADAM_CASES]
    calls += [(optim._adam_amsgrad_kernel, *adam_args(dtype, case, True)) for case in ADAM_CASES]
    return calls


def test_every_kernel_is_here():
    assert set(KERNELS) == {k.name for k in (optim._sgd_kernel, optim._sgd_momentum_kernel, optim._adam_kernel,
                                             optim._adam_amsgrad_kernel)}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_nvrtc_compiles(name, dtype, arch):
    kernel, args, _ = next(c for c in every_call(dtype) if c[0] is KERNELS[name])
    assert bytes(compile_nvrtc(kernel, args, arch)[:4]) == b"\x7fELF"


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_on_the_cpu_equal_their_numpy_twins(dtype, order):
    for kernel, args, want in every_call(dtype):
        got = run_on_cpu(kernel, args, order)
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=kernel.name)
        assert not np.allclose(got[0], args[-len(want)], rtol=1e-3)  # the parameters moved


def test_amsgrad_keeps_nan_as_numpys_maximum_does():
    args, want = adam_args(np.float64, ADAM_CASES[0], True)
    v_max = args[-1]
    v_max[3] = np.nan
    want_p, want_m, want_v, want_max = (a.copy() for a in (args[-4], args[-3], args[-2], v_max))
    adam_update(want_p, args[0], want_m, want_v, want_max, 1, 0.01, (0.8, 0.9), 1e-6, 0.0, False)
    got = run_on_cpu(optim._adam_amsgrad_kernel, args, "shuffled")
    assert np.isnan(got[3][3]) and np.isnan(want_max[3])
    np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(want_p))


# --- the optimizers through their kernels' call sites ---------------------------------------------

class CpuKernel:
    """Stands in for a kernel in optim: runs its generated source on the CPU (shuffled) and
    writes the outputs back into the arrays given, as the CuPy call does."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def __call__(self, *args):
        outs = run_on_cpu(self.kernel, args, "shuffled", seed=self.calls)
        outs = outs if isinstance(outs, tuple) else (outs,)
        for target, out in zip(args[len(args) - len(outs):], outs):
            target[...] = out
        self.calls += 1


@pytest.fixture
def through_kernels(monkeypatch):
    """optim's fused updates take their CuPy branch (the kernel calls) on NumPy arrays."""
    kernels = {}
    for attr in ("_sgd_kernel", "_sgd_momentum_kernel", "_adam_kernel", "_adam_amsgrad_kernel"):
        kernels[attr] = CpuKernel(getattr(optim, attr))
        monkeypatch.setattr(optim, attr, kernels[attr])
    monkeypatch.setattr(optim, "get_array_module", lambda *arrays: object())  # "not numpy"
    return kernels


def train(make, steps=5, seed=0):
    """Parameters of two groups stepped by ``make(groups)``; parameter 1 has no gradient in steps 1-2."""
    rng = np.random.default_rng(seed)
    shapes = [(3, 5), (4,), (7,), (2, 3)]
    params = [nn.Parameter(rng.standard_normal(s)) for s in shapes]
    optimizer = make([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}])
    for t in range(steps):
        for k, p in enumerate(params):
            p.grad = None if (k == 1 and t in (1, 2)) else rng.standard_normal(p.shape)
        optimizer.step()
    return [p.data.copy() for p in params]


MAKERS = {"sgd": lambda gs: SGD(gs, lr=0.1),
          "sgd-nesterov-wd": lambda gs: SGD(gs, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
          "sgd-dampening": lambda gs: SGD(gs, lr=0.1, momentum=0.9, dampening=0.2),
          "adam-wd": lambda gs: Adam(gs, lr=0.01, weight_decay=0.05),
          "adamw-amsgrad": lambda gs: AdamW(gs, lr=0.01, weight_decay=0.05, amsgrad=True)}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_optimizers_through_the_kernels_equal_the_numpy_path(name, request):
    want = train(MAKERS[name])
    kernels = request.getfixturevalue("through_kernels")
    got = train(MAKERS[name])
    assert sum(k.calls for k in kernels.values()) >= 5  # the kernels did the steps
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
