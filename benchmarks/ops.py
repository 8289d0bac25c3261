"""Forward and backward time of each op at the shapes ResNet-20 and ResNet-50 use, and the share
of a real training step each op takes.

    python -m benchmarks.ops                     # both tables, batch 128 (ResNet-20) / 16 (ResNet-50)
    python -m benchmarks.ops --compare torch     # the same ops in PyTorch CPU, side by side

Each time is the median of ``--repeat`` runs after one warm-up. The share table comes from
``minires.profiler`` over real training steps of the whole model.
"""
import argparse
import time

import numpy

import minires
import minires.functional as F
from minires import Tensor, models
from minires.optim import SGD


def _median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(numpy.median(times))


def _cases(n, resnet50):
    """(label, minires op, torch op or None, input shapes) for one network's typical layers."""
    if not resnet50:
        stages = [(16, 32), (32, 16), (64, 8)]
        cases = [("conv3x3 3->16 @32", (n, 3, 32, 32), (16, 3, 3, 3), 1, 1)]
        for c, h in stages:
            cases.append((f"conv3x3 {c}->{c} @{h}", (n, c, h, h), (c, c, 3, 3), 1, 1))
        cases += [("conv3x3/2 16->32 @32", (n, 16, 32, 32), (32, 16, 3, 3), 2, 1),
                  ("conv3x3/2 32->64 @16", (n, 32, 16, 16), (64, 32, 3, 3), 2, 1)]
        others = [(c, h) for c, h in stages]
    else:
        cases = [("conv7x7/2 3->64 @224", (n, 3, 224, 224), (64, 3, 7, 7), 2, 3),
                 ("conv1x1 256->64 @56", (n, 256, 56, 56), (64, 256, 1, 1), 1, 0),
                 ("conv3x3 64->64 @56", (n, 64, 56, 56), (64, 64, 3, 3), 1, 1),
                 ("conv1x1 64->256 @56", (n, 64, 56, 56), (256, 64, 1, 1), 1, 0),
                 ("conv3x3 256->256 @14", (n, 256, 14, 14), (256, 256, 3, 3), 1, 1),
                 ("conv1x1/2 512->1024 @28", (n, 512, 28, 28), (1024, 512, 1, 1), 2, 0)]
        others = [(64, 112), (256, 56), (1024, 14)]
    return cases, others


