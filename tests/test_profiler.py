"""minires.profiler: what a profile records (ops, counts, phases, sections), nesting, that its
hook is gone after the block, and MINIRES_PROFILE=1 for a whole process."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minires
from minires import Tensor, autograd, nn, profiler
from minires import functional as F

ROOT = Path(__file__).resolve().parents[1]


def small_model():
    minires.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.GlobalAvgPool2d(), nn.Linear(4, 3))


def step(model, x, y):
    loss = F.cross_entropy(model(Tensor(x)), y)
    loss.backward()
    return loss


def test_records_every_op_forward_and_backward_with_counts():
    model = small_model()
    x, y = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32), np.array([0, 2])
    with profiler.profile() as prof:
        for _ in range(3):
            step(model, x, y)
    ops = ["Conv2dFunction", "BatchNormTrainFunction", "ReLUFunction", "GlobalAvgPool2dFunction",
           "LinearFunction", "CrossEntropyFunction"]
    for op in ops:
        for phase in ("forward", "backward"):
            assert prof.calls[op, phase] == 3, (op, phase)
            assert prof.seconds[op, phase] > 0, (op, phase)
    assert set(op for op, _ in prof.calls) == set(ops)
    rows = prof.rows()
    assert len(rows) == 2 * len(ops)
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)  # largest first
    assert sum(r[4] for r in rows) == pytest.approx(1.0)
    table = prof.table(steps=3).splitlines()
    assert table[0].split() == ["op", "phase", "calls/step", "ms/step", "share"]
    conv_row = next(line.split() for line in table if line.startswith("Conv2dFunction") and "backward" in line)
    assert conv_row[2] == "1.0"  # 3 calls over 3 steps
    assert table[-1].split()[0] == "total" and float(table[-1].split()[1]) > 0


def test_inference_records_forward_only():
    model = small_model().eval()
    with profiler.profile() as prof, minires.no_grad():
        model(Tensor(np.ones((1, 3, 4, 4), np.float32)))
    assert prof.calls["BatchNormEvalFunction", "forward"] == 1
    assert all(phase == "forward" for _, phase in prof.calls)


def test_the_hook_is_removed_after_the_block_even_on_error():
    assert autograd.function_hooks() == ()
    with profiler.profile() as prof:
        assert autograd.function_hooks() == (prof,)
    assert autograd.function_hooks() == ()
    with pytest.raises(ValueError):
        with profiler.profile() as prof:
            F.relu(Tensor(np.ones(2)))
            F.conv2d(Tensor(np.ones((1, 1, 2, 2))), Tensor(np.ones((1, 2, 1, 1))))  # channel mismatch
    assert autograd.function_hooks() == ()
    F.relu(Tensor(np.ones(2)))
    assert prof.calls["ReLUFunction", "forward"] == 1  # nothing recorded after the block


def test_nested_profiles_and_sections():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with profiler.profile() as outer:
        F.relu(x)
        with profiler.section("update"):
            with profiler.section("inner"):
                F.relu(x)
        with profiler.profile() as inner:
            with profiler.section("update"):
                F.relu(x).sum().backward()
        assert autograd.function_hooks() == (outer,)
    assert outer.calls["ReLUFunction", "forward"] == 3
    assert inner.calls["ReLUFunction", "forward"] == 1 and inner.calls["ReLUFunction", "backward"] == 1
    assert outer.calls["update", "total"] == 2 and inner.calls["update", "total"] == 1
    assert outer.calls["inner", "total"] == 1 and ("inner", "total") not in inner.calls
    # a section contains what ran inside it
    assert outer.seconds["update", "total"] >= outer.seconds["inner", "total"] > 0
    with profiler.section("nobody listens"):  # no active profiler: it only runs the block
        pass
    assert ("nobody listens", "total") not in outer.calls


def test_minires_profile_env_prints_the_table_at_exit():
    code = ("import numpy as np, minires, minires.functional as F\n"
            "x = minires.Tensor(np.ones((1, 2, 5, 5)), requires_grad=True)\n"
            "F.conv2d(x, minires.Tensor(np.ones((3, 2, 3, 3)))).sum().backward()\n")
    env = dict(os.environ, MINIRES_PROFILE="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "minires profile (MINIRES_PROFILE=1)" in run.stderr
    lines = [line.split() for line in run.stderr.splitlines()]
    assert ["Conv2dFunction", "forward", "1.0"] in [line[:3] for line in lines]
    assert ["Conv2dFunction", "backward", "1.0"] in [line[:3] for line in lines]
    env["MINIRES_PROFILE"] = "0"
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "minires profile" not in run.stderr
