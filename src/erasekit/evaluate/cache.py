"""The evaluation's on-disk caches: images (the runner's *cache* stage) and fitted edits (:class:`EditStore`).

An image's key is the SHA-256 of (model state fingerprint, prompt, seed, concept shift, steps,
guidance, size, scheduler[, compute dtype][, the family's guidance keywords]); the PNG is written atomically under
``root/images/<model fp[:16]>/<key[:2]>/<key>.png`` with the key's JSON in its text chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, PngImagePlugin

from .._atomic import atomic_path, write_bytes_atomic
from ..models.precision import pipeline_compute_dtype
from .conditioning import vector_digest
from .suites import SuiteItem, default_cache_dir

if TYPE_CHECKING:
    from .render import GenerationSettings

# ----------------------------------------------------------------------------- fingerprints
# pipe -> (state key, fingerprint); dies with the pipe
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    from ..edit_format import tensor_digest

    meta = json.dumps({"method": edit.method, "config": edit.config}, sort_keys=True, default=str)
    return hashlib.sha256((meta + tensor_digest(edit._tensors())).encode()).hexdigest()


def edited_fingerprint(base: str, edit) -> str:
    """The fingerprint of the model state ``edit`` applied to the pipeline fingerprinted ``base``."""
    return hashlib.sha256((base + edit_digest(edit)).encode()).hexdigest()


def scheduler_id(pipe) -> str:
    # private keys such as _use_default_values are lists built from sets: their order differs between processes
    public = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    cfg = json.dumps(public, sort_keys=True, default=str)
    return f"{type(pipe.scheduler).__name__}:{hashlib.sha256(cfg.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class ModelIdentity:
    """What every image key of one unedited pipeline shares: its fingerprint, scheduler and dtypes."""

    fingerprint: str
    scheduler: str
    stored_dtype: torch.dtype
    generation_dtype: torch.dtype
    # How the family guides and encodes beyond ``guidance_scale`` (FLUX without a guidance embedding: true CFG against
    # "" at its T5 length), as JSON with the scale left out; None where it is plain ``guidance_scale``.
    call: str | None = None

    @classmethod
    def of(cls, pipe) -> ModelIdentity:
        stored, gen = pipeline_compute_dtype(pipe)
        return cls(pipeline_fingerprint(pipe), scheduler_id(pipe), stored, gen, generation_call(pipe))

    @property
    def borrowed_dtype(self) -> str | None:
        """The compute dtype when it is not the stored one (float16 on a CPU runs in float32), else ``None``."""
        return _dtype_name(self.generation_dtype) if self.generation_dtype != self.stored_dtype else None

    def to_config(self) -> dict:
        return {
            "generation_dtype": _dtype_name(self.generation_dtype),
            "stored_dtype": _dtype_name(self.stored_dtype),
            "scheduler": self.scheduler,
            "model_fingerprint": self.fingerprint,
            "generation_call": None if self.call is None else json.loads(self.call),
        }


def generation_call(pipe) -> str | None:
    """The family's generation keywords other than the scale (:meth:`~erasekit.models.families.Family.
    generation_kwargs` for one prompt), as sorted JSON; None when they are ``guidance_scale`` alone (the UNets,
    PixArt, Sana, SD3), so those images keep the keys they always had."""
    from ..models.families import UnsupportedPipelineError, identify

    try:
        kw = identify(pipe).generation_kwargs(pipe, 2.0, 1)
    except UnsupportedPipelineError:
        return None
    if set(kw) == {"guidance_scale"}:
        return None
    scale = {"guidance_scale", "true_cfg_scale"}
    return json.dumps({k: ("<guidance>" if k in scale else v) for k, v in kw.items()}, sort_keys=True)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- image cache
class ImageCache:
    """PNG files under ``root/images/<model fp[:16]>/<key[:2]>/<key>.png``; the key's JSON is in the PNG text."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(
        model_fp: str,
        item: SuiteItem,
        settings: GenerationSettings,
        scheduler: str,
        vectors: dict,
        compute_dtype: str | None = None,
        call: str | None = None,
    ) -> tuple[str, dict]:
        """``compute_dtype``: set when the pipeline computes in another dtype than it stores (float16 on a
        CPU runs in float32), so those images never mix with images rendered in the stored dtype; ``call``: the
        family's guidance keywords (:attr:`ModelIdentity.call`), set only where they are not ``guidance_scale``."""
        guidance = item.guidance if item.guidance is not None else settings.guidance
        spec = {
            "model": model_fp,
            "prompt": item.prompt,
            "seed": int(item.seed),
            "shift": None if item.shift is None else [vector_digest(vectors[item.shift[0]]), float(item.shift[1])],
            "steps": settings.steps,
            "guidance": guidance,
            "height": settings.height,
            "width": settings.width,
            "scheduler": scheduler,
        }
        if item.token is not None:  # only when set: every other image keeps the key it always had
            spec["token"] = vector_digest(vectors[item.token])
        if item.sampling is not None:
            spec["sampling"] = {"sampler": "noisy-ddim", "eta": item.sampling[0], "variance_scale": item.sampling[1]}
            if item.sampling[2] is not None:
                spec["steps"] = item.sampling[2]
        if compute_dtype is not None:
            spec["compute_dtype"] = compute_dtype
        if call is not None:
            spec["call"] = call
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


# ----------------------------------------------------------------------------- edit store
class EditStore:
    """Fitted edits saved under ``root/edits`` with their fit seconds in ``root/fits.json``, so a rerun refits
    nothing: a saved edit is reloaded when its recorded config (and templates) match the plan's options, and fitted
    again when an option changed.

    Keys are tuples of names (e.g. model, study, label): ``"a/b/c"`` in fits.json, ``a-b-c.safetensors`` on disk."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / "fits.json"
        self.fits: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def path(self, key: tuple[str, ...]) -> Path:
        return self.root / "edits" / ("-".join(key) + ".safetensors").replace(" ", "_").replace(",", "_")

    def fit_or_load(self, pipe, key: tuple[str, ...], plan, *, progress: bool = True):
        """The edit of ``plan`` (:func:`erasekit.api.plan_erase`) under ``key``: reloaded, or fitted and saved."""
        from ..api import fit
        from ..io import load_edit

        name, path = "/".join(key), self.path(key)
        if path.is_file() and name in self.fits:
            edit = load_edit(path, pipe, apply=False)
            if fitted_with(edit, plan.options):
                return edit
            print(f"note: {path.name} was fitted with other options; fitting it again", file=sys.stderr)
        t0 = time.perf_counter()
        edit = fit(pipe, plan, progress=progress)
        self.fits[name] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        edit.save(path)
        write_bytes_atomic(self.root / "fits.json", json.dumps(self.fits, indent=1).encode())
        return edit


def fitted_with(edit, options: dict) -> bool:
    """True when a saved edit's recorded config (and templates) match ``options``: a changed option refits."""

    def norm(v):  # tuples and lists compare alike
        return json.loads(json.dumps(v))

    for k, v in options.items():
        if k == "templates":
            if bool(edit.concepts.get("templates") not in (None, [], ["{}"])) != bool(v):
                return False
        elif norm(edit.config.get(k)) != norm(v):
            return False
    return True
