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

On a GPU (``--backend cupy --compare torch``) minires runs on CuPy and PyTorch in CUDA eager mode,
the same model and batch, each in its own process, interleaved as above. Every step is timed with
CUDA events (the device idle before it, so a step's time includes the gaps in which the GPU waits
for Python), and the host time of the call (enqueueing, without the final wait) is reported
beside it. ``--tf32 off`` (the default) keeps float32 matrix products in float32 on both sides
(CuPy: ``CUPY_TF32=0``; PyTorch: ``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` False); ``--tf32 on`` allows TF32 on both, ``--tf32 both``
times the two settings side by side (four processes). After the timing each process reports its
peak GPU memory over three training steps (CuPy: the memory pool's bytes in use, read at every
allocation by a ``cupy.cuda.MemoryHook``; PyTorch: ``torch.cuda.max_memory_allocated``) and the
kernels launched in one training and one inference step, counted by ``torch.profiler`` (CUPTI
records every kernel of the process, CuPy's and cuBLAS's included; n/a where PyTorch is missing).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy

from minires.utils.io import atomic_write

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


def _minires_fns(model, x, y, opt, fuse=True):
    import minires
    import minires.functional as F

    # No synchronisation here: the timers wait for the device (_GpuTimer), so that the host
    # time of a step can be told apart from its device time.
    def train():
        model.train()
        loss = F.cross_entropy(model(minires.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    folded = []  # with fuse: the model with batch norm folded (nn/fusion.py), made at the first
    # inference (the train phase is over by then, so the weights no longer change)

    def infer():
        model.eval()
        if fuse and not folded:
            folded.append(minires.nn.fuse_conv_bn(model))
        with minires.no_grad():
            (folded[0] if folded else model)(minires.Tensor(x))

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
    device = "cuda" if args.backend == "cupy" else "cpu"  # minires on CuPy against PyTorch on CUDA
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"  # True by default: convolutions would use TF32
    tmodel = tmodel.to(device=device, dtype=getattr(torch, args.dtype))
    rng = numpy.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((args.batch_size, 3, args.size, args.size)).astype(args.dtype)).to(device)
    y = torch.from_numpy(rng.integers(0, 10, args.batch_size)).to(device)
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


class _GpuTimer:
    """Times one step with CUDA events of ``framework`` ("minires": CuPy's, "torch": PyTorch's).

    The device is idle when the start event is recorded, so the elapsed time covers everything
    the step makes the GPU do or wait for; the host time is that of the Python call alone.
    """

    def __init__(self, framework):
        if framework == "torch":
            import torch
            self.sync = torch.cuda.synchronize
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.elapsed_ms = lambda: self.start.elapsed_time(self.end)
        else:
            import minires
            cupy = minires.backend.get_module("cupy")
            self.sync = cupy.cuda.Device().synchronize
            self.start, self.end = cupy.cuda.Event(), cupy.cuda.Event()
            self.elapsed_ms = lambda: cupy.cuda.get_elapsed_time(self.start, self.end)

    def __call__(self, fn):
        """Run fn once: (device seconds, host seconds)."""
        self.sync()
        self.start.record()
        t0 = time.perf_counter()
        fn()
        host = time.perf_counter() - t0
        self.end.record()
        self.end.synchronize()
        return self.elapsed_ms() / 1e3, host


def _gpu_peak_bytes(framework, train, sync):
    """Peak bytes held by live arrays over three training steps (model, batch and optimizer
    state included): PyTorch's allocator statistics, or CuPy's memory pool read at every
    allocation. Also the bytes the allocator holds from the driver (reserved) afterwards."""
    if framework == "torch":
        import torch
        sync()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            train()
        sync()
        return torch.cuda.max_memory_allocated(), torch.cuda.memory_reserved()
    import minires
    cupy = minires.backend.get_module("cupy")
    pool = cupy.get_default_memory_pool()

    class PeakHook(cupy.cuda.MemoryHook):
        name = "minires_peak"

        def __init__(self):
            self.peak = pool.used_bytes()

        def malloc_postprocess(self, **kwargs):
            self.peak = max(self.peak, pool.used_bytes())

    sync()
    hook = PeakHook()
    with hook:
        for _ in range(3):
            train()
        sync()
    return hook.peak, pool.total_bytes()


def _kernel_launches(fns, sync):
    """Kernels launched by one training and one inference step, counted by torch.profiler (its
    CUPTI trace holds every kernel the process runs, whichever library launched it); copies and
    memsets are left out. None and the reason where PyTorch or its profiler is not there."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
        torch.cuda.init()
    except Exception as e:  # ImportError, or a PyTorch built without CUDA
        return None, f"{type(e).__name__}: {e}"
    counts = {}
    for phase, fn in zip(("train", "infer"), fns):
        fn()  # anything made on first use (folded model, workspaces) is not counted
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        counts[phase] = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                            and not e.name.startswith(("Memcpy", "Memset")))
    return counts, None


def _worker(args, framework):
    """Run in a subprocess: build ``framework``'s model, then time blocks of steps on request.

    Reads one JSON request per line from stdin ({"phase": "train" or "infer", "warmup": w,
    "steps": s}) and answers one JSON line: the seconds and the other processes' load of each
    timed step (on a GPU: the device seconds from CUDA events, and the host seconds of each call).
    {"measure": "gpu"} answers the peak GPU memory and the kernel launches per step. Keeping one
    process per framework means neither framework's idle thread pool runs inside the other's
    timings.
    """
    threads = _set_threads(framework, args.threads)
    if framework == "torch":
        # The weights to copy come from minires on NumPy (a seed gives the same model on every
        # backend), so this process never holds CuPy's memory pool next to PyTorch's.
        fns = _torch_setup(args, _minires_setup(argparse.Namespace(**{**vars(args), "backend": "numpy"}))[0])
    else:
        model, x, y, opt = _minires_setup(args)
        fns = _minires_fns(model, x, y, opt, fuse=not args.no_fuse)
    gpu = _GpuTimer(framework) if fns is not None and args.backend == "cupy" else None
    print(json.dumps({"ready": fns is not None, "threads": threads}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("measure") == "gpu":
            answer = {}
            try:  # a failure here must not cost the timings already taken
                answer["peak_bytes"], answer["reserved_bytes"] = _gpu_peak_bytes(framework, fns[0], gpu.sync)
                answer["launches"], answer["launches_missing"] = _kernel_launches(fns, gpu.sync)
            except Exception as e:
                answer["error"] = f"{type(e).__name__}: {e}"
            print(json.dumps(answer), flush=True)
            continue
        fn = fns[0] if req["phase"] == "train" else fns[1]
        for _ in range(req["warmup"]):
            fn()
        if gpu is None:
            timed = [_timed(fn) for _ in range(req["steps"])]
            print(json.dumps({"seconds": [t for t, _ in timed], "other": [o for _, o in timed]}), flush=True)
        else:
            timed = [gpu(fn) for _ in range(req["steps"])]
            print(json.dumps({"seconds": [t for t, _ in timed], "other": [None] * len(timed),
                              "host": [h for _, h in timed]}), flush=True)


class _Worker:
    """The parent's handle on one ``_worker`` subprocess (one framework, one TF32 setting)."""

    def __init__(self, args, framework, tf32="off"):
        cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", framework] + _model_args(args)
        cmd += ["--tf32", tf32]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.no_fuse:
            cmd.append("--no-fuse")
        if args.torch_fuse:
            cmd.append("--torch-fuse")
        self.framework, self.tf32 = framework, tf32
        self.key = framework if tf32 == "off" else f"{framework}_tf32"
        env = dict(os.environ, CUPY_TF32="1" if tf32 == "on" else "0")  # CuPy reads it at import
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_ROOT,
                                     env=env)
        self.ready, self.threads = False, None

    def wait_ready(self):
        """Wait for the process to have built its model (the processes start side by side)."""
        ready = self._read()
        self.ready, self.threads = ready["ready"], ready["threads"]

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.key} benchmark process exited (code {self.proc.wait()})")
        return json.loads(line)

    def request(self, req):
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"the {self.key} benchmark process exited (code {self.proc.wait()})") from None
        return self._read()

    def run(self, phase, warmup, steps):
        return self.request({"phase": phase, "warmup": warmup, "steps": steps})

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:  # the process had died
            pass
        self.proc.wait()


def _time_frameworks(args, frameworks):
    """Seconds and other load (and, on a GPU, host seconds) of every timed step, per worker and
    phase, in alternating blocks; on a GPU also each worker's memory and launch counts.

    Each framework (and TF32 setting) runs in its own process; they take turns in blocks of
    ``--block`` steps (ABBA order, so neither always goes first), each block after ``--warmup``
    untimed steps that absorb the switch (caches, and the other process's thread pool going to
    sleep). Returns (steps, threads, gpu, lost): dicts keyed by the workers' keys ("minires",
    "torch", "minires_tf32", "torch_tf32"), and what was said of processes that died.
    """
    settings = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.tf32]
    workers, lost = [], []
    try:
        workers = [_Worker(args, f, tf32) for tf32 in settings for f in frameworks]
        for w in workers:
            try:
                w.wait_ready()
            except RuntimeError as e:  # its traceback went to stderr; time the others
                lost.append(f"{e}")
                continue
            if not w.ready:
                print(f"no {w.framework} twin for {args.model}; timing the others alone", file=sys.stderr)
        ready = [w for w in workers if w.ready]
        steps = {(w.key, phase): [] for w in ready for phase in ("train", "infer")}
        host = {(w.key, phase): [] for w in ready for phase in ("train", "infer")}
        for phase in ("train", "infer"):
            for r in range(args.rounds):
                for w in (ready if r % 2 == 0 else ready[::-1]):
                    if w.proc.poll() is not None:
                        continue
                    try:
                        res = w.run(phase, args.warmup, args.block)
                    except RuntimeError as e:  # a process that died mid-way: keep what the others measure
                        lost.append(f"{e} during {phase}")
                        continue
                    steps[w.key, phase] += list(zip(res["seconds"], res["other"]))
                    host[w.key, phase] += res.get("host", [])
        for message in lost:
            print(f"WARNING: {message}", file=sys.stderr)
        measure = args.backend == "cupy" and not args.no_memory
        gpu = {}
        for w in ready:
            if measure and w.proc.poll() is None:
                try:
                    gpu[w.key] = w.request({"measure": "gpu"})
                except RuntimeError as e:
                    gpu[w.key] = {"error": str(e)}
        for key, h in host.items():
            if h:
                gpu.setdefault(key[0], {})[f"host_{key[1]}_s"] = float(numpy.median(h))
        return steps, {w.key: w.threads for w in ready}, gpu, lost
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
        train, _ = _minires_fns(model, x, y, opt)
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


def _parser():
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
                   help="discard steps during which other processes used this many cores or more (CPU only)")
    p.add_argument("--compare", choices=("torch",),
                   help="time PyTorch too, in its own process (on CUDA with --backend cupy, else on the CPU)")
    p.add_argument("--tf32", choices=("off", "on", "both"), default="off",
                   help="TF32 matrix products on both sides (--backend cupy, float32 only); both: a row each")
    p.add_argument("--no-fuse", action="store_true", help="minires infers without folding batch norm into the convolutions")
    p.add_argument("--torch-fuse", action="store_true", help="PyTorch infers with batch norm folded too (torch.fx)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (on a GPU: and the kernel counts)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--distributed", type=int, metavar="N",
                   help="instead: N MPI ranks x 1 BLAS thread vs 1 process x N threads (benchmarks/distributed.py)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def _fmt_mb(b):
    return f"{b / 2 ** 20:.0f} MB" if b is not None else "n/a"


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if args.tf32 != "off" and (args.backend != "cupy" or args.dtype != "float32"):
        p.error(f"--tf32 {args.tf32} needs --backend cupy and --dtype float32 (TF32 is a GPU float32 mode)")
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
    steps, threads, gpu, lost = _time_frameworks(args, frameworks)
    keys = [k for k in threads if (k, "train") in steps]  # minires, torch, then the TF32 twins

    env = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "numpy": numpy.__version__, "threads": threads,
           "loadavg_before": loadavg_before}
    if "torch" in frameworks:
        env["torch"] = torch.__version__
    on_gpu = args.backend == "cupy"
    if on_gpu:
        import minires
        cupy = minires.backend.get_module("cupy")
        env["cupy"] = cupy.__version__
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        env["gpu"] = name.decode() if isinstance(name, bytes) else name
    how = ("CUDA events per step, device idle before each" if on_gpu else
           f"median over steps with < {args.max_other_load} cores of other load")
    print(f"{args.model}, batch {args.batch_size}, {args.size}x{args.size}, {args.dtype}, backend {args.backend}; "
          f"each framework in its own process, {args.rounds} alternating blocks of {args.block} steps "
          f"after {args.warmup} warm-up; {how}; {env}")
    summary = {"args": vars(args), "env": env, "rows": [], "lost": lost}
    for phase in ("train", "infer"):
        for tf32 in ("", "_tf32"):
            names = [k for k in keys if k.endswith("_tf32") == bool(tf32) and steps[k, phase]]
            if not names:
                continue
            row = {"model": args.model, "batch_size": args.batch_size, "phase": phase, "tf32": bool(tf32)}
            line, notes = [], []
            for key in names:
                name = key.removesuffix("_tf32")
                t, clean, total, other_med, other_max = _summarise(steps[key, phase], args.max_other_load)
                summary[f"{key}_{phase}_img_s"] = row[f"{name}_img_s"] = args.batch_size / t
                summary[f"{key}_{phase}_steps"] = steps[key, phase]
                row[f"{name}_ms"] = 1e3 * t
                line.append(f"{name} {args.batch_size / t:8.1f} img/s ({1e3 * t:7.1f} ms)")
                if on_gpu:
                    g = gpu.get(key, {})
                    row[f"{name}_host_ms"] = 1e3 * g[f"host_{phase}_s"]
                    row[f"{name}_peak_bytes"] = g.get("peak_bytes")
                    row[f"{name}_launches"] = (g.get("launches") or {}).get(phase)
                    notes.append(f"{name}: host {row[f'{name}_host_ms']:.1f} ms/step, "
                                 f"{row[f'{name}_launches'] or 'n/a'} kernels/step"
                                 + (f", peak {_fmt_mb(g.get('peak_bytes'))}" if phase == "train" else "")
                                 + (f" ({g['error']})" if "error" in g else ""))
                elif other_med is not None:
                    notes.append(f"{name}: {clean}/{total} steps clean, other load median {other_med:.2f} "
                                 f"max {other_max:.2f} cores")
                if not _enough(clean, total):
                    notes.append(f"WARNING: too few undisturbed {name} steps; median of all {total}")
            if "torch_img_s" in row:
                row["ratio"] = row["minires_img_s"] / row["torch_img_s"]
                summary[f"ratio_{phase}{tf32}"] = row["ratio"]
                line.append(f"ratio minires/torch {row['ratio']:.2f}x")
            summary["rows"].append(row)
            label = phase + (" tf32" if tf32 else "")
            print(f"{label:>11}: " + "  ".join(line))
            print("             " + "; ".join(notes))
    if on_gpu:
        summary["gpu"] = gpu
    if not args.no_memory and args.backend == "numpy":
        mem = {f: _measure_memory(args, f) for f in frameworks}
        summary.update({f"{f}_peak_mb": v for f, v in mem.items()})
        text = "  ".join(f"{f} {v:.0f} MB" if v is not None else f"{f} n/a" for f, v in mem.items())
        if all(v for v in mem.values()) and "torch" in mem:
            text += f"  ratio {mem['minires'] / mem['torch']:.2f}x"
        print(f"peak memory of a training step (RSS growth): {text}")
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
