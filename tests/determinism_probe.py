"""Check erasekit's bit-identity promises on the code path this process runs, and say which path that is.

Run by ``tests/test_determinism.py`` in a subprocess per forced code path (``ATEN_CPU_CAPABILITY``,
``MKL_ENABLE_INSTRUCTIONS``, ``MKL_CBWR``, ``MKL_NUM_THREADS`` / ``OMP_NUM_THREADS``,
``OPENBLAS_CORETYPE``): those variables are read once, when the libraries load, so each path needs
a process of its own. Prints one JSON object on stdout: the CPU, the BLAS, and per check whether the
promise held. Usable by hand too: ``python tests/determinism_probe.py gemm ssn pipeline``.

The promises checked (each as the package states it):

* ``gemm`` — the cause of the old SSN failure, as a minimal reproduction: a GEMM with a long inner
  dimension on a thread torch never initialised ("fresh") may differ from the same GEMM on a thread
  pinned to one intra-op / MKL thread; a pinned worker thread (``linalg.ssn._pinned_worker``) always
  equals the pinned calling thread. Only the pinned equality is a promise; "fresh differs" is
  reported, since it depends on the CPU and MKL's path.
* ``ssn`` — ``space_solve`` gives the same bits for every ``workers`` and torch thread count.
* ``pipeline`` — on a tiny SD pipeline: apply then revert gives the base weights back bit for bit;
  the same seed and thread count give the same images twice.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import threading

import torch

ENV_KEYS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_CORETYPE",
)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def machine() -> dict:
    """The CPU (vendor, model, the SIMD flags that pick kernels), torch's kernel level and BLAS, the forced
    variables."""
    vendor = model = ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value
                elif key == "model name" and not model:
                    model = value
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: the platform's own description
        model = platform.processor()
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.\-]+)", config)
    return {
        "cpu": f"{vendor} {model}".strip(),
        "flags": [f for f in FLAGS if f in flags],
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": (blas.group(1) if blas else "?") + (f" {mkl.group(1)}" if mkl else ""),
        "torch": torch.__version__,
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }


def _on_thread(fn, pinned: bool):
    box = {}

    def run():
        if pinned:
            from erasekit.linalg.ssn import _pinned_worker

            _pinned_worker()
        box["out"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return box["out"]


def check_gemm() -> dict:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    shapes = ((8, 768, 8), (64, 768, 40), (64, 2048, 80), (256, 768, 100))
    pinned_equal, fresh_differs = True, []
    for dt in (torch.float32, torch.float64):
        for m, k, n in shapes:
            a, b = torch.randn(m, k, generator=g, dtype=dt), torch.randn(k, n, generator=g, dtype=dt)
            ref = a @ b
            pinned_equal &= torch.equal(ref, _on_thread(lambda: a @ b, pinned=True))
            if not torch.equal(ref, _on_thread(lambda: a @ b, pinned=False)):
                fresh_differs.append(f"{str(dt).removeprefix('torch.')} {m}x{k}x{n}")
    return {"ok": bool(pinned_equal), "fresh_thread_differs": fresh_differs}


def check_ssn() -> dict:
    from erasekit import linalg

    before = torch.get_num_threads()
    failures = []
    for d_out, d_in, n_e, n_p, rows in ((37, 24, 3, 8, 5), (160, 768, 8, 120, 32), (96, 2048, 8, 40, 32)):
        g = torch.Generator().manual_seed(d_in)
        W0 = 0.02 * torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
        C_E, C_G, C_P = (
            4 * torch.randn(d_in, n, generator=g, dtype=torch.float64) / d_in**0.5 for n in (n_e, n_e, n_p)
        )
        gf = linalg.gram_factor(C_E, C_G, C_P, gamma=0.5)
        lam = linalg.lam_for_sparsity([W0], gf, 0.8)
        torch.set_num_threads(1)
        ref = linalg.space_solve(W0, gf, lam, chunk_rows=rows, workers=1)
        for workers, threads in ((2, 2), (3, 1), (4, 4)):
            torch.set_num_threads(threads)
            got = linalg.space_solve(W0, gf, lam, chunk_rows=rows, workers=workers)
            same = torch.equal(got.W, ref.W) and torch.equal(got.y, ref.y) and got.objective == ref.objective
            if not same or torch.get_num_threads() != threads:
                failures.append(
                    f"d_in {d_in}: workers {workers}, threads {threads}: max |ΔW| "
                    f"{float((got.W - ref.W).abs().max()):.3g}"
                )
    torch.set_num_threads(before)
    return {"ok": not failures, "failures": failures}


def check_pipeline() -> dict:
    import erasekit
    from erasekit.models.tiny import build_tiny_pipeline

    torch.set_num_threads(2)
    pipe = build_tiny_pipeline("sd", seed=0)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit = erasekit.erase(
        pipe, method="uce", concepts=["Van Gogh"], preserve=["Claude Monet"], kind="style", progress=False
    )
    edit.apply(pipe)
    moved = any(not torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    edit.revert(pipe)
    revert_exact = all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())

    def images():
        gen = torch.Generator().manual_seed(3)
        return pipe(["a painting by Van Gogh"] * 2, num_inference_steps=3, generator=gen, output_type="pt").images

    seeded_same = torch.equal(images(), images())
    return {
        "ok": moved and revert_exact and seeded_same,
        "revert_bit_exact": revert_exact,
        "seeded_repeat_identical": seeded_same,
    }


CHECKS = {"gemm": check_gemm, "ssn": check_ssn, "pipeline": check_pipeline}


def main(argv: list[str]) -> int:
    names = argv or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"unknown check(s) {unknown}; choose from {list(CHECKS)}", file=sys.stderr)
        return 2
    out = {"machine": machine(), "checks": {n: CHECKS[n]() for n in names}}
    print(json.dumps(out))
    return 0 if all(c["ok"] for c in out["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
