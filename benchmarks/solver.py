"""Measure UCE, SPACE (semi-smooth Newton) and plain FISTA on SD1.5- and SDXL-shaped layers.

    python benchmarks/solver.py [--family sd15|sdxl|both] [--quick] [--threads N]
    python benchmarks/solver.py --baseline <git rev | old_linalg.py | linalg package folder> [--family ...] [--quick]
                                                                                    (before vs after, one run)

Data (random, seeded; printed again in the output):
  * weights: one to_k and one to_v per cross-attention block, fp32, entries N(0, 0.02²), with
    the real output dims of SD1.5 (16 blocks, d_in 768) and SDXL (70 blocks, d_in 2048);
  * n = 100 token columns (20 erase + 20 paired guide + 80 preserve), CLIP-like: norm ≈ 28,
    70 % of the energy along one shared mean direction, 20 % in an 8-dim subspace, 10 %
    isotropic noise — the anisotropy of real CLIP hidden states;
  * γ = 0.5, α = β = 1 (UCE defaults); λ from lam_for_sparsity for the target sparsity (shared
    by all layers), chosen before and outside the timed comparison.

Timings are process wall time with torch on --threads CPU threads; UCE is timed layer by layer
right before SPACE's solve of the same layer (same machine load; the ratio uses this) and as the
best of three standalone passes. SPACE's gap is certified by
its duality gap and checked against a tight reference F* (warm-started SSN to 1e-13). FISTA runs
with an oracle stop — it is stopped at the first check (every 10 iterations) where the true gap
(F(W) − F*)/F* ≤ tol, and the checks are not timed — on one layer per distinct d_out (its
~10³ iterations per layer make all layers too slow here), compared with SPACE on that layer.
Memory: anonymous resident set size (RssAnon) sampled every 2 ms during SPACE solves, in a fresh
spawned process, minus the RSS before the solve (taken after a small warm-up solve, so one-off MKL /
OpenMP buffers count as baseline), relative to the fp32 size of all weights. Layers are solved one
at a time and each result is handed back before the next, so the working memory of the pass is the
largest single-layer peak; the process solves one layer per distinct d_out and reports the largest.
glibc's mmap threshold is pinned at 128 KiB in that process only, so that freed tensors leave the
RSS instead of lingering in malloc's cache. (Pinning turns every large temporary into fresh
page-faulted memory, which slows SSN down about 2×: the timed passes run unpinned, as users do.)
"""

from __future__ import annotations

import argparse
import ctypes
import math
import multiprocessing
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from erasekit import linalg  # noqa: E402

# cross-attention output dims per transformer block, in UNet order
SD15_BLOCKS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]
SDXL_BLOCKS = [640] * 4 + [1280] * 20 + [1280] * 10 + [1280] * 30 + [640] * 6  # down, mid, up
FAMILIES = {"sd15": (SD15_BLOCKS, 768), "sdxl": (SDXL_BLOCKS, 2048)}
N_ERASE, N_PRESERVE, TOKEN_NORM = 20, 80, 28.0


def clip_like_columns(d_in: int, k: int, g: torch.Generator, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(d_in, k) token embeddings: shared mean direction + 8-dim structure + isotropic noise."""
    low = basis @ torch.randn(basis.shape[1], k, generator=g, dtype=torch.float64) / math.sqrt(basis.shape[1])
    noise = torch.randn(d_in, k, generator=g, dtype=torch.float64) / math.sqrt(d_in)
    return TOKEN_NORM * (math.sqrt(0.7) * mean[:, None] + math.sqrt(0.2) * low + math.sqrt(0.1) * noise)


def make_family(name: str, quick: bool, seed: int = 0):
    blocks, d_in = FAMILIES[name]
    if quick:  # one block per distinct d_out
        blocks = sorted(set(blocks))
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d_in, generator=g, dtype=torch.float64)
    mean /= mean.norm()
    basis = torch.linalg.qr(torch.randn(d_in, 8, generator=g, dtype=torch.float64))[0]
    C_E, C_G, C_P = (clip_like_columns(d_in, k, g, mean, basis) for k in (N_ERASE, N_ERASE, N_PRESERVE))
    weights = [(0.02 * torch.randn(d_out, d_in, generator=g)).float() for d_out in blocks for _ in ("to_k", "to_v")]
    return weights, (C_E, C_G, C_P)


def pin_mmap_threshold() -> None:
    """Serve every allocation ≥ 128 KiB by mmap (M_MMAP_THRESHOLD, no dynamic raise), so freed
    tensors leave the RSS instead of lingering in malloc's heap. Call before allocating."""
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)


