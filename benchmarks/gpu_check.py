"""One command that checks minires on a machine with one NVIDIA GPU, in at most 8 minutes.

    python -m benchmarks.gpu_data --data-dir ../shared/data --out .gpudata    # here, once (61 MB)
    PYTHONPATH=. python -m benchmarks.gpu_check --data-dir .gpudata --out gpu-report

Phases, in this order, each a subprocess with its own time budget (``--budget NAME=SECONDS``;
no phase starts once ``--total`` seconds are spent, and none runs past them). A phase past its
budget is stopped (its process group ended) and reported as timed out; the next phase still
runs. The reports in OUT are rewritten after every phase, so a run cut short still leaves what
it found:

- ``env``: versions, the GPU, driver and CUDA runtime as CuPy and PyTorch see them.
- ``equivalence``: ``MINIRES_BACKEND=cupy python -m pytest tests/test_cupy_equivalence.py -k "cupy
  and not [numpy"``: whole ResNet-20 and ResNet-18 forward, backward and SGD steps on CuPy equal
  to NumPy with the same weights (float64 and float32), folded inference, checkpoints across
  backends, gradient checks of the residual blocks. First, because it matters most and
  compiles most kernels the benchmarks use.
- ``bench-resnet20``, ``bench-resnet56``, ``bench-resnet18``: ``benchmarks/train_step.py --backend
  cupy --compare torch --tf32 both`` at batch 128 on 32x32 inputs (ResNet-18 with the CIFAR stem):
  minires on CuPy against PyTorch CUDA eager, CUDA events, interleaved, float32 with TF32 off on
  both sides and a TF32-on row; training and inference; peak GPU memory, kernels per step
  (torch.profiler) and host time per step.
- ``train``: ``python -m minires.train --backend cupy --depth 20 --epochs 1`` on the subset that
  ``benchmarks.gpu_data`` wrote (15,000 training and 5,000 test images), turned into the
  official pickle layout in a temporary folder.
- ``tests``: the rest of the suite's CuPy half, ``MINIRES_BACKEND=cupy python -m pytest tests -k
  "cupy and not [numpy"``: the CuPy case of every test parametrised over the backend
  (gradchecks, ops against NumPy, autograd, layers, kernels) and the other tests named for CuPy,
  in 4 processes where pytest-xdist is installed. Last, with the time that is left.

OUT receives gpu_check.md and gpu_check.json (the reports), and env.log, tests.log, bench.log
and train.log (each phase's whole output): six files. At the end it prints the report: the
phase table, then the benchmark table. It needs only what the GPU machine has (CuPy, NumPy,
PyTorch, pytest, tqdm, threadpoolctl) and runs from a copied tree with ``PYTHONPATH=.``.
``--backend numpy --quick`` runs the same machinery on a CPU with tiny sizes (the CPU tests do).
"""
import argparse
import csv
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
TOTAL = 480  # seconds: 8 minutes
BUDGETS = {"env": 25, "equivalence": 75, "bench-resnet20": 55, "bench-resnet56": 65, "bench-resnet18": 70,
           "train": 60, "tests": 130}
MODELS = {"bench-resnet20": ["--model", "resnet20"], "bench-resnet56": ["--model", "resnet56"],
          "bench-resnet18": ["--model", "resnet18", "--stem", "cifar"]}
TARGETS = {"resnet20": 0.5, "resnet18": 0.7}  # issue 17: float32 training images/s, minires / PyTorch eager
LOGS = {"env": "env.log", "equivalence": "tests.log", "tests": "tests.log", "train": "train.log"}  # bench: bench.log
XDIST_WORKERS = 4  # pytest processes sharing the GPU in the tests phase, where pytest-xdist is installed
REPORT_MD, REPORT_JSON = "gpu_check.md", "gpu_check.json"
STOP_GRACE = 5  # seconds between SIGTERM and SIGKILL for a phase past its budget

