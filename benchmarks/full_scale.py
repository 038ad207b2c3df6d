"""Time and memory of every erasekit phase on a full-size SD 1.5 / 2.1 / XL, FLUX.1-dev, SD3.5-Medium, PixArt-Σ or
Sana-1600M pipeline (random weights).

    python benchmarks/full_scale.py --family sd15|sd21|sdxl|flux1-dev|sd35-medium|pixart-sigma|sana-1600m
                                    [--dtype float16]
                                    [--methods uce,space] [--preserve N] [--device cpu|cuda] [--cache-dir DIR]

The pipeline is the cached folder of ``benchmarks/full_scale_models.py`` (built on first use).
Per method, each phase is timed (wall clock) and its peak resident memory recorded:

  load      from_pretrained in --dtype (once, shared by the methods; it defines the baseline)
  encode    encoding the concept prompts alone (erase, guide, preserve) with the pipeline's encoder(s)
  fit       erasekit.erase(...): encoding again + the method's solve, the pipeline untouched
  save      Edit.save (safetensors, atomic)
  load_edit Edit.load + check_compatible: the strict load, fingerprints of every edited layer included
  apply     Edit.apply
  export    the single-file export of the edited pipeline (export/single_file), SD 1.5 only here; skipped otherwise
  revert    Edit.revert, then a bit-exact check of every edited layer against a hash taken before

Closed-form methods (uce, space, and on the DiT families — FLUX.1-dev, SD3.5-M, PixArt-Σ, Sana — rece, speed, cure and
PURE's text basis) run at full size;
uce and space get a separate "encode" phase (their column plan alone). Methods that run the UNet are measured at a
reduced budget, stated in the fit row's note (:data:`REDUCED`): PURE's anchor trajectories at 256 × 256 px, 2 steps,
1 latent per prompt; ACE and ESD-x 2 training steps from an x_t pool of 1 latent × 2 steps at the pipeline's own
size — their time and memory per step, not their results.

Time: wall clock and process CPU seconds (the CPU column is the one to trust on a shared machine).
Memory: a sampler thread reads RssAnon (anonymous resident memory: what the process allocated,
not the page cache of mmapped files) every 2 ms. "beyond" is a phase's peak minus the RssAnon at
the start of its method (right after the load for the first; for a later one, after the previous
method's revert, when the reverted layers have moved from the memory-mapped file into anonymous
memory: counting from the load would charge them to the later method), and "share" divides it by
the pipeline's own size (bytes of every parameter and buffer of its modules). glibc's mmap
threshold is pinned at 128 KiB so that freed tensors leave the RSS instead of lingering in
malloc's cache (Linux only). Images are noise; the
times and memory are real.

Every phase also gets its peak resident set (RssAnon + RssFile: the pages of memory-mapped weights it read count)
beyond the bare process (measured before the load), divided by the bytes of the weights an erasure reads: the text
encoders, the modules between them and the sites (PixArt / Sana's caption projection) and the edit sites
("÷ touched"). On the DiTs the 1–24 GB transformer is memory-mapped by
``from_pretrained`` and only its two static sites are read, so that ratio shows whether any phase materialised it.
"RssFile at load" says how much of the weights the load itself read.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import full_scale_models as fsm  # noqa: E402

CONCEPT = "Van Gogh"
CLOSED_FORM = ("uce", "space")  # methods whose prompt encoding is timed as its own phase
# closed-form methods measured at full size on the DiT families (no denoiser call): their options there
DIT_CLOSED_FORM = {"uce": {}, "space": {}, "rece": {}, "speed": {}, "cure": {}, "pure": {"basis": "text"}}
# methods that run the UNet: the budget they get here (options, what the fit row says about it)
REDUCED = {
    "pure": ({"height": 256, "width": 256, "steps": 2, "n_latents": 1}, "anchors 256×256 px, 2 steps, 1 latent/prompt"),
    "ace": (
        {"train_steps": 2, "pool_steps": 2, "pool_latents": 1, "batch_size": 1, "adv_steps": 1},
        "2 train steps (1 adversarial step each), x_t pool 1 latent × 2 steps",
    ),
    "esd-x": ({"iterations": 2, "pool_steps": 2, "pool_latents": 1}, "2 iterations, x_t pool 1 latent × 2 steps"),
}
PRESERVE = ["Claude Monet", "Pablo Picasso", "Rembrandt", "Johannes Vermeer", "Salvador Dali", "Frida Kahlo"]


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def rss_anon() -> int:
    return _status("RssAnon:")


def rss_file() -> int:
    """Resident pages of mapped files: shared libraries and the memory-mapped weights read so far."""
    return _status("RssFile:")


class Sampler:
    """Peak RssAnon (bytes) while a phase runs, sampled every ``period`` seconds."""

    def __init__(self, period: float = 0.002):
        self.period, self.peak, self.peak_rss, self.cpu, self._stop = period, 0, 0, 0.0, threading.Event()

    @contextmanager
    def phase(self):
        self.peak, self._stop = rss_anon(), threading.Event()
        self.peak_rss = self.peak + rss_file()
        cpu0 = time.process_time()

        def run():
            while not self._stop.is_set():
                anon = rss_anon()
                self.peak = max(self.peak, anon)
                self.peak_rss = max(self.peak_rss, anon + rss_file())
                time.sleep(self.period)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        try:
            yield
        finally:
            self._stop.set()
            th.join()
            anon = rss_anon()
            self.peak = max(self.peak, anon)
            self.peak_rss = max(self.peak_rss, anon + rss_file())
            self.cpu = time.process_time() - cpu0


def pin_malloc() -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def trim_malloc() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def module_bytes(m) -> int:
    return sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))


def pipeline_bytes(pipe) -> int:
    names = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    return sum(module_bytes(m) for n in names if (m := getattr(pipe, n, None)) is not None)


def touched_bytes(adapter) -> int:
    """Bytes of the weights an erasure reads: every text encoder (SD3's T5 is the third), the modules between them and
    the sites (PixArt / Sana's caption projection and norm: the family's ``site_input_modules``), and the edit sites
    (weight and bias)."""
    inputs = adapter.family_spec.site_input_modules(adapter.pipe).values()
    return sum(module_bytes(m) for m in inputs) + sum(module_bytes(adapter.linear(p)) for p in adapter.paths)


def layer_hashes(adapter) -> dict[str, str]:
    out = {}
    for p in adapter.paths:
        w = adapter.linear(p).weight.detach().to("cpu")
        out[p] = hashlib.sha256(memoryview(w.contiguous().view(torch.uint8).numpy())).hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="sd15", choices=fsm.FAMILIES)
    ap.add_argument(
        "--dtype",
        default=None,
        choices=("float16", "bfloat16", "float32"),
        help="load dtype (default: the dtype the family's weights are stored in, so nothing is converted)",
    )
    ap.add_argument(
        "--methods",
        default="uce,space",
        help="comma-separated: closed-form uce, space at full size; pure, ace, esd-x at the reduced budget of "
        "REDUCED; on the DiTs (flux1-dev, sd35-medium, pixart-sigma, sana-1600m): uce, space, rece, speed, cure, pure "
        "(text basis), all at full size",
    )
    ap.add_argument(
        "--preserve",
        type=int,
        default=len(PRESERVE),
        help=f"how many of the {len(PRESERVE)} preserved artists to use (each a T5-XXL / Gemma-2 pass on the DiTs)",
    )
    ap.add_argument(
        "--denoiser",
        default="full",
        choices=("full", "sites"),
        help="'sites': load of the denoiser only its static edit sites (erasekit.load_pipeline(denoiser='sites'))",
    )
    ap.add_argument(
        "--encode-phase",
        default="all",
        choices=("all", "first", "none"),
        help="time uce / space's prompt encoding as its own phase for every such method, the first one, or none",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda (refused when no GPU is visible)")
    ap.add_argument(
        "--cache-dir", default=None, help="folder of the cached pipelines (default ~/.cache/erasekit/full_scale)"
    )
    ap.add_argument(
        "--scaled", action="store_true", help="use the scaled-down copy of the config (a quick check of this script)"
    )
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None)
    ap.add_argument(
        "--space-option", action="append", default=[], help="extra SPACE config as key=value (e.g. lam=0.05)"
    )
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]  # parsed once, validated before anything loads
    dit = args.family in fsm.DIT_FAMILIES
    known = tuple(DIT_CLOSED_FORM) if dit else CLOSED_FORM + tuple(REDUCED)
    unknown = [m for m in methods if m not in known]
    if unknown:
        print(f"--methods: {', '.join(unknown)} not measured here; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    if not 0 <= args.preserve <= len(PRESERVE):
        print(f"--preserve: between 0 and {len(PRESERVE)}", file=sys.stderr)
        return 2
    if args.denoiser == "sites" and not dit and any(m in REDUCED for m in methods):
        print(
            "--denoiser sites: pure, ace and esd-x run the UNet here; measure them with --denoiser full",
            file=sys.stderr,
        )
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"--device {args.device}: no CUDA GPU is visible to torch (torch {torch.__version__}); run on a GPU "
            "machine "
            "or use --device cpu",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    pin_malloc()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import erasekit
    from erasekit.edit import Edit
    from erasekit.methods import _closed_form as cf
    from erasekit.methods.uce import KIND_PRESETS
    from erasekit.models.adapter import PipelineAdapter

    config = fsm.published_config(args.family)
    dtype = args.dtype or str(fsm.storage_dtype(config)).replace("torch.", "")
    folder = fsm.pipeline_folder(
        args.family, args.cache_dir, config=fsm.scaled_config(config) if args.scaled else config
    )
    sampler = Sampler()
    rows = []
    import diffusers
    import transformers

    for part in config.values():  # import the component classes first: their libraries are not weights
        if isinstance(part, dict) and "_class_name" in part:
            getattr(diffusers, part["_class_name"], None) or getattr(transformers, part["_class_name"], None)
    getattr(diffusers, config["pipeline"])
    bare = rss_anon() + rss_file()  # the process before the load: interpreter, torch and its libraries
    touched = 1  # set once the pipeline is loaded

    def record(method, phase, seconds, note=""):
        beyond = sampler.peak - base
        ratio = (sampler.peak_rss - bare) / touched
        rows.append((method, phase, seconds, sampler.cpu, beyond, sampler.peak_rss - bare, ratio, note))
        print(
            f"  {method:6s} {phase:10s} {seconds:8.2f} s  beyond {beyond / 2**20:8.1f} MiB  "
            f"rss {(sampler.peak_rss - bare) / 2**30:6.2f} GiB = {ratio:.2f} x touched  {note}",
            file=sys.stderr,
            flush=True,
        )

    base = rss_anon()
    file0 = rss_file()
    t0 = time.perf_counter()
    with sampler.phase():
        pipe = erasekit.load_pipeline(str(folder), dtype=dtype, device=args.device, denoiser=args.denoiser)
    load_s = time.perf_counter() - t0
    size = pipeline_bytes(pipe)
    read_at_load = rss_file() - file0
    load_peak_beyond = sampler.peak - base - (rss_anon() - base)  # transient extra above the loaded pipeline
    base = rss_anon()
    concepts = erasekit.ConceptSet(erase=(CONCEPT,), kind="style", preserve=tuple(PRESERVE[: args.preserve]))
    adapter = PipelineAdapter(pipe)
    touched = touched_bytes(adapter)
    rows.append(
        (
            "-",
            "load",
            load_s,
            sampler.cpu,
            load_peak_beyond,
            sampler.peak_rss - bare,
            (sampler.peak_rss - bare) / touched,
            f"pipeline {size / 2**30:.2f} GiB (weights memory-mapped); RssAnon after load {base / 2**30:.2f} GiB; "
            f"RssFile at load +{read_at_load / 2**30:.2f} GiB",
        )
    )
    print(
        f"{args.family} {dtype} on {args.device}: pipeline {size / 2**30:.2f} GiB, loaded in {load_s:.1f} s, "
        f"weights an erasure reads {touched / 2**30:.2f} GiB",
        file=sys.stderr,
    )
    n_layers, n_weights = len(adapter.paths), sum(adapter.linear(p).weight.numel() for p in adapter.paths)
    before = layer_hashes(adapter)
    tmp = Path(tempfile.mkdtemp(prefix="erasekit-fullscale-"))
    load_base = base
    for method in methods:
        gc.collect()
        trim_malloc()
        base = rss_anon()  # this method's baseline (module docstring)
        since = (
            ""
            if base - load_base < 0.01 * size
            else f"; measured from RssAnon {base / 2**30:.2f} GiB at this method's start"
        )
        options, budget = (DIT_CLOSED_FORM[method], "") if dit else REDUCED.get(method, ({}, ""))
        options = dict(options)
        if method == "space":
            for kv in args.space_option:
                k, v = kv.split("=", 1)
                options[k] = float(v) if k in ("lam", "target_sparsity", "tol") else v
        timed_encode = args.encode_phase == "all" or (
            args.encode_phase == "first" and method == next((m for m in methods if m in CLOSED_FORM), None)
        )
        if method in CLOSED_FORM and timed_encode:
            t0 = time.perf_counter()
            with sampler.phase():
                # the method's own column plan (preset and kind resolved as in fit), encoded once
                cfg = cf.resolve_for_kind(erasekit.make_config(method, **options), concepts.kind, KIND_PRESETS)
                plan = cf.column_plan(concepts, cfg.preset, cfg.token, cfg.preserve_token, cfg.preserve_scale)
                for group in adapter.groups:  # SD3 / FLUX: the text stream and the pooled vector, each encoded
                    cf.plan_columns(adapter.for_group(group), plan)
            record(method, "encode", time.perf_counter() - t0)
        t0 = time.perf_counter()
        with sampler.phase():
            edit = erasekit.erase(pipe, method, concepts, progress=False, **options)
        s = edit.sparsity()
        record(
            method,
            "fit",
            time.perf_counter() - t0,
            f"{len(edit.layers)} layers"
            + (f", sparsity {s:.3f}" if s is not None else "")
            + (f"; reduced: {budget}" if budget else "")
            + since,
        )
        path = tmp / f"{method}.safetensors"
        t0 = time.perf_counter()
        with sampler.phase():
            edit.save(path)
        record(method, "save", time.perf_counter() - t0, f"{path.stat().st_size / 2**20:.1f} MiB file")
        del edit
        t0 = time.perf_counter()
        with sampler.phase():
            edit = Edit.load(path)
            edit.check_compatible(pipe)
        record(method, "load_edit", time.perf_counter() - t0, "strict, fingerprints included")
        t0 = time.perf_counter()
        with sampler.phase():
            edit.apply(pipe)
        record(method, "apply", time.perf_counter() - t0)
        if args.family == "sd15" and method == methods[0] and args.denoiser == "full":
            from erasekit.export.single_file import export_single_file

            t0 = time.perf_counter()
            with sampler.phase():
                out = export_single_file(pipe, tmp / "export.safetensors")
            record(method, "export", time.perf_counter() - t0, f"single file {out.stat().st_size / 2**30:.2f} GiB")
            out.unlink()
        t0 = time.perf_counter()
        with sampler.phase():
            edit.revert(pipe)
        exact = layer_hashes(adapter) == before
        record(method, "revert", time.perf_counter() - t0, "bit-exact" if exact else "NOT BIT-EXACT")
        path.unlink()
        del edit

    print()
    sites = "edited K/V matrices" if not dit else "edited static sites"
    print(
        f"# full scale: {args.family}, {dtype}, device {args.device}, denoiser {args.denoiser}, "
        f"torch threads {torch.get_num_threads()}, "
        f"{n_layers} {sites} ({n_weights / 1e6:.1f} M weights), pipeline {size / 2**30:.2f} GiB, "
        f"weights an erasure reads (text encoders + sites) {touched / 2**30:.2f} GiB, "
        f"{1 + args.preserve} concept prompts (erase + {args.preserve} preserved)"
    )
    print(
        "| method | phase | wall s | CPU s | peak beyond pipeline | share of pipeline | peak RSS beyond bare process "
        "| ÷ touched | note |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for method, phase, sec, cpu, beyond, rss, ratio, note in rows:
        print(
            f"| {method} | {phase} | {sec:.2f} | {cpu:.2f} | {beyond / 2**20:.0f} MiB | {100 * beyond / size:.1f} % | "
            f"{rss / 2**30:.2f} GiB | {ratio:.2f} | {note} |"
        )
    worst = max(r[6] for r in rows)
    print(
        f"\nlargest phase peak ÷ touched: {worst:.2f} ({'within' if worst <= 1.25 else 'ABOVE'} 1.25; the transformer "
        f"{'was not' if worst <= 1.25 else 'may have been'} materialised)"
        if dit and not args.scaled
        else f"\nlargest phase peak ÷ touched: {worst:.2f}" + (" (scaled copy: the libraries dominate)" * args.scaled)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
