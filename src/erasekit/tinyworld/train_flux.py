"""The ``--arch flux`` stage of ``python -m erasekit.tinyworld.train``: train tinyworld-flux.

1. **Warm start** from a finished tinyworld folder (``--init-from``): its VAE (with FLUX's latent
   shift / scale measured on renders) and its trained CLIP text encoder (the pooled path, kept
   frozen) are copied; the tiny T5 encoder is regressed onto the CLIP encoder's per-word hidden
   states (:func:`erasekit.tinyworld.flux.distill_t5`, ``--distill-steps``).
2. **Rectified-flow training** of the transformer and the T5 encoder jointly (Esser et al., "Scaling
   Rectified Flow Transformers", ICML 2024; FLUX.1 follows it): ``x_t = (1 - t) x_0 + t eps``, the
   transformer predicts the velocity ``v = eps - x_0`` (what ``FlowMatchEulerDiscreteScheduler``
   integrates), ``t = shift(sigmoid(n))``, ``n ~ N(0, 1)`` (logit-normal) with FLUX's exponential
   shift at mu(64 image tokens). Caption dropout ``p_uncond`` (both encoders see the empty prompt)
   trains the unconditional branch of true classifier-free guidance.

Resumable: every ``--save-every`` minutes the EMA pipeline folder *and* ``ckpt.safetensors`` (raw
and EMA weights, AdamW moments, step, elapsed time, RNG states) are written atomically; the same
command with ``--resume`` continues where the last save left off, within the same ``--minutes``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import flux, world
from ._training import budget_fraction, ema_update, folder_mb, lr_at, n_params, open_log, run_info, to_tensor

CKPT = "ckpt.safetensors"


def caption_batch(n: int, rng: np.random.Generator) -> list[str]:
    _, _, caps = world.sample_batch(
        n, rng, flux.SIZE, synonyms=True, split="train", p_drop_pattern=0.1, p_drop_color=0.05
    )
    return caps


# ----------------------------------------------------------------------------- checkpoint
def save_ckpt(path: Path, mods: dict[str, torch.nn.Module], opt: torch.optim.Optimizer, state: dict) -> None:
    """Everything a resume needs in one safetensors file (tensors + JSON metadata), written atomically."""
    from safetensors.torch import save_file

    from erasekit._atomic import atomic_path

    tensors: dict[str, torch.Tensor] = {}
    for name, m in mods.items():
        for k, v in m.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().to("cpu", torch.float32).clone()  # tied T5 embeddings: one copy each
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v).to("cpu").contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"state": json.dumps(state), "param_groups": json.dumps(osd["param_groups"])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_ckpt(path: Path, mods: dict[str, torch.nn.Module], opt: torch.optim.Optimizer) -> dict:
    """Restore ``mods`` and ``opt`` from :func:`save_ckpt`'s file; returns the saved state dict."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, m in mods.items():
        pre = name + "."
        m.load_state_dict({k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)})
    ostate: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            ostate.setdefault(int(idx), {})[key] = v
    groups = json.loads(meta["param_groups"])
    for g in groups:  # JSON turned the tuple into a list
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": ostate, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    return json.loads(meta["state"])


# ----------------------------------------------------------------------------- training
def sample_t(n: int, mu: float, p_uniform: float = 0.0) -> torch.Tensor:
    """(n,) training times: logit-normal u = sigmoid(N(0, 1)) (SD3's default), or with probability
    ``p_uniform`` u ~ U(0, 1), whose heavier tails train the high-noise end where the layout (the shape) is
    decided; then FLUX's time shift at ``mu``."""
    u = torch.sigmoid(torch.randn(n))  # logit-normal
    if p_uniform > 0:
        u = torch.where(torch.rand(n) < p_uniform, torch.rand(n), u)
    return flux.shift_sigma(u, mu)


def flow_matching_loss(
    transformer,
    t5,
    x0: torch.Tensor,
    t5_ids: torch.Tensor,
    pooled: torch.Tensor,
    img_ids,
    mu: float,
    p_uniform: float = 0.0,
) -> torch.Tensor:
    """Rectified-flow loss E ||v_theta(x_t, t, c) - (eps - x_0)||^2 for packed latents ``x0`` (n, 64, 16)."""
    n = x0.shape[0]
    t = sample_t(n, mu, p_uniform)  # (n,)
    eps = torch.randn_like(x0)  # (n, 64, 16)
    xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * eps  # x_t = (1 - t) x_0 + t eps
    ctx = t5(t5_ids).last_hidden_state  # (n, L, 128)
    txt_ids = torch.zeros(t5_ids.shape[1], 3)  # FLUX's text tokens all sit at RoPE position 0
    v = transformer(
        hidden_states=xt,
        encoder_hidden_states=ctx,
        pooled_projections=pooled,
        timestep=t,  # in [0, 1]; the pipeline passes sigma * 1000 / 1000
        img_ids=img_ids,
        txt_ids=txt_ids,
        return_dict=False,
    )[0]
    return ((v - (eps - x0)) ** 2).mean()  # target v = dx_t/dt = eps - x_0


