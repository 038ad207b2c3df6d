"""Bit-identity promises checked on every CPU code path this machine can be made to take.

A property measured on one CPU passed CI while it was false on another (SPACE's "bit-identical for any
worker count" on AMD EPYC; see ``linalg.ssn._ssn``). The libraries pick their kernels once, at load time,
from the CPU and a few environment variables, so each forced path runs ``determinism_probe.py`` in a
subprocess of its own: ATen's SIMD level (``ATEN_CPU_CAPABILITY``), MKL's instruction set
(``MKL_ENABLE_INSTRUCTIONS=AVX2`` is the path MKL gives AMD processors), MKL's reproducibility branch
(``MKL_CBWR``), an oversubscribed MKL / OpenMP default thread count, and numpy's OpenBLAS core type.
Each row printed at the end of the run (``pytest_terminal_summary`` in conftest) names the CPU, its
SIMD flags, the kernel level and the BLAS the checks ran on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from erasekit import linalg
from erasekit.linalg import ssn

PROBE = Path(__file__).with_name("determinism_probe.py")

# name → (forced environment, checks). The default path runs every check; the forced paths run the
# BLAS-sensitive ones (the pipeline check adds ~8 s a path and depends on no forced variable but ATen's level).
PATHS = {
    "as found": ({}, ("gemm", "ssn", "pipeline")),
    "ATen default (no SIMD)": ({"ATEN_CPU_CAPABILITY": "default"}, ("gemm", "ssn", "pipeline")),
    "ATen avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, ("gemm", "ssn")),
    "MKL AVX2 (AMD's path)": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, ("gemm", "ssn")),
    "MKL SSE4.2": ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, ("gemm", "ssn")),
    "MKL CBWR=COMPATIBLE": ({"MKL_CBWR": "COMPATIBLE"}, ("gemm", "ssn")),
    "EPYC-like: ATen avx2, MKL AVX2, 4 MKL/OMP threads": (
        {
            "ATEN_CPU_CAPABILITY": "avx2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "MKL_NUM_THREADS": "4",
            "OMP_NUM_THREADS": "4",
        },
        ("gemm", "ssn"),
    ),
    "OpenBLAS Haswell (numpy)": ({"OPENBLAS_CORETYPE": "Haswell"}, ("ssn",)),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_promises_hold_on_forced_code_path(path, determinism_rows):
    env_extra, checks = PATHS[path]
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "ATEN_CPU_CAPABILITY",
            "MKL_ENABLE_INSTRUCTIONS",
            "MKL_CBWR",
            "MKL_NUM_THREADS",
            "OMP_NUM_THREADS",
            "OPENBLAS_CORETYPE",
        )
    }
    env.update(env_extra, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, str(PROBE), *checks], env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip(), f"the probe printed nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    determinism_rows.append((path, report))
    m = report["machine"]
    where = f"{m['cpu']} [{', '.join(m['flags'])}], ATen {m['aten_capability']}, BLAS {m['blas']}, env {m['env']}"
    assert m["env"] == env_extra, f"the probe did not see the forced variables: {where}"
    if "ATEN_CPU_CAPABILITY" in env_extra and env_extra["ATEN_CPU_CAPABILITY"] != "default":
        assert (
            m["aten_capability"].lower() == env_extra["ATEN_CPU_CAPABILITY"].lower()
            or m["aten_capability"] == "DEFAULT"
        ), where
    failed = {k: v for k, v in report["checks"].items() if not v["ok"]}
    assert not failed and proc.returncode == 0, f"on {where}: {json.dumps(failed, indent=1)}"


def test_pinned_worker_thread_computes_what_the_caller_computes():
    """The in-process form of the cause: a worker that pinned itself with ``_pinned_worker`` runs a long-K GEMM
    exactly as a single-threaded caller does (a thread torch never initialised need not, and on AVX-512 Xeons
    and AMD EPYC does not)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(1)
        a, b = (
            torch.randn(64, 2048, generator=g, dtype=torch.float64),
            torch.randn(2048, 80, generator=g, dtype=torch.float64),
        )
        box = {}

        def worker():
            ssn._pinned_worker()
            box["threads"] = torch.get_num_threads()
            box["out"] = a @ b

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert box["threads"] == 1 and torch.equal(box["out"], a @ b)
    finally:
        torch.set_num_threads(before)


def test_ssn_restores_the_callers_thread_count_and_runs_off_the_calling_thread(monkeypatch):
    """Every SSN chunk (and the cold start) runs on a pinned worker, never on the caller's thread, whatever
    ``workers``."""
    g = torch.Generator().manual_seed(2)
    W0 = 0.02 * torch.randn(20, 16, generator=g, dtype=torch.float64)
    gf = linalg.gram_factor(*(torch.randn(16, n, generator=g, dtype=torch.float64) for n in (2, 2, 4)), gamma=0.5)
    seen = []
    real = ssn._ssn_rows

    def spy(*a, **k):
        seen.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(ssn, "_ssn_rows", spy)
    before = torch.get_num_threads()
    for workers in (1, 3):
        linalg.space_solve(W0, gf, 1e-3, chunk_rows=4, workers=workers)
        assert torch.get_num_threads() == before
    assert seen and all(name.startswith("erasekit-ssn") for name in seen), seen
