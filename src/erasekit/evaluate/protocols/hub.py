"""HUB — the Holistic Unlearning Benchmark (Moon, Lee, Park, Kim, ICCV 2025; github.com/ml-postech/HUB), as PURE
scores it (an H-mean per category, :mod:`erasekit.evaluate.hmean`).

Prompt files are HUB's own, read as they are (:mod:`.formats`), from ``hub_dir`` (HUB's ``prompts/`` folder, plain
or gzipped) or ``../shared/data/prompts/hub`` beside the project; each is pinned by the upstream git blob id of its
content (:mod:`.hub_files`). Per erased concept ``c`` of category ``K``:

* ``c/target`` (``target_image/``): target proportion, role ``target``;
* ``c/attack`` (``attack_robustness/``): attack robustness, role ``attack`` — absent for Claude Monet, whose file
  upstream is a Git LFS pointer;
* ``c/retain/o`` for every other concept ``o`` of ``K`` (their target prompts): within-category retention;
* ``general`` (MS-COCO val2014 30k captions): generation quality, role ``quality``;
* on request (``sets=``): ``c/multilingual`` (five translations), ``c/selective`` (selective alignment),
  ``c/pinpoint`` ("a photo of <noun>", HUB's top 100 nouns, 10 images each).

Generation as HUB's ``main.py`` does it (SD v1.5, diffusers' defaults: 50 steps, guidance 7.5, 512 px), except the
seeds: HUB seeds once globally and draws every image from that stream, so one image cannot be regenerated alone;
here image ``j`` of prompt ``i`` has seed ``seed + i * images_per_prompt + j``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ...errors import ProtocolError
from .base import JudgeSpec, PromptSource, Protocol, SuiteSpec, find_file, register_protocol, shared_prompts_dir
from .hub_files import CATEGORY, GIT_BLOB, HUB_COMMIT

SETS = ("target", "attack", "retain", "general", "multilingual", "selective", "pinpoint")
DEFAULT_SETS = ("target", "attack", "retain", "general")  # what the H-mean needs
NO_ATTACK_FILE = ("Claude Monet",)  # upstream attack_robustness/Claude Monet.csv is a Git LFS pointer
CATEGORIES = ("style", "IP", "celebrity", "NSFW")

# PURE's Table 1 (saemi410/PURE index.html, §04): H-mean on HUB, SD 1.5.
PURE_TABLE = {
    "source": "saemi410/PURE index.html, Table 1 (H-mean on HUB, SD 1.5; higher is better)",
    "columns": ["style", "IP", "celebrity", "NSFW", "average"],
    "SD (no edit)": [0.462, 0.331, 0.469, 0.482, 0.436],
    "ESD": [0.599, 0.551, 0.640, 0.312, 0.526],
    "MACE": [0.614, 0.578, 0.584, 0.296, 0.518],
    "Receler": [0.525, 0.377, 0.610, 0.518, 0.508],
    "UCE": [0.328, 0.654, 0.657, 0.470, 0.527],
    "CURE": [0.565, 0.571, 0.572, 0.465, 0.543],
    "PURE": [0.655, 0.683, 0.693, 0.528, 0.640],
}

JUDGES = (
    JudgeSpec(
        "vlm",
        {
            "model": "OpenGVLab/InternVL2_5-8B-MPO",
            "reference_images": 3,
            "references": "hi-sammy/HUB_reference_images (three images of the unedited model per concept)",
            "answers": ["yes", "no", "idk"],
            "decoding": "greedy",
            "counts_as_shown": "yes",
        },
        categories=("style", "IP"),
    ),
    JudgeSpec("giphy-celebrity-detector", {"model": "GIPHY celebrity detector"}, categories=("celebrity",)),
    JudgeSpec("q16", {"model": "Q16 (CLIP ViT-L/14 prompts)"}, categories=("NSFW",)),
    JudgeSpec("laion-aesthetic", {"weights": "safetensors given by the user", "role": "quality"}),
)


def find_hub_dir(hub_dir: str | os.PathLike | None = None) -> str:
    """HUB's ``prompts/`` folder: ``hub_dir`` when given, else ``$ERASEKIT_HUB_DIR``, else
    ``../shared/data/prompts/hub`` beside the project; refused when none exists."""
    from pathlib import Path

    given = hub_dir if hub_dir is not None else os.environ.get("ERASEKIT_HUB_DIR")
    if given is not None:
        p = Path(given).expanduser()
        if not p.is_dir():
            raise ProtocolError(f"HUB prompt folder {str(p)!r} does not exist; give HUB's prompts/ folder (--hub-dir)")
        return str(p)
    shared = shared_prompts_dir()
    if shared is not None and (shared / "hub").is_dir():
        return str(shared / "hub")
    raise ProtocolError(
        "HUB's prompt files were not found: clone github.com/ml-postech/HUB and give its prompts/ folder "
        "(--hub-dir PATH, or $ERASEKIT_HUB_DIR)"
    )


def hub_source(root: str, relpath: str, fmt: str, concept: str | None, limit: int | None, **kw) -> PromptSource:
    """A pinned :class:`PromptSource` for ``relpath`` under HUB's ``prompts/`` (``root``), plain or gzipped."""
    from pathlib import Path

    if relpath not in GIT_BLOB:
        raise ProtocolError(f"HUB has no prompt file {relpath!r}")
    found = find_file(Path(root), relpath)
    return PromptSource(
        name=f"hub/{relpath}",
        format=fmt,
        path=str(found if found is not None else Path(root) / relpath),
        git_blob=GIT_BLOB[relpath],
        concept=concept,
        category=CATEGORY.get(concept or "", "general"),
        limit=limit,
        **kw,
    )


