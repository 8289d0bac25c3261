"""Images per second of a full training step (forward, backward, SGD update) and of inference.

    python -m benchmarks.train_step --model resnet20 --batch-size 128 --backend numpy --compare torch

Every framework runs in its own process: in one process NumPy's OpenBLAS threads keep spinning
after each call and slow PyTorch's threads (that once halved PyTorch's measured speed). With
``--compare torch`` the same architecture (weights copied from the minires model) and the same
step run in PyTorch; the two processes take turns in ``--rounds`` blocks of ``--block`` steps
(ABBA order), each block after ``--warmup`` untimed steps, and the ratio minires / PyTorch of
the median step times is printed. During every step the CPU time of all other processes is read
from /proc/stat; steps during which they used ``--max-other-load`` cores or more are left out
of the medians, and the load seen is reported (``--threads`` gives both frameworks the same
thread count; by default each uses its own default, all cores). minires infers with batch norm
folded into the convolutions (``nn.fuse_conv_bn(model)``; ``--no-fuse`` to time the unfolded layers);
PyTorch infers unfolded, as it does by default (``--torch-fuse`` folds it with torch.fx). Peak memory of a training
step is measured in a fresh subprocess per framework: the peak resident set size over three
steps minus the size after building the model and the batch (the kernel's peak counter is reset
then, so set-up transients do not count).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _minires_setup(args):
    import minires
    from minires import models
    from minires.optim import SGD

    minires.set_backend(args.backend)
    minires.manual_seed(0)
    kwargs = {"num_classes": 10}
    if args.stem:
        kwargs["stem"] = args.stem
    model = models.create(args.model, **kwargs)
    if args.dtype != "float32":
        model.astype(args.dtype)
    xp = minires.backend.get_module(args.backend)
    rng = numpy.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((args.batch_size, 3, args.size, args.size)).astype(args.dtype))
    y = xp.asarray(rng.integers(0, 10, args.batch_size))
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    return model, x, y, opt


def _minires_fns(model, x, y, opt, backend_name, fuse=True):
    import minires
    import minires.functional as F

    sync = (lambda: None)
    if backend_name == "cupy":
        cupy = minires.backend.get_module("cupy")
        sync = cupy.cuda.get_current_stream().synchronize

    def train():
        model.train()
        loss = F.cross_entropy(model(minires.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()

    folded = []  # with fuse: the model with batch norm folded (nn/fusion.py), made at the first
    # inference (the train phase is over by then, so the weights no longer change)

    def infer():
        model.eval()
        if fuse and not folded:
            folded.append(minires.nn.fuse_conv_bn(model))
        with minires.no_grad():
            (folded[0] if folded else model)(minires.Tensor(x))
        sync()

    return train, infer


def _torch_setup(args, minires_model):
    import torch
    from benchmarks import torch_models

    kwargs = {"num_classes": 10}
    if args.stem:
        kwargs["stem"] = args.stem
    tmodel = torch_models.create(args.model, **kwargs)
    if tmodel is None:
        return None
    if minires_model is not None:
        import minires
        state = {k: minires.backend.to_numpy(v) for k, v in minires_model.state_dict().items()}
        torch_models.load_minires_state(tmodel, state)
    tmodel = tmodel.to(getattr(torch, args.dtype))
    rng = numpy.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((args.batch_size, 3, args.size, args.size)).astype(args.dtype))
    y = torch.from_numpy(rng.integers(0, 10, args.batch_size))
    opt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def train():
        tmodel.train()
        loss = torch.nn.functional.cross_entropy(tmodel(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    folded = []  # with --torch-fuse: the model with batch norm folded, made at the first inference
    # (the train phase is over by then, so the weights no longer change)

    def infer():
        tmodel.eval()
        if args.torch_fuse and not folded:
            import torch.fx.experimental.optimization as fx_optimization
            folded.append(fx_optimization.fuse(tmodel))
        with torch.no_grad():
            (folded[0] if folded else tmodel)(x)

    return train, infer


def _cpu_jiffies():
    """(busy jiffies of the whole machine, jiffies of this process), from /proc (Linux).

    Busy counts user, nice, system, irq, softirq and steal time (a VM's stolen time is load
    too); this process's own figure covers all its threads (BLAS, thread pools).
    """
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:9]]
    busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]  # user nice system irq softirq steal
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime (fields 14, 15)


def _timed(fn):
    """Run fn once: (seconds, cores used by other processes meanwhile, or None off Linux)."""
    try:
        busy0, own0 = _cpu_jiffies()
    except OSError:
        busy0 = None
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    if busy0 is None:
        return seconds, None
    busy1, own1 = _cpu_jiffies()
    other = max(0, (busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / seconds
    return seconds, other


def _set_threads(framework, n):
    """Give ``framework`` n threads (None: its default); returns the count it then uses."""
    if framework == "torch":
        import torch
        if n:
            torch.set_num_threads(n)
        return torch.get_num_threads()
    import minires
    if n:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")  # BLAS calls outside minires's own thread pool
        minires.set_num_threads(n)
    return minires.get_num_threads()


def _worker(args, framework):
    """Run in a subprocess: build ``framework``'s model, then time blocks of steps on request.

    Reads one JSON request per line from stdin ({"phase": "train" or "infer", "warmup": w,
    "steps": s}) and answers one JSON line: the seconds and the other processes' load of each
    timed step. Keeping one process per framework means neither framework's idle thread pool
    runs inside the other's timings.
    """
    threads = _set_threads(framework, args.threads)
    model, x, y, opt = _minires_setup(args)
    if framework == "torch":
        fns = _torch_setup(args, model)
    else:
        fns = _minires_fns(model, x, y, opt, args.backend, fuse=not args.no_fuse)
    print(json.dumps({"ready": fns is not None, "threads": threads}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        fn = fns[0] if req["phase"] == "train" else fns[1]
        for _ in range(req["warmup"]):
            fn()
        timed = [_timed(fn) for _ in range(req["steps"])]
        print(json.dumps({"seconds": [t for t, _ in timed], "other": [o for _, o in timed]}), flush=True)


class _Worker:
    """The parent's handle on one ``_worker`` subprocess."""

    def __init__(self, args, framework):
        cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", framework] + _model_args(args)
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.no_fuse:
            cmd.append("--no-fuse")
        if args.torch_fuse:
            cmd.append("--torch-fuse")
        self.framework = framework
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_ROOT)
        ready = self._read()
        self.ready, self.threads = ready["ready"], ready["threads"]

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.framework} benchmark process exited (code {self.proc.wait()})")
        return json.loads(line)

    def run(self, phase, warmup, steps):
        self.proc.stdin.write(json.dumps({"phase": phase, "warmup": warmup, "steps": steps}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def _time_frameworks(args, frameworks):
    """Seconds and other load of every timed step, per framework and phase, in alternating blocks.

    Each framework runs in its own process; they take turns in blocks of ``--block`` steps
    (ABBA order, so neither always goes first), each block after ``--warmup`` untimed steps
    that absorb the switch (caches, and the other process's thread pool going to sleep).
    """
    workers = [_Worker(args, f) for f in frameworks]
    try:
        for w in workers:
            if not w.ready:
                print(f"no {w.framework} twin for {args.model}; timing the others alone", file=sys.stderr)
        workers = [w for w in workers if w.ready]
        steps = {(w.framework, phase): [] for w in workers for phase in ("train", "infer")}
        for phase in ("train", "infer"):
            for r in range(args.rounds):
                for w in (workers if r % 2 == 0 else workers[::-1]):
                    res = w.run(phase, args.warmup, args.block)
                    steps[w.framework, phase] += list(zip(res["seconds"], res["other"]))
        return steps, {w.framework: w.threads for w in workers}
    finally:
        for w in workers:
            w.close()


def _summarise(timed, max_other):
    """Median seconds over the steps that ran with less than ``max_other`` cores of other load.

    Returns (median, clean steps, all steps, median other load, max other load); when fewer
    than 3 steps (or fewer than all, if there were less than 3) were clean, the median of all
    steps is given (and the caller warns).
    """
    others = [o for _, o in timed if o is not None]
    clean = [t for t, o in timed if o is None or o < max_other]
    use = clean if _enough(len(clean), len(timed)) else [t for t, _ in timed]
    return (float(numpy.median(use)), len(clean), len(timed),
            float(numpy.median(others)) if others else None, max(others) if others else None)


def _enough(clean, total):
    return clean >= min(3, total)


def _status_mb(field):
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _memory_child(args, framework):
    """Run in a subprocess: peak RSS growth over 3 training steps, in MB."""
    if framework == "torch":
        train, _ = _torch_setup(args, None)
    else:
        model, x, y, opt = _minires_setup(args)
        train, _ = _minires_fns(model, x, y, opt, args.backend)
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current size, so set-up transients do not count
    for _ in range(3):
        train()
    print(json.dumps({"peak_mb": _status_mb("VmHWM") - base}))


def _model_args(args):
    """The command-line flags that rebuild the same model and batch in a subprocess."""
    return (["--model", args.model, "--batch-size", str(args.batch_size), "--backend", args.backend,
             "--dtype", args.dtype, "--size", str(args.size)] + (["--stem", args.stem] if args.stem else []))


def _measure_memory(args, framework):
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--memory-child", framework] + _model_args(args)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"peak memory of {framework} not measured: {last}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20", help="any minires.models name")
    p.add_argument("--stem", choices=("cifar", "imagenet"), help="stem for resnet18-152")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--size", type=int, default=None, help="image side (default 32; 224 for the imagenet stem)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--rounds", type=int, default=4, help="blocks per framework and phase, alternating")
    p.add_argument("--block", type=int, default=3, help="timed steps per block (median over all blocks)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every block")
    p.add_argument("--threads", type=int, help="threads for every framework (default: each one's own default)")
    p.add_argument("--max-other-load", type=float, default=0.25,
                   help="discard steps during which other processes used this many cores or more")
    p.add_argument("--compare", choices=("torch",), help="time PyTorch CPU too, in its own process")
    p.add_argument("--no-fuse", action="store_true", help="minires infers without folding batch norm into the convolutions")
    p.add_argument("--torch-fuse", action="store_true", help="PyTorch infers with batch norm folded too (torch.fx)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--distributed", type=int, metavar="N",
                   help="instead: N MPI ranks x 1 BLAS thread vs 1 process x N threads (benchmarks/distributed.py)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.distributed:
        from benchmarks import distributed
        return distributed.main(["--ranks", str(args.distributed), "--model", args.model,
                                 "--batch-size", str(args.batch_size), "--steps", str(args.block),
                                 "--repeats", str(args.rounds), "--warmup", str(args.warmup)]
                                + (["--json", args.json] if args.json else []))
    if args.size is None:
        args.size = 224 if args.stem == "imagenet" else 32
    if args.memory_child:
        return _memory_child(args, args.memory_child)
    if args.worker:
        return _worker(args, args.worker)

    frameworks = ["minires"]
    if args.compare == "torch":
        try:
            import torch
        except ImportError:
            sys.exit("--compare torch needs PyTorch: pip install torch")
        frameworks.append("torch")
    with open("/proc/loadavg") as f:
        loadavg_before = " ".join(f.read().split()[:3])
    steps, threads = _time_frameworks(args, frameworks)
    frameworks = [f for f in frameworks if (f, "train") in steps]

    env = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "numpy": numpy.__version__, "threads": threads,
           "loadavg_before": loadavg_before}
    if "torch" in frameworks:
        env["torch"] = torch.__version__
    print(f"{args.model}, batch {args.batch_size}, {args.size}x{args.size}, {args.dtype}, backend {args.backend}; "
          f"each framework in its own process, {args.rounds} alternating blocks of {args.block} steps "
          f"after {args.warmup} warm-up; median over steps with < {args.max_other_load} cores of other load; {env}")
    summary = {"args": vars(args), "env": env}
    for phase in ("train", "infer"):
        line, notes = [], []
        for name in frameworks:
            t, clean, total, other_med, other_max = _summarise(steps[name, phase], args.max_other_load)
            summary[f"{name}_{phase}_img_s"] = args.batch_size / t
            summary[f"{name}_{phase}_steps"] = steps[name, phase]
            line.append(f"{name} {args.batch_size / t:8.1f} img/s ({1e3 * t:7.1f} ms)")
            if other_med is not None:
                notes.append(f"{name}: {clean}/{total} steps clean, other load median {other_med:.2f} "
                             f"max {other_max:.2f} cores")
            if not _enough(clean, total):
                notes.append(f"WARNING: too few undisturbed {name} steps; median of all {total}")
        if "torch" in frameworks:
            ratio = summary[f"minires_{phase}_img_s"] / summary[f"torch_{phase}_img_s"]
            summary[f"ratio_{phase}"] = ratio
            line.append(f"ratio minires/torch {ratio:.2f}x")
        print(f"{phase:>6}: " + "  ".join(line))
        print("        " + "; ".join(notes))
    if not args.no_memory and args.backend == "numpy":
        mem = {f: _measure_memory(args, f) for f in frameworks}
        summary.update({f"{f}_peak_mb": v for f, v in mem.items()})
        text = "  ".join(f"{f} {v:.0f} MB" if v is not None else f"{f} n/a" for f, v in mem.items())
        if all(v for v in mem.values()) and "torch" in mem:
            text += f"  ratio {mem['minires'] / mem['torch']:.2f}x"
        print(f"peak memory of a training step (RSS growth): {text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