class RssPeak:
    """Anonymous resident set size sampled by a thread every 2 ms inside ``window()`` blocks.

    The baseline is taken after trimming the heap; call :func:`pin_mmap_threshold` first.
    """

    def __init__(self) -> None:
        self.active = threading.Event()
        self.peak = 0
        threading.Thread(target=self._run, daemon=True).start()
        with self.window():  # the sampler's own stack and malloc arena belong to the baseline
            time.sleep(0.01)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.rss()

    def rss(self) -> int:
        """Anonymous resident memory (RssAnon): data, not the library code pages loaded on first use."""
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

    def _run(self) -> None:
        while True:
            self.active.wait()
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    @contextmanager
    def window(self):
        """Yields self with ``peak`` reset to the current RSS, sampled until the block ends."""
        self.peak = self.rss()
        self.active.set()
        try:
            yield self
        finally:
            self.active.clear()
            self.peak = max(self.peak, self.rss())


def layer_peak_bytes(name: str, quick: bool, lam: float, threads: int, tol: float) -> dict[int, int]:
    """{d_out: peak RSS beyond the weights while solving that layer}, one layer per distinct
    d_out, one after the other (run in a fresh spawned process, mmap threshold pinned)."""
    pin_mmap_threshold()
    torch.set_num_threads(threads)
    weights, cols = make_family(name, quick)
    gf = linalg.gram_factor(*cols, gamma=0.5)
    linalg.space_solve(weights[0][:64], gf, lam)  # warm-up: MKL / OpenMP buffers belong to the baseline
    mem, peaks = RssPeak(), {}
    for d_out in sorted({w.shape[0] for w in weights}):
        W = next(w for w in weights if w.shape[0] == d_out)
        with mem.window() as win:
            res = linalg.space_solve(W, gf, lam, tol=tol)
        del res  # the float64 result W and duals were live at the peak: counted as working memory
        peaks[d_out] = win.peak - mem.base
    return peaks


def csr_bytes(W: torch.Tensor) -> int:
    """fp32 values + int32 column indices + int32 row pointers."""
    return 8 * int((W != 0).sum()) + 4 * (W.shape[0] + 1)


def fista_oracle(W0, gf, lam, F_star, tol, max_iter):
    """(seconds, iterations, reached) of FISTA until (F(W) − F*)/F* ≤ tol, checks not timed."""
    A = linalg.uce_weight(W0, gf)
    c0 = linalg.space_objective(A, W0, gf, 0.0)  # f(W_uce)
    F, gamma = gf.F, gf.gamma
    state = {"check": 0.0, "k": None}

    def objective(W):  # F(W) = Σ_rows (w − a) M (w − a)ᵀ + λ‖W‖₁ + f(W_uce), eqs. (7)–(8)
        E = W - A
        return float(gamma * (E * E).sum() + ((E @ F) ** 2).sum() + lam * W.abs().sum() + c0)

    def callback(k, W):
        if k % 10:
            return False
        t = time.perf_counter()
        done = (objective(W) - F_star) / F_star <= tol
        state["check"] += time.perf_counter() - t
        state["k"] = k if done else None
        return done

    t0 = time.perf_counter()
    res = linalg.space_solve(W0, gf, lam, solver="fista", tol=0.0, max_iter=max_iter, W_uce=A, callback=callback)
    seconds = time.perf_counter() - t0 - state["check"]
    return seconds, res.iterations, state["k"] is not None