def _concepts(concepts: Sequence[str] | str | None) -> list[str]:
    if concepts is None:
        return list(CATEGORY)
    if isinstance(concepts, str):
        concepts = [c.strip() for c in concepts.split(",") if c.strip()]
    by_key = {c.casefold(): c for c in CATEGORY}
    out = []
    for c in concepts:
        if c.casefold() not in by_key:
            raise ProtocolError(f"HUB has no concept {c!r}; choose among {', '.join(CATEGORY)}")
        out.append(by_key[c.casefold()])
    if not out:
        raise ProtocolError("no HUB concept given")
    return out


@register_protocol("hub", "HUB's prompt sets for 33 concepts, scored as PURE scores them (H-mean per category)")
def build(
    hub_dir: str | os.PathLike | None = None,
    concepts: Sequence[str] | str | None = None,
    sets: Sequence[str] = DEFAULT_SETS,
    limit: int | None = 100,
    retain_limit: int | None = 20,
    general_limit: int | None = 1000,
    images_per_prompt: int = 1,
    seed: int = 0,
    steps: int = 50,
    guidance: float = 7.5,
    size: int = 512,
    quality_rule: str = "ratio",
) -> Protocol:
    """HUB for ``concepts`` (default: all 33). ``limit``: target / attack / multilingual / selective prompts per
    concept (HUB: all, ~10,000 target prompts); ``retain_limit``: target prompts of each other in-category concept;
    ``general_limit``: COCO captions (HUB: 30,000)."""
    from ..hmean import QUALITY_RULES

    bad = [s for s in sets if s not in SETS]
    if bad or not sets:
        raise ProtocolError(f"HUB sets must be among {', '.join(SETS)}; got {list(sets)}")
    if quality_rule not in QUALITY_RULES:
        raise ProtocolError(f"quality_rule must be one of {', '.join(QUALITY_RULES)}, got {quality_rule!r}")
    root = find_hub_dir(hub_dir)
    chosen = _concepts(concepts)
    notes = [
        f"prompts: HUB commit {HUB_COMMIT}; each file pinned by the git blob id of its content",
        "seeds: per image (seed + i * images_per_prompt + j); HUB seeds once globally (default 1), so its images "
        "depend on their order",
        "H-mean: PURE's four metrics per category, each higher-is-better (erasekit.evaluate.hmean); the quality "
        f"normalisation is not published: {quality_rule!r} here",
    ]
    suites: list[SuiteSpec] = []
    for c in chosen:
        cat = CATEGORY[c]
        if "target" in sets:
            src = hub_source(root, f"target_image/{c}.csv", "lines", c, limit)
            suites.append(
                SuiteSpec(
                    f"{c}/target", "target", src, role="target", images_per_prompt=images_per_prompt, base_seed=seed
                )
            )
        if "attack" in sets:
            if c in NO_ATTACK_FILE:
                notes.append(f"{c}: no attack set (HUB's attack_robustness file is a Git LFS pointer upstream)")
            else:
                src = hub_source(root, f"attack_robustness/{c}.csv", "lines", c, limit)
                suites.append(
                    SuiteSpec(
                        f"{c}/attack",
                        "adversarial",
                        src,
                        role="attack",
                        images_per_prompt=images_per_prompt,
                        base_seed=seed,
                    )
                )
        if "retain" in sets:
            for o in (o for o, k in CATEGORY.items() if k == cat and o != c):
                src = hub_source(root, f"target_image/{o}.csv", "lines", o, retain_limit)
                suites.append(
                    SuiteSpec(
                        f"{c}/retain/{o}",
                        "retain",
                        src,
                        role="retention",
                        images_per_prompt=images_per_prompt,
                        base_seed=seed,
                    )
                )
        if "multilingual" in sets:
            src = hub_source(root, f"multilingual_robustness/{c}.csv", "hub-multilingual", c, limit)
            suites.append(SuiteSpec(f"{c}/multilingual", "paraphrase", src, role="multilingual", base_seed=seed))
        if "selective" in sets:
            src = hub_source(root, f"selective_alignment/{c}.json", "hub-selective", c, limit)
            suites.append(SuiteSpec(f"{c}/selective", "target", src, role="selective_alignment", base_seed=seed))
        if "pinpoint" in sets:
            src = hub_source(root, f"pinpoint_ness/{c}.csv", "hub-pinpoint", None, 100, templates=("a photo of {}",))
            suites.append(
                SuiteSpec(f"{c}/pinpoint", "retain", src, role="pinpoint", images_per_prompt=10, base_seed=seed)
            )
    if "general" in sets:
        src = hub_source(root, "MS-COCO_val2014_30k_captions.csv", "coco", None, general_limit)
        suites.append(
            SuiteSpec("general", "general", src, role="quality", images_per_prompt=images_per_prompt, base_seed=seed)
        )
    return Protocol(
        name="hub",
        summary="HUB (ICCV 2025) prompt sets, scored with PURE's H-mean per category (style, IP, celebrity, NSFW)",
        suites=tuple(suites),
        judges=JUDGES,
        metrics=("target_proportion", "retention", "attack_success", "quality", "hmean"),
        sampler="pipeline default (PNDM for SD 1.5)",
        steps=steps,
        guidance=guidance,
        height=size,
        width=size,
        model="stable-diffusion-v1-5 (HUB's and PURE's model)",
        options={
            "concepts": chosen,
            "sets": list(sets),
            "limit": limit,
            "retain_limit": retain_limit,
            "general_limit": general_limit,
            "images_per_prompt": images_per_prompt,
            "seed": seed,
            "quality_rule": quality_rule,
            "categories": {c: CATEGORY[c] for c in chosen},
        },
        reference={"pure_table1": PURE_TABLE},
        notes=tuple(notes),
    )
