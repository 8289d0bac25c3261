"""Where does a training step spend its time? A per-op timing table.

``with minires.profiler.profile() as prof: ...`` times every Function's forward and backward
(and any ``section("name")`` block, such as the optimizer update) inside the block, then
``prof.table()`` lists them by total time. Setting ``MINIRES_PROFILE=1`` in the environment
records the whole process and prints the table when it exits.

A ``Profiler`` is a ``FunctionHook`` (``minires.autograd``): autograd calls it before and after
every forward and backward, and it adds up the time in between per (op, phase). Profiles may be
nested: each active one records everything run while it is active.

On the GPU each timing synchronises the device first, so the numbers are honest but the run
is slower than an unprofiled one.
"""
import atexit
import contextlib
import os
import sys
import time
from collections import defaultdict

from . import autograd, backend


def _synchronize(arrays):
    """Wait for the GPU to finish the work that produced ``arrays`` (nothing to wait for on NumPy)."""
    for a in arrays:
        if a is not None and backend.backend_of(a) == "cupy":
            backend.get_module("cupy").cuda.get_current_stream().synchronize()
            return


class Profiler(autograd.FunctionHook):
    """Accumulates seconds and call counts per (op, phase); phase is "forward", "backward" or,
    for a ``section``, "total". Ops are named by their Function class (``Conv2dFunction``)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._start = {}  # (id of the Function, phase) -> perf_counter() when it began

    # -- the FunctionHook methods -------------------------------------------------------------
    def forward_preprocess(self, function, inputs):
        self._start[id(function), "forward"] = time.perf_counter()

    def forward_postprocess(self, function, inputs, outputs):
        self._stop(function, "forward", outputs)

    def backward_preprocess(self, function, grad_outputs):
        self._start[id(function), "backward"] = time.perf_counter()

    def backward_postprocess(self, function, grad_outputs, grad_inputs):
        self._stop(function, "backward", grad_inputs)

    def _stop(self, function, phase, arrays):
        _synchronize(arrays)
        start = self._start.pop((id(function), phase))
        self.record(type(function).__name__, phase, time.perf_counter() - start)

    # -- recording and reporting ----------------------------------------------------------------
    def record(self, name, phase, seconds):
        self.seconds[name, phase] += seconds
        self.calls[name, phase] += 1

    @contextlib.contextmanager
    def section(self, name):
        """Time the block under (``name``, "total") in this profiler."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, "total", time.perf_counter() - start)

    def rows(self):
        """(op, phase, calls, total seconds, share of the recorded total), largest first."""
        total = sum(self.seconds.values()) or 1.0
        keys = sorted(self.seconds, key=self.seconds.get, reverse=True)
        return [(op, phase, self.calls[op, phase], self.seconds[op, phase], self.seconds[op, phase] / total)
                for op, phase in keys]

    def table(self, steps=None):
        """The per-op table as text: whole-run totals, or per-step figures when ``steps`` (the
        number of training steps recorded) is given; the column headers say which."""
        per, n = ("/step", steps) if steps else ("", 1)
        lines = [f"{'op':<26}{'phase':<10}{'calls' + per:>11}{'ms' + per:>10}{'share':>8}"]
        for op, phase, calls, seconds, share in self.rows():
            lines.append(f"{op:<26}{phase:<10}{calls / n:>11.1f}{1e3 * seconds / n:>10.2f}{100 * share:>7.1f}%")
        total = sum(self.seconds.values())
        lines.append(f"{'total':<36}{'':>11}{1e3 * total / n:>10.2f}")
        return "\n".join(lines)


@contextlib.contextmanager
def profile():
    """Record per-op times of everything run inside the block; yields the Profiler."""
    with Profiler() as prof:
        yield prof


@contextlib.contextmanager
def section(name):
    """Time a block of non-Function work (data loading, the optimizer) under ``name`` in every
    active profiler; without one it only runs the block."""
    profilers = [h for h in autograd.function_hooks() if isinstance(h, Profiler)]
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        for prof in profilers:
            prof.record(name, "total", seconds)


def _profile_whole_process():
    prof = Profiler().add()

    def report():
        if prof.seconds:
            # A loop that times each optimizer update as section("optimizer") gets per-step figures
            # (minires.train --profile counts its iterations itself).
            steps = prof.calls.get(("optimizer", "total"))
            what = f"per step over {steps} steps" if steps else "whole run"
            print(f"\nminires profile (MINIRES_PROFILE=1), {what}:\n" + prof.table(steps), file=sys.stderr)

    atexit.register(report)


if os.environ.get("MINIRES_PROFILE", "").strip() not in ("", "0"):
    _profile_whole_process()
