"""Columns of the joint-attention sites (SD3 / FLUX ``add_k_proj`` / ``add_v_proj``), gathered during sampling.

A joint block's ``add_k_proj`` / ``add_v_proj`` read the text stream *as that block sees it*: after the earlier
blocks (which mix in the image tokens) and the block's own timestep-modulated norm. Unlike a static site's input,
it is a function of the prompt, the latent x_t and the timestep, so the columns a closed form needs are not an
encoding: they are read by forward hooks while the pipeline's own sampler runs (:class:`~.capture.TrajectoryCapture`).

Pairing (DESIGN §10, "joint sites take X from hooked runs (same seed, timestep, guidance)"): for an aligned
(erase, guide) prompt pair, the erase prompt's trajectory runs, and at every recorded step a *twin* call of the
denoiser on the same x_t and timestep carries the guide prompt; column i of C_E and column i of C_G are the same
token position of the same (prompt pair, latent, step). Preserve columns come from the preserve prompts' own
trajectories. Token selection (``last`` / ``tail`` / ``all``) is the static text stream's, position for position
(the joint stream keeps the text stream's positions).

**The edit is approximate.** A closed form solved on these columns maps exactly the (latent, step) pairs it saw;
at generation time, on other latents and steps, and once earlier blocks' edits change what later blocks read,
the inputs differ from the captured ones. More latents and steps (:class:`JointSampling`) cover more of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import ModelError
from .capture import TrajectoryCapture

if TYPE_CHECKING:
    from .adapter import PipelineAdapter


@dataclass(frozen=True)
class JointSampling:
    """The trajectories joint-site columns are read from (one row per prompt × latent × step × selected token)."""

    n_latents: int = 1  # random starting latents per prompt
    steps: int = 4  # denoising steps of each trajectory; every step is recorded
    guidance: float = 1.0  # guidance scale of the trajectories (the conditional branch is recorded)
    seed: int = 0  # seed of the first latent; latent j of every prompt uses seed + j
    size: int | None = None  # image side in pixels (the pipeline's default if None)
    batch: int = 8  # trajectories per pipeline call

    def __post_init__(self) -> None:
        if self.n_latents < 1 or self.steps < 1 or self.batch < 1 or (self.size is not None and self.size < 1):
            raise ModelError("joint sampling: n_latents, steps, batch and size must be >= 1")
        if not self.guidance >= 0:
            raise ModelError(f"joint sampling: guidance must be >= 0, got {self.guidance}")


def token_positions(adapter: PipelineAdapter, prompts: Sequence[str], mode: str) -> list[torch.Tensor]:
    """Per prompt: the indices of its selected tokens in the text stream (``last``: one, ``all``: every position,
    ``tail``: the last concept token onward)."""
    fam = adapter.family_spec
    cond = fam.encode(adapter.pipe, list(prompts))
    last, _ = fam.site_tokens(cond)  # the text stream's positions (a static site's)
    L = cond.embeds.shape[1]
    out = []
    for i in range(len(prompts)):
        li = int(last[i])
        out.append(torch.tensor([li]) if mode == "last" else torch.arange(li, L) if mode == "tail" else torch.arange(L))
    return out


def _aligned_tail(e: torch.Tensor, g: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UCE v1's tail pairing: both spans start at their last concept token and have equal length."""
    ie, ig = int(e[0]), int(g[0])
    far = max(ie, ig)
    return torch.arange(ie, L - (far - ie)), torch.arange(ig, L - (far - ig))


@torch.no_grad()
def capture_columns(
    adapter: PipelineAdapter,
    prompts: Sequence[str],
    mode: str,
    sampling: JointSampling,
    twins: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(C, C_twin): joint group -> (d, n) float64 columns of ``prompts`` along their trajectories, and of the paired
    ``twins`` (same x_t and step; empty without twins), column-aligned.

    Every joint group of the pipeline is read in the same runs (a group's sites share their input: the first is
    hooked). Columns run over (batch of ``sampling.batch`` trajectories, step, trajectory in the batch, token).
    """
    fam, pipe = adapter.family_spec, adapter.pipe
    points = {g: paths[0] for g, paths in adapter.joint_groups().items()}
    if not points:
        raise ModelError(f"this {adapter.family} adapter has no joint sites; build it with sites='joint'")
    pos = token_positions(adapter, prompts, mode)
    twin_pos: list[torch.Tensor] | None = None
    if twins is not None:
        if len(twins) != len(prompts):
            raise ModelError("erase and guide prompt lists must be aligned (same length)")
        twin_pos = token_positions(adapter, twins, mode)
        if mode == "tail":
            L = fam.encode(pipe, list(prompts[:1])).embeds.shape[1]
            pairs = [_aligned_tail(e, g, L) for e, g in zip(pos, twin_pos)]
            pos, twin_pos = [p for p, _ in pairs], [q for _, q in pairs]
    plan = fam.sampling(pipe, sampling.guidance)
    size = {} if sampling.size is None else {"height": sampling.size, "width": sampling.size}
    jobs = [(k, sampling.seed + j) for k in range(len(prompts)) for j in range(sampling.n_latents)]
    saved_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # one bar over the trajectories, not one per pipeline call
    try:
        with TrajectoryCapture(
            adapter.denoiser, points, cfg=plan.cfg, paired=twins is not None, reduce="tokens",
            text_kwargs=fam.text_kwargs,
        ) as cap:  # fmt: skip
            for i in tqdm(range(0, len(jobs), sampling.batch), desc="joint columns", disable=not progress, leave=False):
                chunk = jobs[i : i + sampling.batch]
                cap.positions = [pos[k] for k, _ in chunk]
                if twins is not None and twin_pos is not None:
                    cap.neutral = fam.encode(pipe, [twins[k] for k, _ in chunk])
                    cap.twin_positions = [twin_pos[k] for k, _ in chunk]
                pipe(
                    prompt=[prompts[k] for k, _ in chunk],
                    generator=[torch.Generator(device="cpu").manual_seed(s) for _, s in chunk],
                    num_inference_steps=sampling.steps,
                    output_type="latent",
                    **plan.kwargs,
                    **size,
                )
    finally:
        pipe.set_progress_bar_config(**saved_bar)
    cols = {g: h.T.double().contiguous() for g, h in cap.stacked().items()}  # (d, n)
    twin_cols = {g: h.T.double().contiguous() for g, h in cap.twin_stacked().items()}
    return cols, twin_cols
