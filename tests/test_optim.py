"""Tests for minires.optim: SGD against PyTorch's update rule, learning-rate schedules."""
import math

import numpy as np
import pytest

from minires.optim import SGD, ConstantLR, CosineLR, LRSchedule, MultiStepLR


class Param:
    """The minimal parameter the optimizer needs: .data and .grad."""

    def __init__(self, data, grad=None):
        self.data = np.array(data, dtype=np.float64)
        self.grad = None if grad is None else np.array(grad, dtype=np.float64)


def reference_sgd(p, grads, lr, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0):
    """PyTorch's SGD written out plainly, one step per gradient; returns p after every step."""
    p = np.array(p, dtype=np.float64)
    buf = None
    history = []
    for grad in grads:
        d = grad + weight_decay * p
        if momentum != 0:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
        history.append(p.copy())
    return history


def run_sgd(p0, grads, **hyper):
    p = Param(p0)
    opt = SGD([p], **hyper)
    history = []
    for grad in grads:
        p.grad = np.array(grad, dtype=np.float64)
        opt.step()
        history.append(p.data.copy())
    return history


# ------------------------------------------------------------------------------------------------
# SGD
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hyper, expected", [
    # p = 1, grad = 1 at every step, lr 0.1; values worked out by hand
    (dict(momentum=0.0), [0.9, 0.8, 0.7]),
    (dict(momentum=0.9), [0.9, 0.71, 0.439]),                 # buf 1, 1.9, 2.71
    (dict(momentum=0.9, nesterov=True), [0.81, 0.539, 0.1951]),  # steps 1.9, 2.71, 3.439
    (dict(momentum=0.9, dampening=0.5), [0.9, 0.76, 0.584]),  # buf 1, 1.4, 1.76
    (dict(weight_decay=0.5), [0.85, 0.7075, 0.572125]),       # g = 1 + 0.5 p
])
def test_sgd_hand_computed(hyper, expected):
    history = run_sgd([1.0], [[1.0]] * 3, lr=0.1, **hyper)
    assert np.allclose(np.concatenate(history), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("hyper", [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, weight_decay=1e-4),
    dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
    dict(momentum=0.5, weight_decay=1e-2, dampening=0.3),
])
def test_sgd_matches_reference_over_many_steps(hyper):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(6)]
    got = run_sgd(p0, grads, lr=0.05, **hyper)
    want = reference_sgd(p0, grads, lr=0.05, **hyper)
    for a, b in zip(got, want):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_sgd_float32_in_place_and_grad_untouched():
    p = Param([1.0, 2.0], [0.5, -0.5])
    p.data = p.data.astype(np.float32)
    p.grad = p.grad.astype(np.float32)
    data, grad = p.data, p.grad.copy()
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    opt.step()
    opt.step()
    assert p.data is data and p.data.dtype == np.float32  # updated in place, dtype kept
    assert np.array_equal(p.grad, grad)
    want = reference_sgd([1.0, 2.0], [grad.astype(np.float64)] * 2, lr=0.1, momentum=0.9,
                         weight_decay=0.1, nesterov=True)[-1]
    assert np.allclose(p.data, want, rtol=1e-6)


