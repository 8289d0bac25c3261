"""ONNX export: every named model runs in onnxruntime as it runs in minires (eval mode, float32)."""
import numpy as np
import pytest

import minires
from minires import Tensor, models, nn

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="running exported models needs onnxruntime (pip install -e '.[onnx]')")

import minires.onnx  # noqa: E402  (after the skips: it is only importable usefully with onnx)
from minires import export as export_cli  # noqa: E402

SLOW = {"resnet1202", "resnet1001v2", "resnet101", "resnet152", "resnext50_32x4d", "wrn28_10"}
# 65M to 127M parameters: the same classes as resnext50_32x4d, tested here, only deeper or wider
TOO_BIG = {"resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"}


def randomize_batch_norm(model, seed=0, gamma=(0.5, 1.5)):
    """Non-trivial running statistics and affine parameters, so that eval mode is tested for real."""
    rng = np.random.default_rng(seed)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean[...] = rng.normal(0, 0.1, bn.num_features)
        bn.running_var[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.weight.data[...] = rng.uniform(*gamma, bn.num_features)
        bn.bias.data[...] = rng.normal(0, 0.1, bn.num_features)
    return model


def run_onnx(path_or_proto, x):
    data = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def minires_eval(model, x):
    model.eval()
    with minires.no_grad():
        return model(Tensor(x)).numpy()


def assert_close(y, expected, rel=1e-4):
    """Largest difference within ``rel`` of the largest output (float32 sums in another order)."""
    assert y.shape == expected.shape
    assert np.all(np.isfinite(expected))
    err = np.abs(y - expected).max() / np.abs(expected).max()
    assert err <= rel, f"relative difference {err:.2e} > {rel:.0e}"


CASES = [(name, {}) for name in models.names() if name not in TOO_BIG] + [
    ("resnet20", {"shortcut": "B"}), ("resnet18", {"stem": "imagenet"}), ("resnet50", {"stem": "imagenet"})]


@pytest.mark.parametrize("name, kwargs", [
    pytest.param(name, kwargs, marks=[pytest.mark.slow] if name in SLOW else [],
                 id=name + "".join(f"-{v}" for v in kwargs.values())) for name, kwargs in CASES])
def test_model_matches_onnxruntime(name, kwargs, tmp_path):
    model = models.create(name, **kwargs)
    # deep nets: smaller BN scales keep a 1000-layer residual sum finite in float32
    randomize_batch_norm(model, gamma=(0.5, 1.5) if len(list(model.modules())) < 600 else (0.05, 0.2))
    size = 32 if kwargs.get("stem") == "imagenet" else 8  # small images keep the big nets fast
    path = str(tmp_path / f"{name}.onnx")
    minires.onnx.export(model, path, input_shape=(1, 3, size, size))
    onnx.checker.check_model(path, full_check=True)
    x = np.random.default_rng(1).normal(size=(3, 3, size, size)).astype(np.float32)  # batch 3, traced with 1
    assert_close(run_onnx(path, x), minires_eval(model, x))


def test_graph_reads_like_the_model():
    proto = minires.onnx.to_onnx(models.resnet20(), (1, 3, 32, 32))
    assert proto.opset_import[0].version == minires.onnx.OPSET
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 19 and ops.count("BatchNormalization") == 19 and ops.count("Gemm") == 1
    assert ops.count("Add") == 9 and ops.count("Relu") == 19
    assert ops.count("Slice") == 2 and ops.count("Pad") == 2  # the two option-A shortcuts
    assert "GlobalAveragePool" in ops
    inits = {i.name for i in proto.graph.initializer}
    assert set(models.resnet20().state_dict()) - inits == {
        k for k in models.resnet20().state_dict() if k.endswith("num_batches_tracked")}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert "layer2.0.conv1" in {n.name for n in proto.graph.node}


def test_dynamic_batch_and_fixed_batch():
    model = randomize_batch_norm(models.resnet20())
    proto = minires.onnx.to_onnx(model, (2, 3, 16, 16))
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, 3, 16, 16)).astype(np.float32)
        assert_close(run_onnx(proto, x), minires_eval(model, x))
    fixed = minires.onnx.to_onnx(model, (2, 3, 16, 16), dynamic_batch=False)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_pooling_and_reshape_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.max = nn.MaxPool2d(3, stride=2, padding=1)
            self.avg = nn.AvgPool2d(2, padding=1)
            self.fc = nn.Linear(4 * 3 * 3, 6, bias=False)

        def forward(self, x):
            y = self.avg(self.max(self.conv(x)))  # (N, 4, 3, 3)
            return self.fc(y.reshape(y.shape[0], -1)) * 0.5 - 1.0

    model = Net()
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    proto = minires.onnx.to_onnx(model, (1, 3, 8, 8))
    assert_close(run_onnx(proto, x), minires_eval(model, x))


def test_model_state_is_left_as_it_was():
    model = models.resnet20()
    model.train()
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    minires.onnx.to_onnx(model)
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_unsupported_function_is_named():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.reshape(x.shape[0], -1)).exp()

    with pytest.raises(minires.onnx.UnsupportedOperatorError, match=r"uses Exp .*no ONNX export rule"):
        minires.onnx.to_onnx(Net(), (1, 1, 2, 2))


def test_float64_model_exports_as_float32():
    model = randomize_batch_norm(models.resnet20()).astype("float64")
    proto = minires.onnx.to_onnx(model, (1, 3, 8, 8))
    assert {i.data_type for i in proto.graph.initializer if i.name.endswith("weight")} == {onnx.TensorProto.FLOAT}
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8))
    assert_close(run_onnx(proto, x.astype(np.float32)), minires_eval(model, x))


# -- python -m minires.export --------------------------------------------------------------------------

def test_cli_exports_a_training_checkpoint(tmp_path, capsys):
    model = randomize_batch_norm(models.resnet20(shortcut="B"))
    config = {"model": None, "depth": 20, "shortcut": "B", "model_name": "resnet20"}  # as minires.train writes it
    minires.save({"model": model.state_dict(), "epoch": 1, "config": config}, tmp_path / "last.npz")
    out = tmp_path / "r20.onnx"
    assert export_cli.main([str(tmp_path / "last.npz"), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    assert_close(run_onnx(str(out), x), minires_eval(model, x))


def test_cli_exports_a_state_dict_with_model_flag(tmp_path, capsys):
    model = randomize_batch_norm(models.resnet18(stem="imagenet", num_classes=7))
    minires.save(model.state_dict(), tmp_path / "r18.npz")
    assert export_cli.main([str(tmp_path / "r18.npz"), str(tmp_path / "r18.onnx")]) == 2
    assert "pass --model" in capsys.readouterr().err
    assert export_cli.main([str(tmp_path / "r18.npz"), str(tmp_path / "r18.onnx"), "--model", "resnet18"]) == 0
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    assert_close(run_onnx(str(tmp_path / "r18.onnx"), x), minires_eval(model, x))


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert export_cli.main([str(tmp_path / "missing.npz"), str(tmp_path / "x.onnx")]) == 2
    assert "missing.npz" in capsys.readouterr().err
    minires.save(models.resnet20().state_dict(), tmp_path / "r20.npz")
    assert export_cli.main([str(tmp_path / "r20.npz"), str(tmp_path / "x.onnx"), "--model", "resnet32"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
