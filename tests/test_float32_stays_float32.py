"""A float32 model computes in float32 everywhere: every op's outputs and gradients, the
parameters, gradients and optimizer state after steps of every optimizer.

NumPy 2 promotes by NEP 50 (float32 array * numpy.float64 scalar -> float64), as CuPy 14 does,
while CuPy 13 promotes by value (-> float32). A float64 scalar that slipped into float32 maths
would give CuPy 13 and CuPy 14 users different numbers; on NumPy 2 it shows up here as a float64
array. (The kernels cast their scalars to the parameter's type, as CuPy does, whatever it is.)
"""
import numpy
import pytest

import minires
from minires import autograd, optim
from minires import functional as F
from minires.autograd import Tensor
from minires.models import create

pytestmark = pytest.mark.skipif(int(numpy.__version__.split(".")[0]) < 2,
                                reason="NumPy 1 promotes by value and cannot show a float64 scalar")


class DtypeRecorder(autograd.FunctionHook):
    """Every dtype each Function produced, forward and backward."""

    def __init__(self):
        self.seen = []

    def forward_postprocess(self, function, inputs, outputs):
        self.seen += [(type(function).__name__, "forward", y.dtype) for y in outputs]

    def backward_postprocess(self, function, grad_outputs, grad_inputs):
        self.seen += [(type(function).__name__, "backward", g.dtype) for g in grad_inputs if g is not None]

    def not_float32(self):
        return sorted({s for s in self.seen if s[2] != numpy.float32})


OPTIMIZERS = {
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": lambda ps: optim.Adam(ps, lr=1e-3, weight_decay=1e-4, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_float32_resnet_trains_in_float32(name):
    minires.manual_seed(0) if hasattr(minires, "manual_seed") else None
    model = create("resnet8")
    opt = OPTIMIZERS[name](model.parameters())
    rng = numpy.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 3, 32, 32)).astype(numpy.float32))
    labels = rng.integers(0, 10, size=4)
    recorder = DtypeRecorder()
    with recorder:
        for _ in range(2):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), labels, label_smoothing=0.1)
            loss.backward()
            opt.step()
    assert recorder.seen, "the hook saw no Function"
    assert not recorder.not_float32(), f"ops that left float32: {recorder.not_float32()}"
    for pname, p in model.named_parameters():
        assert p.data.dtype == numpy.float32 and p.grad.dtype == numpy.float32, pname
    for state in opt.state.values():
        for key, value in state.items():
            if isinstance(value, numpy.ndarray) and value.size > 1:
                assert value.dtype == numpy.float32, (name, key, value.dtype)
    for bname, b in model.named_buffers():
        if numpy.issubdtype(b.dtype, numpy.floating):
            assert b.dtype == numpy.float32, bname


def test_the_ops_with_options_stay_float32():
    """Ops whose options bring in Python numbers: smoothing, weights, slopes, dropout, pooling."""
    rng = numpy.random.default_rng(1)
    x = Tensor(rng.standard_normal((3, 4, 7, 7)).astype(numpy.float32), requires_grad=True)
    w = rng.random(5).astype(numpy.float32)
    recorder = DtypeRecorder()
    with recorder:
        h = F.leaky_relu(x, 0.2) + F.sigmoid(x) * F.tanh(x)
        h = F.avg_pool2d(h, 3, stride=2, padding=1, count_include_pad=False)
        h = F.dropout(h, 0.3, training=True)
        logits = F.linear(F.flatten(h), Tensor(rng.standard_normal((5, 64)).astype(numpy.float32)))
        loss = F.cross_entropy(logits, numpy.array([0, 4, 2]), weight=w, label_smoothing=0.2, ignore_index=2)
        loss = loss + F.nll_loss(F.log_softmax(logits, dim=1), numpy.array([1, 1, 3]))
        loss.backward()
    assert not recorder.not_float32(), f"ops that left float32: {recorder.not_float32()}"
    assert x.grad.dtype == numpy.float32
