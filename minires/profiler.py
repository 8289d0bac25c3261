"""Where does a training step spend its time? A per-op timing table.

``with minires.profiler.profile() as prof: ...`` times every Function's forward and backward
(and any ``section("name")`` block, such as the optimizer update) inside the block, then
``prof.table()`` lists them by total time. Setting ``MINIRES_PROFILE=1`` in the environment
records the whole process and prints the table when it exits.

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
    arrays = arrays if isinstance(arrays, tuple) else (arrays,)
    for a in arrays:
        if a is not None and backend.backend_of(a) == "cupy":
            backend.get_module("cupy").cuda.get_current_stream().synchronize()
            return


class Profiler:
    """Accumulates seconds and call counts per (op, phase)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    def record(self, name, phase, seconds, outputs=None):
        if outputs is not None and backend.backend_of(outputs if not isinstance(outputs, tuple) else outputs[0]) == "cupy":
            start = time.perf_counter()
            _synchronize(outputs)
            seconds += time.perf_counter() - start
        self.seconds[name, phase] += seconds
        self.calls[name, phase] += 1

    @contextlib.contextmanager
    def section(self, name):
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

    def table(self, steps=1):
        """The per-op table as text; ``steps`` divides the times to give per-step figures."""
        lines = [f"{'op':<26}{'phase':<10}{'calls/step':>11}{'ms/step':>10}{'share':>8}"]
        for op, phase, calls, seconds, share in self.rows():
            lines.append(f"{op:<26}{phase:<10}{calls / steps:>11.1f}{1e3 * seconds / steps:>10.2f}{100 * share:>7.1f}%")
        total = sum(self.seconds.values())
        lines.append(f"{'total':<36}{'':>11}{1e3 * total / steps:>10.2f}")
        return "\n".join(lines)


_active = None


@contextlib.contextmanager
def profile():
    """Record per-op times of everything run inside the block; yields the Profiler."""
    global _active
    previous_prof, previous_active = autograd._profiler, _active
    prof = Profiler()
    autograd._profiler = _active = prof
    try:
        yield prof
    finally:
        autograd._profiler, _active = previous_prof, previous_active


@contextlib.contextmanager
def section(name):
    """Time a block of non-Function work (data loading, the optimizer) under ``name`` if profiling."""
    if _active is None:
        yield
    else:
        with _active.section(name):
            yield


def _profile_whole_process():
    global _active
    prof = Profiler()
    autograd._profiler = _active = prof

    def report():
        if prof.seconds:
            print("\nminires profile (MINIRES_PROFILE=1), whole run:\n" + prof.table(), file=sys.stderr)

    atexit.register(report)


if os.environ.get("MINIRES_PROFILE", "").strip() not in ("", "0"):
    _profile_whole_process()