def test_param_groups_override_defaults():
    rng = np.random.default_rng(1)
    w0, b0 = rng.standard_normal(5), rng.standard_normal(2)
    gw = [rng.standard_normal(5) for _ in range(4)]
    gb = [rng.standard_normal(2) for _ in range(4)]
    w, b = Param(w0), Param(b0)
    opt = SGD([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lr": 0.01}],
              lr=0.1, momentum=0.9, weight_decay=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3, 0.0]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert opt.param_groups[1]["momentum"] == 0.9
    for k in range(4):
        w.grad, b.grad = gw[k], gb[k]
        opt.step()
    assert np.allclose(w.data, reference_sgd(w0, gw, 0.1, 0.9, 1e-3)[-1], rtol=1e-12)
    assert np.allclose(b.data, reference_sgd(b0, gb, 0.01, 0.9, 0.0)[-1], rtol=1e-12)


def test_missing_grads_are_skipped_and_zero_grad_clears():
    a, b = Param([1.0], [1.0]), Param([2.0])
    opt = SGD([a, b], lr=0.5, momentum=0.9)
    opt.step()
    assert a.data.tolist() == [0.5] and b.data.tolist() == [2.0]
    assert len(opt.state_dict()["state"]) == 1  # no buffer for b
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    opt.step()  # nothing to do
    assert a.data.tolist() == [0.5]


@pytest.mark.parametrize("hyper, message", [
    (dict(lr=-0.1), "learning rate"),
    (dict(lr=0.1, momentum=-0.9), "momentum"),
    (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (dict(lr=0.1, nesterov=True), "Nesterov"),
    (dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1), "Nesterov"),
])
def test_sgd_rejects_bad_hyperparameters(hyper, message):
    with pytest.raises(ValueError, match=message):
        SGD([Param([1.0])], **hyper)


@pytest.mark.parametrize("hyper, message", [
    (dict(lr=float("nan")), "lr nan: must be a finite number"),
    (dict(lr=float("inf")), "lr inf: must be a finite number"),
    (dict(lr=0.1, momentum=float("nan")), "momentum nan"),
    (dict(lr=0.1, momentum=1.5), "momentum 1.5: must lie in"),
    (dict(lr=0.1, weight_decay=float("inf")), "weight_decay inf"),
    (dict(lr=0.1, weight_decay=float("nan")), "weight_decay nan"),
    (dict(lr=0.1, momentum=0.9, dampening=float("nan")), "dampening nan"),
    (dict(lr="0.1"), "lr must be a number"),
])
def test_sgd_rejects_non_finite_and_absurd_hyperparameters(hyper, message):
    """issue 8, item 3: NaN, inf and momentum > 1 were accepted and trained to nonsense."""
    with pytest.raises(ValueError, match=message):
        SGD([Param([1.0])], **hyper)


def test_sgd_load_state_dict_refuses_non_finite_hyperparameters():
    p = Param([1.0])
    state = SGD([p], lr=0.1, momentum=0.9).state_dict()
    state["param_groups"][0]["lr"] = float("nan")
    optimizer = SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="lr nan"):
        optimizer.load_state_dict(state)
    assert optimizer.param_groups[0]["lr"] == 0.1  # unchanged


def test_warmup_lr_must_be_finite():
    with pytest.raises(ValueError, match="finite warmup_lr"):
        ConstantLR(SGD([Param([1.0])], lr=0.1), warmup_steps=10, warmup_lr=float("nan"))


def test_sgd_rejects_bad_groups():
    p = Param([1.0])
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="group 1: invalid learning rate"):
        SGD([{"params": [Param([0.0])]}, {"params": [p], "lr": -1.0}], lr=0.1)
    with pytest.raises(ValueError, match="group 1 must be a dict"):
        SGD([{"params": [p]}, Param([2.0])], lr=0.1)


def test_sgd_state_dict_round_trip_and_npz(tmp_path):
    rng = np.random.default_rng(2)
    shapes = [(3, 2), (4,), (2,)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]

    def make(values):
        params = [Param(v) for v in values]
        opt = SGD([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}],
                  lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
        return params, opt

    def step(params, opt, k):
        for p, g in zip(params, grads[k]):
            p.grad = g
        opt.step()

    start = [rng.standard_normal(s) for s in shapes]
    params, opt = make(start)
    for k in range(3):
        step(params, opt, k)
    opt.param_groups[0]["lr"] = 0.05  # as a schedule would
    state = opt.state_dict()
    assert sorted(state["state"]) == [0, 1, 2]
    assert [g["params"] for g in state["param_groups"]] == [[0, 1], [2]]

    # Flatten into an .npz and back, as a checkpoint would.
    flat = {f"state.{i}.momentum_buffer": s["momentum_buffer"] for i, s in state["state"].items()}
    np.savez(tmp_path / "opt.npz", **flat)
    with np.load(tmp_path / "opt.npz") as f:
        loaded = {"state": {int(k.split(".")[1]): {"momentum_buffer": f[k]} for k in f.files},
                  "param_groups": state["param_groups"]}

    params2, opt2 = make([p.data.copy() for p in params])
    opt2.load_state_dict(loaded)
    assert opt2.param_groups[0]["lr"] == 0.05
    for k in range(3, 6):
        step(params, opt, k)
        step(params2, opt2, k)
    for p, q in zip(params, params2):
        assert np.array_equal(p.data, q.data)

    # state_dict holds copies: later steps do not change a saved state
    before = state["state"][0]["momentum_buffer"].copy()
    step(params, opt, 0)
    assert np.array_equal(state["state"][0]["momentum_buffer"], before)


def test_sgd_load_state_dict_rejects_mismatch():
    opt = SGD([Param([1.0, 2.0])], lr=0.1, momentum=0.9)
    other = SGD([Param([1.0]), Param([2.0])], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict(other.state_dict())
    bad = {"state": {0: {"momentum_buffer": np.zeros(3)}}, "param_groups": opt.state_dict()["param_groups"]}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)


