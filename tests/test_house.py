"""Small things a newcomer tripped over (issue 16, item 7): the profiler's column headers say
what the numbers are, a resumed epoch's bar counts from where the epoch stopped, and curves.png
shows something after one epoch."""
import numpy as np
import pytest

import minires
import minires.training.loop as loop
from minires import Tensor, profiler
from minires.data.loader import ArrayLoader
from minires.optim import SGD, ConstantLR
from minires.training import TrainState
from minires.training.progress import progress_bar
from minires.training.stop import StopRequest


def test_profiler_headers_say_totals_unless_given_steps():
    prof = profiler.Profiler()
    prof.record("Conv2dFunction", "forward", 0.006)
    prof.record("Conv2dFunction", "forward", 0.006)
    totals = prof.table().splitlines()
    assert totals[0].split() == ["op", "phase", "calls", "ms", "share"]
    assert totals[1].split()[2:4] == ["2.0", "12.00"]
    per_step = prof.table(steps=2).splitlines()
    assert per_step[0].split() == ["op", "phase", "calls/step", "ms/step", "share"]
    assert per_step[1].split()[2:4] == ["1.0", "6.00"]


def test_the_bar_of_a_resumed_epoch_counts_from_where_it_stopped():
    bar = progress_bar(391, "epoch 3/50", enabled=False, done=49)
    assert (bar.n, bar.total) == (49, 391)
    bar.close()


def test_the_loop_hands_the_bar_the_batches_already_done(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=40)
    loader = ArrayLoader(x, y, batch_size=8, shuffle=True, seed=0)
    loader.load_state_dict({**loader.state_dict(), "batch": 3})  # 3 of 5 batches done
    model = minires.models.cifar_resnet(8)
    optimizer = SGD(model.parameters(), lr=0.01)
    state = TrainState(model, optimizer, ConstantLR(optimizer), loader)
    seen = {}

    def spy(total, desc, enabled=True, done=0):
        seen.update(total=total, done=done)
        return progress_bar(total, desc, enabled=False, done=done)

    monkeypatch.setattr(loop, "progress_bar", spy)
    loop.train_epoch(state, StopRequest(announce=False), epochs=1, progress=False)
    assert seen == {"total": 5, "done": 3}


