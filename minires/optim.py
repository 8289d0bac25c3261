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

Schedules are stepped once per iteration (not per epoch): ``MultiStepLR([32000, 48000])`` is the
paper's "divide by 10 at 32k and 48k iterations". They work with every optimizer here.
"""
import bisect
import math

import numpy

from .backend import get_array_module, to_numpy

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
    parameter in ``state_names(group)`` and updates the parameters in ``step()``. What it keeps
    of a parameter p is ``self.state[id(p)]`` (parameters need not be hashable): a dict of
    arrays of p's shape, dtype and backend, and for Adam the int "step".
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

    def check_group(self, group, where):
        """Raise a one-line ValueError for a hyperparameter of ``group`` that cannot train."""
        raise NotImplementedError(f"{type(self).__name__} must define check_group(group, where)")

    def state_names(self, group):
        """The entries kept per parameter of ``group`` once it has taken a step."""
        raise NotImplementedError(f"{type(self).__name__} must define state_names(group)")

    def step(self):
        """Update every parameter that has a gradient, in place."""
        raise NotImplementedError(f"{type(self).__name__} must define step()")

    def _params(self):
        """All parameters in group order (their position is their index in state_dict)."""
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self):
        """Forget all gradients (set them to None)."""
        for p in self._params():
            p.grad = None

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
        state = {}
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
            xp = get_array_module(p.data)
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
                state[id(p)][k] = xp.array(value, dtype=p.data.dtype)  # a copy on p's backend
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

    def step(self):
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                xp = get_array_module(p.data)
                g = p.grad
                if weight_decay != 0:
                    # A new array: the caller's .grad is never modified.
                    g = xp.multiply(p.data, weight_decay)
                    g += p.grad
                if momentum != 0:
                    state = self.state.get(id(p))
                    if state is None:
                        buf = g.copy()
                        self.state[id(p)] = {"momentum_buffer": buf}
                    else:
                        buf = state["momentum_buffer"]
                        buf *= momentum
                        buf += g if dampening == 0 else (1 - dampening) * g
                    g = g + momentum * buf if nesterov else buf
                p.data -= lr * g


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

    def step(self):
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                xp = get_array_module(p.data)
                state = self.state.get(id(p))
                if state is None:
                    state = self.state[id(p)] = {
                        "step": 0,
                        "exp_avg": xp.zeros(p.data.shape, dtype=p.data.dtype),
                        "exp_avg_sq": xp.zeros(p.data.shape, dtype=p.data.dtype)}
                if amsgrad and "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = xp.zeros(p.data.shape, dtype=p.data.dtype)
                state["step"] += 1
                t = state["step"]
                g = p.grad
                if weight_decay != 0:
                    if group["decoupled_weight_decay"]:
                        p.data *= 1 - lr * weight_decay
                    else:
                        g = xp.multiply(p.data, weight_decay)  # a new array: .grad stays as it is
                        g += p.grad
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * (g * g)
                if amsgrad:
                    # The maximum of v itself, bias-corrected below as v is (torch's order).
                    v_max = state["max_exp_avg_sq"]
                    xp.maximum(v_max, v, out=v_max)
                    v = v_max
                denom = xp.sqrt(v) / math.sqrt(1 - beta2 ** t)
                denom += eps
                p.data -= (lr / (1 - beta1 ** t)) * m / denom


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019) as ``torch.optim.AdamW``: Adam whose weight decay shrinks
    the weights, ``p *= 1 - lr * weight_decay``, instead of entering the gradient (and so the
    moments); default ``weight_decay`` 0.01, torch's."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True)


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
