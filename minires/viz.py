"""A picture of the recorded graph: ``minires.viz.graph(loss, model)`` returns Graphviz DOT text.

Each Function is a box with its output shape; parameters are blue ellipses named by their module
path (``layer1.0.conv1.weight``) when ``model`` is given; inputs and constants are drawn apart
from them. ``render(dot, "graph.svg")`` draws the text with the ``graphviz`` package
(``pip install -e ".[viz]"``) and the Graphviz ``dot`` program; ``.dot`` files need neither.

Residual blocks are found in the graph itself, with no help from the modules: in the order of
computation, a value is a *cut* when no edge jumps over it, so everything downstream depends on
the graph only through it. Between two cuts lies either one op of a chain or a whole block whose
paths fork and join (a residual block: its branch and its shortcut). Such blocks are drawn as
clusters named by their parameters' common module path, and with ``collapse=True`` a run of
consecutive blocks of the same structure is drawn once, labelled "×k".
"""
import os

from . import backend, tracing
from .utils.io import atomic_write

PARAMETER_STYLE = 'shape=ellipse, style=filled, fillcolor="#cfe2f3"'
INPUT_STYLE = 'shape=ellipse, style=filled, fillcolor="#fff2cc"'
CONSTANT_STYLE = 'shape=plaintext'
FUNCTION_STYLE = 'shape=box, style="rounded,filled", fillcolor="#eeeeee"'


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(shape):
    return str(tuple(int(n) for n in shape))


def _op_name(f):
    """The Function's class name without a trailing "Function" (Conv2dFunction -> Conv2d)."""
    name = type(f).__name__
    return name[:-len("Function")] if name.endswith("Function") and name != "Function" else name


def _segments(order):
    """Split ``order`` (producers first) at its cuts: lists of consecutive Functions.

    Position i is a cut when no edge runs from before i to after i. A singleton segment without
    parameters that keeps the shape (the ReLU after a residual addition) joins the block before it.
    """
    pos = {id(f): i for i, f in enumerate(order)}
    covered = [0] * (len(order) + 1)  # covered[i] > 0: an edge jumps over position i
    for i, f in enumerate(order):
        for x in f.inputs:
            if x.creator is not None and i - pos[id(x.creator)] > 1:
                covered[pos[id(x.creator)] + 1] += 1
                covered[i] -= 1
    segments, start, running = [], 0, 0
    for i in range(len(order)):
        running += covered[i]
        if running == 0:
            segments.append(order[start:i + 1])
            start = i + 1
    merged = []
    for seg in segments:
        f = seg[0]
        if (merged and len(merged[-1]) > 1 and len(seg) == 1 and len(f.inputs) == 1
                and f.inputs[0].creator is merged[-1][-1]
                and tracing.output_shape(f) == tracing.output_shape(merged[-1][-1])):
            merged[-1] = merged[-1] + seg
        else:
            merged.append(seg)
    return merged


def _signature(seg):
    """The structure of a segment: op types, output shapes, parameter shapes and wiring, with
    inputs from outside the segment counted as one."""
    pos = {id(f): i for i, f in enumerate(seg)}
    sig = []
    for f in seg:
        wiring = tuple(pos.get(id(x.creator), -1) if x.creator is not None else ("leaf", tuple(x.shape))
                       for x in f.inputs)
        sig.append((type(f), tracing.output_shape(f), wiring))
    return tuple(sig)


