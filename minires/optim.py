"""Optimizers (SGD with momentum, Adam, AdamW) and per-iteration learning-rate schedules.

``SGD`` follows ``torch.optim.SGD`` step for step. For a parameter p with gradient grad:

    g = grad + weight_decay * p
    buf = g                                    (first step)
    buf = momentum * buf + (1 - dampening) * g (later steps)
    g = g + momentum * buf   if nesterov   else   g = buf
    p = p - lr * g

``Adam`` and ``AdamW`` follow ``torch.optim.Adam`` and ``torch.optim.AdamW``. At step t (counted
per parameter, from 1), with betas (b1, b2):

    g = grad + weight_decay * p                (Adam: L2 added to the gradient)
    p = p * (1 - lr * weight_decay)            (AdamW instead: decoupled decay, g = grad)
    m = b1 * m + (1 - b1) * g                  (m and v start at 0)
    v = b2 * v + (1 - b2) * g * g
    vmax = max(vmax, v)  and  v = vmax         (amsgrad only; vmax starts at 0)
    p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

A parameter is any object with ``.data`` (a NumPy or CuPy array, updated in place) and
``.grad`` (an array on the same backend, or None to skip it: a parameter without a gradient is
neither decayed nor moved, and its step count does not advance).

The optimizer keeps its parameters in flat buffers, one per (backend, dtype), group after group
(``minires.nn.flat.FlatBuffer``): a ``Parameter``'s data and grad become views into them, and each
update above is ONE fused operation over a group's slice (a CuPy ``ElementwiseKernel`` beside its
NumPy twin, ``sgd_update`` and ``adam_update``). Where some parameters have no gradient, or Adam's
step counts differ, the slice is cut into runs of parameters that share them.

Schedules are stepped once per iteration (not per epoch): ``MultiStepLR([32000, 48000])`` is the
paper's "divide by 10 at 32k and 48k iterations". They work with every optimizer here.
"""
import bisect
import math

import numpy

from . import backend
from .backend import get_array_module, to_numpy
from .nn.flat import FlatBuffer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRSchedule", "ConstantLR", "MultiStepLR", "CosineLR", "PiecewiseLR"]


def _check_numbers(group, names, where):
    """Each of ``names`` in ``group`` must be a finite real number."""
    for name in names:
        value = group[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, numpy.integer, numpy.floating)):
            raise ValueError(f"{where}: {name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{where}: invalid {name} {value}: must be a finite number")


