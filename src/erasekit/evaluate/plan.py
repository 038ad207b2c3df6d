"""The runner's *plan* stage, and the plan behind ``erasekit evaluate`` / ``erasekit bench``.

* :class:`Plan` and :func:`make_study` turn "these edits, these suite kinds, these attacks" into
  :class:`Study` objects: on tinyworld the suites come from the world's vocabulary, on other models
  from the edit's :class:`~erasekit.ConceptSet` (and prompt files);
* :func:`study_suites` builds every study's attack suites (once, on the main process) and
  :func:`plan_jobs` lists every image both models need, deduplicated by cache key, in fixed batches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..concepts import ConceptSet
from ..errors import ConceptError, EraseKitError
from .attacks import (
    Attack,
    AttackConfig,
    AttackContext,
    check_budget_name,
    concept_set_pairs,
    get_attack,
    make_attack_config,
    parse_attacks,
    parse_etas,
    tinyworld_pairs,
    tinyworld_prompt_attributes,
)
from .cache import ImageCache, ModelIdentity, edit_digest, edited_fingerprint
from .results import UNEDITED, MethodRun, SuiteRun
from .suites import KINDS, Suite, SuiteItem, suites_from_concepts, tinyworld_suites


@dataclass(frozen=True)
class AttackInputs:
    """What a study hands its attacks besides the target suite: the erased concepts, prompts with and without them
    (Ring-A-Bell's pairs), the concept kind, and whether the model is tinyworld."""

    concepts: tuple[str, ...] = ()
    pairs: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    kind: str = "object"
    tinyworld: bool = False


@dataclass
class Study:
    """One erased concept (set): its suites, the edits to compare, and the attacks to run on them."""

    name: str
    suites: list[Suite]
    edits: dict  # method label -> Edit
    attacks: Sequence[Attack] = ()
    # prompt -> the concepts it asks for (calibrates the concept-vector attack)
    attributes: Callable[[str], tuple[str, ...]] | None = None
    inputs: AttackInputs = field(default_factory=AttackInputs)


DEFAULT_KINDS = ("target", "paraphrase", "adversarial", "retain", "general")
ATTACKS = ("ring-a-bell", "token-search")


@dataclass(frozen=True)
class Plan:
    """What to evaluate for every study: suite kinds, items per suite, attacks and their budgets.

    ``attacks``: registered attack names (``erasekit attacks``); ``budget``: 'default' (small, CPU) or 'paper' (the
    papers' budgets); ``attack_options``: per attack, options on top of the budget. ``etas`` and ``search_*`` are
    the Ring-A-Bell curve and the token search's budget (the ``--eta`` / ``--search-steps`` flags). Every attack's
    config is built (and so validated) here, before any model is loaded.
    """

    kinds: tuple[str, ...] = DEFAULT_KINDS
    n: int = 16  # tinyworld: items per suite; other models: seeds per prompt is `seeds`
    seeds: int = 2
    seed: int = 0
    attacks: tuple[str, ...] = ATTACKS
    etas: tuple[float, ...] = (1.0, 2.0, 3.0)  # ring-a-bell curve; the headline η is calibrated on the unedited model
    search_steps: int = 12
    search_candidates: int = 32
    search_prompts: int | None = 8
    budget: str = "default"
    attack_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConceptError(f"unknown suite kind(s) {bad or list(self.kinds)}; choose from {', '.join(KINDS)}")
        object.__setattr__(self, "etas", parse_etas(self.etas))
        object.__setattr__(self, "attacks", parse_attacks(self.attacks))
        check_budget_name(self.budget)
        self.attack_configs()  # every budget checked now: a bad one is one line before anything slow

    def attack_configs(self) -> dict[str, AttackConfig]:
        """Each attack's full config: its budget preset, the plan's shortcuts (η, search budget, seed), then the
        user's options."""
        out = {}
        for name in self.attacks:
            opts: dict[str, Any] = {"seed": self.seed}
            if name == "ring-a-bell":
                opts["etas"] = tuple(self.etas)
            elif name == "token-search":
                opts.update(steps=self.search_steps, candidates=self.search_candidates, max_prompts=self.search_prompts)
            opts.update(self.attack_options.get(name, {}))
            out[name] = make_attack_config(name, self.budget, **opts)
        return out


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
    attacks: list[Attack] = []
    if "adversarial" in plan.kinds:
        if not any(s.kind == "target" for s in suites):
            raise ConceptError("adversarial suites attack the target prompts: add 'target' to the suite kinds")
        attacks = [get_attack(a)(config=cfg) for a, cfg in plan.attack_configs().items()]
    inputs = AttackInputs(tuple(concepts.erase), (tuple(with_c), tuple(without)), concepts.kind, tinyworld)
    return Study(
        name, suites, edits, attacks, attributes=tinyworld_prompt_attributes if tinyworld else None, inputs=inputs
    )


# ----------------------------------------------------------------------------- the runner's plan stage
def study_suites(
    state,
    studies: Sequence[Study],
    pipe,
    work: Path,
    *,
    judge=None,
    settings=None,
    progress: bool = True,
) -> dict[tuple[str, str], list[Suite]]:
    """(study, method label) -> the study's suites followed by its attack suites: those of attacks that do not
    depend on the edit built once per study, the others once per method (searched against that edit)."""
    suites: dict[tuple[str, str], list[Suite]] = {}
    for study in studies:
        target = next((s for s in study.suites if s.kind == "target"), None)
        if study.attacks and target is None:
            raise EraseKitError(f"study {study.name!r} has attacks but no target suite to attack")
        once = [a for a in study.attacks if not a.per_method]
        per_method = [a for a in study.attacks if a.per_method]
        kw = {"judge": judge, "settings": settings, "progress": progress}
        shared = _attack_suites(state, work, f"{study.name}/all", once, pipe, target, study.inputs, None, **kw)
        for label, edit in study.edits.items():
            own = _attack_suites(
                state, work, f"{study.name}/{label}", per_method, pipe, target, study.inputs, edit, **kw
            )
            suites[(study.name, label)] = list(study.suites) + shared + own
    return suites


def _attack_key(attack: Attack, pipe, target: Suite, inputs: AttackInputs, edit, judge, settings) -> str:
    """What an attack's suites depend on: the attack and its config, the target items, the study's inputs, the
    model (and edit), and, for attacks that sample or judge while they search, the sampling settings and judge."""
    from .cache import pipeline_fingerprint

    key = {
        "attack": attack.name,
        "label": getattr(attack, "label", attack.name),
        "config": attack.config.to_dict(),
        "own inputs": [list(getattr(attack, a, ())) for a in ("with_concept", "without_concept", "forbidden")],
        "target": [it.to_dict() for it in target],
        "inputs": [list(inputs.concepts), [list(p) for p in inputs.pairs or ()], inputs.kind, inputs.tinyworld],
        "model": pipeline_fingerprint(pipe),
        "edit": None if edit is None else edit_digest(edit),
        "settings": None if settings is None else settings.to_dict(),
        "judge": judge_identity(judge.settings) if judge is not None and attack.uses_judge else None,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def judge_identity(settings):
    """A judge's settings without where its weights sit, in every part whose ``weights_sha256`` pins what they are:
    a moved checkout or another install prefix (the bundled judge lives inside the package) must not make a stored
    attack look stale and be searched again."""
    if isinstance(settings, dict):
        pinned = "weights_sha256" in settings
        return {
            k: judge_identity(v)
            for k, v in settings.items()
            if not (pinned and k in ("weights", "path", "model") and isinstance(v, str))
        }
    if isinstance(settings, (list, tuple)):
        return [judge_identity(v) for v in settings]
    return settings


def _attack_suites(
    state,
    work: Path,
    tag: str,
    attacks: Sequence[Attack],
    pipe,
    target: Suite | None,
    inputs: AttackInputs,
    edit=None,
    *,
    judge=None,
    settings=None,
    progress: bool = True,
) -> list[Suite]:
    """Build attack suites on the main process (``edit`` given: searched against that edit), store them under
    ``work/attacks/<tag>/<attack>-<key>``, load them in every process. A stored result with the same key (attack,
    config, target, model, edit, …) is loaded instead of searched again, so an interrupted run resumes."""
    if not attacks or target is None:
        return []
    out: list[Suite] = []
    for attack in attacks:
        key = _attack_key(attack, pipe, target, inputs, edit, judge, settings)
        folder = work / "attacks" / tag / f"{attack.name}-{key[:16]}"
        if state.is_main_process and not (folder / "count").is_file():
            ctx = AttackContext(
                pipe,
                target,
                edit,
                concepts=inputs.concepts,
                pairs=inputs.pairs,
                kind=inputs.kind,
                tinyworld=inputs.tinyworld,
                settings=settings,
                judge=judge,
                progress=progress,
            )
            _store(folder, attack.suites(ctx))
        state.wait_for_everyone()
        out += _load(folder)
    return out


def _store(folder: Path, suites: Sequence[Suite]) -> None:
    """Each suite as JSON + its vectors as safetensors, atomically; ``count`` last (it marks the folder complete)."""
    from safetensors.torch import save

    from .._atomic import write_bytes_atomic

    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(suites):
        write_bytes_atomic(folder / f"{i}.json", json.dumps(s.to_dict(), indent=1).encode())
        flat = {f"{name}/{k}": t.contiguous() for name, vec in s.vectors.items() for k, t in vec.items()}
        write_bytes_atomic(folder / f"{i}.safetensors", save(flat))
    write_bytes_atomic(folder / "count", str(len(suites)).encode())


def _load(folder: Path) -> list[Suite]:
    from safetensors.torch import load_file

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
        """Items rendered in one pipeline call share these: model state, guidance, how they are conditioned, and
        their sampler."""
        it = self.item
        return (self.state, str(it.guidance), it.shift is not None, it.token is not None, str(it.sampling))


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
        digest, spec = cache.key(
            fps[state_name], item, settings, model.scheduler, vectors, model.borrowed_dtype, model.call
        )
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
