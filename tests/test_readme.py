"""Every ```python block of README.md runs as pasted: each on its own, in a fresh process, with
the repository on PYTHONPATH and a new folder as the working directory, laid out as a reader's
checkout is (the real CIFAR-10 reachable as ../shared/data).

What a reader brings (a checkpoint of their own, a photo, torchvision's weights) is made first by
FIXTURES, keyed on the file name the block reads; a block whose optional dependency is missing
is skipped, naming what installs it.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _real_cifar10_dir

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT = 300  # seconds per block, generous for a loaded 2-core machine

# What a block may need beyond minires and NumPy -> what brings it (a skip names it).
NEEDS = {
    "torch": "torch: pip install torch",
    "torchvision": "torchvision: pip install torchvision",
    "onnx": 'onnx: pip install -e ".[onnx]"',
    "onnxruntime": 'onnxruntime (onnx): pip install -e ".[onnx]"',
    "PIL": 'Pillow (PIL): pip install -e ".[image]"',
    "graphviz": 'graphviz: pip install -e ".[viz]"',
    "dot": "Graphviz's dot program (graphviz): apt install graphviz",
    "cifar-10": "the real CIFAR-10 (cifar-10 in ../shared/data or $MINIRES_DATA)",
}
# A minires module whose import brings in an optional package.
IMPORT_NEEDS = {"minires.onnx": "onnx"}


def _checkpoint(cwd):
    """A checkpoint of the reader's own, as the command line writes it (one quick epoch)."""
    done = subprocess.run([sys.executable, "-m", "minires.train", "--depth", "20", "--data-dir", "../shared/data",
                           "--epochs", "1", "--limit-train", "128", "--limit-test", "128", "--batch-size", "64",
                           "--no-progress", "--out", "runs/resnet20"],
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"making runs/resnet20/last.npz failed:\n{done.stderr[-3000:]}"


def _photo(cwd):
    from PIL import Image
    Image.new("RGB", (48, 40), (200, 120, 40)).save(cwd / "cat.jpg")


def _torchvision_weights(cwd):
    """A torch.save'd state dict in torchvision's layout (benchmarks.torch_models has it; torchvision
    itself is no dependency)."""
    import torch
    from benchmarks import torch_models
    torch.save(torch_models.create("resnet18", stem="imagenet", num_classes=1000).state_dict(),
               cwd / "resnet18.pth")


def _minires_weights_and_net(cwd):
    """r18.npz as minires.save writes it, and the block's ``net``: a PyTorch ResNet-18 in
    torchvision's layout, from benchmarks.torch_models."""
    import minires
    minires.save(minires.models.create("resnet18", stem="imagenet", num_classes=1000).state_dict(), cwd / "r18.npz")
    return ("from benchmarks import torch_models\n"
            "net = torch_models.create('resnet18', stem='imagenet', num_classes=1000)\n")


def _docs_folder(cwd):
    (cwd / "docs").mkdir()  # the block draws the figure README shows, in the checkout's docs/


# A file a block reads (as a string literal in it) -> (what making it needs, a function that makes
# it in the block's folder and returns Python to run before the block, if any).
FIXTURES = {
    "runs/resnet20/last.npz": (("cifar-10",), _checkpoint),
    "cat.jpg": (("PIL",), _photo),
    "resnet18.pth": (("torch",), _torchvision_weights),
    "r18.npz": (("torch",), _minires_weights_and_net),
    "docs/graph.svg": (("graphviz", "dot"), _docs_folder),
}

# A string in a block -> files the block must leave in its folder.
LEAVES = {
    'out="runs/mine"': ["runs/mine/last.npz", "runs/mine/best.npz", "runs/mine/metrics.csv"],
    '"r20.onnx"': ["r20.onnx"],
    '"docs/graph.svg"': ["docs/graph.svg"],
}

def readme_blocks():
    """[(id, code)] of README's python blocks, in order; the id is the section's heading and the
    block's number in it."""
    blocks, heading, counts, fence, code = [], "top", {}, None, []
    for line in README.read_text().splitlines(keepends=True):
        if fence is None and line.startswith("```"):
            fence, code = line.strip(), []
        elif fence is not None and line.strip() == "```":
            if fence == "```python":
                counts[heading] = counts.get(heading, 0) + 1
                blocks.append((f"{heading}-{counts[heading]}", "".join(code)))
            fence = None
        elif fence is not None:
            code.append(line)
        elif line.startswith("#"):  # a heading (outside a block, where # starts comments)
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").lower()).strip("-")
    return blocks


def imported_modules(code):
    """Every module an import statement of ``code`` names, with its parents (a.b -> a, a.b)."""
    names = []
    for m in re.finditer(r"^\s*(?:import\s+([\w., ]+)|from\s+([\w.]+)\s+import)", code, flags=re.M):
        for name in (m.group(1) or m.group(2)).split(","):
            parts = name.split()[0].split(".")
            names += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return names


def block_needs(code):
    """The keys of NEEDS that running ``code`` takes: its imports, its fixtures' and the data's."""
    needs = [IMPORT_NEEDS.get(name, name) for name in imported_modules(code)]
    needs += [need for path, (path_needs, _) in FIXTURES.items() if f'"{path}"' in code for need in path_needs]
    needs += ["cifar-10"] if "../shared/data" in code else []
    return [need for need in dict.fromkeys(needs) if need in NEEDS]


def _missing(need):
    if need == "dot":
        return shutil.which("dot") is None
    if need == "cifar-10":
        return _real_cifar10_dir() is None
    return importlib.util.find_spec(need) is None


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MINIRES_DATA", None)  # the blocks find the data where a reader's checkout has it
    return env


def test_readme_has_the_blocks_the_fixtures_are_for():
    """A fixture whose file no block reads any more, or a LEAVES string no block has, is stale."""
    code = "\n".join(c for _, c in readme_blocks())
    for marker in [f'"{path}"' for path in FIXTURES] + list(LEAVES):
        assert marker in code, f"no README python block has {marker}"


def test_imported_modules_reads_every_import_form():
    code = "import numpy as np\nimport minires, minires.onnx\n    from PIL import Image\nx = 'import os'\n"
    assert imported_modules(code) == ["numpy", "minires", "minires", "minires.onnx", "PIL"]


def test_block_needs_reads_imports_fixtures_and_data():
    code = 'import numpy, torch\nimport minires.onnx\nminires.predict(m, ["cat.jpg"])\nload("../shared/data")\n'
    assert block_needs(code) == ["torch", "onnx", "PIL", "cifar-10"]


@pytest.mark.parametrize("code", [pytest.param(code, id=block_id) for block_id, code in readme_blocks()])
def test_readme_python_block_runs_as_pasted(code, tmp_path):
    missing = [NEEDS[need] for need in block_needs(code) if _missing(need)]
    if missing:
        pytest.skip(f"README block needs {'; '.join(missing)}")

    fixtures = [make for path, (_, make) in FIXTURES.items() if f'"{path}"' in code]
    cwd = tmp_path / "repo"  # a reader's checkout, with the data beside it
    cwd.mkdir()
    data = _real_cifar10_dir()
    if data is not None:
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(data.parent, target_is_directory=True)
    prelude = "".join(make(cwd) or "" for make in fixtures)
    script = tmp_path / "block.py"
    script.write_text(prelude + code)
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, f"the block failed:\n{code}\n{done.stderr[-3000:]}"
    for marker, paths in LEAVES.items():
        if marker in code:
            for path in paths:
                assert (cwd / path).is_file(), f"the block should have written {path}"
