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

import hashlib
import json
import os
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .._atomic import atomic_path
from ..errors import EraseKitError
from ..models.precision import generating_in_compute_dtype, pipeline_compute_dtype
from . import metrics as M
from . import stats as S
from .attacks import headline_eta, shifted_conditioning, vector_digest
from .judges import Judge, JudgeResult
from .suites import Suite, SuiteItem, default_cache_dir

UNEDITED = "unedited"


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings shared by every image (``None`` = the pipeline's default; an item's own guidance wins)."""

    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int = 8

    def to_dict(self) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, "height": self.height, "width": self.width, "batch_size": self.batch_size}


# ----------------------------------------------------------------------------- fingerprints
_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pipe -> (state key, fingerprint); dies with the pipe


def _state_key(pipe) -> tuple:
    """Cheap identity of a pipeline's current weights: every parameter / buffer's storage address, version
    counter (bumped by every in-place write, ``Edit.apply`` and ``revert`` included), shape and dtype, and the
    tokenizers' sizes. Equal keys mean no tensor was replaced or written since the key was taken."""
    parts: list = [type(pipe).__name__]
    for name, comp in sorted(pipe.components.items()):
        if isinstance(comp, torch.nn.Module):
            for k, t in comp.state_dict(keep_vars=True).items():
                try:
                    version = t._version
                except RuntimeError:  # inference-mode tensors have no version counter: nothing to trust
                    return ()
                parts.append((name, k, t.data_ptr(), version, tuple(t.shape), t.dtype))
        elif hasattr(comp, "get_vocab"):
            parts.append((name, id(comp), len(comp)))
        else:
            parts.append((name, type(comp).__name__))
    return tuple(parts)


def pipeline_fingerprint(pipe) -> str:
    """SHA-256 over the bytes of every component's tensors (with names, shapes, dtypes), the
    tokenizers' vocabularies and the pipeline class: the same in every process that loaded the
    same weights. The scheduler is not included: it is part of each image's key on its own.

    Hashing every weight is the runner's largest fixed cost (seconds on a loaded CPU), so the result is
    remembered per pipeline object and reused while :func:`_state_key` is unchanged."""
    key = _state_key(pipe)
    try:
        hit = _FINGERPRINTS.get(pipe)
    except TypeError:  # not weak-referenceable: no memo
        return _hash_pipeline(pipe)
    if key and hit is not None and hit[0] == key:
        return hit[1]
    fp = _hash_pipeline(pipe)
    if key:
        _FINGERPRINTS[pipe] = (key, fp)
    return fp


@torch.no_grad()
def _hash_pipeline(pipe) -> str:
    h = hashlib.sha256(type(pipe).__name__.encode())
    for name, comp in sorted(pipe.components.items()):
        h.update(f"|{name}:{type(comp).__name__}".encode())
        if isinstance(comp, torch.nn.Module):
            for key, t in comp.state_dict().items():
                h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
                h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif hasattr(comp, "get_vocab"):
            h.update(json.dumps(comp.get_vocab(), sort_keys=True).encode())
    return h.hexdigest()


def edit_digest(edit) -> str:
    """SHA-256 of an edit's method, config and tensors."""
    from ..edit import _content_sha256

    meta = json.dumps({"method": edit.method, "config": edit.config}, sort_keys=True, default=str)
    return hashlib.sha256((meta + _content_sha256(edit._tensors())).encode()).hexdigest()


def scheduler_id(pipe) -> str:
    # private keys such as _use_default_values are lists built from sets: their order differs between processes
    cfg = json.dumps({k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}, sort_keys=True, default=str)
    return f"{type(pipe.scheduler).__name__}:{hashlib.sha256(cfg.encode()).hexdigest()[:16]}"