def test_curves_of_one_epoch_draw_points(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from minires.training.curves import plot_curves
    row = {"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "test_loss": 1.9, "test_acc": 0.35, "lr": 0.1}
    import matplotlib.pyplot as plt
    figures, real = [], plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: figures.append(real(*a, **k)) or figures[-1])
    assert plot_curves(tmp_path / "curves.png", [row])
    fig, axes = figures[0]
    labels = [ax.get_ylabel() for ax in axes]
    assert labels[1] == "accuracy (%)" and "learning rate" in labels[2]
    for ax in axes:  # one point each, drawn with a marker (a line of one point is invisible)
        assert all(line.get_marker() == "o" and len(line.get_xdata()) == 1 for line in ax.get_lines())
    assert axes[1].get_lines()[1].get_ydata()[0] == pytest.approx(35.0)
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_the_suite_says_why_tests_skipped(tmp_path):
    """conftest's summary: one line per skip reason with its count and what would run them."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(3))\n"
        "def test_a(i):\n    pytest.importorskip('torch_that_is_not_there')\n"
        "def test_b():\n    pytest.skip('real CIFAR-10 not found')\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    lines = run.stdout.splitlines()
    assert any("4 skipped, by reason" in line for line in lines), run.stdout
    torch_line = next(line for line in lines if "torch_that_is_not_there" in line)
    assert torch_line.split()[0] == "3" and "pip install torch" in torch_line
    assert any(line.split()[0] == "1" and "../shared/data" in line for line in lines if "CIFAR-10" in line)
    assert lines[-1].startswith("4 skipped")  # the runner's closing line stays the last one


@pytest.mark.parametrize("module", ["train", "export", "summary", "predict", "weights.package"])
def test_help_names_each_default_once_and_only_where_there_is_one(module):
    import subprocess
    import sys
    from pathlib import Path
    env = {"COLUMNS": "400", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", f"minires.{module}", "--help"], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    for line in run.stdout.splitlines():
        assert line.count("default") <= 1, line
        assert "(default: None)" not in line and "(default: False)" not in line, line
    if module == "summary":
        assert "--input-shape C H W   the shape of one input image (default: the model's" in run.stdout


def test_one_graph_walker_and_an_explicit_released_flag():
    """Backward and the graph readers (ONNX, viz) walk the graph with the same function, and a
    freed Function says so with a flag (not by a missing attribute)."""
    from minires import autograd, tracing
    x = Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
    a = x * 2.0
    y = (a + a * a).sum()
    order = autograd.post_order(y.creator)
    assert [type(f).__name__ for f in order] == ["Mul", "Mul", "Add", "Sum"]
    assert tracing.functions(y) == order
    assert not any(f.released for f in order)
    y.backward()
    assert all(f.released for f in order)
    with pytest.raises(ValueError, match="freed by backward"):
        tracing.functions(y)
    np.testing.assert_allclose(x.grad, 2 + 8 * x.data)


def test_backend_imports_nothing_of_minires():
    """backend is the floor: it looks through Tensors by their base class, without importing autograd."""
    import ast
    from pathlib import Path
    tree = ast.parse(Path(minires.backend.__file__).read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in imports if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert minires.backend.to_numpy(Tensor(np.ones(2))).tolist() == [1.0, 1.0]
    assert minires.backend.get_array_module(Tensor(np.ones(2))) is np


def test_summary_the_function_and_summary_the_command_are_apart():
    import subprocess
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[1])
    probe = "import sys, minires; print(callable(minires.summary), 'minires.summary' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root).stdout.split()
    assert out == ["True", "False"]
    run = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "minires.summary", "--model", "resnet20",
                          "--input-shape", "3", "8", "8"], capture_output=True, text=True, cwd=root)
    assert run.returncode == 0 and "RuntimeWarning" not in run.stderr, run.stderr
    assert "Total params: 269,722" in run.stdout


def test_a_summary_reprs_in_one_line():
    s = minires.summary(minires.models.cifar_resnet(8), (3, 8, 8), print_fn=None)
    text = repr(s)
    assert "\n" not in text and len(text) < 200 and "75,290 parameters" in text
    assert "Total params: 75,290" in str(s)


def _minires_imports(path, package):
    """The minires subpackages/modules a file imports, anywhere in it (late imports included)."""
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
            name = ".".join(parts + ([node.module] if node.module else []))
            found |= {f"{name}.{a.name}" if name == "minires" else name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minires"):
            found.add(node.module)
    return {n.split(".")[1] for n in found if n.count(".") >= 1}


@pytest.mark.parametrize("layer, forbidden", [
    ("functional", {"nn", "models", "training", "distributed", "train"}),
    ("nn", {"models", "training", "distributed", "train"}),
    ("models", {"training", "distributed", "train"}),
])
def test_the_layers_import_only_downwards(layer, forbidden):
    """backend < autograd < functional < nn < models, with training and distributed on top."""
    from pathlib import Path
    folder = Path(minires.__file__).parent / layer
    for path in sorted(folder.glob("*.py")):
        package = f"minires.{layer}"
        assert not _minires_imports(path, package) & forbidden, path.name


def test_no_import_circles():
    """No module reaches itself through the imports of others, late (in-function) imports included."""
    import ast
    from pathlib import Path
    root = Path(minires.__file__).parent
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    target = f"{module}.{a.name}"
                    found.add(target if target in names else module)
        edges[name] = {t for t in found if t in names and t != name}
    # a package's __init__ importing its own submodules (and those importing siblings) is no circle
    def reaches(start):
        seen, stack = set(), [start]
        while stack:
            for t in edges[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return seen
    circles = [n for n in names if n in reaches(n) and not all(
        (m == n or m.startswith(n + ".") or n.startswith(m + ".")) for m in reaches(n) if n in reaches(m))]
    assert not circles, circles
