"""Adam and AdamW (issue 19, section 2): torch's update step for step, the state dict and an exact
resume, parameter groups, schedules, refusals, and ``--optimizer`` in the training CLI.

The comparison with PyTorch replays the gradients of a real model: ResNet-8 in float64, trained
20 steps by minires' Adam on a fixed batch; its backward's gradients are fed to a minires and a
torch optimizer over identical parameter arrays, for Adam and AdamW with amsgrad and weight
decay on and off. Without torch the same steps are checked against ``reference_adam``, the update
written out plainly, and hand-computed values.
"""
import json
import types

import numpy as np
import pytest

import minires.functional as F
import minires.train as train
from minires import Tensor, models
from minires.nn import init
from minires import rng as minires_rng
from minires.optim import SGD, Adam, AdamW, MultiStepLR
from minires.serialization import load, save
from conftest import run_main

pytestmark = pytest.mark.usefixtures("_leave_globals_alone")  # conftest.py


class Param:
    """The minimal parameter the optimizer needs: .data and .grad."""

    def __init__(self, data, grad=None):
        self.data = np.array(data, dtype=np.float64)
        self.grad = None if grad is None else np.array(grad, dtype=np.float64)


def reference_adam(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False):
    """torch.optim.Adam / AdamW written out plainly; p after every step. ``lr``: a number, or one
    per step."""
    beta1, beta2 = betas
    p = np.array(p, dtype=np.float64)
    m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    history = []
    lrs = lr if isinstance(lr, list) else [lr] * len(grads)
    for t, (grad, lr) in enumerate(zip(grads, lrs), start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
            g = grad
        else:
            g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        v_max = np.maximum(v_max, v)
        v_hat = (v_max if amsgrad else v) / (1 - beta2 ** t)
        p = p - lr * (m / (1 - beta1 ** t)) / (np.sqrt(v_hat) + eps)
        history.append(p.copy())
    return history


@pytest.fixture
def torch():
    """torch on one thread: its small steps ran 10x slower on a busy 2-core machine with two."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


CONFIGS = [pytest.param(kind, amsgrad, decay, id=f"{kind.__name__}-amsgrad{int(amsgrad)}-wd{decay}")
           for kind in (Adam, AdamW) for amsgrad in (False, True) for decay in (0.0, 0.05)]


# --- the update -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet_gradients():
    """(initial weights, 20 lists of gradients, final weights) of ResNet-8 in float64 trained by
    Adam(lr 0.01, amsgrad, weight decay 0.05) on a fixed batch of 2 images of 16x16 pixels."""
    rng_before = init.get_rng()
    init.manual_seed(0)
    try:
        model = models.cifar_resnet(8)
    finally:
        minires_rng._rng = rng_before
    model.astype(np.float64)
    params = list(model.parameters())
    start = [p.data.copy() for p in params]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 3, 16, 16)), np.array([3, 7])
    optimizer = Adam(params, lr=0.01, weight_decay=0.05, amsgrad=True)
    grads = []
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(model(Tensor(x)), y).backward()
        grads.append([p.grad.copy() for p in params])
        optimizer.step()
    return start, grads, [p.data.copy() for p in params]


def test_the_replayed_gradients_reproduce_the_models_own_training(resnet_gradients):
    start, grads, end = resnet_gradients
    params = [Param(w) for w in start]
    optimizer = Adam(params, lr=0.01, weight_decay=0.05, amsgrad=True)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g
        optimizer.step()
    assert all(np.array_equal(p.data, w) for p, w in zip(params, end))
    assert max(np.abs(w - w0).max() for w, w0 in zip(end, start)) > 0.1  # it trained


@pytest.mark.parametrize("kind, amsgrad, decay", CONFIGS)
def test_equal_to_torch_step_by_step_on_resnet8(resnet_gradients, torch, kind, amsgrad, decay):
    start, grads, _ = resnet_gradients
    params = [Param(w) for w in start]
    tparams = [torch.nn.Parameter(torch.tensor(w)) for w in start]
    optimizer = kind(params, lr=0.01, weight_decay=decay, amsgrad=amsgrad)
    toptimizer = getattr(torch.optim, kind.__name__)(tparams, lr=0.01, weight_decay=decay, amsgrad=amsgrad)
    for step in grads:
        for p, tp, g in zip(params, tparams, step):
            p.grad, tp.grad = g, torch.tensor(g)
        optimizer.step()
        toptimizer.step()
        for p, tp in zip(params, tparams):
            want = tp.detach().numpy()
            assert np.allclose(p.data, want, rtol=1e-12, atol=1e-12), np.abs(p.data - want).max()


@pytest.mark.parametrize("kind, amsgrad, decay", CONFIGS)
def test_equal_to_the_plain_reference(kind, amsgrad, decay):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((4, 3))
    # Gradients of changing scale, so that amsgrad's maximum differs from the running v.
    grads = [rng.standard_normal((4, 3)) * (3.0 if k % 5 == 0 else 0.2) for k in range(12)]
    p = Param(p0)
    optimizer = kind([p], lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=decay, amsgrad=amsgrad)
    want = reference_adam(p0, grads, 0.05, (0.8, 0.9), 1e-6, decay, amsgrad, decoupled=kind is AdamW)
    for g, w in zip(grads, want):
        p.grad = g
        optimizer.step()
        assert np.allclose(p.data, w, rtol=1e-12, atol=1e-14)


def test_hand_computed_eps_amsgrad_and_decay():
    """p = 1, lr 0.1, betas (0.5, 0.5), eps 0.5. Step 1 with grad 1: m = v = 0.5, both corrected
    to 1, so p = 1 - 0.1 * 1 / (1 + 0.5). (eps added before the correction would give
    sqrt(0.5) + 0.5 over sqrt(0.5): a step 6x smaller.) Step 2 with grad 0: m = 0.25, v = 0.25,
    corrected by 0.75: m^ = 1/3; amsgrad keeps v = 0.5 uncorrected, corrected 2/3; without it
    v^ = 1/3."""
    step1 = 1 - 0.1 / 1.5
    for amsgrad, v_hat in ((False, 1 / 3), (True, 2 / 3)):
        p = Param([1.0], [1.0])
        optimizer = Adam([p], lr=0.1, betas=(0.5, 0.5), eps=0.5, amsgrad=amsgrad)
        optimizer.step()
        assert p.data[0] == pytest.approx(step1, abs=1e-15)
        p.grad = np.zeros(1)
        optimizer.step()
        assert p.data[0] == pytest.approx(step1 - 0.1 * (1 / 3) / (np.sqrt(v_hat) + 0.5), abs=1e-15)
    # AdamW decays the weight before the step, by lr * wd; Adam adds wd * p to the gradient.
    p = Param([2.0], [1.0])
    AdamW([p], lr=0.1, betas=(0.5, 0.5), eps=0.5, weight_decay=0.5).step()
    assert p.data[0] == pytest.approx(2.0 * (1 - 0.05) - 0.1 / 1.5, abs=1e-15)
    p = Param([2.0], [1.0])
    Adam([p], lr=0.1, betas=(0.5, 0.5), eps=0.5, weight_decay=0.5).step()  # g = 2: still m^/sqrt(v^) = 1
    assert p.data[0] == pytest.approx(2.0 - 0.1 / (1 + 0.25), abs=1e-15)


def test_defaults_are_torchs():
    p = Param([1.0])
    assert {k: v for k, v in Adam([p]).param_groups[0].items() if k != "params"} == \
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
         "decoupled_weight_decay": False}
    group = AdamW([p]).param_groups[0]
    assert (group["weight_decay"], group["decoupled_weight_decay"]) == (0.01, True)


def test_a_parameter_without_gradient_is_neither_decayed_nor_moved():
    a, b = Param([1.0, -2.0], [0.5, 0.5]), Param([3.0])
    optimizer = AdamW([a, b], lr=0.1, weight_decay=0.5, amsgrad=True)
    for _ in range(3):
        optimizer.step()
    assert b.data.tolist() == [3.0] and 1 not in optimizer.state_dict()["state"]
    # Its first gradient is its first step: bias-corrected with t = 1, as for a fresh optimizer.
    b.grad = np.array([2.0])
    optimizer.step()
    assert optimizer.state_dict()["state"][1]["step"] == 1
    first = reference_adam([3.0], [np.array([2.0])], 0.1, weight_decay=0.5, decoupled=True)[0]
    assert b.data[0] == pytest.approx(first[0], abs=1e-15)


def test_float32_in_place_state_dtype_and_grad_untouched():
    p = Param([1.0, 2.0], [0.5, -0.5])
    p.data, p.grad = p.data.astype(np.float32), p.grad.astype(np.float32)
    data, grad = p.data, p.grad.copy()
    optimizer = Adam([p], lr=0.1, weight_decay=0.1, amsgrad=True)
    optimizer.step()
    optimizer.step()
    assert p.data is data and p.data.dtype == np.float32
    assert np.array_equal(p.grad, grad)
    state = optimizer.state_dict()["state"][0]
    assert {k: v.dtype for k, v in state.items() if k != "step"} == {
        "exp_avg": np.float32, "exp_avg_sq": np.float32, "max_exp_avg_sq": np.float32}
    want = reference_adam([1.0, 2.0], [grad.astype(np.float64)] * 2, 0.1, weight_decay=0.1, amsgrad=True)[-1]
    assert np.allclose(p.data, want, rtol=1e-6)


# --- groups, schedules, state dict ----------------------------------------------------------

def test_parameter_groups_with_their_own_lr_and_decay(torch):
    rng = np.random.default_rng(2)
    w0, b0 = rng.standard_normal(5), rng.standard_normal(2)
    w, b = Param(w0), Param(b0)
    tw, tb = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(b0))
    optimizer = AdamW([{"params": [w]}, {"params": [b], "lr": 0.001, "weight_decay": 0.0}], lr=0.1)
    toptimizer = torch.optim.AdamW([{"params": [tw]}, {"params": [tb], "lr": 0.001, "weight_decay": 0.0}], lr=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.001]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    for _ in range(5):
        gw, gb = rng.standard_normal(5), rng.standard_normal(2)
        w.grad, b.grad, tw.grad, tb.grad = gw, gb, torch.tensor(gw), torch.tensor(gb)
        optimizer.step()
        toptimizer.step()
    assert np.allclose(w.data, tw.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert np.allclose(b.data, tb.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert abs(w.data - w0).max() > 50 * abs(b.data - b0).max()  # the lrs differ by 100


def test_a_schedule_sets_adams_lr():
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(3) for _ in range(6)]
    p0 = rng.standard_normal(3)
    p = Param(p0)
    optimizer = AdamW([p], lr=0.1, weight_decay=0.5)
    schedule = MultiStepLR(optimizer, [3], gamma=0.1)
    for g in grads:
        p.grad = g
        optimizer.step()
        schedule.step()
    want = reference_adam(p0, grads, [0.1] * 3 + [0.01] * 3, weight_decay=0.5, decoupled=True)[-1]
    assert np.allclose(p.data, want, rtol=1e-12, atol=1e-15)
    assert not np.allclose(p.data, reference_adam(p0, grads, 0.1, weight_decay=0.5, decoupled=True)[-1])


def _after(p0, grads, **hyper):
    """The state dict of an Adam that has taken ``grads`` from p0."""
    p = Param(p0)
    optimizer = Adam([p], **hyper)
    for g in grads:
        p.grad = g
        optimizer.step()
    return optimizer.state_dict()


@pytest.mark.parametrize("kind, amsgrad, decay", CONFIGS)
def test_state_dict_round_trip_and_exact_resume(tmp_path, kind, amsgrad, decay):
    """10 steps, save to an .npz, load into a fresh optimizer, 10 more == 20 straight, bit for bit."""
    rng = np.random.default_rng(4)
    shapes = [(3, 2), (4,), (2,)]
    start = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(20)]

    def make(values):
        params = [Param(v) for v in values]
        return params, kind([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}], lr=0.01,
                            weight_decay=decay, amsgrad=amsgrad)

    def run(params, optimizer, steps):
        for step in steps:
            for p, g in zip(params, step):
                p.grad = g
            optimizer.step()

    straight, optimizer = make(start)
    run(straight, optimizer, grads)
    params, optimizer = make(start)
    run(params, optimizer, grads[:10])
    state = optimizer.state_dict()
    names = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"] if amsgrad else ["exp_avg", "exp_avg_sq", "step"]
    assert sorted(state["state"]) == [0, 1, 2] and sorted(state["state"][0]) == names
    assert state["state"][2]["step"] == 10
    assert [g["params"] for g in state["param_groups"]] == [[0, 1], [2]]
    save({"optimizer": state, "weights": [p.data for p in params]}, tmp_path / "opt.npz")

    loaded = load(tmp_path / "opt.npz")
    resumed, optimizer = make(loaded["weights"])
    optimizer.load_state_dict(loaded["optimizer"])
    run(resumed, optimizer, grads[10:])
    for p, q in zip(straight, resumed):
        assert np.array_equal(p.data, q.data)
    # state_dict holds copies: later steps do not change a saved state
    assert np.array_equal(state["state"][0]["exp_avg"], loaded["optimizer"]["state"][0]["exp_avg"])


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("hyper, message", [
    (dict(lr=-0.1), "parameter group 0: invalid learning rate -0.1: must be >= 0"),
    (dict(lr=float("nan")), "invalid lr nan: must be a finite number"),
    (dict(lr="0.1"), "lr must be a number, got str"),
    (dict(eps=-1e-8), "invalid eps -1e-08: must be >= 0"),
    (dict(eps=float("inf")), "invalid eps inf"),
    (dict(weight_decay=-0.01), "invalid weight_decay -0.01: must be >= 0"),
    (dict(weight_decay=float("nan")), "invalid weight_decay nan"),
    (dict(betas=(1.0, 0.999)), "invalid beta1 1.0: must lie in [0, 1)"),
    (dict(betas=(0.9, -0.1)), "invalid beta2 -0.1: must lie in [0, 1)"),
    (dict(betas=(0.9, float("nan"))), "invalid beta2 nan: must be a finite number"),
    (dict(betas=(0.9,)), "betas must be a pair (beta1, beta2), got (0.9,)"),
    (dict(amsgrad="yes"), "amsgrad must be True or False, got 'yes'"),
])
def test_bad_hyperparameters_are_refused_in_one_line(hyper, message):
    for kind in (Adam, AdamW):
        with pytest.raises(ValueError) as info:
            kind([Param([1.0])], **hyper)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_groups_are_refused():
    p = Param([1.0])
    with pytest.raises(ValueError, match="Adam got an empty parameter list"):
        Adam([])
    with pytest.raises(ValueError, match="more than one"):
        Adam([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="group 1: invalid learning rate"):
        AdamW([{"params": [Param([0.0])]}, {"params": [p], "lr": -1.0}])
    with pytest.raises(ValueError, match="parameter group 0: Adam takes no hyperparameter 'momentum'"):
        Adam([{"params": [p], "momentum": 0.9}])


def test_load_state_dict_refuses_what_does_not_fit_and_changes_nothing():
    p = Param([1.0, 2.0], [1.0, 1.0])
    sgd = SGD([p], lr=0.1, momentum=0.9)
    sgd.step()
    optimizer = Adam([Param([1.0, 2.0])], lr=0.01)
    with pytest.raises(ValueError, match="has the hyperparameters dampening, lr, momentum, nesterov, "
                                         "weight_decay; Adam has .*saved by another optimizer"):
        optimizer.load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="saved by another optimizer"):
        sgd.load_state_dict(optimizer.state_dict())
    state = _after([1.0, 2.0], [np.ones(2)], lr=0.5, amsgrad=True)
    state["param_groups"][0]["amsgrad"] = False  # the moments of an amsgrad run, without amsgrad
    with pytest.raises(ValueError, match="state 0 holds exp_avg, exp_avg_sq, max_exp_avg_sq, step; Adam keeps "
                                         "step, exp_avg, exp_avg_sq$"):
        optimizer.load_state_dict(state)
    state = _after([1.0, 2.0], [np.ones(2)], lr=0.5)
    state["state"][0]["exp_avg"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"exp_avg 0 has shape \(3,\), its parameter \(2,\)"):
        optimizer.load_state_dict(state)
    state = _after([1.0, 2.0], [np.ones(2)], lr=0.5)
    state["state"][0]["step"] = 0
    with pytest.raises(ValueError, match="step must be an integer >= 1, got 0"):
        optimizer.load_state_dict(state)
    state = _after([1.0, 2.0], [np.ones(2)], lr=0.5)
    state["param_groups"][0]["betas"] = (0.9, float("inf"))
    with pytest.raises(ValueError, match="invalid beta2 inf"):
        optimizer.load_state_dict(state)
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.state == {}  # unchanged


# --- the training CLI -----------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Tiny batches are too small for BLAS threads to pay (as in test_train.py)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


ADAMW = ["--depth", "8", "--limit-train", "256", "--limit-test", "64", "--batch-size", "64", "--no-progress",
         "--optimizer", "adamw", "--schedule", "constant"]


def metric_rows(out):
    """metrics.csv without its timing columns, values as written (== is exact)."""
    import csv
    with open(out / "metrics.csv", newline="") as f:
        return [{k: row[k] for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")}
                for row in csv.DictReader(f)]


def error_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("python -m minires.train: error: ")
    return lines[0]


def test_lr_and_weight_decay_defaults_follow_the_optimizer():
    parse = train.build_parser().parse_args
    assert (parse([]).lr, parse([]).weight_decay) == (0.1, 1e-4)
    assert (parse(["--optimizer", "adam"]).lr, parse(["--optimizer", "adam"]).weight_decay) == (1e-3, 1e-4)
    assert (parse(["--optimizer", "adamw"]).lr, parse(["--optimizer", "adamw"]).weight_decay) == (1e-3, 1e-2)
    args = parse(["--optimizer", "adamw", "--lr", "0.01", "--weight-decay", "0", "--eps", "1e-7"])
    assert (args.lr, args.weight_decay, args.eps) == (0.01, 0.0, 1e-7)
    model = types.SimpleNamespace(parameters=lambda: [Param(np.zeros((2, 2))), Param(np.zeros(2))])
    optimizer = train.build_optimizer(args, model)
    assert type(optimizer) is AdamW and optimizer.param_groups[0]["eps"] == 1e-7
    # Adam's lr is below ResNet-110's warm-up lr: no warm-up unless asked for.
    def warmup(*argv):
        return train.build_schedule(parse(["--depth", "110", *argv]), optimizer, 1000).warmup_steps
    assert (warmup(), warmup("--optimizer", "adam"), warmup("--optimizer", "adam", "--warmup", "50")) == (400, 0, 50)


@pytest.mark.slow  # 4 epochs of 256 images: 42 s on a busy 2-core machine
def test_a_one_epoch_adamw_run_and_its_exact_resume(tiny_cifar10_dir, tmp_path):
    assert run_main(*ADAMW, "--data-dir", tiny_cifar10_dir, "--epochs", 2, "--out", tmp_path / "straight") == 0
    assert run_main(*ADAMW, "--data-dir", tiny_cifar10_dir, "--epochs", 1, "--out", tmp_path / "run") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["optimizer"], config["lr"], config["weight_decay"]) == ("adamw", 1e-3, 1e-2)
    saved = load(tmp_path / "run" / "last.npz")
    assert saved["config"]["optimizer"] == "adamw"
    group = saved["optimizer"]["param_groups"][0]
    assert (group["lr"], group["betas"], group["decoupled_weight_decay"]) == (1e-3, (0.9, 0.999), True)
    assert sorted(saved["optimizer"]["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    assert saved["optimizer"]["state"][0]["step"] == 4  # 256 images in batches of 64
    # --resume alone brings back --optimizer adamw and its lr; the run goes on exactly.
    assert run_main("--resume", tmp_path / "run", "--epochs", 2, "--data-dir", tiny_cifar10_dir) == 0
    assert metric_rows(tmp_path / "run") == metric_rows(tmp_path / "straight")
    assert load(tmp_path / "run" / "last.npz")["optimizer"]["state"][0]["step"] == 8


@pytest.mark.parametrize("extra, message", [
    (["--optimizer", "adam", "--nesterov"], "--nesterov is SGD's momentum; --optimizer adam has none"),
    (["--optimizer", "adamw", "--eps", "nan"], "--eps must be a finite number, got nan"),
    (["--optimizer", "adamw", "--eps", "0"], "--eps must lie in (0, 1), got 0"),
])
def test_bad_optimizer_options_are_one_line(tmp_path, capsys, extra, message):
    assert run_main("--data-dir", tmp_path / "none", *extra, "--out", tmp_path / "out") == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_resume_with_another_optimizer_is_refused(tiny_cifar10_dir, tmp_path, capsys):
    args = ["--depth", "8", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--no-progress",
            "--data-dir", tiny_cifar10_dir]
    assert run_main(*args, "--optimizer", "adam", "--epochs", 1, "--out", tmp_path / "run") == 0
    capsys.readouterr()
    before = (tmp_path / "run" / "last.npz").read_bytes()
    assert run_main(*args, "--optimizer", "sgd", "--epochs", 2, "--resume", tmp_path / "run") == 2
    line = error_line(capsys)
    assert (f"checkpoint {tmp_path / 'run' / 'last.npz'} was made with --optimizer=adam, this run has "
            f"--optimizer=sgd; pass the same --optimizer") in line
    assert (tmp_path / "run" / "last.npz").read_bytes() == before
    # A checkpoint whose config does not say (an older run's) is refused by the optimizer itself.
    checkpoint = load(tmp_path / "run" / "last.npz")
    del checkpoint["config"]["optimizer"]
    save(checkpoint, tmp_path / "old.npz")
    assert run_main(*args, "--optimizer", "sgd", "--epochs", 2, "--resume", tmp_path / "old.npz",
                    "--out", tmp_path / "old") == 2
    assert "saved by another optimizer" in error_line(capsys)
    # Adam's entries in a damaged checkpoint are named, as SGD's momentum buffers are.
    for damage, message in [
            (lambda c: c["optimizer"]["state"][0].update(exp_avg_sq=np.full((16, 3, 3, 3), np.nan)),
             "optimizer/state/0/exp_avg_sq holds nan or inf"),
            (lambda c: c["optimizer"]["state"][0].update(step=0),
             "entry 'optimizer/state/0/step' must be an integer >= 1, found int"),
            (lambda c: c["optimizer"]["param_groups"][0].update(betas=(0.9, "0.999")),
             "entry 'optimizer/param_groups/0/betas/1' must be a finite number, found str")]:
        checkpoint = load(tmp_path / "run" / "last.npz")
        damage(checkpoint)
        save(checkpoint, tmp_path / "bad.npz")
        assert run_main(*args, "--optimizer", "adam", "--epochs", 2, "--resume", tmp_path / "bad.npz",
                        "--out", tmp_path / "bad") == 2
        assert message in error_line(capsys)


def test_the_nan_guard_sees_adams_moments():
    from minires.training.snapshot import checkpoint_arrays
    checkpoint = {"model": {"w": np.zeros(2)},
                  "optimizer": _after([1.0, 2.0], [np.ones(2)], lr=0.5, amsgrad=True)}
    assert sorted(checkpoint_arrays(checkpoint)) == ["model/w", "optimizer/state/0/exp_avg",
                                                     "optimizer/state/0/exp_avg_sq",
                                                     "optimizer/state/0/max_exp_avg_sq"]
