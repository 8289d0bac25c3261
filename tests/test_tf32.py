"""TF32 for matrix products (issue 17): off unless asked for, ``--tf32`` turns it on for CuPy."""
import os
import subprocess
import sys

import pytest

import minires.train as train
from minires import backend


def test_tf32_is_off_unless_the_flag_is_given():
    parser = train.build_parser()
    assert train.parse_args(parser, []).tf32 is False
    assert train.parse_args(parser, ["--tf32"]).tf32 is True


@pytest.mark.parametrize("argv, expected", [(["--tf32"], "1"), ([], None)])
def test_main_sets_cupy_tf32_only_with_the_flag(monkeypatch, argv, expected):
    monkeypatch.setenv("CUPY_TF32", "")  # so that the teardown restores what was there before
    monkeypatch.delenv("CUPY_TF32")
    seen = {}

    def run(parser, args, argv, comm):  # instead of the training: what CuPy would read
        seen["env"] = os.environ.get("CUPY_TF32")
        return 0

    monkeypatch.setattr(train, "_main", run)
    assert train.main(argv) == 0
    assert seen["env"] == expected


def test_set_tf32_writes_what_cupy_reads(monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "")  # so that the teardown restores what was there before
    monkeypatch.delenv("CUPY_TF32")
    backend.set_tf32(True)
    assert os.environ["CUPY_TF32"] == "1"
    backend.set_tf32(False)
    assert os.environ["CUPY_TF32"] == "0"


def test_cupy_computes_float32_products_in_float32_when_minires_is_imported():
    """CuPy's own default, which minires keeps: without CUPY_TF32 its float32 GEMMs use the
    default (float32) compute type. Checked in a fresh process, as CuPy decides it once."""
    pytest.importorskip("cupy")
    code = ("import numpy, minires, minires.train, cupy._core._routines_linalg as m; "
            "assert m.get_compute_type(numpy.float32) == m.COMPUTE_TYPE_DEFAULT != m.COMPUTE_TYPE_TF32")
    env = {k: v for k, v in os.environ.items() if k != "CUPY_TF32"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
