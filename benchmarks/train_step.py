"""Images per second of a full training step (forward, backward, SGD update) and of inference.

    python -m benchmarks.train_step --model resnet20 --batch-size 128 --backend numpy --compare torch

Each figure is the median of ``--steps`` timed repetitions after ``--warmup`` untimed ones. With
``--compare torch`` the same architecture (weights copied from the minires model) and the same
step run in PyTorch in the same process, interleaved step by step with minires so that both see
the same machine load, and the ratio minires / PyTorch is printed. Peak memory of a training
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


def _minires_fns(model, x, y, opt, backend_name):
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

    def infer():
        model.eval()
        with minires.no_grad():
            model(minires.Tensor(x))
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

    def infer():
        tmodel.eval()
        with torch.no_grad():
            tmodel(x)

    return train, infer


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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


def _measure_memory(args, framework):
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--memory-child", framework,
           "--model", args.model, "--batch-size", str(args.batch_size), "--backend", args.backend,
           "--dtype", args.dtype, "--size", str(args.size)] + (["--stem", args.stem] if args.stem else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
    if out.returncode != 0:
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
    p.add_argument("--steps", type=int, default=7, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    p.add_argument("--compare", choices=("torch",), help="time PyTorch CPU in the same run, interleaved")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--distributed", type=int, metavar="N",
                   help="instead: N MPI ranks x 1 BLAS thread vs 1 process x N threads (benchmarks/distributed.py)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.distributed:
        from benchmarks import distributed
        return distributed.main(["--ranks", str(args.distributed), "--model", args.model,
                                 "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                                 "--warmup", str(args.warmup)] + (["--json", args.json] if args.json else []))
    if args.size is None:
        args.size = 224 if args.stem == "imagenet" else 32
    if args.memory_child:
        return _memory_child(args, args.memory_child)

    model, x, y, opt = _minires_setup(args)
    m_train, m_infer = _minires_fns(model, x, y, opt, args.backend)
    fns = {"minires": (m_train, m_infer)}
    if args.compare == "torch":
        try:
            import torch
        except ImportError:
            sys.exit("--compare torch needs PyTorch: pip install torch")
        twin = _torch_setup(args, model)
        if twin is None:
            print(f"no PyTorch twin for {args.model}; timing minires alone", file=sys.stderr)
        else:
            fns["torch"] = twin
    results = {name: {"train": [], "infer": []} for name in fns}
    for phase, index in (("train", 0), ("infer", 1)):
        for _ in range(args.warmup):
            for name, pair in fns.items():
                pair[index]()
        for _ in range(args.steps):
            for name, pair in fns.items():  # interleaved: both see the same load
                results[name][phase].append(_time(pair[index]))

    env = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "numpy": numpy.__version__}
    if "torch" in fns:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    print(f"{args.model}, batch {args.batch_size}, {args.size}x{args.size}, {args.dtype}, backend {args.backend}; "
          f"median of {args.steps} after {args.warmup} warm-up; {env}")
    summary = {"args": vars(args), "env": env}
    for phase in ("train", "infer"):
        line = []
        for name in fns:
            t = float(numpy.median(results[name][phase]))
            summary[f"{name}_{phase}_img_s"] = args.batch_size / t
            line.append(f"{name} {args.batch_size / t:8.1f} img/s ({1e3 * t:7.1f} ms)")
        if "torch" in fns:
            ratio = summary[f"minires_{phase}_img_s"] / summary[f"torch_{phase}_img_s"]
            summary[f"ratio_{phase}"] = ratio
            line.append(f"ratio minires/torch {ratio:.2f}x")
        print(f"{phase:>6}: " + "  ".join(line))
    if not args.no_memory and args.backend == "numpy":
        frameworks = ["minires"] + (["torch"] if "torch" in fns else [])
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