class Optimizer:
    """What every optimizer here shares: parameter groups, ``zero_grad`` and the state dict.

    ``params`` is an iterable of parameters, or a list of parameter groups: dicts with a
    "params" list and any hyperparameter of ``defaults`` overriding it (e.g.
    ``{"params": bn_params, "weight_decay": 0.0}``). ``param_groups`` is that list of dicts,
    filled in with every hyperparameter; a schedule changes "lr" there.

    A subclass checks one group in ``check_group(group, where)``, names the entries it keeps per
    parameter in ``state_names(group)``, and updates a run of parameters of one flat buffer in
    one fused call, ``update(group, flat, first, last)``; ``run_key(p)`` says what the parameters
    of a run must share. What it keeps of a parameter p is ``self.state[id(p)]`` (parameters
    need not be hashable): a dict of arrays of p's shape, views into the buffer's flat state,
    and for Adam the int "step". ``flat_buffers``: the optimizer's ``FlatBuffer``s, one per
    (backend, dtype) of its parameters.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        name = type(self).__name__
        params = list(params)
        if not params:
            raise ValueError(f"{name} got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        seen = set()
        for i, group in enumerate(params):
            if not isinstance(group, dict) or "params" not in group:
                raise ValueError(f"parameter group {i} must be a dict with a 'params' list")
            unknown = sorted(set(group) - set(self.defaults) - {"params"})
            if unknown:
                raise ValueError(f"parameter group {i}: {name} takes no hyperparameter {unknown[0]!r}")
            group = {**self.defaults, **group, "params": list(group["params"])}
            self.check_group(group, f"parameter group {i}")
            for p in group["params"]:
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one parameter group")
                seen.add(id(p))
            self.param_groups.append(group)
        self.state = {}
        # One buffer per (backend, dtype), laid out group after group: a group's parameters of
        # one buffer are its params[first:last], (flat, first, last) in self._parts.
        by_kind = {}
        for group in self.param_groups:
            for p in group["params"]:
                by_kind.setdefault((backend.backend_of(p.data), numpy.dtype(p.data.dtype)), []).append(p)
        self.flat_buffers = [FlatBuffer(params, self) for params in by_kind.values()]
        self._where = {id(p): (flat, k) for flat in self.flat_buffers for k, p in enumerate(flat.params)}
        self._parts = []
        for group in self.param_groups:
            parts = {}  # id(flat) -> [flat, first, last]
            for p in group["params"]:
                flat, k = self._where[id(p)]
                parts.setdefault(id(flat), [flat, k, k])[2] = k + 1
            self._parts.append([tuple(part) for part in parts.values()])

    def check_group(self, group, where):
        """Raise a one-line ValueError for a hyperparameter of ``group`` that cannot train."""
        raise NotImplementedError(f"{type(self).__name__} must define check_group(group, where)")

    def state_names(self, group):
        """The entries kept per parameter of ``group`` once it has taken a step."""
        raise NotImplementedError(f"{type(self).__name__} must define state_names(group)")

    def run_key(self, p):
        """What parameters updated by one fused call must share besides having a gradient."""
        raise NotImplementedError(f"{type(self).__name__} must define run_key(p)")

    def update(self, group, flat, first, last):
        """Update ``flat``'s parameters ``first:last`` (all with a gradient, one run_key) in one call."""
        raise NotImplementedError(f"{type(self).__name__} must define update(group, flat, first, last)")

    def step(self):
        """Update every parameter that has a gradient, in place: one fused update per group and
        buffer, cut into runs only where parameters without a gradient (or another run_key) lie."""
        for group, parts in zip(self.param_groups, self._parts):
            for flat, first, last in parts:
                has = flat.gather(first, last)
                k = first
                while k < last:
                    if not has[k - first]:
                        k += 1
                        continue
                    key, end = self.run_key(flat.params[k]), k + 1
                    while end < last and has[end - first] and self.run_key(flat.params[end]) == key:
                        end += 1
                    self.update(group, flat, k, end)
                    k = end
                flat.scatter(first, last, has)

    def _params(self):
        """All parameters in group order (their position is their index in state_dict)."""
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none=True):
        """Forget all gradients: set them to None (PyTorch's default), or with
        ``set_to_none=False`` zero the existing ones (one fill per flat buffer; a parameter
        without a gradient keeps none)."""
        if not set_to_none:
            for flat in self.flat_buffers:
                flat.grad.fill(0)
        for p in self._params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None and getattr(p, "_flat", None) is not self._where[id(p)][0]:
                p.grad[...] = 0

    def state_dict(self):
        """Plain data: ``{"state": {i: {name: ndarray or int}}, "param_groups": [...]}``.

        i is the parameter's position over all groups in order; each group is its
        hyperparameters plus "params": the list of those positions (PyTorch's layout). Arrays
        are NumPy copies, so the dict can be flattened into an .npz (e.g. key
        "state.3.momentum_buffer") and saved.
        """
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[key]: {name: value if name == "step" else numpy.array(to_numpy(value), copy=True)
                              for name, value in entry.items()}
                 for key, entry in self.state.items() if key in index}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = list(range(start, start + n))
            groups.append(saved)
            start += n
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state saved by ``state_dict``.

        The optimizer must be of the same kind and have been built with the same groups of the
        same parameters; arrays are copied onto each parameter's backend and dtype. Nothing
        changes when anything does not fit (a ValueError says what).
        """
        name = type(self).__name__
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {i} has {len(group['params'])} parameters, "
                                 f"the state_dict's has {len(saved['params'])}")
            keys = set(saved) - {"params"}
            if keys != set(self.defaults):
                raise ValueError(f"parameter group {i} of the state_dict has the hyperparameters "
                                 f"{', '.join(sorted(keys))}; {name} has {', '.join(sorted(self.defaults))}: "
                                 f"it was saved by another optimizer")
        merged = [{**group, **{k: v for k, v in saved.items() if k != "params"}}
                  for saved, group in zip(groups, self.param_groups)]
        for i, group in enumerate(merged):
            self.check_group(group, f"parameter group {i}")
        params = [(p, group) for group in merged for p in group["params"]]
        state, writes = {}, []
        for key, entry in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"state_dict has a state for parameter {i}, "
                                 f"but there are only {len(params)}")
            p, group = params[i]
            names = self.state_names(group)
            if set(entry) != set(names):
                raise ValueError(f"state_dict's state {i} holds {', '.join(sorted(entry)) or 'nothing'}; "
                                 f"{name} keeps {', '.join(names)}")
            flat, index = self._where[id(p)]
            state[id(p)] = {}
            for k, value in entry.items():
                if k == "step":
                    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, (int, numpy.integer)) \
                            or value < 1:
                        raise ValueError(f"state_dict's state {i}: step must be an integer >= 1, got {value!r}")
                    state[id(p)][k] = int(value)
                    continue
                if tuple(value.shape) != tuple(p.data.shape):
                    raise ValueError(f"{k} {i} has shape {tuple(value.shape)}, its parameter {tuple(p.data.shape)}")
                writes.append((state[id(p)], k, flat, index, value))
        # Everything fits: copy the arrays into the flat state (on its backend and dtype).
        for entry, k, flat, index, value in writes:
            entry[k] = flat.view(flat.state_array(k), index)
            entry[k][...] = backend.to_backend(value, backend.backend_of(flat.data))
        self.param_groups[:] = merged
        self.state = state


class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay, exactly as PyTorch does it.

    Parameters and parameter groups as ``Optimizer`` says; the hyperparameters a group may
    override are "lr", "momentum", "dampening", "weight_decay" and "nesterov". The state of a
    parameter is its "momentum_buffer" (none with momentum 0).
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})

    def check_group(self, group, where):
        """Refuse hyperparameters that are not finite, or that make SGD diverge by construction."""
        _check_numbers(group, ("lr", "momentum", "dampening", "weight_decay"), where)
        if group["lr"] < 0:
            raise ValueError(f"{where}: invalid learning rate {group['lr']}: must be >= 0")
        # momentum > 1 multiplies the buffer by more than 1 at every step: the steps grow without end.
        if not 0 <= group["momentum"] <= 1:
            raise ValueError(f"{where}: invalid momentum {group['momentum']}: must lie in [0, 1]")
        if not 0 <= group["dampening"] <= 1:
            raise ValueError(f"{where}: invalid dampening {group['dampening']}: must lie in [0, 1]")
        if group["weight_decay"] < 0:
            raise ValueError(f"{where}: invalid weight_decay {group['weight_decay']}: must be >= 0")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{where}: Nesterov momentum needs momentum > 0 and dampening = 0")

    def state_names(self, group):
        return ("momentum_buffer",)

    def run_key(self, p):
        return id(p) in self.state  # a first step sets the momentum buffer to the gradient

    def update(self, group, flat, first, last):
        lo, hi = flat.starts[first], flat.stops[last - 1]
        buf, fresh = None, False
        if group["momentum"] != 0:
            buf = flat.state_array("momentum_buffer")
            fresh = id(flat.params[first]) not in self.state
            for k in range(first, last):
                self.state.setdefault(id(flat.params[k]), {"momentum_buffer": flat.view(buf, k)})
            buf = buf[lo:hi]
        sgd_update(flat.data[lo:hi], flat.grad[lo:hi], buf, fresh, group["lr"], group["momentum"],
                   group["dampening"], group["weight_decay"], group["nesterov"])


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam``: L2 ``weight_decay`` added to the gradient
    (or, with ``decoupled_weight_decay``, AdamW's decay of the weights), eps added after the
    bias-corrected square root, and AMSGrad's maximum taken of the uncorrected second moment.

    The hyperparameters a group may override are "lr", "betas", "eps", "weight_decay",
    "amsgrad" and "decoupled_weight_decay". The state of a parameter: "step" (its own count of
    steps taken), "exp_avg" (m), "exp_avg_sq" (v) and with amsgrad "max_exp_avg_sq", in the
    parameter's dtype.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 decoupled_weight_decay=False):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "amsgrad": amsgrad, "decoupled_weight_decay": decoupled_weight_decay})

    def check_group(self, group, where):
        """Refuse hyperparameters that are not finite or outside the ranges torch accepts."""
        _check_numbers(group, ("lr", "eps", "weight_decay"), where)
        if group["lr"] < 0:
            raise ValueError(f"{where}: invalid learning rate {group['lr']}: must be >= 0")
        if group["eps"] < 0:
            raise ValueError(f"{where}: invalid eps {group['eps']}: must be >= 0")
        if group["weight_decay"] < 0:
            raise ValueError(f"{where}: invalid weight_decay {group['weight_decay']}: must be >= 0")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
        _check_numbers({"beta1": betas[0], "beta2": betas[1]}, ("beta1", "beta2"), where)
        for name, beta in zip(("beta1", "beta2"), betas):
            # beta = 1 never forgets the first moment (and divides by 1 - 1 = 0 in the bias correction).
            if not 0 <= beta < 1:
                raise ValueError(f"{where}: invalid {name} {beta}: must lie in [0, 1)")
        for name in ("amsgrad", "decoupled_weight_decay"):
            if not isinstance(group[name], (bool, numpy.bool_)):
                raise ValueError(f"{where}: {name} must be True or False, got {group[name]!r}")

    def state_names(self, group):
        return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def run_key(self, p):
        return self.state[id(p)]["step"] if id(p) in self.state else 0  # the bias correction's t

    def update(self, group, flat, first, last):
        lo, hi = flat.starts[first], flat.stops[last - 1]
        names = self.state_names(group)[1:]
        for k in range(first, last):
            state = self.state.setdefault(id(flat.params[k]), {"step": 0})
            for name in names:
                if name not in state:  # zeros, whatever the buffer held before (a cleared state)
                    state[name] = flat.view(flat.state_array(name), k)
                    state[name][...] = 0
            state["step"] += 1
        m, v = flat.state["exp_avg"][lo:hi], flat.state["exp_avg_sq"][lo:hi]
        v_max = flat.state["max_exp_avg_sq"][lo:hi] if group["amsgrad"] else None
        adam_update(flat.data[lo:hi], flat.grad[lo:hi], m, v, v_max, state["step"], group["lr"], group["betas"],
                    group["eps"], group["weight_decay"], group["decoupled_weight_decay"])


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019) as ``torch.optim.AdamW``: Adam whose weight decay shrinks
    the weights, ``p *= 1 - lr * weight_decay``, instead of entering the gradient (and so the
    moments); default ``weight_decay`` 0.01, torch's."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True)


# --- the fused updates: a CuPy kernel each, beside its NumPy twin --------------------------------
# One call updates a slice of a flat buffer. The NumPy twins do exactly what the per-parameter
# updates did, operation for operation (the same roundings); the kernels do the same per element.
# Hyperparameters enter in the parameters' dtype, as NumPy casts a Python float.

_sgd_kernel = backend.ElementwiseKernel(
    "T g, T lr, T weight_decay", "T p",
    "T d = weight_decay != 0 ? p * weight_decay + g : g; p = p - lr * d",
    "minires_sgd_step")

_sgd_momentum_kernel = backend.ElementwiseKernel(
    "T g, T lr, T momentum, T damping, T weight_decay, int32 nesterov, int32 fresh", "T p, T buf",
    """
    T d = weight_decay != 0 ? p * weight_decay + g : g;
    buf = fresh ? d : buf * momentum + damping * d;
    d = nesterov ? d + momentum * buf : buf;
    p = p - lr * d;
    """,
    "minires_sgd_momentum_step")


def sgd_update(p, g, buf, fresh, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step of flat arrays, in place: p (parameters), g (gradients, not changed) and buf
    (the momentum buffers; None with momentum 0; set to the gradient where ``fresh``), all of one
    shape: d = g + wd * p; buf = d (fresh) or momentum * buf + (1 - dampening) * d;
    d = d + momentum * buf (Nesterov) or buf; p = p - lr * d."""
    xp = get_array_module(p)
    T = p.dtype.type
    if xp is not numpy:
        if buf is None:
            _sgd_kernel(g, T(lr), T(weight_decay), p)
        else:
            _sgd_momentum_kernel(g, T(lr), T(momentum), T(1 - dampening), T(weight_decay), numpy.int32(nesterov),
                                 numpy.int32(fresh), p, buf)
        return
    t1, t2 = _scratch(p)
    for part in _blocks(p.size):
        pb, gb, t1b, t2b = p[part], g[part], t1[:len(p[part])], t2[:len(p[part])]
        d = gb
        if weight_decay != 0:
            d = numpy.multiply(pb, weight_decay, out=t1b)  # the gradients stay as they are
            d += gb
        if buf is not None:
            bb = buf[part]
            if fresh:
                bb[...] = d
            else:
                bb *= momentum
                bb += d if dampening == 0 else numpy.multiply(d, 1 - dampening, out=t2b)
            if nesterov:
                d = numpy.add(d, numpy.multiply(bb, momentum, out=t2b), out=t2b)
            else:
                d = bb
        pb -= numpy.multiply(d, lr, out=t1b)