_ENV_SNIPPET = r"""
import json, platform, subprocess, sys
import numpy
info = {"python": platform.python_version(), "numpy": numpy.__version__, "host_cpus": __import__("os").cpu_count()}
backend = sys.argv[1]
if backend == "cupy":
    import cupy
    rt = cupy.cuda.runtime
    p = rt.getDeviceProperties(0)
    name = p["name"]
    info.update(cupy=cupy.__version__, gpu=name.decode() if isinstance(name, bytes) else name,
                compute_capability=f"{p['major']}.{p['minor']}", gpu_memory_gib=round(p["totalGlobalMem"] / 2 ** 30, 1),
                gpus=rt.getDeviceCount(), driver=rt.driverGetVersion(), cuda_runtime=rt.runtimeGetVersion())
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available(), cudnn=torch.backends.cudnn.version())
except ImportError:
    info["torch"] = None
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
except (OSError, subprocess.SubprocessError):
    info["nvidia_smi"] = None
print(json.dumps(info))
"""


class Phase:
    """One step of the check: a command, its time budget, the log it writes to, and how its
    result is read afterwards (``read(phase, text, tmp)`` -> (result dict, one-line summary))."""

    def __init__(self, name, argv, read, env=None, prepare=None):
        self.name, self.argv, self.read, self.env, self.prepare = name, argv, read, env or {}, prepare
        self.log = LOGS.get(name, "bench.log")


# -- reading each phase's output ---------------------------------------------------------------------

def _read_env(phase, text, tmp):
    lines = [l for l in text.splitlines() if l.startswith("{")]
    if not lines:
        return {}, "no environment report"
    info = json.loads(lines[-1])
    gpu = f"{info.get('gpu')} (sm {info.get('compute_capability')}), " if info.get("gpu") else ""
    return info, (f"{gpu}CuPy {info.get('cupy', '-')}, PyTorch {info.get('torch') or '-'}, "
                  f"NumPy {info['numpy']}, Python {info['python']}")


_OUTCOMES = "PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS"
# pytest -v: "tests/x.py::test_y[cupy] PASSED [ 3%]"; with pytest-xdist: "[gw0] [ 3%] PASSED tests/x.py::..."
_TEST_LINE = re.compile(rf"^(?:\[gw\d+\] \[\s*\d+%\] (?P<o1>{_OUTCOMES}) (?P<n1>\S+::\S+)|(?P<n2>\S+::\S+) (?P<o2>{_OUTCOMES})\b)")


def _read_tests(phase, text, tmp):
    """Counts per outcome and the failing tests, from pytest -v lines (so a run stopped at its
    budget still reports how far it got)."""
    counts, failed = {}, []
    for line in text.splitlines():
        m = _TEST_LINE.match(line)
        if m:
            outcome, node = m.group("o1") or m.group("o2"), m.group("n1") or m.group("n2")
            counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
            if outcome in ("FAILED", "ERROR"):
                failed.append(node)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test finished"
    return {"counts": counts, "failed": failed}, summary


def _read_bench(phase, text, tmp):
    path = Path(tmp) / f"{phase.name}.json"
    if not path.exists():
        return {}, "no results"
    result = json.loads(path.read_text())
    parts = []
    for row in result.get("rows", []):
        label = row["phase"] + (" tf32" if row["tf32"] else "")
        parts.append(f"{label} {row['ratio']:.2f}x torch" if "ratio" in row else
                     f"{label} {row['minires_img_s']:.0f} img/s")
    lost = result.get("lost", [])
    summary = ", ".join(parts) + (f"; {len(lost)} process(es) died: {lost[0]} (bench.log)" if lost else "")
    return {"rows": result.get("rows", []), "gpu": result.get("gpu"), "env": result.get("env"), "lost": lost}, summary


def _read_train(phase, text, tmp):
    path = Path(tmp) / "run" / "metrics.csv"
    if not path.exists():
        return {}, "no metrics.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}, "metrics.csv is empty"
    last = {k: float(v) for k, v in rows[-1].items()}
    return last, (f"epoch {last['epoch']:.0f}: train loss {last['train_loss']:.3f}, test acc "
                  f"{100 * last['test_acc']:.1f}%, {last['seconds']:.1f} s ({last['images_per_s']:.0f} img/s)")


# -- the plan ----------------------------------------------------------------------------------------

def _prepare_cifar(data_dir, tmp):
    from benchmarks.gpu_data import write_cifar_folder
    write_cifar_folder(data_dir, Path(tmp) / "cifar-10-batches-py")


