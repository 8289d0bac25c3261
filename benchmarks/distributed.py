"""Data-parallel training step on one machine: N MPI ranks with T BLAS threads each vs one
process with N*T threads, same model and same total batch.

    python -m benchmarks.distributed --model resnet20 --batch-size 128 --ranks 2 --steps 7
    python -m benchmarks.train_step --distributed 2        # the same, from the main benchmark

Every configuration runs in fresh processes (``mpiexec -n N`` for the ranks), alternating
blocks of ``--steps`` timed steps after ``--warmup`` untimed ones, ``--repeats`` times, so that
a change of machine load hits all of them; the cores other processes kept busy during each
block are reported (from /proc/stat, less the CPU time of the block's own processes).

A step is forward, backward, gradient all-reduce and SGD update, started together on all ranks
(a barrier) and timed on each; the step's time is the slowest rank's. Reported: the median step
and images/s of each configuration, and for the ranks the median time of the gradient
all-reduce within the step (which includes waiting for the slower rank) and alone (started
together after a barrier: the exchange itself), each as a share of the step. With ``--sync-bn``
a third configuration uses SyncBatchNorm (its exchanges, in every BatchNorm layer, are part of
the step, not of the all-reduce columns).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy


def child(args):
    """One process of a configuration: time ``--steps`` steps and print JSON (rank 0)."""
    import minires
    from minires import distributed, models, nn
    from minires import functional as F
    from minires.data import shard_bounds
    from minires.optim import SGD

    comm = distributed.init("numpy") if args.ranks > 1 else None
    rank, size = (comm.rank, comm.size) if comm else (0, 1)
    minires.manual_seed(0)
    model = models.create(args.model, num_classes=10)
    if comm:
        distributed.broadcast_state(model, comm)
        if args.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model, comm)
        reduce_gradients = distributed.GradientAllreducer(model.parameters(), comm)
    rng = numpy.random.default_rng(0)
    lo, hi = shard_bounds(args.batch_size, rank, size)
    x = rng.standard_normal((args.batch_size, 3, 32, 32)).astype("float32")[lo:hi]
    y = rng.integers(0, 10, args.batch_size)[lo:hi]
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    steps, reduces = [], []
    for i in range(args.warmup + args.steps):
        if comm:
            comm.barrier()
        start = time.perf_counter()
        loss = F.cross_entropy(model(minires.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        before = time.perf_counter()
        if comm:
            reduce_gradients((hi - lo) / args.batch_size)
        reduced = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        if i >= args.warmup:
            steps.append(end - start)
            reduces.append(reduced - before)
    alone = []
    if comm:  # the step's time is its slowest rank's
        slowest = numpy.array(steps)
        comm.comm.Allreduce(comm.MPI.IN_PLACE, slowest, op=comm.MPI.MAX)
        steps = slowest.tolist()
        for _ in range(args.steps):  # the all-reduce with no rank to wait for: the exchange alone
            comm.barrier()
            start = time.perf_counter()
            reduce_gradients((hi - lo) / args.batch_size)
            alone.append(time.perf_counter() - start)
    if rank == 0:
        print(json.dumps({"steps": steps, "reduces": reduces, "alone": alone}))


def _busy_seconds():
    """CPU seconds the whole machine has been busy (user, nice, system, irq, softirq, steal),
    from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return None
    return (cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]) / os.sysconf("SC_CLK_TCK")


def _children_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_config(args, ranks, threads, sync_bn=False):
    """One block in fresh processes: the child's JSON, plus "other": the cores that processes
    other than this block's kept busy on average while it ran (None off Linux)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "benchmarks.distributed", "--child", "--ranks", str(ranks),
           "--model", args.model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--warmup", str(args.warmup)] + (["--sync-bn"] if sync_bn else [])
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks)] + cmd
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    busy, own, start = _busy_seconds(), _children_seconds(), time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=args.timeout)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if busy is not None:
        other = (_busy_seconds() - busy) - (_children_seconds() - own)
        result["other"] = max(0.0, other) / (time.perf_counter() - start)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128, help="total batch (each rank takes its share)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per rank (one process gets ranks x this)")
    p.add_argument("--steps", type=int, default=7, help="timed steps per block")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first in every block")
    p.add_argument("--repeats", type=int, default=2, help="blocks per configuration, alternating")
    p.add_argument("--sync-bn", action="store_true", help="also time the ranks with SyncBatchNorm")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one block may take")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.ranks < 2:
        raise SystemExit("--ranks must be at least 2")
    configs = [(f"1 process x {args.ranks * args.threads} threads", 1, args.ranks * args.threads, False),
               (f"{args.ranks} ranks x {args.threads} thread(s)", args.ranks, args.threads, False)]
    if args.sync_bn:
        configs.append((f"{args.ranks} ranks x {args.threads} thread(s), SyncBN", args.ranks, args.threads, True))
    runs = {name: {"steps": [], "reduces": [], "alone": []} for name, *_ in configs}
    other, blocks = [], []
    for _ in range(args.repeats):
        for name, ranks, threads, sync_bn in configs:
            result = run_config(args, ranks, threads, sync_bn)
            other.append(result.get("other"))
            blocks.append({"config": name, "other_cores": result.get("other"),
                           "median_step_s": float(numpy.median(result["steps"]))})
            runs[name]["steps"] += result["steps"]
            if ranks > 1:
                runs[name]["reduces"] += result["reduces"]
                runs[name]["alone"] += result["alone"]
    seen = ", ".join("n/a" if v is None else f"{v:.2f}" for v in other)
    print(f"{args.model}, total batch {args.batch_size}, float32, NumPy, {os.cpu_count()} cores; median of "
          f"{args.steps} x {args.repeats} steps; cores used by other processes during each block: {seen}")
    summary = {"args": vars(args), "blocks": blocks, "cpus": os.cpu_count(), "numpy": numpy.__version__}
    base = None
    for name, *_ in configs:
        step = float(numpy.median(runs[name]["steps"]))
        base = base or step
        text = f"{name:>32}: {1e3 * step:8.1f} ms/step  {args.batch_size / step:7.1f} img/s  {base / step:5.2f}x"
        summary[name] = {"step_s": step, "img_s": args.batch_size / step}
        if runs[name]["reduces"]:
            reduce, alone = float(numpy.median(runs[name]["reduces"])), float(numpy.median(runs[name]["alone"]))
            text += (f"  gradient all-reduce {1e3 * reduce:6.1f} ms in the step ({100 * reduce / step:.1f}%), "
                     f"{1e3 * alone:5.1f} ms alone ({100 * alone / step:.1f}%)")
            summary[name].update(allreduce_s=reduce, allreduce_alone_s=alone)
        print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