_ADAM_MOMENTS = """
    T d = g;
    if (weight_decay != 0) {
        if (decoupled) p = p * decay; else d = p * weight_decay + g;
    }
    m = m * beta1 + one_minus_beta1 * d;
    v = v * beta2 + one_minus_beta2 * (d * d);
"""

_adam_kernel = backend.ElementwiseKernel(
    "T g, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T weight_decay, int32 decoupled, T decay, "
    "T bias_sqrt, T eps, T step_size", "T p, T m, T v",
    _ADAM_MOMENTS + "p = p - step_size * m / (sqrt(v) / bias_sqrt + eps);",
    "minires_adam_step")

_adam_amsgrad_kernel = backend.ElementwiseKernel(
    "T g, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T weight_decay, int32 decoupled, T decay, "
    "T bias_sqrt, T eps, T step_size", "T p, T m, T v, T v_max",
    # NumPy's maximum: a NaN in either wins
    _ADAM_MOMENTS + "if (v != v || v > v_max) v_max = v;\n"
    "p = p - step_size * m / (sqrt(v_max) / bias_sqrt + eps);",
    "minires_adam_amsgrad_step")


def adam_update(p, g, m, v, v_max, t, lr, betas, eps, weight_decay, decoupled):
    """One Adam step (the module's docstring has the maths) of flat arrays at step t, in place:
    p (parameters), g (gradients, not changed), m, v and v_max (amsgrad only, else None) the
    moments, all of one shape."""
    xp = get_array_module(p)
    T = p.dtype.type
    beta1, beta2 = betas
    step_size, bias_sqrt = lr / (1 - beta1 ** t), math.sqrt(1 - beta2 ** t)
    if xp is not numpy:
        args = (g, T(beta1), T(1 - beta1), T(beta2), T(1 - beta2), T(weight_decay), numpy.int32(decoupled),
                T(1 - lr * weight_decay), T(bias_sqrt), T(eps), T(step_size), p, m, v)
        if v_max is None:
            _adam_kernel(*args)
        else:
            _adam_amsgrad_kernel(*args, v_max)
        return
    t1, t2 = _scratch(p)
    for part in _blocks(p.size):
        pb, gb, mb, vb, t1b, t2b = p[part], g[part], m[part], v[part], t1[:len(p[part])], t2[:len(p[part])]
        d = gb
        if weight_decay != 0:
            if decoupled:
                pb *= 1 - lr * weight_decay
            else:
                d = numpy.multiply(pb, weight_decay, out=t1b)  # the gradients stay as they are
                d += gb
        mb *= beta1
        mb += numpy.multiply(d, 1 - beta1, out=t2b)
        vb *= beta2
        numpy.multiply(d, d, out=t2b)
        t2b *= 1 - beta2
        vb += t2b
        if v_max is not None:
            # The maximum of v itself, bias-corrected below as v is (torch's order).
            vb = numpy.maximum(v_max[part], vb, out=v_max[part])
        denom = numpy.sqrt(vb, out=t2b)
        denom /= bias_sqrt
        denom += eps
        step = numpy.multiply(mb, step_size, out=t1b)
        step /= denom
        pb -= step