# ----------------------------------------------------------------------------- image cache
class ImageCache:
    """PNG files under ``root/images/<model fp[:16]>/<key[:2]>/<key>.png``; the key's JSON is in the PNG text."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(model_fp: str, item: SuiteItem, settings: GenerationSettings, scheduler: str, vectors: dict,
            compute_dtype: str | None = None) -> tuple[str, dict]:
        """``compute_dtype``: set when the pipeline computes in another dtype than it stores (float16 on a
        CPU runs in float32), so those images never mix with images rendered in the stored dtype."""
        guidance = item.guidance if item.guidance is not None else settings.guidance
        spec = {
            "model": model_fp, "prompt": item.prompt, "seed": int(item.seed),
            "shift": None if item.shift is None else [vector_digest(vectors[item.shift[0]]), float(item.shift[1])],
            "steps": settings.steps, "guidance": guidance, "height": settings.height, "width": settings.width, "scheduler": scheduler,
        }
        if compute_dtype is not None:
            spec["compute_dtype"] = compute_dtype
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(), spec

    def path(self, model_fp: str, digest: str) -> Path:
        return self.root / "images" / model_fp[:16] / digest[:2] / f"{digest}.png"

    def save(self, path: Path, image: Image.Image, spec: dict) -> None:
        info = PngImagePlugin.PngInfo()
        info.add_text("erasekit", json.dumps(spec, sort_keys=True))
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=info)

    @staticmethod
    def load(path: Path) -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGB")


# ----------------------------------------------------------------------------- studies and results
@dataclass
class Study:
    """One erased concept (set): its suites, the edits to compare, and the attacks to run on them."""

    name: str
    suites: list[Suite]
    edits: dict  # method label -> Edit
    attacks: Sequence = ()
    attributes: Callable[[str], tuple[str, ...]] | None = None  # prompt -> the concepts it asks for (calibrates the concept-vector attack)


@dataclass
class SuiteRun:
    """One suite under one method: the images (cache paths) of both models and their judgements."""

    suite: Suite
    unedited: list[Path]
    edited: list[Path]
    judged_unedited: JudgeResult | None = None
    judged_edited: JudgeResult | None = None
    pixel_distance: list[float] = field(default_factory=list)
    kept_unedited: np.ndarray | None = None  # per item: the unedited image shows every prompted attribute (Study.attributes)

    def seen(self, which: str, mode: str = "any") -> np.ndarray:
        """Per item: does the judge see any (``mode="any"``) / all of the item's concepts?"""
        jr = self.judged_edited if which == "edited" else self.judged_unedited
        agg = np.any if mode == "any" else np.all
        return np.array([bool(agg([jr.seen(c)[i] for c in it.concepts])) for i, it in enumerate(self.suite.items)], dtype=bool)

    def to_dict(self) -> dict:
        return {"suite": self.suite.to_dict(), "unedited_images": [str(p) for p in self.unedited], "edited_images": [str(p) for p in self.edited],
                "judged_unedited": self.judged_unedited.to_dict() if self.judged_unedited else None,
                "judged_edited": self.judged_edited.to_dict() if self.judged_edited else None,
                "pixel_distance": self.pixel_distance,
                "kept_unedited": None if self.kept_unedited is None else [bool(x) for x in self.kept_unedited]}


@dataclass
class MethodRun:
    label: str
    edit_summary: dict
    edit_config: dict
    suites: dict[str, SuiteRun]
    metrics: dict[str, M.Estimate] = field(default_factory=dict)
    baseline: dict[str, M.Estimate] = field(default_factory=dict)  # the same rates on the unedited model's images

    def to_dict(self) -> dict:
        return {"label": self.label, "edit": self.edit_summary, "config": self.edit_config,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "unedited_metrics": {k: v.to_dict() for k, v in self.baseline.items()},
                "suites": {k: v.to_dict() for k, v in self.suites.items()}}


SCHEMA = 2


@dataclass
class Results:
    """Everything measured. ``paired``: per study, every method vs the unedited model and vs every other method
    (:mod:`~erasekit.evaluate.stats`, Holm-corrected per study); ``attacks``: per study, the concept-vector curve
    with its calibrated headline η, and the token search scored by judge and objective."""

    studies: dict[str, dict[str, MethodRun]]
    config: dict
    judge: dict
    timing: dict
    paired: dict[str, list[S.Comparison]] = field(default_factory=dict)
    attacks: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "config": self.config, "judge": self.judge, "timing": self.timing,
                "paired": {s: [c.to_dict() for c in cs] for s, cs in self.paired.items()},
                "attacks": {s: {name: _attack_dict(a) for name, a in atk.items()} for s, atk in self.attacks.items()},
                "studies": {s: {m: r.to_dict() for m, r in runs.items()} for s, runs in self.studies.items()}}


