"""Check analytic gradients against central finite differences in float64.

For L(inputs) = sum(fn(*inputs) * R) with a fixed random upstream gradient R (non-uniform, so
that a backward that mixes up elements cannot pass by symmetry):
- "full": every element e of every input: (L(x + eps e) - L(x - eps e)) / 2 eps vs dL/dx[e];
- "directional": a few random directions v over all inputs at once (Chainer's check):
  (L(x + eps v) - L(x - eps v)) / 2 eps vs sum <dL/dx, v>. One pair of evaluations per
  direction instead of two per element, so it scales to whole networks.
"""
import numpy

from . import backend
from .autograd import Tensor


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree; the message shows where and by how much."""


def _close(numeric, analytic, atol, rtol):
    return abs(numeric - analytic) <= atol + rtol * abs(numeric)


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, mode="full", n_directions=3, seed=0, grad_output=None):
    """True if ``fn``'s backward matches finite differences for every input that requires grad.

    ``fn(*inputs)`` returns a Tensor; ``inputs`` are Tensors (float64 for meaningful results).
    Raises GradcheckError with the worst disagreement otherwise.
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"gradcheck mode must be 'full' or 'directional', got {mode!r}")
    inputs = list(inputs)
    wrt = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
    if not wrt:
        raise ValueError("gradcheck: no input requires grad")
    for x in wrt:
        if x.dtype != numpy.float64:
            raise ValueError(f"gradcheck needs float64 inputs (finite differences in float32 are noise), got {x.dtype}")
    rng = numpy.random.default_rng(seed)
    xp = backend.get_array_module(wrt[0].data)

    out = fn(*inputs)
    if grad_output is None:
        grad_output = xp.asarray(rng.uniform(0.5, 1.5, size=out.shape) * rng.choice([-1.0, 1.0], size=out.shape))
    R = grad_output

    def loss():
        return float((fn(*inputs).data * R).sum())

    for x in wrt:
        x.grad = None
    try:
        out.backward(R)
    except RuntimeError as e:  # e.g. a backward that returns a gradient of the wrong shape
        raise GradcheckError(f"backward failed: {e}") from e
    analytic = [backend.to_numpy(x.grad) if x.grad is not None else numpy.zeros(x.shape) for x in wrt]

    if mode == "full":
        worst = None
        for k, x in enumerate(wrt):
            flat = x.data.reshape(-1)  # a view: perturbing it perturbs x
            for e in range(flat.size):
                orig = flat[e].item()
                flat[e] = orig + eps
                up = loss()
                flat[e] = orig - eps
                down = loss()
                flat[e] = orig
                numeric = (up - down) / (2 * eps)
                a = analytic[k].reshape(-1)[e]
                err = abs(numeric - a) - rtol * abs(numeric)
                err = numpy.inf if numpy.isnan(err) else err
                if worst is None or err > worst[0]:
                    worst = (err, k, numpy.unravel_index(e, x.shape), numeric, a)
        _, k, index, numeric, a = worst
        if not _close(numeric, a, atol, rtol):
            raise GradcheckError(
                f"gradient of input {k} (shape {wrt[k].shape}) is wrong at index {tuple(int(i) for i in index)}: "
                f"numeric {numeric:.8g} vs analytic {a:.8g} (|diff| {abs(numeric - a):.3g}; "
                f"tolerance atol={atol:g} + rtol={rtol:g} * |numeric|; eps={eps:g})")
        return True

    for d in range(n_directions):
        vs = [rng.standard_normal(x.shape) for x in wrt]
        originals = [x.data.copy() for x in wrt]
        for sign, store in ((1, "up"), (-1, "down")):
            for x, v, orig in zip(wrt, vs, originals):
                x.data[...] = orig + sign * eps * xp.asarray(v)
            if store == "up":
                up = loss()
            else:
                down = loss()
        for x, orig in zip(wrt, originals):
            x.data[...] = orig
        numeric = (up - down) / (2 * eps)
        a = sum(float((g * v).sum()) for g, v in zip(analytic, vs))
        if not _close(numeric, a, atol, rtol):
            per_input = ", ".join(f"input {k} {wrt[k].shape}: {float((g * v).sum()):.6g}"
                                  for k, (g, v) in enumerate(zip(analytic, vs)))
            raise GradcheckError(
                f"directional derivative {d} disagrees: numeric {numeric:.8g} vs analytic {a:.8g} "
                f"(|diff| {abs(numeric - a):.3g}; tolerance atol={atol:g} + rtol={rtol:g} * |numeric|; eps={eps:g}). "
                f"Analytic contribution per input: {per_input}")
    return True