_BLOCK = 1 << 14  # elements per pass of the NumPy twins: a block's arrays stay in the L2 cache


def _blocks(n):
    """Slices of [0, n) of at most _BLOCK elements: the NumPy twins update a flat buffer block by
    block (every operation is elementwise, so the result is the same as in one pass)."""
    return [slice(lo, min(lo + _BLOCK, n)) for lo in range(0, n, _BLOCK)]


def _scratch(p):
    """Two temporaries of one block, in p's dtype."""
    n = min(p.size, _BLOCK)
    return numpy.empty(n, dtype=p.dtype), numpy.empty(n, dtype=p.dtype)


class LRSchedule:
    """A learning rate that is a function of the iteration, written into the optimizer.

    Subclasses define ``schedule(step)``: the lr of iteration ``step`` (0-based) for the first
    parameter group, whose lr at construction is ``base_lr``. Every other group gets it scaled
    by its own starting lr / base_lr. ``lr_at(step)`` adds the optional warm-up: for the first
    ``warmup_steps`` iterations the lr is ``warmup_lr`` (warmup="constant", the ResNet-110
    recipe) or rises linearly from ``warmup_lr`` to ``schedule(warmup_steps)`` ("linear");
    after it, ``schedule(step)`` on the same iteration count (warm-up does not shift it).

    Use: call ``step()`` once after every ``optimizer.step()``. Construction sets the lr of
    iteration 0; after k calls the groups hold ``lr_at(k)``.
    """

    def __init__(self, optimizer, warmup_steps=0, warmup_lr=None, warmup="constant"):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, found {warmup_steps}")
        if warmup not in ("constant", "linear"):
            raise ValueError(f"warmup must be 'constant' or 'linear', found {warmup!r}")
        if warmup_steps > 0 and (warmup_lr is None or not math.isfinite(warmup_lr) or warmup_lr < 0):
            raise ValueError(f"a warm-up needs a finite warmup_lr >= 0, found {warmup_lr}")
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        if self.base_lrs[0] <= 0:
            raise ValueError("the first parameter group's lr must be > 0: it is the schedule's base lr")
        self.warmup_steps, self.warmup_lr, self.warmup = warmup_steps, warmup_lr, warmup
        self.step_count = 0
        self._write()

    @property
    def base_lr(self):
        return self.base_lrs[0]

    def schedule(self, step):
        """The lr at iteration ``step`` without warm-up (for the first parameter group)."""
        raise NotImplementedError(f"{type(self).__name__} must define schedule(step)")

    def lr_at(self, step):
        """The lr at iteration ``step`` (for the first parameter group), warm-up included."""
        if step < self.warmup_steps:
            if self.warmup == "constant":
                return self.warmup_lr
            end = self.schedule(self.warmup_steps)
            return self.warmup_lr + (end - self.warmup_lr) * step / self.warmup_steps
        return self.schedule(step)

    def _write(self):
        lr = self.lr_at(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * (base / self.base_lr)  # ratio first: the first group gets lr exactly

    def step(self):
        """Advance one iteration and set every group's lr for it."""
        self.step_count += 1
        self._write()

    def state_dict(self):
        """``{"step": int, "base_lrs": [float, ...]}``."""
        return {"step": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        """Restore the iteration count (and base lrs) and write the matching lr."""
        base_lrs = [float(lr) for lr in state["base_lrs"]]
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"schedule state has {len(base_lrs)} base lrs, "
                             f"the optimizer {len(self.optimizer.param_groups)} groups")
        self.step_count, self.base_lrs = int(state["step"]), base_lrs
        self._write()


class ConstantLR(LRSchedule):
    """The base lr throughout (with an optional warm-up)."""

    def schedule(self, step):
        return self.base_lr


class MultiStepLR(LRSchedule):
    """The base lr times ``gamma`` once for every milestone reached: lr(step) =
    base_lr * gamma ** (number of milestones <= step). The paper: milestones [32000, 48000]."""

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_steps=0, warmup_lr=None,
                 warmup="constant"):
        milestones = [int(m) for m in milestones]
        if any(m < 0 for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"milestones must be non-negative and increasing, found {milestones}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, found {gamma}")
        self.milestones, self.gamma = milestones, gamma
        super().__init__(optimizer, warmup_steps, warmup_lr, warmup)

    def schedule(self, step):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, step)