def run_family(name: str, args) -> list[tuple[str, str]]:
    weights, cols = make_family(name, args.quick)
    gf = linalg.gram_factor(*cols, gamma=0.5)
    d_in = gf.d_in
    d_outs = [W.shape[0] for W in weights]
    dense_bytes = 4 * d_in * sum(d_outs)
    print(
        f"\n== {name}: {len(weights)} matrices, d_in {d_in}, Σ d_out {sum(d_outs):,} "
        f"({sum(d_outs) // 2:,} per projection), fp32 weights {dense_bytes / 2**20:.1f} MiB"
    )
    print("   mix: " + ", ".join(f"{d}×{d_outs.count(d)}" for d in sorted(set(d_outs))) + " (matrices by d_out)")
    print(
        f"   tokens: n = {gf.n}, rank {gf.rank}, ‖c‖ ≈ {cols[0].norm(dim=0).mean():.1f}, "
        f"σ_max(C̃)² = {gf.lam_max_M - gf.gamma:.3g}, cond(M) = {gf.cond_M:.3g}"
    )

    # UCE over all layers (best of 3 passes)
    def uce_pass() -> None:  # each result dropped before the next, as SPACE's pass does
        for W in weights:
            linalg.uce_weight(W, gf)

    uce_best = min(timed(uce_pass)[1] for _ in range(3))
    progress(f"{name}: UCE {uce_best:.2f} s")

    # λ for the target sparsity, shared by all layers (timed separately)
    lam, lam_s = timed(lambda: linalg.lam_for_sparsity(weights, gf, args.target))
    progress(f"{name}: λ = {lam:.4g} in {lam_s:.1f} s")

    # SPACE (SSN) over all layers, layer by layer; each result is measured (CSR size, sparsity)
    # and dropped, keeping only its duals for the reference solves below
    linalg.space_solve(weights[0][:64], gf, lam)  # warm-up: MKL / OpenMP buffers
    space_s, uce_s, csr_total, ssn_layer, runs = 0.0, 0.0, 0, {}, []
    for W in weights:
        uce_s += timed(lambda: linalg.uce_weight(W, gf))[1]  # UCE again, interleaved: same machine load as SPACE
        res, dt = timed(
            lambda: linalg.space_solve(W, gf, lam, tol=args.tol)
        )  # row chunks on --threads workers, as SPACE.fit runs it
        space_s += dt
        ssn_layer.setdefault(W.shape[0], dt)
        csr_total += csr_bytes(res.W)
        runs.append((res.y, res.iterations, res.converged, int((res.W == 0).sum()), res.gap))
        del res
    progress(f"{name}: SPACE {space_s:.1f} s")

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peaks = pool.apply(layer_peak_bytes, (name, args.quick, lam, args.threads, args.tol))
    progress(f"{name}: memory measured")

    # tight reference F* per layer, warm-started from the timed solve's duals; true gaps
    stats, F_star = [], []
    for W, (y, its_, conv, nz, gap) in zip(weights, runs):
        ref = linalg.space_solve(W, gf, lam, tol=1e-13, y0=y)
        timed_W = linalg.space_solve(W, gf, lam, y0=y, max_iter=0).W  # the timed solve's W = W(y)
        F_star.append(ref.objective)
        true_gap = (linalg.space_objective(timed_W, W, gf, lam) - ref.objective) / ref.objective
        stats.append((its_, conv, nz, gap, true_gap))
    del runs
    progress(f"{name}: references done")
    its = [s[0] for s in stats]
    zeros = sum(s[2] for s in stats)

    # FISTA with oracle stop on one layer per distinct d_out, against SPACE on the same layer
    fista_rows = []
    for d_out in sorted(set(d_outs))[: 1 if args.quick else None]:  # quick: the smallest layer only
        i = d_outs.index(d_out)
        f_s, f_its, reached = fista_oracle(weights[i], gf, lam, F_star[i], args.tol, args.fista_max_iter)
        fista_rows.append((d_out, ssn_layer[d_out], its[i], f_s, f_its, reached))
        progress(f"{name}: FISTA {d_out}×{d_in}: {f_s:.1f} s, {f_its} iterations")

    rows = [
        ("UCE, all layers", f"{uce_s:.2f} s interleaved with SPACE's layers (best standalone pass {uce_best:.2f} s)"),
        (f"λ for {args.target:.0%} sparsity (lam_for_sparsity, shared)", f"{lam_s:.2f} s   (λ = {lam:.4g})"),
        (f"SPACE (SSN), all layers, tol {args.tol:g}", f"{space_s:.2f} s"),
        ("SPACE / UCE", f"{space_s / uce_s:.1f}×"),
        ("SPACE Newton iterations per layer (max over rows)", f"median {sorted(its)[len(its) // 2]}, max {max(its)}"),
        ("SPACE converged layers", f"{sum(s[1] for s in stats)}/{len(stats)}"),
        ("certified gap (max over layers)", f"{max(s[3] for s in stats):.2e}"),
        ("true gap vs reference F* (max over layers)", f"{max(s[4] for s in stats):.2e}"),
        ("achieved sparsity (exact zeros, all layers)", f"{zeros / (d_in * sum(d_outs)):.4f}"),
        (
            "peak memory beyond weights (layer by layer)",
            f"{max(peaks.values()) / 2**20:.1f} MiB = {max(peaks.values()) / dense_bytes:.1%} of fp32 weights "
            "(fresh process; the float64 result W of the largest layer alone is "
            f"{8 * d_in * max(d_outs) / dense_bytes:.1%})",
        ),
        ("  … per layer", ", ".join(f"{d}×{d_in}: {b / 2**20:.1f} MiB" for d, b in sorted(peaks.items()))),
        ("CSR (fp32 values + int32 indices) / dense fp32", f"{csr_total / dense_bytes:.1%}"),
    ]
    for d_out, s_s, s_its, f_s, f_its, reached in fista_rows:
        flag = "" if reached else f"  (did not reach {args.tol:g} in {f_its} iterations: lower bound)"
        rows.append(
            (
                f"layer {d_out}×{d_in}: SPACE | FISTA (oracle stop)",
                f"{s_s:.2f} s ({s_its} it) | {f_s:.1f} s ({f_its} it) → FISTA/SPACE {f_s / s_s:.0f}×{flag}",
            )
        )
    return rows


