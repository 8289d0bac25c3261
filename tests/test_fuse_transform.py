"""nn.fuse_conv_bn is a transform, not a mode (issue 16, item 1): it returns a new model that
shares no array with the original, leaves the original as it was, refuses a model in training
mode, and cannot go stale: later changes of the original (eps, running statistics, a
conversion to SyncBatchNorm) do not reach the copy, nor does the copy change how the original
computes. evaluate() runs such a copy and changes nothing of the caller's model."""
import threading

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor, nn
from minires.training import evaluate
from fusion_models import build


def output(model, x):
    with minires.no_grad():
        return model(Tensor(x)).data.copy()


X = np.random.default_rng(2).standard_normal((3, 3, 12, 12))


class OneRank:
    """A communicator of one process. Its lock makes it impossible to copy, as an MPI or NCCL
    communicator (or one with a watchdog thread) is."""

    rank, size, xp = 0, 1, np

    def __init__(self):
        self.lock = threading.Lock()

    def allreduce(self, buf):
        return buf


def test_the_copy_shares_no_array_and_the_original_is_untouched():
    model = build()
    F.cross_entropy(model(Tensor(X)), np.array([1, 2, 3])).backward()  # the original has gradients
    before = {k: v.copy() for k, v in model.state_dict().items()}
    grads = {k: p.grad.copy() for k, p in model.named_parameters()}
    fused = nn.fuse_conv_bn(model)
    originals = list(model.state_dict().values()) + [p.grad for p in model.parameters()]
    for name, array in fused.state_dict().items():
        assert not any(np.shares_memory(array, a) for a in originals), name
    assert all(p.grad is None for p in fused.parameters())
    assert not any(m.training for m in fused.modules())
    # the original: bit-identical arrays and gradients, its layers and eval mode as they were
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert after[k].dtype == before[k].dtype and np.array_equal(after[k], before[k]), k
    for k, p in model.named_parameters():
        assert np.array_equal(p.grad, grads[k]), k
    assert not any(m.training for m in model.modules())
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.conv1.bias is None
    assert not any(isinstance(m, nn.Identity) for m in model.modules())
    # the copy: each pair is one conv with a bias, the batch norm an identity, in its place
    assert isinstance(fused.bn1, nn.Identity) and fused.conv1.bias is not None
    names = [k for k, _ in fused.named_children()]
    assert names == [k for k, _ in model.named_children()]
    np.testing.assert_allclose(output(fused, X), output(model, X), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("where", ["model", "layer2.0.bn1"])
def test_a_model_in_training_mode_is_refused(where):
    model = build()
    if where == "model":
        model.train()
    else:
        model.layer2[0].bn1.train()
    with pytest.raises(ValueError, match=f"fuse_conv_bn needs a model in eval mode .* but "
                                         f"{'CifarResNet' if where == 'model' else where} is in training mode"):
        nn.fuse_conv_bn(model)


def test_a_changed_eps_or_running_statistics_never_reach_the_copy():
    """Before: after model.fuse(), a new bn.eps kept the old fold (the fold compared arrays, not eps)."""
    model = build()
    fused = nn.fuse_conv_bn(model)
    folded = output(fused, X)
    model.bn1.eps = 0.5
    model.layer1[0].bn2.running_var += 0.25
    np.testing.assert_array_equal(output(fused, X), folded)  # the copy is a snapshot
    # The original computes exactly as an unfused eval model with the same state and eps.
    plain = build(seed=9)
    plain.load_state_dict(model.state_dict())
    plain.bn1.eps = 0.5
    np.testing.assert_array_equal(output(model, X), output(plain, X))
    assert np.abs(output(model, X) - folded).max() > 1e-3
    # and a new fusion follows the change
    np.testing.assert_allclose(output(nn.fuse_conv_bn(model), X), output(plain, X), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, left", [("cifar option A", 0), ("preact", 3)])
def test_fusing_then_converting_to_sync_batchnorm_applies_each_batch_norm_once(name, left):
    """Before: model.fuse() then convert_sync_batchnorm applied each folded batch norm twice in eval
    (once in the conv's folded weights, once as the SyncBatchNorm that replaced the folded one)."""
    model = build(name)
    expected = output(model, X)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.fuse_conv_bn(model), OneRank())
    # only the batch norms that follow no convolution (the pre-activations, preact's last) are left
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == left
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    np.testing.assert_allclose(output(converted, X), expected, rtol=1e-10, atol=1e-12)


def test_converting_to_sync_batchnorm_then_fusing_folds_them_too():
    model = build("preact")
    expected = output(model, X)
    comm = OneRank()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(build("preact"), comm)
    converted.load_state_dict(model.state_dict())
    fused = nn.fuse_conv_bn(converted)  # the uncopyable communicator is shared, not copied
    syncs = [m for m in fused.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(syncs) == 3 and all(m.comm is comm for m in syncs)
    assert sum(isinstance(m, nn.Identity) for m in fused.modules()) == 7
    np.testing.assert_allclose(output(fused, X), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(output(converted, X), output(model, X))  # the converted one unchanged


def test_evaluate_changes_nothing_of_the_callers_model():
    """Before: evaluate() called model.fuse().eval(): it left the model folded and in eval mode."""
    model = build()
    model.train()
    model.layer1.eval()  # a mix of modes, to be given back as it was
    modes = [m.training for m in model.modules()]
    before = {k: v.copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((n, 3, 12, 12)), rng.integers(0, 10, n)) for n in (4, 3)]
    loss, acc = evaluate(model, batches)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k]), k
    assert model.conv1.bias is None and not any(isinstance(m, nn.Identity) for m in model.modules())
    # the numbers of the unfused model in eval mode
    model.eval()
    with minires.no_grad():
        logits = [model(Tensor(x)) for x, _ in batches]
        losses = [F.cross_entropy(z, y).item() * len(y) for z, (_, y) in zip(logits, batches)]
    correct = sum(int((z.data.argmax(axis=1) == y).sum()) for z, (_, y) in zip(logits, batches))
    assert loss == pytest.approx(sum(losses) / 7, rel=1e-10) and acc == correct / 7