def plan(args, tmp):
    """The phases to run, in order, with their commands."""
    py = sys.executable
    gpu = args.backend == "cupy"
    phases = [Phase("env", [py, "-c", _ENV_SNIPPET, args.backend], _read_env)]

    # The tests named for the backend, and its cases of the tests parametrised over both; the
    # whole-model equivalence first, on its own (it also compiles most kernels the benchmarks use).
    other = "numpy" if args.backend == "cupy" else "cupy"
    pytest = [py, "-m", "pytest", "-v", "--tb=short", "-rfE", "--durations=15", "-p", "no:cacheprovider"]
    keyword = f"{args.backend} and not [{other}"
    equivalence = ["tests/test_cupy_equivalence.py", "-k", keyword + (" and resnet20 and float32" if args.quick else "")]
    phases.append(Phase("equivalence", pytest + equivalence, _read_tests, env={"MINIRES_BACKEND": args.backend}))
    if args.quick:
        rest = ["tests/test_backend.py", "-k", keyword]
    else:
        parallel = ["-n", str(XDIST_WORKERS)] if importlib.util.find_spec("xdist") else []
        rest = ["tests", "--ignore", "tests/test_cupy_equivalence.py", "-k", keyword] + parallel
    tests = Phase("tests", pytest + rest, _read_tests, env={"MINIRES_BACKEND": args.backend})

    compare = ["--compare", "torch"] if gpu or importlib.util.find_spec("torch") else []
    if args.quick:
        sizes = ["--batch-size", "4", "--size", "8", "--rounds", "1", "--block", "1", "--warmup", "0"]
        sizes += [] if gpu else ["--no-memory"]  # on a CPU: the slow peak-RSS subprocesses
    else:
        sizes = ["--batch-size", "128", "--rounds", "3", "--block", "4", "--warmup", "2"]
    for name, model in MODELS.items():
        phases.append(Phase(name, [py, "-m", "benchmarks.train_step", *model, "--backend", args.backend, *compare,
                                   *(["--tf32", "both"] if gpu else []), *sizes,
                                   "--json", str(Path(tmp) / f"{name}.json")], _read_bench))

    train = [py, "-m", "minires.train", "--backend", args.backend, "--epochs", "1", "--no-progress", "--seed", "0",
             "--data-dir", str(Path(tmp) / "cifar-10-batches-py"), "--out", str(Path(tmp) / "run")]
    train += ["--depth", "8", "--limit-train", "256", "--limit-test", "128"] if args.quick else ["--depth", "20"]
    phases.append(Phase("train", train, _read_train,
                        prepare=lambda: _prepare_cifar(args.data_dir, tmp)))
    phases.append(tests)  # last: it takes what time is left
    wanted = args.phases.split(",") if args.phases else [p.name for p in phases]
    unknown = [w for w in wanted if w not in {p.name for p in phases}]
    if unknown:
        raise ValueError(f"--phases: no phase {unknown[0]!r}; the phases are {', '.join(p.name for p in phases)}")
    return [p for p in phases if p.name in wanted]


# -- running -----------------------------------------------------------------------------------------