class CosineLR(LRSchedule):
    """Cosine decay from the base lr at step 0 to ``min_lr`` at ``total_steps`` (held after):
    lr(step) = min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2."""

    def __init__(self, optimizer, total_steps, min_lr=0.0, warmup_steps=0, warmup_lr=None,
                 warmup="constant"):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, found {total_steps}")
        if min_lr < 0:
            raise ValueError(f"min_lr must be >= 0, found {min_lr}")
        self.total_steps, self.min_lr = total_steps, min_lr
        super().__init__(optimizer, warmup_steps, warmup_lr, warmup)

    def schedule(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2


class PiecewiseLR(LRSchedule):
    """The base lr times ``factors[i]`` from iteration ``milestones[i]`` on: lr(step) = base_lr *
    factors[k - 1], k = number of milestones <= step (base_lr itself before the first). Keras's
    CIFAR-10 ResNet example: milestones at the first iteration of epochs 81, 121, 161, 181,
    factors 0.1, 0.01, 0.001, 0.0005."""

    def __init__(self, optimizer, milestones, factors, warmup_steps=0, warmup_lr=None, warmup="constant"):
        milestones, factors = [int(m) for m in milestones], [float(f) for f in factors]
        if any(m < 0 for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"milestones must be non-negative and increasing, found {milestones}")
        if len(factors) != len(milestones) or not all(f > 0 for f in factors):
            raise ValueError(f"factors must be one positive number per milestone, found {factors} "
                             f"for {len(milestones)} milestones")
        self.milestones, self.factors = milestones, factors
        super().__init__(optimizer, warmup_steps, warmup_lr, warmup)

    def schedule(self, step):
        k = bisect.bisect_right(self.milestones, step)
        return self.base_lr * self.factors[k - 1] if k else self.base_lr
