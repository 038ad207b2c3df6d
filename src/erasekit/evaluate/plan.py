"""The runner's *plan* stage, and the plan behind ``erasekit evaluate`` / ``erasekit bench``.

* :class:`Plan` and :func:`make_study` turn "these edits, these suite kinds, these attacks" into
  :class:`Study` objects: on tinyworld the suites come from the world's vocabulary, on other models
  from the edit's :class:`~erasekit.ConceptSet` (and prompt files);
* :func:`study_suites` builds every study's attack suites (once, on the main process) and
  :func:`plan_jobs` lists every image both models need, deduplicated by cache key, in fixed batches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..concepts import ConceptSet
from ..errors import ConceptError, EraseKitError
from .attacks import (
    ConceptVectorAttack,
    TokenSearchAttack,
    concept_set_pairs,
    parse_etas,
    tinyworld_pairs,
    tinyworld_prompt_attributes,
)
from .cache import ImageCache, ModelIdentity, edited_fingerprint
from .results import UNEDITED, MethodRun, SuiteRun
from .suites import KINDS, Suite, SuiteItem, suites_from_concepts, tinyworld_suites


@dataclass
class Study:
    """One erased concept (set): its suites, the edits to compare, and the attacks to run on them."""

    name: str
    suites: list[Suite]
    edits: dict  # method label -> Edit
    attacks: Sequence = ()
    # prompt -> the concepts it asks for (calibrates the concept-vector attack)
    attributes: Callable[[str], tuple[str, ...]] | None = None


DEFAULT_KINDS = ("target", "paraphrase", "adversarial", "retain", "general")
ATTACKS = ("ring-a-bell", "token-search")


@dataclass(frozen=True)
class Plan:
    """What to evaluate for every study: suite kinds, items per suite, attacks and their budgets."""

    kinds: tuple[str, ...] = DEFAULT_KINDS
    n: int = 16  # tinyworld: items per suite; other models: seeds per prompt is `seeds`
    seeds: int = 2
    seed: int = 0
    attacks: tuple[str, ...] = ATTACKS
    etas: tuple[float, ...] = (1.0, 2.0, 3.0)  # ring-a-bell curve; the headline η is calibrated on the unedited model
    search_steps: int = 12
    search_candidates: int = 32
    search_prompts: int | None = 8

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConceptError(f"unknown suite kind(s) {bad or list(self.kinds)}; choose from {', '.join(KINDS)}")
        object.__setattr__(self, "etas", parse_etas(self.etas))
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise ConceptError(f"unknown attack(s) {bad}; choose from {', '.join(ATTACKS)}")


def parse_kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def make_study(
    name: str, concepts: ConceptSet, edits: dict, plan: Plan, *, tinyworld: bool, extra: Sequence[Suite] = ()
) -> Study:
    """Suites and attacks for erasing ``concepts`` (one study), compared over ``edits`` (label -> Edit)."""
    built = [k for k in plan.kinds if k != "adversarial"]
    if tinyworld:
        suites = tinyworld_suites(concepts.erase, plan.n, seed=plan.seed, kinds=built)
        pairs = [tinyworld_pairs(c, 32, plan.seed) for c in concepts.erase]
        with_c, without = [p for w, _ in pairs for p in w], [p for _, wo in pairs for p in wo]
    else:
        seeds = range(plan.seed, plan.seed + plan.seeds)
        suites = [s for s in suites_from_concepts(concepts, seeds=seeds) if s.kind in built]
        with_c, without = concept_set_pairs(concepts)
    suites += list(extra)
    attacks: list[ConceptVectorAttack | TokenSearchAttack] = []
    if "adversarial" in plan.kinds:
        if not any(s.kind == "target" for s in suites):
            raise ConceptError("adversarial suites attack the target prompts: add 'target' to the suite kinds")
        for a in plan.attacks:
            if a == "ring-a-bell":
                attacks.append(ConceptVectorAttack(with_c, without, etas=plan.etas))
            else:
                attacks.append(
                    TokenSearchAttack(
                        steps=plan.search_steps,
                        candidates=plan.search_candidates,
                        seed=plan.seed,
                        forbidden=concepts.erase,
                        max_prompts=plan.search_prompts,
                    )
                )
    return Study(name, suites, edits, attacks, attributes=tinyworld_prompt_attributes if tinyworld else None)


# ----------------------------------------------------------------------------- the runner's plan stage
def study_suites(state, studies: Sequence[Study], pipe, work: Path) -> dict[tuple[str, str], list[Suite]]:
    """(study, method label) -> the study's suites followed by its attack suites: those of attacks that do not
    depend on the edit built once per study, the others once per method (searched against that edit)."""
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
    return suites


def _attack_suites(
    state, work: Path, tag: str, attacks: Sequence, pipe, target: Suite | None, edit=None
) -> list[Suite]:
    """Build attack suites on the main process (``edit`` given: searched against that edit), store them
    under ``work``, load them in every process."""
    from safetensors.torch import load_file, save_file

    if not attacks:
        return []
    folder = work / "attacks" / tag
    if state.is_main_process:
        built = [a.build(pipe, target) if edit is None else a.build(pipe, target, edit) for a in attacks]
        suites = [s for b in built for s in (b if isinstance(b, list) else [b])]  # a curve gives one suite per strength
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
        out.append(
            Suite(d["name"], d["kind"], [SuiteItem.from_dict(x) for x in d["items"]], d["source"], d["info"], vectors)
        )
    return out


@dataclass
class Job:
    """One image: the model state that draws it (``UNEDITED`` or ``"<study>/<method>"``) and its cache entry."""

    state: str
    digest: str
    path: Path
    spec: dict
    item: SuiteItem
    vectors: dict

    def group(self) -> tuple:
        return (self.state, str(self.item.guidance), self.item.shift is not None)


@dataclass
class Jobs:
    """Every image both models need (deduplicated by key), in batches, and the runs whose suites point at them."""

    runs: dict[str, dict[str, MethodRun]]  # study -> method label -> run
    jobs: dict[str, Job]  # cache key -> job
    batches: list[list[Job]]
    edits: dict  # model state -> the Edit that makes it

    def missing(self) -> tuple[list[list[Job]], int]:
        """The batches with an image not in the cache yet, and how many images that is."""
        todo = [b for b in self.batches if not all(j.path.is_file() for j in b)]
        return todo, sum(1 for b in todo for j in b if not j.path.is_file())


def plan_jobs(
    studies: Sequence[Study],
    suites: dict[tuple[str, str], list[Suite]],
    model: ModelIdentity,
    cache: ImageCache,
    settings,
) -> Jobs:
    """List every image of every (study, method)'s suites under the unedited and the edited model."""
    fps = {UNEDITED: model.fingerprint}
    edits = {}
    for study in studies:
        for label, edit in study.edits.items():
            fps[f"{study.name}/{label}"] = edited_fingerprint(model.fingerprint, edit)
            edits[f"{study.name}/{label}"] = edit
    jobs: dict[str, Job] = {}

    def job(state_name: str, item: SuiteItem, vectors: dict) -> Path:
        digest, spec = cache.key(fps[state_name], item, settings, model.scheduler, vectors, model.borrowed_dtype)
        path = cache.path(fps[state_name], digest)
        jobs.setdefault(digest, Job(state_name, digest, path, spec, item, vectors))
        return path

    runs: dict[str, dict[str, MethodRun]] = {}
    for study in studies:
        runs[study.name] = {}
        for label, edit in study.edits.items():
            sr = {}
            for s in suites[(study.name, label)]:
                if s.name in sr:
                    raise EraseKitError(f"study {study.name!r}: two suites are named {s.name!r}")
                sr[s.name] = SuiteRun(
                    s,
                    [job(UNEDITED, it, s.vectors) for it in s],
                    [job(f"{study.name}/{label}", it, s.vectors) for it in s],
                )
            runs[study.name][label] = MethodRun(label, edit.summary(), edit.config, sr)
    return Jobs(runs, jobs, _batches(jobs, list(fps), settings.batch_size), edits)


def _batches(jobs: dict[str, Job], states: list[str], size: int) -> list[list[Job]]:
    """Batches are fixed chunks of each (model state, guidance, shifted?) group's full job list, sorted by key:
    an image's batch never depends on what is already cached or on the number of processes, so a
    resumed or sharded run reproduces an uninterrupted single-process run bit for bit."""
    order = {name: i for i, name in enumerate(states)}
    groups: dict[tuple, list[Job]] = {}
    for j in sorted(jobs.values(), key=lambda j: (order[j.state], j.group()[1:], j.digest)):
        groups.setdefault(j.group(), []).append(j)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