def load_baseline(rev: str):
    """erasekit.linalg as it was at git revision ``rev`` (or in the file / folder ``rev``), imported beside the current.

    Before the split, erasekit.linalg was one file (``src/erasekit/linalg.py``); since, it is a package
    (``src/erasekit/linalg/``) that imports nothing outside itself. Either form loads, under a name of its
    own, from a git revision (whichever of the two it holds), a ``.py`` file of the old module, or a
    copy of the package folder. A file or folder serves machines without the repository's history (a
    device machine gets a copy of the working tree only): ``git show REV:src/erasekit/linalg.py >
    linalg_REV.py`` or ``cp -r src/erasekit/linalg linalg_REV`` here first.
    """
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]
    stem = Path(rev).stem if rev.endswith(".py") else Path(rev).name
    name = "linalg_" + "".join(ch if ch.isalnum() else "_" for ch in stem)
    if Path(rev).is_dir():
        return _load_package(name, Path(rev))
    if rev.endswith(".py"):
        if not Path(rev).is_file():
            sys.exit(f"--baseline {rev}: no such file (make it with: git show REV:src/erasekit/linalg.py > {rev})")
        return _load_module(name, Path(rev).read_text(), rev)
    git = ["git", "-C", str(root)]
    done = subprocess.run([*git, "show", f"{rev}:src/erasekit/linalg.py"], capture_output=True, text=True)
    if not done.returncode:
        return _load_module(name, done.stdout, f"{rev}:src/erasekit/linalg.py")
    files = subprocess.run(
        [*git, "ls-tree", "-r", "--name-only", rev, "src/erasekit/linalg/"], capture_output=True, text=True
    )
    paths = [f for f in files.stdout.split() if f.endswith(".py")]
    if files.returncode or not paths:
        sys.exit(
            f"--baseline {rev}: git cannot show src/erasekit/linalg.py or src/erasekit/linalg/ at that "
            f"revision ({(done.stderr or files.stderr).strip()}); pass a revision of this repository, a .py "
            "file of the old module or a copy of the package folder"
        )
    folder = Path(tempfile.mkdtemp(prefix=f"{name}_")) / "linalg"
    for f in paths:
        text = subprocess.run([*git, "show", f"{rev}:{f}"], capture_output=True, text=True, check=True).stdout
        dest = folder / Path(f).relative_to("src/erasekit/linalg")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    return _load_package(name, folder)


