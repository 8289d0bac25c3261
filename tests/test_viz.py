"""minires.viz: DOT text of a recorded graph, collapsed blocks, rendering, and the summary CLI's --graph."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import minires
from minires import Tensor, models, nn, tracing, viz
from minires import functional as F
from minires.model_summary import main as summary_main

NODE = re.compile(r"^\s*(\w+) \[label=\"((?:[^\"\\]|\\.)*)\"", re.M)
EDGE = re.compile(r"^\s*(\w+) -> (\w+);", re.M)
CLUSTER = re.compile(r'label="([^"]*)"; style=rounded')


def parse(dot):
    """({node id: label}, [(tail, head)]) of DOT text as viz writes it."""
    return dict(NODE.findall(dot)), EDGE.findall(dot)


def needs_dot():
    pytest.importorskip("graphviz", reason="rendering needs the graphviz package (pip install -e '.[viz]')")
    if shutil.which("dot") is None:
        pytest.skip("rendering needs the Graphviz 'dot' program (apt install graphviz)")


def small_loss(model, batch=2, size=8):
    x = Tensor(np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32))
    return F.cross_entropy(model(x), np.arange(batch) % 10)


def test_every_function_and_leaf_is_drawn_with_its_shape():
    model = models.cifar_resnet(8)
    loss = small_loss(model)
    functions = tracing.functions(loss)
    nodes, edges = parse(viz.graph(loss, model))
    ops = [label for key, label in nodes.items() if key.startswith("f")]
    assert len(ops) == len(functions)
    assert r"Conv2d\n(2, 16, 8, 8)" in ops and r"Linear\n(2, 10)" in ops and r"CrossEntropy\n()" in ops
    assert sum(label.startswith("PadChannels") for label in ops) == 2
    leaves = [label for key, label in nodes.items() if key.startswith("x")]
    params = dict(model.named_parameters())
    assert sorted(label.split("\\n")[0] for label in leaves) == sorted(["input"] + list(params))
    assert r"layer2.0.conv1.weight\n(32, 16, 3, 3)" in leaves
    # one edge per Function input; every edge joins two drawn nodes
    assert len(edges) == sum(len(f.inputs) for f in functions)
    assert all(a in nodes and b in nodes for a, b in edges)
    assert loss.creator is not None  # reading the graph leaves it intact for backward
    loss.backward()
    assert model.fc.weight.grad is not None


def test_leaves_are_told_apart():
    W = Tensor(np.ones((3, 4), np.float32), requires_grad=True)
    x = Tensor(np.ones((2, 4), np.float32))
    y = (x @ W.T) * 0.5
    dot = viz.graph(y)
    assert 'label="parameter\\n(3, 4)", shape=ellipse, style=filled, fillcolor="#cfe2f3"' in dot
    assert 'label="input\\n(2, 4)", shape=ellipse, style=filled, fillcolor="#fff2cc"' in dot
    assert 'label="0.5", shape=plaintext' in dot
    nodes, _ = parse(viz.graph(y, params=False))
    assert sorted(nodes.values()) == sorted([r"MatMul\n(2, 3)", r"Mul\n(2, 3)", r"Transpose\n(4, 3)",
                                              r"input\n(2, 4)", "0.5"])


def test_repeated_blocks_collapse():
    model = models.resnet20()
    x, y = tracing.trace(model, np.zeros((1, 3, 32, 32), np.float32))
    total = len(tracing.functions(y))
    full, collapsed = viz.graph(y, model), viz.graph(y, model, collapse=True)
    clusters = CLUSTER.findall(collapsed)
    assert clusters == ["layer1.0 ... layer1.2  (\u00d73, identical)", "layer2.0",
                        "layer2.1 ... layer2.2  (\u00d72, identical)", "layer3.0",
                        "layer3.1 ... layer3.2  (\u00d72, identical)"]
    assert CLUSTER.findall(full) == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    nodes, edges = parse(collapsed)
    # 4 of the 9 blocks (6 Functions each: conv, bn, relu, conv, bn, add_relu) are not drawn
    assert sum(k.startswith("f") for k in nodes) == total - 4 * 6
    assert all(a in nodes and b in nodes for a, b in edges)
    # still one path from the input to the output: the next stage reads the collapsed run's output
    heads = {b for _, b in edges}
    assert sum(k.startswith("f") and k not in {a for a, _ in edges} for k in nodes) == 1  # one sink
    assert all(k in heads for k in nodes if k.startswith("f"))


def test_blocks_that_differ_are_kept_apart():
    dot = viz.model_graph(models.resnet20(shortcut="B"), (1, 3, 16, 16))
    assert "layer2.0" in CLUSTER.findall(dot)  # projection: unlike layer2.1
    dot = viz.model_graph(models.resnet56v2(), (1, 3, 16, 16))
    assert CLUSTER.findall(dot)[:2] == ["layer1.0", "layer1.1 ... layer1.5  (\u00d75, identical)"]


def test_clear_errors_for_graphs_that_are_gone():
    model = nn.Linear(3, 2)
    with minires.no_grad():
        y = model(Tensor(np.ones((1, 3), np.float32)))
    with pytest.raises(ValueError, match="no recorded graph"):
        viz.graph(y)
    loss = model(Tensor(np.ones((1, 3), np.float32))).sum()
    loss.backward()
    with pytest.raises(ValueError, match="before calling backward"):
        viz.graph(loss)


def test_render_dot_text_needs_no_graphviz(tmp_path):
    dot = viz.model_graph(models.cifar_resnet(8), (1, 3, 8, 8))
    assert viz.render(dot, tmp_path / "g.dot") == str(tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == dot


def test_render_svg_and_png(tmp_path):
    needs_dot()
    dot = viz.model_graph(models.cifar_resnet(8), (1, 3, 8, 8))
    viz.render(dot, tmp_path / "g.svg")
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "layer2.0" in svg and "PadChannels" in svg
    viz.render(dot, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_without_dot_program_says_so(tmp_path, monkeypatch):
    pytest.importorskip("graphviz", reason="needs the graphviz package (pip install -e '.[viz]')")
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot program on it
    with pytest.raises(RuntimeError, match="'dot' program"):
        viz.render("digraph { a -> b; }", tmp_path / "g.svg")
    assert list(tmp_path.iterdir()) == []


def test_summary_cli_draws_a_model(tmp_path, capsys):
    assert summary_main(["--model", "resnet20", "--graph", str(tmp_path / "r20.dot")]) == 0
    out = capsys.readouterr().out
    assert "Total params: 269,722" in out and "wrote" in out
    assert "(\u00d73, identical)" in (tmp_path / "r20.dot").read_text()
    assert summary_main(["--model", "resnet21"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_summary_cli_svg(tmp_path, capsys):
    needs_dot()
    assert summary_main(["--model", "resnet20", "--graph", str(tmp_path / "r20.svg"), "--max-depth", "1"]) == 0
    assert "<svg" in (tmp_path / "r20.svg").read_text()


def test_readme_graph_snippet(tmp_path, monkeypatch):
    needs_dot()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet, = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "minires.viz.render" in b]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    exec(snippet, {})
    svg = (tmp_path / "docs" / "graph.svg").read_text()
    assert "layer3.0.conv2.weight" in svg and "CrossEntropy" in svg