def _attack_dict(x):
    if isinstance(x, M.Estimate):
        return x.to_dict()
    if isinstance(x, dict):
        return {k: _attack_dict(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_attack_dict(v) for v in x]
    return x


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def _render(pipe, items: Sequence[SuiteItem], vectors: dict, settings: GenerationSettings) -> list[Image.Image]:
    """One batch; every item has the same guidance and either all or none are shifted."""
    gens = [torch.Generator(device="cpu").manual_seed(int(it.seed)) for it in items]
    guidance = items[0].guidance if items[0].guidance is not None else settings.guidance
    kw = {k: v for k, v in dict(num_inference_steps=settings.steps, guidance_scale=guidance, height=settings.height,
                                width=settings.width).items() if v is not None}
    if items[0].shift is None:
        cond = {"prompt": [it.prompt for it in items]}
    else:
        cond = shifted_conditioning(pipe, items, vectors)
    with generating_in_compute_dtype(pipe):  # float16 on a CPU runs in float32 (models/precision.py)
        return pipe(**cond, generator=gens, output_type="pil", **kw).images


@dataclass
class _Job:
    state: str  # UNEDITED or "<study>/<method>"
    digest: str
    path: Path
    spec: dict
    item: SuiteItem
    vectors: dict

    def group(self) -> tuple:
        return (self.state, str(self.item.guidance), self.item.shift is not None)


def _attack_suites(state, work: Path, tag: str, attacks: Sequence, pipe, target: Suite, edit=None) -> list[Suite]:
    """Build attack suites on the main process (``edit`` given: searched against that edit), store them
    under ``work``, load them in every process."""
    from safetensors.torch import load_file, save_file

    if not attacks:
        return []
    folder = work / "attacks" / tag
    if state.is_main_process:
        built = [a.build(pipe, target) if edit is None else a.build(pipe, target, edit) for a in attacks]
        suites = [s for b in built for s in (b if isinstance(b, list) else [b])]  # a curve attack gives one suite per strength
        folder.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(suites):
            (folder / f"{i}.json").write_text(json.dumps(s.to_dict(), indent=1))
            flat = {f"{name}/{k}": t.contiguous() for name, vec in s.vectors.items() for k, t in vec.items()}
            save_file(flat, str(folder / f"{i}.safetensors"))
        (folder / "count").write_text(str(len(suites)))
    state.wait_for_everyone()
    if state.is_main_process:
        return suites
    out = []
    for i in range(int((folder / "count").read_text())):
        d = json.loads((folder / f"{i}.json").read_text())
        vectors: dict = {}
        for key, t in load_file(str(folder / f"{i}.safetensors")).items():
            name, k = key.rsplit("/", 1)
            vectors.setdefault(name, {})[k] = t
        out.append(Suite(d["name"], d["kind"], [SuiteItem.from_dict(x) for x in d["items"]], d["source"], d["info"], vectors))
    return out


def evaluate(pipe, studies: Sequence[Study], judge: Judge, *, out_dir: str | os.PathLike, settings: GenerationSettings = GenerationSettings(),
             cache_dir: str | os.PathLike | None = None, seed: int = 0, n_boot: int = M.N_BOOT, progress: bool = True) -> Results | None:
    """Generate, judge and measure every study; returns :class:`Results` on the main process, ``None`` on the others.

    ``pipe`` must be unedited; each edit is applied for its images and reverted.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from ..edit import Edit

    if Edit.applied(pipe):
        raise EraseKitError(f"the pipeline already has an edit applied ({Edit.applied(pipe)[-1]}); evaluate needs the unedited pipeline")
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise EraseKitError(f"study names must be unique, got {names}")
    state = PartialState(cpu=pipe.unet.device.type == "cpu")
    work = Path(out_dir)
    cache = ImageCache(cache_dir)
    t_start = time.perf_counter()
    base_fp = pipeline_fingerprint(pipe)
    sched = scheduler_id(pipe)
    stored_dt, gen_dt = pipeline_compute_dtype(pipe)
    gen_dtype = str(gen_dt).replace("torch.", "")
    borrowed_dtype = gen_dtype if gen_dt != stored_dt else None

    # adversarial suites: built once on the main process, shared through files
    t0 = time.perf_counter()
    suites: dict[tuple[str, str], list[Suite]] = {}
    for study in studies:
        target = next((s for s in study.suites if s.kind == "target"), None)
        if study.attacks and target is None:
            raise EraseKitError(f"study {study.name!r} has attacks but no target suite to attack")
        once = [a for a in study.attacks if not a.per_method]
        per_method = [a for a in study.attacks if a.per_method]
        shared = _attack_suites(state, work, f"{study.name}/all", once, pipe, target)
        for label, edit in study.edits.items():
            own = _attack_suites(state, work, f"{study.name}/{label}", per_method, pipe, target, edit)
            suites[(study.name, label)] = list(study.suites) + shared + own
    attack_seconds = time.perf_counter() - t0

    # every image both models need, deduplicated by key
    fps = {UNEDITED: base_fp}
    edits = {}
    for study in studies:
        for label, edit in study.edits.items():
            fps[f"{study.name}/{label}"] = hashlib.sha256((base_fp + edit_digest(edit)).encode()).hexdigest()
            edits[f"{study.name}/{label}"] = edit
    jobs: dict[str, _Job] = {}
    runs: dict[str, dict[str, MethodRun]] = {}

    def job(state_name: str, item: SuiteItem, vectors: dict) -> Path:
        digest, spec = cache.key(fps[state_name], item, settings, sched, vectors, borrowed_dtype)
        path = cache.path(fps[state_name], digest)
        jobs.setdefault(digest, _Job(state_name, digest, path, spec, item, vectors))
        return path

    for study in studies:
        runs[study.name] = {}
        for label, edit in study.edits.items():
            sr = {}
            for s in suites[(study.name, label)]:
                if s.name in sr:
                    raise EraseKitError(f"study {study.name!r}: two suites are named {s.name!r}")
                sr[s.name] = SuiteRun(s, [job(UNEDITED, it, s.vectors) for it in s], [job(f"{study.name}/{label}", it, s.vectors) for it in s])
            runs[study.name][label] = MethodRun(label, edit.summary(), edit.config, sr)
    # Batches are fixed chunks of each (model state, guidance, shifted?) group's full job list, sorted by key:
    # an image's batch never depends on what is already cached or on the number of processes, so a
    # resumed or sharded run reproduces an uninterrupted single-process run bit for bit.
    order = {name: i for i, name in enumerate(fps)}
    groups: dict[tuple, list[_Job]] = {}
    for j in sorted(jobs.values(), key=lambda j: (order[j.state], j.group()[1:], j.digest)):
        groups.setdefault(j.group(), []).append(j)
    batches = [g[i: i + settings.batch_size] for g in groups.values() for i in range(0, len(g), settings.batch_size)]
    todo = [b for b in batches if not all(j.path.is_file() for j in b)]
    n_missing = sum(1 for b in todo for j in b if not j.path.is_file())
    state.wait_for_everyone()  # everyone has listed the missing batches before anyone writes one

    t0 = time.perf_counter()
    generated_here = 0
    with state.split_between_processes(todo) as mine:
        bar = tqdm(total=sum(len(b) for b in mine), desc=f"generating ({state.process_index + 1}/{state.num_processes})",
                   disable=not progress or not state.is_main_process)
        for st in dict.fromkeys(b[0].state for b in mine):
            edit = edits.get(st)
            if edit is not None:
                edit.apply(pipe)
            try:
                for batch in (b for b in mine if b[0].state == st):
                    vectors = {k: v for j in batch for k, v in j.vectors.items()}
                    for j, im in zip(batch, _render(pipe, [j.item for j in batch], vectors, settings), strict=True):
                        if not j.path.is_file():  # a batch cut short by an interruption keeps its finished images
                            cache.save(j.path, im, j.spec)
                            generated_here += 1
                    bar.update(len(batch))
            finally:
                if edit is not None:
                    edit.revert(pipe)
        bar.close()
    generation_seconds = time.perf_counter() - t0
    state.wait_for_everyone()
    # pixels depend on each process's intra-op thread count (module docstring): record them all
    threads_per_process = gather_object([torch.get_num_threads()]) if state.num_processes > 1 else [torch.get_num_threads()]
    if not state.is_main_process:
        return None

    t0 = time.perf_counter()
    judge_seconds = 0.0
    memo: dict[tuple, JudgeResult] = {}

    def judged(paths: list[Path], labels: list[str]) -> JudgeResult:
        key = (tuple(map(str, paths)), tuple(labels))
        if not labels:  # nothing to ask (e.g. general prompts of a real model: drift is pixel distance only)
            return JudgeResult([], np.zeros((len(paths), 0)), np.zeros((len(paths), 0), bool), judge.settings)
        if key not in memo:
            nonlocal judge_seconds
            images = [cache.load(p) for p in paths]
            t = time.perf_counter()
            memo[key] = judge.judge(images, labels)
            judge_seconds += time.perf_counter() - t
        return memo[key]

    paired: dict[str, list[S.Comparison]] = {}
    attack_results: dict[str, dict] = {}
    for study in studies:
        study_runs = runs[study.name]
        for run in study_runs.values():
            for s in run.suites.values():
                s.judged_unedited = judged(s.unedited, s.suite.labels)
                s.judged_edited = judged(s.edited, s.suite.labels)
                if s.suite.kind == "general":
                    s.pixel_distance = [M.pixel_distance(cache.load(a), cache.load(b)) for a, b in zip(s.unedited, s.edited, strict=True)]
                if study.attributes is not None and (s.suite.kind == "target" or "eta" in s.suite.info):
                    asked = [tuple(study.attributes(it.prompt)) for it in s.suite.items]
                    jr = judged(s.unedited, list(dict.fromkeys(c for a in asked for c in a)))
                    s.kept_unedited = np.array([all(jr.seen(c)[i] for c in a) for i, a in enumerate(asked)], dtype=bool)
            run.metrics = _metrics(run, "edited", seed, n_boot)
            run.baseline = _metrics(run, "unedited", seed, n_boot)
        attack_results[study.name] = _attack_summary(study_runs, seed, n_boot)
        paired[study.name] = _paired(study_runs, attack_results[study.name], seed, n_boot)
    metrics_seconds = time.perf_counter() - t0 - judge_seconds

    config = {
        "settings": settings.to_dict(), "generation_dtype": gen_dtype, "stored_dtype": str(stored_dt).replace("torch.", ""),
        "scheduler": sched, "model_fingerprint": base_fp, "seed": seed, "n_boot": n_boot, "level": M.LEVEL,
        "cache_dir": str(cache.root), "processes": state.num_processes, "torch_threads": threads_per_process,
        "versions": versions(),
        "pipeline": {"class": type(pipe).__name__, "name_or_path": getattr(pipe.config, "_name_or_path", None) if hasattr(pipe, "config") else None},
    }
    timing = {"images_total": len(jobs), "images_generated": n_missing, "images_generated_by_main": generated_here,
              "images_from_cache": len(jobs) - n_missing, "attack_seconds": attack_seconds, "generation_seconds": generation_seconds,
              "judge_seconds": judge_seconds, "read_and_metrics_seconds": metrics_seconds, "total_seconds": time.perf_counter() - t_start}
    return Results(runs, config, judge.settings, timing, paired, attack_results)


# ----------------------------------------------------------------------------- attacks and paired tests
def _curve_suites(run: MethodRun) -> dict[str, list[SuiteRun]]:
    """Concept-vector curves of one method: attack name -> its suites, by increasing η."""
    out: dict[str, list[SuiteRun]] = {}
    for s in run.suites.values():
        if s.suite.kind == "adversarial" and "eta" in s.suite.info:
            out.setdefault(s.suite.info.get("curve", s.suite.info["attack"]), []).append(s)
    return {k: sorted(v, key=lambda s: s.suite.info["eta"]) for k, v in out.items()}


def _target(run: MethodRun) -> SuiteRun | None:
    return next((s for s in run.suites.values() if s.suite.kind == "target"), None)


def headline_suite(run: MethodRun, attack: str, eta: float) -> SuiteRun | None:
    """The suite of ``attack`` at ``eta`` (η = 0: the unattacked target suite)."""
    if eta == 0:
        return _target(run)
    return next((s for s in _curve_suites(run).get(attack, []) if float(s.suite.info["eta"]) == float(eta)), None)


def _attack_summary(study_runs: dict[str, MethodRun], seed: int, n_boot: int) -> dict:
    """Per attack: the concept-vector curve (η = 0 is the target suite) beside the unedited model's concept rate and
    the share of its images that keep every prompted attribute, and the calibrated headline; the token search's
    judged success beside its own objective, with its budget. Adds ``ASR <attack> (headline η = …)`` to each method's metrics."""
    out: dict = {}
    kw = dict(seed=seed, n_boot=n_boot)
    first = next(iter(study_runs.values()))
    target = _target(first)
    for attack, curve in _curve_suites(first).items():
        points = ([target] if target is not None else []) + curve
        etas = ([0.0] if target is not None else []) + [float(s.suite.info["eta"]) for s in curve]
        kept = [None if s.kept_unedited is None else M.rate("unedited: prompted attributes kept", s.kept_unedited, **kw) for s in points]
        rows = []
        for eta, s, k in zip(etas, points, kept, strict=True):
            row = {"eta": eta, "suite": s.suite.name,
                   "unedited concept rate": M.rate("unedited concept rate", s.seen("unedited"), **kw),
                   "unedited attributes kept": k, "methods": {}}
            for label, run in study_runs.items():
                sr = headline_suite(run, attack, eta)
                if sr is not None:
                    row["methods"][label] = M.attack_success_rate(sr.seen("edited"), name=f"ASR {attack}@{eta:g}", budget=s.suite.info.get("budget", "η = 0"), **kw)
            rows.append(row)
        at_zero = kept[0].value if target is not None and kept[0] is not None else None
        eta, rule = headline_eta(etas[1:] if target is not None else etas, [k.value if k is not None else None for k in kept[-len(curve):]], at_zero)
        out[attack] = {"curve": rows, "headline_eta": eta, "rule": rule}
        for label, run in study_runs.items():
            sr = headline_suite(run, attack, eta)
            if sr is not None:
                name = f"ASR {attack} (headline η = {eta:g})"
                run.metrics[name] = M.attack_success_rate(sr.seen("edited"), name=name, budget=f"η = {eta:g}: {rule}", **kw)
                run.baseline[name] = M.attack_success_rate(sr.seen("unedited"), name=name, budget=f"η = {eta:g}: {rule}", **kw)
    for label, run in study_runs.items():
        for s in run.suites.values():
            info = s.suite.info
            if s.suite.kind != "adversarial" or "search" not in info:
                continue
            search = info["search"].values()
            entry = out.setdefault(info["attack"], {"budget": info["budget"], "objective": info.get("objective", ""), "methods": {}})
            entry["methods"][label] = {
                "judge ASR": M.attack_success_rate(s.seen("edited"), name=f"ASR {info['attack']}", budget=info["budget"], **kw),
                "unedited concept rate on the found prompts": M.rate("unedited concept rate", s.seen("unedited"), **kw),
                "objective": float(np.mean([f["score"] for f in search])) if search else float("nan"),
                "objective at start": float(np.mean([f["start_score"] for f in search])) if search else float("nan"),
                "prompts searched": len(info["search"])}
    return out


PAIRED_KINDS = {"target": ("erase rate", "any", False), "paraphrase": ("paraphrase erase rate", "any", False),
                "retain": ("retain rate", "all", True)}


def _decisions(run: MethodRun, attacks: dict) -> dict[str, tuple[SuiteRun, np.ndarray, np.ndarray]]:
    """metric -> (suite, edited successes, unedited successes) for the paired metrics of one method."""
    out = {}
    for name, s in run.suites.items():
        if s.suite.kind in PAIRED_KINDS:
            metric, mode, keep = PAIRED_KINDS[s.suite.kind]
            metric += "" if name == s.suite.kind else f" ({name})"
            e, u = s.seen("edited", mode), s.seen("unedited", mode)
            out[metric] = (s, e if keep else ~e, u if keep else ~u)
    for attack, a in attacks.items():
        if "headline_eta" in a:
            s = headline_suite(run, attack, a["headline_eta"])
            if s is not None:
                out[f"ASR {attack} (headline η = {a['headline_eta']:g})"] = (s, s.seen("edited"), s.seen("unedited"))
    return out


def _paired(study_runs: dict[str, MethodRun], attacks: dict, seed: int, n_boot: int) -> list[S.Comparison]:
    """Every method vs the unedited model and vs every other method, on every paired metric; Holm over the study's table."""
    labels = list(study_runs)
    dec = {label: _decisions(run, attacks) for label, run in study_runs.items()}
    comps: list[S.Comparison] = []
    kw = dict(n_boot=n_boot, seed=seed)
    for metric in dict.fromkeys(m for d in dec.values() for m in d):
        have = [lb for lb in labels if metric in dec[lb]]
        for lb in have:
            s, e, u = dec[lb][metric]
            comps.append(S.compare(metric, lb, UNEDITED, e, u, [it.prompt for it in s.suite.items], **kw))
        for i, a in enumerate(have):
            for b in have[i + 1:]:
                sa, ea, _ = dec[a][metric]
                sb, eb, _ = dec[b][metric]
                if sa.suite.items != sb.suite.items:  # not the same prompts and seeds: not a paired comparison
                    continue
                comps.append(S.compare(metric, a, b, ea, eb, [it.prompt for it in sa.suite.items], **kw))
    return S.correct(comps)


def _metrics(run: MethodRun, which: str, seed: int, n_boot: int) -> dict[str, M.Estimate]:
    """Headline metrics of one method on the edited (or, for reference, the unedited) images."""
    out: dict[str, M.Estimate] = {}
    erase_parts, retain_parts = [], []
    kw = dict(seed=seed, n_boot=n_boot)
    for name, s in run.suites.items():
        kind = s.suite.kind
        suffix = "" if name == kind else f" ({name})"
        if kind in ("target", "paraphrase"):
            seen = s.seen(which, "any")
            label = "erase rate" if kind == "target" else "paraphrase erase rate"
            out[label + suffix] = M.erase_rate(seen, name=label + suffix, **kw)
            erase_parts.append(~seen)
        elif kind == "retain":
            seen = s.seen(which, "all")
            out["retain rate" + suffix] = M.retain_rate(seen, name="retain rate" + suffix, **kw)
            retain_parts.append(seen)
        elif kind == "adversarial":
            label = f"ASR {name.split(':', 1)[-1]}"
            out[label] = M.attack_success_rate(s.seen(which, "any"), name=label, budget=s.suite.info.get("budget", ""), **kw)
        elif kind == "general" and which == "edited":
            if s.suite.labels:
                out["drift: judge agreement" + suffix] = M.judge_agreement(
                    _item_decisions(s, "edited"), _item_decisions(s, "unedited"), **kw)
            out["drift: pixel distance" + suffix] = M.mean("drift: pixel distance" + suffix, np.array(s.pixel_distance),
                                                           note="mean |edited − unedited| in [0, 1], same seeds", **kw)
    if erase_parts and retain_parts:
        out["harmonic mean"] = M.harmonic_mean(erase_parts + retain_parts, **kw)
    return out


def _item_decisions(s: SuiteRun, which: str) -> np.ndarray:
    """(items, max labels) decisions on each item's own concepts (padded with False)."""
    jr = s.judged_edited if which == "edited" else s.judged_unedited
    width = max((len(it.concepts) for it in s.suite.items), default=0)
    out = np.zeros((len(s.suite.items), width), dtype=bool)
    for i, it in enumerate(s.suite.items):
        for j, c in enumerate(it.concepts):
            out[i, j] = jr.seen(c)[i]
    return out


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"erasekit": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "numpy", "safetensors", "nudenet", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