def _stop(proc):
    """End a phase's whole process group: SIGTERM, then SIGKILL after STOP_GRACE seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def run_phase(phase, budget, out, tmp):
    """Run one phase within ``budget`` seconds; returns its record for the reports."""
    record = {"name": phase.name, "budget_s": round(budget, 1), "log": phase.log,
              "command": shlex.join(phase.argv[:2] + ["<snippet>"] + phase.argv[3:]) if phase.name == "env"
              else shlex.join(phase.argv)}
    log_path = Path(out) / phase.log
    start = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"\n===== {phase.name} (budget {budget:.0f} s): {record['command']}\n")
        log.flush()
        offset = log.tell()
        try:
            if phase.prepare:
                phase.prepare()
        except (OSError, ValueError) as e:
            log.write(f"could not prepare {phase.name}: {e}\n")
            record.update(status="failed", seconds=round(time.monotonic() - start, 1), summary=f"not started: {e}")
            return record
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1", CUPY_TF32="0", **phase.env)
        # A process group of its own (not a session: whatever ends this command's session also
        # ends the phase), so that a phase past its budget is stopped with all its children.
        proc = subprocess.Popen(phase.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=_ROOT, env=env, preexec_fn=os.setpgrp)
        try:
            rc = proc.wait(timeout=max(0.0, budget - (time.monotonic() - start)))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc, status = proc.returncode, "timed out"
        except BaseException:  # Ctrl-C, or SIGTERM (main turns it into SystemExit): no phase left running
            _stop(proc)
            raise
    record.update(status=status, returncode=rc, seconds=round(time.monotonic() - start, 1))
    with open(log_path) as f:
        f.seek(offset)
        text = f.read()
    try:
        record["result"], record["summary"] = phase.read(phase, text, tmp)
    except Exception as e:  # whatever a broken phase left behind, the run goes on to the next
        record["result"], record["summary"] = {}, f"output not readable: {type(e).__name__}: {e}"
    if status == "timed out":
        record["summary"] = f"stopped after {budget:.0f} s; so far: {record['summary']}"
    elif status == "failed" and phase.read is not _read_tests:
        tail = [l for l in text.strip().splitlines() if l.strip()][-1:] or ["no output"]
        record["summary"] += f" (exit {rc}: {tail[0][:200]})"
    return record


# -- reports -----------------------------------------------------------------------------------------

def _cell(v, fmt="{:.1f}"):
    return "n/a" if v is None else fmt.format(v)


def markdown(report):
    lines = [f"# minires GPU check ({report['backend']}), {report['started']}", ""]
    env = next((p["result"] for p in report["phases"] if p["name"] == "env" and p.get("result")), {})
    if env:
        lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "nvidia_smi"), ""]
    lines += ["| phase | status | seconds / budget | result |", "| --- | --- | --- | --- |"]
    for p in report["phases"]:
        lines.append(f"| {p['name']} | {p['status']} | {p.get('seconds', 0):.0f} / {p['budget_s']:.0f} | "
                     f"{p.get('summary', '')} |")
    for name in report["pending"]:
        lines.append(f"| {name} | pending | | |")
    rows = [r for p in report["phases"] if p["name"].startswith("bench-") for r in p.get("result", {}).get("rows", [])]
    if rows:
        how = ("device time per step from CUDA events, median; host time is the Python call without the "
               "final wait" if report["backend"] == "cupy" else "CPU wall time per step, median")
        lines += ["", f"Training and inference steps, batch {rows[0].get('batch_size')}, float32 (TF32 as the row "
                  f"says); {how}.", "",
                  "| model | phase | TF32 | minires img/s | torch img/s | minires/torch | target | minires host ms "
                  "| torch host ms | peak MB minires / torch | kernels per step minires / torch |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            target = TARGETS.get(r["model"]) if r["phase"] == "train" and not r["tf32"] else None
            mb = [None if r.get(f"{f}_peak_bytes") is None else r[f"{f}_peak_bytes"] / 2 ** 20
                  for f in ("minires", "torch")]
            lines.append(
                f"| {r['model']} | {r['phase']} | {'on' if r['tf32'] else 'off'} | {_cell(r.get('minires_img_s'), '{:.0f}')} "
                f"| {_cell(r.get('torch_img_s'), '{:.0f}')} | {_cell(r.get('ratio'), '{:.2f}x')} "
                f"| {_cell(target, '>= {:.1f}x')} | {_cell(r.get('minires_host_ms'))} | {_cell(r.get('torch_host_ms'))} "
                f"| {_cell(mb[0], '{:.0f}')} / {_cell(mb[1], '{:.0f}')} "
                f"| {_cell(r.get('minires_launches'), '{}')} / {_cell(r.get('torch_launches'), '{}')} |")
    failed = [t for p in report["phases"] if p["name"] in ("equivalence", "tests")
              for t in p.get("result", {}).get("failed", [])]
    if failed:
        lines += ["", f"Failing tests ({len(failed)}; tracebacks in tests.log):", ""]
        lines += [f"- `{t}`" for t in failed[:40]] + ([f"- ... and {len(failed) - 40} more"] if len(failed) > 40 else [])
    return "\n".join(lines) + "\n"


def write_reports(report, out):
    """gpu_check.json and gpu_check.md, each replaced whole (temporary file + rename)."""
    from minires.utils.io import atomic_write
    with atomic_write(Path(out) / REPORT_JSON, "w") as f:
        json.dump(report, f, indent=2)
    with atomic_write(Path(out) / REPORT_MD, "w") as f:
        f.write(markdown(report))


def _parse_budgets(items):
    budgets = dict(BUDGETS)
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in BUDGETS:
            raise ValueError(f"--budget {item}: no phase {name!r}; the phases are {', '.join(BUDGETS)}")
        try:
            budgets[name] = float(seconds)
        except ValueError:
            raise ValueError(f"--budget {item}: the seconds must be a number (e.g. {name}=60)") from None
    return budgets


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="the folder python -m benchmarks.gpu_data wrote (needed by the train phase)")
    p.add_argument("--out", required=True, help="folder for the reports and logs (six files)")
    p.add_argument("--backend", choices=("cupy", "numpy"), default="cupy",
                   help="cupy on the GPU machine; numpy runs the same machinery on a CPU")
    p.add_argument("--total", type=float, default=TOTAL, help="seconds for the whole run (default 480)")
    p.add_argument("--budget", action="append", default=[], metavar="PHASE=SECONDS",
                   help="a phase's own budget (defaults: " + ", ".join(f"{k}={v}" for k, v in BUDGETS.items()) + ")")
    p.add_argument("--phases", help="comma-separated phases to run (default: all, in order)")
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (checks the machinery, measures nothing)")
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.total
    try:
        budgets = _parse_budgets(args.budget)
    except ValueError as e:
        p.error(str(e))
    tmp = tempfile.mkdtemp(prefix="minires-gpu-check-")
    # Stopped from outside: end the running phase and keep the reports written so far.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"gpu_check: stopped by signal {signum}"))
    try:
        try:
            phases = plan(args, tmp)
        except ValueError as e:
            p.error(str(e))
        if args.backend == "cupy":
            from minires.backend import BackendError, get_module
            try:
                get_module("cupy")  # CuPy imports and sees a GPU (no context is made)
            except BackendError as e:
                p.error(f"--backend cupy: {e} (--backend numpy runs the machinery on a CPU)")
        if any(ph.name == "train" for ph in phases):
            if not args.data_dir:
                p.error("--data-dir is needed for the train phase (make it with python -m benchmarks.gpu_data)")
            from benchmarks.gpu_data import load_subset
            try:
                load_subset(args.data_dir)  # now, not after minutes of other phases
            except (ValueError, OSError) as e:
                p.error(f"--data-dir: {e}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name in {ph.log for ph in phases}:
            (out / name).unlink(missing_ok=True)  # this run's logs only
        report = {"backend": args.backend, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "command": shlex.join([sys.executable, "-m", "benchmarks.gpu_check"] + (argv or sys.argv[1:])),
                  "host": platform.node(), "total_budget_s": args.total, "phases": [],
                  "pending": [ph.name for ph in phases], "finished": False}
        write_reports(report, out)
        for ph in phases:
            left = deadline - time.monotonic()
            report["pending"].remove(ph.name)
            if left < 1:
                report["phases"].append({"name": ph.name, "status": "skipped", "budget_s": budgets[ph.name],
                                         "seconds": 0, "summary": "no time left of --total"})
            else:
                print(f"[gpu_check] {ph.name} (budget {min(budgets[ph.name], left):.0f} s) ...", file=sys.stderr, flush=True)
                try:
                    report["phases"].append(run_phase(ph, min(budgets[ph.name], left), out, tmp))
                except (SystemExit, KeyboardInterrupt):
                    report["phases"].append({"name": ph.name, "status": "stopped", "budget_s": budgets[ph.name],
                                             "summary": "gpu_check was stopped from outside during this phase"})
                    write_reports(report, out)
                    raise
                print(f"[gpu_check] {ph.name}: {report['phases'][-1]['status']} in "
                      f"{report['phases'][-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
            write_reports(report, out)
        report["finished"] = True
        write_reports(report, out)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown(report), end="")
    return 0 if all(ph["status"] == "ok" for ph in report["phases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