def _common_path(names):
    """The longest common dotted prefix of module paths ("layer1.0.conv1", "layer1.0.bn1" -> "layer1.0")."""
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def graph(y, model=None, collapse=False, params=True):
    """Graphviz DOT text of the graph that computed the Tensor ``y`` (a loss, or a model's output).

    ``model`` names the parameters by their module paths; ``collapse`` draws each run of
    identical residual blocks once; ``params=False`` leaves out the parameter leaves. Call it
    before ``backward()``, which frees the graph.
    """
    order = tracing.functions(y)
    names = tracing.state_names(model) if model is not None else {}
    segments = _segments(order)

    # Runs of identical multi-op segments: draw the first, skip the others, reroute their output.
    drawn, labels, alias = [], [], {}
    i = 0
    while i < len(segments):
        seg, j = segments[i], i + 1
        if collapse and len(seg) > 1:
            while j < len(segments) and len(segments[j]) > 1 and _signature(segments[j]) == _signature(seg):
                j += 1
        run = segments[i:j]
        for later in run[1:]:
            alias[id(later[-1])] = seg[-1]  # consumers of the run's output read the first block's
        paths = [_block_path(s, names) for s in run]
        label = paths[0] if len(run) == 1 else f"{paths[0]} ... {paths[-1]}  (\u00d7{len(run)}, identical)"
        drawn.append(seg)
        labels.append(label)
        i = j

    ids, leaf_ids, edges = {}, {}, []
    lines = ["digraph minires {", "  rankdir=TB;",
             '  graph [fontname="Helvetica", fontsize=11]; node [fontname="Helvetica", fontsize=10];',
             '  edge [color="#666666"];']
    for k, (seg, label) in enumerate(zip(drawn, labels)):
        cluster = len(seg) > 1
        indent = "    " if cluster else "  "
        if cluster:
            lines += [f"  subgraph cluster_{k} {{", f'    label={_quote(label)}; style=rounded; color="#999999";']
        for f in seg:
            ids[id(f)] = f"f{len(ids)}"
            text = _op_name(f) + "\n" + _shape(tracing.output_shape(f))
            lines.append(f"{indent}{ids[id(f)]} [label={_quote(text)}, {FUNCTION_STYLE}];")
            for x in f.inputs:
                if x.creator is not None:
                    edges.append(f"  {ids[id(alias.get(id(x.creator), x.creator))]} -> {ids[id(f)]};")
                    continue
                leaf = _leaf(x, names, model is not None)
                if leaf is None or (leaf[1] == PARAMETER_STYLE and not params):
                    continue
                if id(x) not in leaf_ids:  # drawn beside its first consumer, inside its cluster
                    leaf_ids[id(x)] = f"x{len(leaf_ids)}"
                    lines.append(f"{indent}{leaf_ids[id(x)]} [label={_quote(leaf[0])}, {leaf[1]}];")
                edges.append(f"  {leaf_ids[id(x)]} -> {ids[id(f)]};")
        if cluster:
            lines.append("  }")
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


def _leaf(x, names, named):
    """(label, style) of a leaf: a parameter (named when ``names`` knows it), an input, a constant."""
    if id(x) in names:
        return f"{names[id(x)]}\n{_shape(x.shape)}", PARAMETER_STYLE
    if x.size == 1:
        return f"{backend.to_numpy(x).item():.4g}", CONSTANT_STYLE
    if x.requires_grad and not named:  # without a model, what learns is taken for a parameter
        return f"parameter\n{_shape(x.shape)}", PARAMETER_STYLE
    return f"input\n{_shape(x.shape)}", INPUT_STYLE


def _block_path(seg, names):
    paths = [names[id(x)].rsplit(".", 1)[0] for f in seg for x in f.inputs
             if x.creator is None and id(x) in names]
    return _common_path(paths) if paths else _op_name(seg[0])


def model_graph(model, input_shape=(1, 3, 32, 32), collapse=True, params=False):
    """DOT text of ``model``'s eval-mode forward pass on a zero batch of ``input_shape``."""
    first = next(iter(model.parameters()), None)
    xp = backend.get_array_module(first.data) if first is not None else backend.default_module()
    _, y = tracing.trace(model, xp.zeros(tuple(input_shape), first.dtype if first is not None else "float32"))
    return graph(y, model, collapse=collapse, params=params)


def render(dot, path):
    """Write the DOT text ``dot`` to ``path``: as text for .dot/.gv, else drawn in the format of
    the suffix (.svg, .png, .pdf) by Graphviz. Returns ``path``."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt in ("dot", "gv"):
        data = dot.encode()
    else:
        try:
            import graphviz
        except ImportError:
            raise ImportError(f'drawing {path} needs the graphviz package (pip install -e ".[viz]") '
                              f"and the Graphviz program; a .dot file needs neither") from None
        try:
            data = graphviz.Source(dot).pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            raise RuntimeError(f"drawing {path} needs the Graphviz 'dot' program on PATH "
                               f"(apt install graphviz, brew install graphviz); a .dot file does not") from None
        except (ValueError, graphviz.CalledProcessError) as e:
            raise ValueError(f"Graphviz cannot write {path!r}: {e}") from None
    with atomic_write(path) as f:
        f.write(data)
    return path