def train_flux(
    parts: dict[str, Any],
    seconds: float,
    seed: int,
    log,
    out: Path,
    resume: bool = False,
    max_steps: int | None = None,
    batch: int = 32,
    lr: float = 4e-4,
    save_every: float = 600,
    p_uncond: float = 0.1,
    long_every: int = 10,
    long_len: int = 128,
    p_uniform_t: float = 0.0,
    shape_weights: dict[str, float] | None = None,
    ema_decay: float = 0.998,
    warm: int = 100,
    info_cb=None,
) -> None:
    """The training loop (time-capped, resumable); ``parts``: vae, clip, clip_tok, t5, t5_tok, transformer."""
    from tqdm.auto import tqdm

    vae, clip, clip_tok = parts["vae"], parts["clip"], parts["clip_tok"]
    t5, t5_tok, tr = parts["t5"], parts["t5_tok"], parts["transformer"]
    torch.manual_seed(seed + 10)
    rng = np.random.default_rng(seed + 11)
    ema_t5, ema_tr = copy.deepcopy(t5).eval(), copy.deepcopy(tr).eval()
    for p in list(ema_t5.parameters()) + list(ema_tr.parameters()):
        p.requires_grad_(False)
    emb = t5.get_input_embeddings().weight
    decay = [p for p in list(tr.parameters()) + list(t5.parameters()) if p is not emb]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": [emb], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99)
    )
    mods = {"transformer": tr, "t5": t5, "ema_transformer": ema_tr, "ema_t5": ema_t5}
    step, elapsed, ema_loss = 0, 0.0, float("nan")
    ckpt = out / CKPT
    if resume and ckpt.is_file():
        st = load_ckpt(ckpt, mods, opt)
        step, elapsed, ema_loss = st["step"], st["elapsed"], st["loss_ema"]
        rng.bit_generator.state = st["rng_numpy"]
        log(f"resumed from {ckpt} at step {step} ({elapsed / 60:.1f} min trained)")
    img_ids = flux.image_ids()
    mu = flux.mu_for(img_ids.shape[0])
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    t_start = time.time() - elapsed
    last_save = time.time()
    bar = tqdm(desc="flux transformer+t5", initial=step, total=max_steps, mininterval=10)
    tr.train(), t5.train()

    def save(tag: str) -> None:
        el = time.time() - t_start
        save_ckpt(
            ckpt, mods, opt, {"step": step, "elapsed": el, "loss_ema": ema_loss, "rng_numpy": rng.bit_generator.state}
        )
        flux.save_pipeline_flux(out / "pipeline", vae, clip, ema_t5, ema_tr)
        try:
            preview(out / "pipeline", out / "preview.png")
        except Exception as e:  # noqa: BLE001 - a preview must never kill training
            log(f"preview failed: {e}")
        log(f"[{tag}] saved at step {step} ({el / 60:.1f} min, loss {ema_loss:.4f})")
        if info_cb:
            info_cb(
                {
                    "steps": step,
                    "seconds": round(el),
                    "loss_ema": round(ema_loss, 5),
                    "batch": batch,
                    "lr": lr,
                    "p_uncond": p_uncond,
                    "long_every": long_every,
                    "long_len": long_len,
                    "p_uniform_t": p_uniform_t,
                    "shape_weights": shape_weights,
                    "ema_decay": ema_decay,
                    "mu": mu,
                    "params_transformer": n_params(tr),
                    "params_t5": n_params(t5),
                    "params_clip": n_params(clip),
                }
            )

    shape_p = None
    if shape_weights:  # relative weights, 1 for a shape not named
        w = np.array([float(shape_weights.get(name, 1.0)) for name in world.SHAPE_NAMES])
        shape_p = w / w.sum()
    while time.time() - t_start < seconds and (max_steps is None or step < max_steps):
        frac = budget_fraction(t_start, seconds, step, max_steps)
        cur = lr_at(lr, step, frac, warm)
        for g in opt.param_groups:
            g["lr"] = cur
        imgs, _, caps = world.sample_batch(
            batch, rng, flux.SIZE, synonyms=True, split="train", p_drop_pattern=0.1, p_drop_color=0.05, shape_p=shape_p
        )
        caps = ["" if rng.random() < p_uncond else c for c in caps]  # caption dropout -> true CFG
        length = long_len if long_every and step % long_every == long_every - 1 else flux.T5_MAX_TOKENS
        with torch.no_grad():
            z = vae.encode(to_tensor(imgs, "cpu")).latent_dist.sample()  # (n, 4, 16, 16)
            x0 = flux.pack((z - shift) * scale)  # (n, 64, 16), FLUX's latent normalisation
            pooled = clip(flux.clip_ids(clip_tok, caps)).pooler_output  # (n, 128)
        ids = flux.t5_ids(t5_tok, caps, length)
        loss = flow_matching_loss(tr, t5, x0, ids, pooled, img_ids, mu, p_uniform_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decay + [emb], 1.0)
        opt.step()
        step += 1
        ema_update(((tr, ema_tr), (t5, ema_t5)), step, ema_decay)
        ema_loss = loss.item() if math.isnan(ema_loss) else 0.98 * ema_loss + 0.02 * loss.item()
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema_loss:.4f}", lr=f"{cur:.1e}")
        if time.time() - last_save > save_every:
            save("periodic")
            last_save = time.time()
    bar.close()
    save("final")