def time_ops(n, resnet50, repeat, compare):
    rng = numpy.random.default_rng(0)
    torch = None
    if compare:
        import torch
    rows = []

    def run(label, f_min, inputs, f_torch=None):
        xs = [Tensor(a, requires_grad=True) for a in inputs]
        out = f_min(*xs)
        g = rng.standard_normal(out.shape).astype(numpy.float32)

        def fwd():
            with minires.no_grad():
                f_min(*xs)

        def fwd_bwd():
            f_min(*xs).backward(g)

        row = [label, _median_ms(fwd, repeat), _median_ms(fwd_bwd, repeat)]
        if torch is not None and f_torch is not None:
            ts = [torch.from_numpy(a).requires_grad_() for a in inputs]
            tg = torch.from_numpy(g)

            def tfwd():
                with torch.no_grad():
                    f_torch(*ts)

            def tfwd_bwd():
                f_torch(*ts).backward(tg)

            row += [_median_ms(tfwd, repeat), _median_ms(tfwd_bwd, repeat)]
        rows.append(row)

    cases, others = _cases(n, resnet50)
    tf = torch.nn.functional if torch is not None else None
    for label, xs, ws, s, p in cases:
        x = rng.standard_normal(xs).astype(numpy.float32)
        W = (rng.standard_normal(ws) * 0.1).astype(numpy.float32)
        run(label, lambda x, W, s=s, p=p: F.conv2d(x, W, stride=s, padding=p), [x, W],
            (lambda x, W, s=s, p=p: tf.conv2d(x, W, stride=s, padding=p)) if tf else None)
    for c, h in others:
        x = rng.standard_normal((n, c, h, h)).astype(numpy.float32)
        gamma, beta = numpy.ones(c, numpy.float32), numpy.zeros(c, numpy.float32)
        rm, rv = numpy.zeros(c, numpy.float32), numpy.ones(c, numpy.float32)
        run(f"batch_norm {c} @{h}", lambda x, g, b: F.batch_norm(x, g, b, rm, rv, True), [x, gamma, beta],
            (lambda x, g, b: tf.batch_norm(x, None, None, g, b, training=True)) if tf else None)
        run(f"relu {c} @{h}", F.relu, [x], tf.relu if tf else None)
        run(f"add {c} @{h}", lambda a, b: a + b, [x, x.copy()], (lambda a, b: a + b) if tf else None)
    if resnet50:
        x = rng.standard_normal((n, 64, 112, 112)).astype(numpy.float32)
        run("max_pool 3x3/2 @112", lambda x: F.max_pool2d(x, 3, 2, 1), [x],
            (lambda x: tf.max_pool2d(x, 3, 2, 1)) if tf else None)
    c, h = others[-1]
    x = rng.standard_normal((n, c, h, h)).astype(numpy.float32)
    run(f"global_avg_pool {c} @{h}", F.global_avg_pool2d, [x], (lambda x: x.mean((2, 3))) if tf else None)
    logits = rng.standard_normal((n, 10 if not resnet50 else 1000)).astype(numpy.float32)
    labels = rng.integers(0, logits.shape[1], n)
    run("cross_entropy", lambda z: F.cross_entropy(z, labels), [logits],
        (lambda z: tf.cross_entropy(z, torch.from_numpy(labels))) if tf else None)
    return rows


def print_rows(title, rows, compare):
    print(f"\n{title}")
    head = f"{'op':<26}{'fwd ms':>9}{'fwd+bwd ms':>12}"
    if compare:
        head += f"{'torch fwd':>11}{'torch f+b':>11}{'ratio f+b':>11}"
    print(head)
    for r in rows:
        line = f"{r[0]:<26}{r[1]:>9.2f}{r[2]:>12.2f}"
        if len(r) > 3:
            line += f"{r[3]:>11.2f}{r[4]:>11.2f}{r[4] / r[2]:>10.2f}x"
        print(line)


def step_shares(name, n, size, steps):
    """The per-op table of ``steps`` real training steps of model ``name`` (profiler)."""
    minires.manual_seed(0)
    kwargs = {"stem": "imagenet", "num_classes": 1000} if size == 224 else {}
    model = models.create(name, **kwargs)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((n, 3, size, size)).astype(numpy.float32)
    y = rng.integers(0, 10, n)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = F.cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        with minires.profiler.section("optimizer"):
            opt.step()

    step()
    with minires.profiler.profile() as prof:
        for _ in range(steps):
            step()
    print(f"\nshare of a {name} training step, batch {n} ({steps} steps, minires.profiler):")
    print(prof.table(steps=steps))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128, help="batch for the ResNet-20 shapes")
    p.add_argument("--batch-size-50", type=int, default=16, help="batch for the ResNet-50 (224x224) shapes")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compare", choices=("torch",))
    p.add_argument("--only", choices=("resnet20", "resnet50"), help="one table only")
    args = p.parse_args(argv)
    compare = args.compare == "torch"
    if args.only != "resnet50":
        print_rows(f"ResNet-20 shapes, batch {args.batch_size} (ms)",
                   time_ops(args.batch_size, False, args.repeat, compare), compare)
        step_shares("resnet20", args.batch_size, 32, 3)
    if args.only != "resnet20":
        print_rows(f"ResNet-50 shapes, batch {args.batch_size_50}, 224x224 (ms)",
                   time_ops(args.batch_size_50, True, args.repeat, compare), compare)
        step_shares("resnet50", args.batch_size_50, 224, 1)


if __name__ == "__main__":
    main()
