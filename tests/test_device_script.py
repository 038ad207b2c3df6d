"""benchmarks/device.sh, the one-go device run of the solver and full-scale benchmarks, checked on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device.sh"


def _env(tmp_path, **extra) -> dict:
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        ERASEKIT_FULL_SCALE_CACHE=str(tmp_path / "models"),
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.slow  # runs the benchmark scripts through the device script (minutes)
def test_device_script_runs_every_benchmark_on_cpu(tmp_path):
    # the old package as a folder: the path a device machine without the git history takes
    baseline = tmp_path / "linalg_before"
    shutil.copytree(REPO / "src" / "erasekit" / "linalg", baseline)
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        env=_env(tmp_path, DEVICE="cpu", QUICK="1", FAMILIES="sd15", BASELINE=str(baseline)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "device cpu" in (out / "device.txt").read_text()
    solver = (out / "solver.txt").read_text()
    assert f"before: erasekit.linalg at {baseline}" in solver and "SPACE" in solver
    table = (out / "full_scale_sd15.txt").read_text()
    for phase in ("encode", "fit", "save", "load_edit", "apply", "revert"):
        assert f"| {phase} |" in table, phase
    assert "bit-exact" in table


def test_device_script_refuses_cuda_without_a_gpu(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")],
        env=_env(tmp_path, DEVICE="cuda"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "torch sees no CUDA GPU" in done.stderr and "DEVICE=cpu" in done.stderr
    assert not (tmp_path / "out" / "solver.txt").exists()  # stopped before any benchmark ran