def _load_module(name: str, src: str, origin: str):
    """The one-file erasekit.linalg (before the split) from its source text."""
    import importlib.util

    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    exec(compile(src, origin, "exec"), mod.__dict__)
    return mod


def _load_package(name: str, folder: Path):
    """The erasekit.linalg package (after the split) from a folder holding its ``__init__.py``, as package ``name``."""
    import importlib.util

    init = folder / "__init__.py"
    if not init.is_file():
        sys.exit(f"--baseline {folder}: no __init__.py there; pass a copy of src/erasekit/linalg/")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # its relative imports and dataclasses look it up here
    spec.loader.exec_module(mod)
    return mod


def both_timed(fn):
    """(result, CPU seconds, wall seconds); on a GPU both are wall time after a synchronize."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0, time.perf_counter() - t0
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - t0


def cpu_timed(fn):
    """(result, seconds): process CPU time on a CPU; wall time after a synchronize on a GPU."""
    out, cpu, _ = both_timed(fn)
    return out, cpu


DEVICE = torch.device("cpu")


def compare_family(name: str, args, old) -> list[tuple[str, str]]:
    """Before (``old`` linalg) vs after (current), interleaved layer by layer, in CPU seconds.

    "After" SPACE solves run as SPACE.fit runs them: row chunks on --threads worker threads, each op
    single-threaded (the baseline uses --threads intra-op threads). CPU seconds measure work; the
    wall-clock rows show what the workers add on --threads cores (UCE, before and after all timed
    on the same --threads).
    Per layer: UCE; SPACE at a fixed λ (the shared λ for the target, found once, untimed) with the
    old and the new solver; and the per-layer target-sparsity fit as the SPACE method runs it:
    before, lam_for_sparsity([W]) then space_solve; after, space_solve_sparsity, both cold (no λ
    from a previous layer) and chained (λ path started at the previous layer's λ of the same
    projection and d_out, as SPACE.fit does).
    """
    weights, cols = make_family(name, args.quick)
    weights, cols = [w.to(DEVICE) for w in weights], [c.to(DEVICE) for c in cols]
    gf_new = linalg.gram_factor(*cols, gamma=0.5)
    gf_old = old.gram_factor(*cols, gamma=0.5)
    lam = linalg.lam_for_sparsity(weights, gf_new, args.target)
    linalg.space_solve(weights[0][:64], gf_new, lam)  # warm-up
    old.space_solve(weights[0][:64], gf_old, lam)
    t = {k: 0.0 for k in ("uce", "old_fixed", "new_fixed", "old_target", "new_target_cold", "new_target_chained")}
    wall = {k: 0.0 for k in ("uce", "old_fixed", "new_fixed")}
    worst_gap, sp, chain = 0.0, [], {}
    for i, W in enumerate(weights):
        _, t_uce, w_uce = both_timed(lambda: linalg.uce_weight(W, gf_new))
        r_old, t_old, w_old = both_timed(lambda: old.space_solve(W, gf_old, lam, tol=args.tol))
        r_new, t_new, w_new = both_timed(lambda: linalg.space_solve(W, gf_new, lam, tol=args.tol))
        for k, c, w in (("uce", t_uce, w_uce), ("old_fixed", t_old, w_old), ("new_fixed", t_new, w_new)):
            t[k] += c
            wall[k] += w
        worst_gap = max(worst_gap, r_old.gap, r_new.gap)
        _, dt = cpu_timed(
            lambda: old.space_solve(W, gf_old, old.lam_for_sparsity([W], gf_old, args.target), tol=args.tol)
        )
        t["old_target"] += dt
        (r_cold, _), dt = cpu_timed(lambda: linalg.space_solve_sparsity(W, gf_new, args.target, tol=args.tol))
        t["new_target_cold"] += dt
        key = (i % 2, W.shape[0])  # weights alternate to_k, to_v
        (r_ch, lam_ch), dt = cpu_timed(
            lambda: linalg.space_solve_sparsity(
                W, gf_new, args.target, tol=args.tol, lam0=chain.get(key, chain.get("last"))
            )
        )
        chain[key] = chain["last"] = lam_ch
        t["new_target_chained"] += dt
        worst_gap = max(worst_gap, r_cold.gap, r_ch.gap)
        sp += [r_cold.sparsity, r_ch.sparsity]
        progress(f"{name}: layer {i + 1}/{len(weights)} {tuple(W.shape)} done")
        del r_old, r_new, r_cold, r_ch
    return [
        ("layers", f"{len(weights)} ({', '.join(str(w.shape[0]) for w in weights)} × {gf_new.d_in})"),
        ("UCE, all layers (CPU s)", f"{t['uce']:.2f}"),
        (f"SPACE fixed λ = {lam:.4g}: before | after (CPU s)", f"{t['old_fixed']:.2f} | {t['new_fixed']:.2f}"),
        ("SPACE / UCE (CPU s): before | after", f"{t['old_fixed'] / t['uce']:.1f}× | {t['new_fixed'] / t['uce']:.1f}×"),
        (
            f"wall s on {args.threads} thread(s): UCE | SPACE before | after",
            f"{wall['uce']:.2f} | {wall['old_fixed']:.2f} | {wall['new_fixed']:.2f}",
        ),
        (
            "SPACE / UCE (wall): before | after",
            f"{wall['old_fixed'] / wall['uce']:.1f}× | {wall['new_fixed'] / wall['uce']:.1f}×",
        ),
        (
            "per-layer target fit / fixed-λ fit: before",
            f"{t['old_target'] / t['old_fixed']:.2f}×  ({t['old_target']:.2f} s)",
        ),
        ("  after, each layer cold", f"{t['new_target_cold'] / t['new_fixed']:.2f}×  ({t['new_target_cold']:.2f} s)"),
        (
            "  after, λ path chained over layers (as SPACE.fit)",
            f"{t['new_target_chained'] / t['new_fixed']:.2f}×  ({t['new_target_chained']:.2f} s)",
        ),
        ("worst certified gap (all solves)", f"{worst_gap:.2e} (tol {args.tol:g})"),
        ("per-layer sparsity after (min, max)", f"{min(sp):.4f}, {max(sp):.4f} (target {args.target})"),
    ]


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=["sd15", "sdxl", "both"], default="both")
    p.add_argument(
        "--quick",
        action="store_true",
        help="one block per distinct d_out instead of the full UNet mix; FISTA on the smallest layer only",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--target", type=float, default=0.85, help="target sparsity")
    p.add_argument("--tol", type=float, default=1e-6, help="relative objective gap")
    p.add_argument("--fista-max-iter", type=int, default=20000)
    p.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="compare with erasekit.linalg at this git revision, in this .py file (the one-file module) "
        "or in this folder (a copy of the package) (before vs after, CPU seconds)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (refused when no GPU is visible)")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            f"--device {args.device}: no CUDA GPU is visible to torch (torch {torch.__version__}); run on a GPU "
            "machine or use --device cpu"
        )
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type != "cpu" and not args.baseline:
        sys.exit(
            "--device cuda runs the before/after comparison only: pass --baseline <rev> (the full table samples CPU "
            "memory)"
        )
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start; {'quick' if args.quick else 'full'} run"
    )
    print(
        "weights: fp32 N(0, 0.02²); tokens: 20 erase + 20 guide + 80 preserve CLIP-like columns "
        "(norm ≈ 28, 70 % shared mean direction, 20 % 8-dim subspace, 10 % noise); γ = 0.5, α = β = 1"
    )
    t0 = time.perf_counter()
    old = load_baseline(args.baseline) if args.baseline else None
    if old is not None:
        print(
            f"before: erasekit.linalg at {args.baseline}; after: the working tree; CPU seconds (process time), "
            "interleaved per layer"
        )
    for name in ["sd15", "sdxl"] if args.family == "both" else [args.family]:
        rows = compare_family(name, args, old) if old is not None else run_family(name, args)
        width = max(len(k) for k, _ in rows)
        print("   " + "-" * (width + 40))
        for k, v in rows:
            print(f"   {k:<{width}}  {v}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