def test_sgd_matches_torch_if_available():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(5)]
    for hyper in (dict(momentum=0.9, weight_decay=1e-4), dict(momentum=0.9, nesterov=True),
                  dict(momentum=0.8, dampening=0.2, weight_decay=1e-2)):
        tp = torch.nn.Parameter(torch.tensor(p0))
        topt = torch.optim.SGD([tp], lr=0.1, **hyper)
        p = Param(p0)
        p.data = p.data.astype(np.float32)
        opt = SGD([p], lr=0.1, **hyper)
        for g in grads:
            tp.grad = torch.tensor(g)
            topt.step()
            p.grad = g
            opt.step()
        assert np.allclose(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------

def make_opt(lr=0.1, second_lr=None):
    groups = [{"params": [Param([1.0])]}]
    if second_lr is not None:
        groups.append({"params": [Param([1.0])], "lr": second_lr})
    return SGD(groups, lr=lr, momentum=0.9)


def test_paper_multistep_schedule():
    sched = MultiStepLR(make_opt(0.1), milestones=[32000, 48000], gamma=0.1)
    for step, lr in [(0, 0.1), (31999, 0.1), (32000, 0.01), (47999, 0.01), (48000, 0.001),
                     (63999, 0.001)]:
        assert sched.lr_at(step) == pytest.approx(lr, rel=1e-12)


def test_resnet110_warmup():
    sched = MultiStepLR(make_opt(0.1), [32000, 48000], warmup_steps=400, warmup_lr=0.01)
    assert sched.optimizer.param_groups[0]["lr"] == 0.01  # iteration 0 already warmed up
    for step, lr in [(0, 0.01), (399, 0.01), (400, 0.1), (31999, 0.1), (32000, 0.01), (48000, 0.001)]:
        assert sched.lr_at(step) == pytest.approx(lr, rel=1e-12)


def test_step_writes_lr_into_groups_keeping_ratios():
    opt = make_opt(0.1, second_lr=0.02)
    sched = MultiStepLR(opt, milestones=[2, 4], gamma=0.5)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        sched.step()
    assert np.allclose(seen, [[0.1, 0.02]] * 2 + [[0.05, 0.01]] * 2 + [[0.025, 0.005]] * 2)
    assert sched.step_count == 6 and opt.param_groups[0]["lr"] == sched.lr_at(6)


def test_cosine_and_linear_warmup_and_constant():
    sched = CosineLR(make_opt(0.1), total_steps=100, min_lr=0.001)
    assert sched.lr_at(0) == pytest.approx(0.1)
    assert sched.lr_at(50) == pytest.approx((0.1 + 0.001) / 2)
    assert sched.lr_at(25) == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi / 4)) / 2)
    assert sched.lr_at(100) == pytest.approx(0.001) and sched.lr_at(150) == pytest.approx(0.001)

    warm = CosineLR(make_opt(0.1), total_steps=100, warmup_steps=10, warmup_lr=0.0, warmup="linear")
    assert warm.lr_at(0) == 0.0
    assert warm.lr_at(5) == pytest.approx(warm.schedule(10) / 2)
    assert warm.lr_at(10) == pytest.approx(warm.schedule(10))

    const = ConstantLR(make_opt(0.1), warmup_steps=3, warmup_lr=0.01)
    assert [const.lr_at(s) for s in range(5)] == [0.01, 0.01, 0.01, 0.1, 0.1]


def test_schedule_state_dict_round_trip():
    opt = make_opt(0.1, second_lr=0.05)
    sched = MultiStepLR(opt, [5, 8], warmup_steps=2, warmup_lr=0.01)
    for _ in range(6):
        sched.step()
    state = sched.state_dict()
    assert state == {"step": 6, "base_lrs": [0.1, 0.05]}

    # A resumed run: the optimizer's lrs were saved mid-schedule, the schedule must not read them as base lrs.
    opt2 = make_opt(0.1, second_lr=0.05)
    opt2.load_state_dict(opt.state_dict())
    sched2 = MultiStepLR(opt2, [5, 8], warmup_steps=2, warmup_lr=0.01)
    sched2.load_state_dict(state)
    for _ in range(4):
        assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
        sched.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.001)


def test_schedule_validation():
    with pytest.raises(ValueError, match="milestones"):
        MultiStepLR(make_opt(), [48000, 32000])
    with pytest.raises(ValueError, match="total_steps"):
        CosineLR(make_opt(), 0)
    with pytest.raises(ValueError, match="warmup_lr"):
        ConstantLR(make_opt(), warmup_steps=10)
    with pytest.raises(ValueError, match="warmup"):
        ConstantLR(make_opt(), warmup_steps=10, warmup_lr=0.01, warmup="cubic")
    with pytest.raises(NotImplementedError):
        LRSchedule(make_opt())
