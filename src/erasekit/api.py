"""The one way an edit is made: defaults resolved, options split, concepts built, config checked, fitted, recorded.

:func:`erasekit.erase`, ``erasekit erase``, ``erasekit demo``, ``erasekit bench`` and
``benchmarks/claims.py`` all come through here, so the Python API and the command fit the same
edit from the same options. Two steps, so that a command checks everything before the (slow)
model load:

* :func:`plan_erase` — no pipeline needed (a ``--model`` name will do): the per-model defaults of
  :mod:`erasekit.defaults` under the user's options, the :class:`ConceptSet`, the validated config;
* :func:`fit` — the fit on the pipeline (in its compute dtype), the defaults record stored in
  ``edit.stats['defaults']``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .concepts import ConceptSet
from .defaults import resolve, split_concept_options
from .edit import Edit
from .errors import ConceptError
from .methods import get_method, make_config
from .methods.base import MethodConfig, fit_by_group

__all__ = ["ErasePlan", "erase", "fit", "plan_erase"]


@dataclass(frozen=True)
class ErasePlan:
    """What will be fitted: the method, the concepts, the checked config and the record of the defaults used."""

    method: str
    concepts: ConceptSet
    config: MethodConfig
    # erasekit.defaults.resolve's record: source, model row, each default applied with its reason, the user's options
    record: dict
    options: dict[str, Any]  # the options set: defaults applied and the user's, templates included (caches compare it)


def plan_erase(
    model,
    method: str = "uce",
    concepts: ConceptSet | Sequence[str] | str | None = None,
    *,
    preserve: Sequence[str] = (),
    kind: str = "style",
    guide: str | Sequence[str] | None = None,
    templates: bool | Sequence[str] | None = None,
    defaults: str | None = "erasekit",
    **config,
) -> ErasePlan:
    """The :class:`ErasePlan` of an :func:`erase` call; ``model`` is the pipeline or its ``--model`` name.

    Raises before anything slow: unknown method, an option the method does not have, a bad value.
    """
    m = get_method(method)
    user = dict(config)
    if templates is not None:
        user["templates"] = templates if isinstance(templates, bool) else tuple(templates)
    valid = {f.name for f in dataclasses.fields(m.config_class)}
    resolved, record = resolve(model, m.name, user, source=defaults, valid=valid)
    concept_opts, options = split_concept_options(resolved)
    cs = _concept_set(concepts, preserve, kind, guide, concept_opts, user_templates=templates is not None)
    return ErasePlan(m.name, cs, make_config(m.name, **options), record, resolved)


def _concept_set(concepts, preserve, kind, guide, concept_opts: dict, user_templates: bool) -> ConceptSet:
    if isinstance(concepts, ConceptSet):
        if tuple(preserve) or kind != "style" or guide is not None:
            raise ConceptError(
                "concepts is a ConceptSet: give preserve / kind / guide inside it (dataclasses.replace("
                "cs, preserve=...)), not as separate arguments, which would be ignored"
            )
        # the model's default templates fill a ConceptSet that has none; the caller's templates= always wins
        if "templates" in concept_opts and (user_templates or concepts.templates is False):
            return dataclasses.replace(concepts, templates=concept_opts["templates"])
        return concepts
    if concepts is None:
        raise ConceptError("no concept to erase: pass concepts=['...'] or a ConceptSet")
    erase_list = (concepts,) if isinstance(concepts, str) else tuple(concepts)
    guide_arg = guide if guide is None or isinstance(guide, str) else tuple(guide)
    return ConceptSet(
        erase=erase_list,
        kind=kind,
        guide=guide_arg,
        preserve=tuple(preserve),
        templates=concept_opts.get("templates", False),
    )


def fit(pipe, plan: ErasePlan, progress: bool = True) -> Edit:
    """Fit ``plan`` on ``pipe`` and return the :class:`Edit` (the pipeline is not modified)."""
    from .models.adapter import PipelineAdapter
    from .models.precision import computing_in_layers, pipeline_compute_dtype, text_encoders

    m, cfg = get_method(plan.method), plan.config
    _check_sites_only(pipe, m, cfg)
    adapter = PipelineAdapter(
        pipe,
        layer_regex=cfg.layer_regex,
        projections=cfg.projections,
        sites=cfg.sites,
        joint=cfg.joint_sampling(),
    )
    stored, target = pipeline_compute_dtype(pipe)
    if target == stored or not m.uses_unet(cfg):
        edit = fit_by_group(m, adapter, plan.concepts, cfg, progress)  # encoding borrows its own dtype, layer by layer
    else:
        adapter.pin_fingerprints()  # in the stored dtype, before the UNet is borrowed
        # one layer at a time, also for training (saved weights are recast for the backward pass): never a whole copy
        with computing_in_layers([*text_encoders(pipe), adapter.denoiser], target):
            edit = fit_by_group(m, adapter, plan.concepts, cfg, progress)
    edit.compute_dtype = str(target).replace("torch.", "")
    edit.stats["defaults"] = plan.record
    return edit


def _check_sites_only(pipe, m, cfg: MethodConfig) -> None:
    """A pipeline loaded with only its edit sites (load_pipeline(denoiser='sites')) fits closed forms on the static
    sites, nothing that runs the denoiser or edits other layers: refused here, before anything runs."""
    from .models.precision import denoiser_of
    from .models.sites_only import refuse_sites_only

    if m.uses_unet(cfg):
        refuse_sites_only(denoiser_of(pipe), f"{m.name} (it runs the denoiser)")
    if cfg.sites != "static" or cfg.layer_regex:
        refuse_sites_only(denoiser_of(pipe), "editing other layers than the static sites (sites / layer_regex)")


def erase(
    pipe,
    method: str = "uce",
    concepts: ConceptSet | Sequence[str] | str | None = None,
    *,
    preserve: Sequence[str] = (),
    kind: str = "style",
    guide: str | Sequence[str] | None = None,
    templates: bool | Sequence[str] | None = None,
    defaults: str | None = "erasekit",
    progress: bool = True,
    **config,
) -> Edit:
    """Fit ``method`` on ``pipe`` and return the :class:`Edit` (the pipeline is not modified).

    ``concepts`` is a :class:`ConceptSet` or the concept(s) to erase; ``preserve``, ``kind`` and
    ``guide`` build the ConceptSet in the second case. ``templates`` (True, False or a list of
    templates with ``{}``) expands the concepts with prompt templates; left ``None``, the defaults
    decide (and a ConceptSet's own templates are kept). Remaining keyword arguments are the method's
    config (see ``erasekit methods -v``); unknown ones are errors.

    ``defaults``: ``"erasekit"`` (the default) starts from erasekit's per-model settings, as the
    ``erasekit`` command does (:mod:`erasekit.defaults`; on the bundled tinyworld models, for
    instance, UCE and SPACE map every token position), ``"published"`` from the papers' settings,
    ``None`` from the config classes' own defaults. Options given here always win; what was applied
    is recorded in ``edit.stats['defaults']``. The model is read from the record
    :func:`erasekit.load_pipeline` attaches to ``pipe``.
    """
    plan = plan_erase(
        pipe,
        method,
        concepts,
        preserve=preserve,
        kind=kind,
        guide=guide,
        templates=templates,
        defaults=defaults,
        **config,
    )
    return fit(pipe, plan, progress=progress)
