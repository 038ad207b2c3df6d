"""Run an evaluation: generate (cached, batched, sharded), judge, measure.

Every image is keyed by (model fingerprint, conditioning, seed, steps, guidance, size,
scheduler) and written to an on-disk cache as soon as its batch finishes (PNG, atomic), so

* unedited images are generated once and shared by every method, study and later run;
* an interrupted run loses no finished image: run it again and only the missing batches are made;
* sharding is trivial: under ``accelerate launch`` each process generates its share of the
  missing images (``PartialState().split_between_processes``), everyone waits, and the main
  process reads all images back from the cache, judges them and computes the metrics — the
  same numbers as a single process: each image depends on its own seed, and its batch (fixed
  chunks of the full, sorted job list of its model state) does not depend on the cache or on the
  number of processes, so even the float rounding of batched kernels is reproduced.

What "the same" covers: pixels are bit-identical between runs (resumed, sharded or single) whose
processes each run the same torch intra-op thread count on the same CPU code path and library build.
The UNet's convolutions and GEMMs split their reductions by thread count, so 1 and 2 threads give
latents that differ in the last float bits, enough to move some uint8 pixels by one (measured on
tinyworld, 10 steps). ``accelerate launch`` through torchrun sets ``OMP_NUM_THREADS=1`` per process
unless it is set: pin the thread count (``OMP_NUM_THREADS`` or ``--threads``) to compare a sharded
run with a single one. Each process's thread count is recorded in results.json
(``config.torch_threads``), and the cache is reused as found: images it holds from another thread
count or CPU are read, not regenerated.

On CPU, accelerate 1.x starts several local processes only through its torchrun launcher:
``accelerate launch --multi_gpu --num_processes 2 -m erasekit.cli evaluate ... --device cpu``
(``--cpu --num_processes 2`` needs MPI and otherwise runs one process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import EraseKitError
from ..models.precision import denoiser_of
from . import metrics as M
from .cache import ImageCache, ModelIdentity, edit_digest, pipeline_fingerprint, scheduler_id
from .generate import GenerationSettings, generate
from .judges import Judge
from .judging import judge_runs
from .plan import Study, plan_jobs, study_suites
from .results import SCHEMA, UNEDITED, MethodRun, Results, SuiteRun, versions
from .summary import attack_configs, headline_suite, run_config, summarise

__all__ = [
    "SCHEMA",
    "UNEDITED",
    "GenerationSettings",
    "ImageCache",
    "MethodRun",
    "Results",
    "Study",
    "SuiteRun",
    "edit_digest",
    "evaluate",
    "headline_suite",
    "pipeline_fingerprint",
    "scheduler_id",
    "versions",
]
DEFAULT_SETTINGS = GenerationSettings()


def evaluate(
    pipe,
    studies: Sequence[Study],
    judge: Judge,
    *,
    out_dir: str | os.PathLike,
    settings: GenerationSettings = DEFAULT_SETTINGS,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    n_boot: int = M.N_BOOT,
    progress: bool = True,
) -> Results | None:
    """Generate, judge and measure every study; returns :class:`Results` on the main process, ``None`` on the others.

    ``pipe`` must be unedited; each edit is applied for its images and reverted. The stages, in order:
    plan (attack suites, then every image both models need, in fixed batches), generate (this process's share of
    the missing batches, into the cache), judge and summarise (main process only)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    _check(pipe, studies)
    state = PartialState(cpu=denoiser_of(pipe).device.type == "cpu")
    cache = ImageCache(cache_dir)
    t_start = time.perf_counter()
    model = ModelIdentity.of(pipe)

    t0 = time.perf_counter()
    # built once on the main process, shared through files (and reused from them when a run resumes)
    suites = study_suites(state, studies, pipe, Path(out_dir), judge=judge, settings=settings, progress=progress)
    attack_seconds = time.perf_counter() - t0
    plan = plan_jobs(studies, suites, model, cache, settings)
    todo, n_missing = plan.missing()
    state.wait_for_everyone()  # everyone has listed the missing batches before anyone writes one

    t0 = time.perf_counter()
    generated_here = generate(state, pipe, todo, plan.edits, cache, settings, progress=progress)
    generation_seconds = time.perf_counter() - t0
    state.wait_for_everyone()
    # pixels depend on each process's intra-op thread count (module docstring): record them all
    threads = [torch.get_num_threads()]
    threads_per_process = gather_object(threads) if state.num_processes > 1 else threads
    if not state.is_main_process:
        return None

    t0 = time.perf_counter()
    judge_seconds = judge_runs(studies, plan.runs, judge, cache)
    paired, attack_results = summarise(plan.runs, seed=seed, n_boot=n_boot)
    metrics_seconds = time.perf_counter() - t0 - judge_seconds

    config = run_config(
        pipe,
        model,
        settings,
        cache,
        seed=seed,
        n_boot=n_boot,
        processes=state.num_processes,
        torch_threads=threads_per_process,
    )
    config["attacks"] = {study.name: attack_configs(study) for study in studies if study.attacks}
    n = len(plan.jobs)
    timing = {
        "images_total": n,
        "images_generated": n_missing,
        "images_generated_by_main": generated_here,
        "images_from_cache": n - n_missing,
        "attack_seconds": attack_seconds,
        "generation_seconds": generation_seconds,
        "judge_seconds": judge_seconds,
        "read_and_metrics_seconds": metrics_seconds,
        "total_seconds": time.perf_counter() - t_start,
    }
    return Results(plan.runs, config, judge.settings, timing, paired, attack_results)


def _check(pipe, studies: Sequence[Study]) -> None:
    from ..edit import Edit

    if Edit.applied(pipe):
        raise EraseKitError(
            f"the pipeline already has an edit applied ({Edit.applied(pipe)[-1]}); evaluate needs the unedited pipeline"
        )
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise EraseKitError(f"study names must be unique, got {names}")