@torch.no_grad()
def preview(pipe_dir: Path, out_png: Path, seed: int = 0) -> None:
    """A grid: rows = colours, columns = shapes, pattern cycling (canonical prompts)."""
    from . import load_pipeline_flux

    pipe = load_pipeline_flux(path=pipe_dir)
    prompts = []
    for ci, c in enumerate(world.COLOR_NAMES):
        for si, s in enumerate(world.SHAPE_NAMES):
            p = world.PATTERN_NAMES[(ci + si) % 4]
            prompts.append(world.caption(s, c, p, np.random.default_rng(0), synonyms=False, split="train", template=0))
    g = torch.Generator().manual_seed(seed)
    ims = pipe(prompts, generator=g, output_type="np", **flux.GENERATE_KW).images
    world.contact_sheet((ims * 255).round().astype(np.uint8), ncol=6).save(out_png)


# ----------------------------------------------------------------------------- entry point
def init_parts(src: Path, seed: int, distill_steps: int, log) -> dict[str, Any]:
    """Warm start from a finished tinyworld folder (see the module docstring)."""
    from erasekit.models.tokenizer import build_clip_tokenizer

    from . import load_pipeline

    sd1 = load_pipeline(path=src / "pipeline")
    vae, clip = sd1.vae.float().eval(), sd1.text_encoder.float().eval()
    shift, scale = flux.latent_stats(vae)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    log(f"VAE latent normalisation: shift_factor {shift:.4f}, scaling_factor {scale:.4f}")
    for p in list(vae.parameters()) + list(clip.parameters()):
        p.requires_grad_(False)
    clip_tok = build_clip_tokenizer(flux.MAX_TOKENS_CLIP)
    t5_tok = flux.build_t5_tokenizer()
    torch.manual_seed(seed)
    t5 = flux.make_t5(len(t5_tok))
    tr = flux.make_transformer(clip.config.hidden_size)
    if distill_steps:
        flux.distill_t5(t5, t5_tok, clip, clip_tok, distill_steps, caption_batch, seed=seed, log=log)
    return {"vae": vae, "clip": clip, "clip_tok": clip_tok, "t5": t5, "t5_tok": t5_tok, "transformer": tr}


def main_flux(args, argv) -> None:
    """``train --arch flux``: warm start from ``--init-from`` then :func:`train_flux` (``--resume`` continues)."""
    from .model_card_flux import write_model_card_flux

    if args.init_from is None:
        raise SystemExit(
            "--arch flux needs --init-from (a finished tinyworld folder, e.g. src/erasekit/tinyworld/weights)"
        )
    if args.device != "cpu":
        raise SystemExit("--arch flux trains on the CPU (pass --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log = open_log(out)
    src = Path(args.init_from)
    log_json = out / "train_log.json"
    resuming = bool(args.resume and (out / CKPT).is_file())
    if resuming:
        info = json.loads(log_json.read_text())
        last = info.get("diffusion", {})  # written with the checkpoint at the same save
        info.setdefault("resumed", []).append(
            {
                "command": run_info(args, argv)["command"],
                "from_step": last.get("steps"),
                "from_minutes": round(last.get("seconds", 0) / 60, 1),
            }
        )
    else:
        prev = json.loads((src / "train_log.json").read_text())
        info = {
            **run_info(args, argv),
            "init_from": {k: prev.get(k) for k in ("command", "total_minutes", "diffusion", "judge")},
        }
    torch.manual_seed(args.seed)
    parts = init_parts(src, args.seed, 0 if resuming else args.distill_steps, log)
    if not resuming:
        info["warm_start_minutes"] = round((time.time() - t_start) / 60, 2)
        info["vae_latent"] = {
            "shift_factor": parts["vae"].config.shift_factor,
            "scaling_factor": parts["vae"].config.scaling_factor,
        }
        info["distill_steps"] = args.distill_steps

    def on_save(d: dict) -> None:
        info["diffusion"] = d
        info["total_minutes"] = info.get("warm_start_minutes", 0) + d["seconds"] / 60
        info["sizes_mb"] = {"pipeline": folder_mb(out / "pipeline")}
        log_json.write_text(json.dumps(info, indent=1, default=str))
        write_model_card_flux(out, info)

    budget = args.minutes * 60 - 60 * info.get("warm_start_minutes", 0) - 30
    train_flux(
        parts,
        max(budget, 10),
        args.seed,
        log,
        out,
        resume=resuming,
        max_steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        save_every=args.save_every * 60,
        p_uniform_t=args.t_uniform,
        shape_weights=args.shape_weights,
        info_cb=on_save,
    )
    log(f"done; pipeline {info['sizes_mb']['pipeline']:.1f} MB")
