"""``lora-kohya``: the edit as a kohya-ss LoRA, the form A1111, ComfyUI and Forge read.

Per edited module ``lora_unet_<name>.lora_down.weight`` (r, d_in) = A, ``.lora_up.weight``
(d_out, r) and ``.alpha``; loaders patch W0 + (alpha / r) · up · down. One alpha is written for
every module, the most common rank r*: modules of rank r* carry up = B (scale exactly 1), the
others up = (r / r*) · B, so the product is B A in every loader. (Per-module alphas would be
the natural choice, but diffusers ignores them when they differ: measured with diffusers 0.42,
mixed ranks 1–3 fused off by 0.28.)
``<name>`` is the module path with ``_`` for ``.``, spelled as kohya's trainers spell it:

* SD 1.x / 2.x: diffusers spelling (kohya trains those on the diffusers UNet):
  ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k``
* SDXL: the original (SGM / LDM) spelling, block indices from the pipeline's config:
  ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``

``kohya_names=`` forces one or the other. Before anything is written, diffusers' own kohya
conversion is run on every name and must give back the module it came from.
"""

from __future__ import annotations

import collections

import torch

from ..errors import ModelError
from . import ldm_names as N
from ._common import ExportError, ExportResult, check_output, resolve_save_dtype
from .base import ExportFormat, register_format
from .lora import finish, lora_metadata, needs_base_weights
from .lora_import import read_lora_export
from .lowrank import edit_factors

SPELLINGS = ("diffusers", "ldm")


def default_spelling(pipe=None, edit=None) -> str:
    if pipe is not None:
        return "ldm" if getattr(pipe, "text_encoder_2", None) is not None else "diffusers"
    return "ldm" if (edit is not None and edit.base.get("family") == "sdxl") else "diffusers"


def kohya_name(path: str, spelling: str, unet_config=None) -> str:
    """``lora_unet_<name>`` of the UNet module at ``path``."""
    if spelling == "ldm":
        if unet_config is None:
            raise ExportError("LDM-spelled kohya names need the pipeline's UNet config (pass pipe=...)")
        try:
            path = N.unet_key_to_ldm(f"{path}.weight", unet_config).removesuffix(".weight")
        except ModelError as e:
            raise ExportError(f"{e}; use kohya names in diffusers spelling") from None
    elif spelling != "diffusers":
        raise ExportError(f"unknown kohya name spelling {spelling!r}; choose one of {', '.join(SPELLINGS)}")
    return "lora_unet_" + path.replace(".", "_")


def check_names(names: dict[str, str], unet_config, what: str = "kohya") -> None:
    """Run diffusers' kohya → diffusers conversion on ``names`` (path → kohya name): each must map back."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft

    probe = {}
    for n in names.values():
        probe[f"{n}.lora_down.weight"], probe[f"{n}.lora_up.weight"], probe[f"{n}.alpha"] = (
            torch.zeros(1, 1),
            torch.zeros(1, 1),
            torch.tensor(1.0),
        )
    try:
        sd, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(probe, unet_config=unet_config)
        peft = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in sd.items()})
    except Exception as e:  # diffusers raises ValueError / KeyError on names it cannot convert
        raise ExportError(
            f"diffusers cannot read these {what} names ({type(e).__name__}: {e}); try the other --kohya-names spelling"
        ) from None
    got = {k.removesuffix(".lora_A.weight") for k in peft if k.endswith(".lora_A.weight")}
    lost = sorted(set(names) - got)
    if lost:
        raise ExportError(
            f"diffusers would read {what} name {names[lost[0]]!r} as another module than {lost[0]!r}; "
            "try the other --kohya-names spelling"
        )


def layer_names(edit, pipe, spelling: str | None) -> tuple[dict[str, str], str]:
    spelling = spelling or default_spelling(pipe, edit)
    config = pipe.unet.config if pipe is not None else None
    names = {p: kohya_name(p, spelling, config) for p in edit.layers}
    if len(set(names.values())) != len(names):
        raise ExportError("two edited modules get the same kohya name (their paths differ only by '.' vs '_')")
    check_names(names, config)
    return names, spelling


def needs_pipe(edit, options) -> str | None:
    why = needs_base_weights(edit, options)
    if why is None and (options.get("kohya_names") or default_spelling(None, edit)) == "ldm":
        why = "LDM-spelled kohya names take their block indices from the UNet config"
    return why


def write(
    edit,
    pipe,
    path,
    *,
    rank: int | None = None,
    save_dtype=None,
    kohya_names: str | None = None,
    progress: bool = False,
    **_,
) -> ExportResult:
    """Write ``edit`` (checked against ``pipe`` when given) as a kohya LoRA file."""
    path = check_output(path)
    cast = resolve_save_dtype(save_dtype) or torch.float32
    names, spelling = layer_names(edit, pipe, kohya_names)
    factors = edit_factors(edit, getattr(pipe, "unet", None), rank, progress)
    ranks = [f.rank for f in factors.values() if f.rank > 0]
    alpha = (
        collections.Counter(ranks).most_common(1)[0][0] if ranks else 1
    )  # one alpha for all modules (see the docstring)
    tensors = {}
    for p, f in factors.items():
        if f.rank == 0:
            continue  # ΔW = 0: nothing to carry (recorded with rank 0)
        n = names[p]
        up = f.B if f.rank == alpha else f.B * (f.rank / alpha)  # the loaders' scale alpha / r, undone
        tensors[f"{n}.lora_down.weight"] = f.A.to(cast).contiguous()
        tensors[f"{n}.lora_up.weight"] = up.to(cast).contiguous()
        tensors[f"{n}.alpha"] = torch.tensor(float(alpha), dtype=cast)
    meta = lora_metadata("lora-kohya", edit, factors, names, rank, cast, kohya_names=spelling)
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max((f.rank for f in factors.values()), default=0)),
        "ss_network_alpha": "per-module (= rank)",
        "ss_base_model_version": edit.base.get("family") or "",
    }
    return finish(tensors, meta, header, path, "lora-kohya", factors)


register_format(
    ExportFormat(
        name="lora-kohya",
        kind="edit",
        write=write,
        options=("save_dtype", "rank", "kohya_names"),
        needs_pipe=needs_pipe,
        read_back=read_lora_export,
        help="kohya LoRA (A1111, ComfyUI, Forge, diffusers; LDM names for SDXL)",
    )
)
