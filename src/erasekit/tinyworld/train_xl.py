"""The ``--arch xl`` stage of ``python -m erasekit.tinyworld.train``: fine-tune tinyworld-xl.

UNet + both text encoders are trained jointly (as for tinyworld) from the warm start of
:func:`erasekit.tinyworld.xl.warm_start`, with the pooled path on. Conditioning dropout, per sample:

* ``p_uncond``: context *and* pooled embedding replaced by the empty prompt's (classifier-free
  guidance, as SDXL trains it);
* ``p_drop_context``: only the cross-attention context replaced, so the pooled embedding alone
  must carry the caption, and the model learns to use the pooled path;
* ``p_drop_pooled``: only the pooled embedding replaced.

Micro-conditioning ids are the constant :data:`erasekit.tinyworld.xl.TIME_IDS`.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import world, xl
from ._training import (
    SCHEDULER_KW,
    SIZE,
    autocast,
    budget_fraction,
    ema_update,
    folder_mb,
    lr_at,
    n_params,
    open_log,
    preview,
    run_info,
    to_tensor,
)

# parameters that did not exist in tinyworld (they get ``lr * new_lr_mult``)
_NEW_TAGS = ("add_embedding.", "transformer_blocks.1.", "text_projection.", "encoder.layers.2.", "final_layer_norm.")


def caption_batch(n: int, rng: np.random.Generator) -> list[str]:
    _, _, caps = world.sample_batch(n, rng, SIZE, synonyms=True, split="train", p_drop_pattern=0.1, p_drop_color=0.05)
    return caps


def init_from_tinyworld(sd1_pipeline_dir: Path, seed: int, distill_steps: int, log):
    """(vae, te1, te2, unet) warm-started from a tinyworld pipeline folder."""
    from erasekit.models.tokenizer import build_clip_tokenizer

    from . import load_pipeline

    sd1 = load_pipeline(path=sd1_pipeline_dir)
    tok = build_clip_tokenizer(xl.MAX_TOKENS)
    caps = caption_batch(256, np.random.default_rng(seed + 3)) + [""]
    te1, te2, unet, resid = xl.warm_start(
        sd1.unet, sd1.text_encoder, tok, caps, seed=seed, distill_steps=distill_steps, caption_fn=caption_batch
    )
    log(f"warm start from {sd1_pipeline_dir}: LayerNorm affine fit residual {resid:.3f}")
    return sd1.vae, te1, te2, unet


def train_diffusion_xl(
    vae,
    te1,
    te2,
    unet,
    seconds: float,
    seed: int,
    device,
    log,
    out: Path,
    max_steps: int | None = None,
    batch: int = 32,
    lr: float = 3e-4,
    new_lr_mult: float = 3.0,
    save_every: float = 600,
    p_uncond: float = 0.1,
    p_drop_context: float = 0.15,
    p_drop_pooled: float = 0.1,
    info_cb=None,
    warm: int = 20,
):
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    from erasekit.models.tokenizer import build_clip_tokenizer

    if not 0 <= p_uncond + p_drop_context + p_drop_pooled <= 1:
        raise ValueError("conditioning dropout probabilities must sum to at most 1")
    torch.manual_seed(seed + 10)
    rng = np.random.default_rng(seed + 11)
    tok = build_clip_tokenizer(xl.MAX_TOKENS)
    mods = [m.to(device, torch.float32) for m in (te1, te2, unet)]
    emas = [copy.deepcopy(m).eval() for m in mods]
    for p in (p for m in emas for p in m.parameters()):
        p.requires_grad_(False)
    groups: dict[str, list[Any]] = {"old": [], "new": [], "emb": []}
    for mi, m in enumerate(mods):
        emb = m.get_input_embeddings().weight if mi < 2 else None
        for name, p in m.named_parameters():
            if p is emb:
                groups["emb"].append(p)
            elif mi == 0 or any(t in name for t in _NEW_TAGS):  # text_encoder (64-d) is entirely new
                groups["new"].append(p)
            else:
                groups["old"].append(p)
    mult = {"old": 1.0, "new": new_lr_mult, "emb": 1.0}
    opt = torch.optim.AdamW(
        [{"params": groups[k], "weight_decay": 0.0 if k == "emb" else 0.01, "name": k} for k in groups],
        lr=lr,
        betas=(0.9, 0.99),
    )
    all_params = [p for g in groups.values() for p in g]
    noise_sched: Any = DDPMScheduler(
        **SCHEDULER_KW
    )  # diffusers' schedulers set their attributes in an untyped __init__
    acp = noise_sched.alphas_cumprod.to(device)
    snr = acp / (1 - acp)
    weight = snr.clamp(max=5.0) / snr  # min-SNR-5 weighting for epsilon prediction
    tids = xl.time_ids(batch, device)
    vae.eval()
    t0 = last_save = time.time()
    step, ema_loss = 0, None
    bar = tqdm(desc="xl unet+text", total=max_steps, mininterval=10)
    for m in mods:
        m.train()

    def save(tag):
        xl.save_pipeline_xl(out / "pipeline", vae, *emas)
        try:
            preview(out / "pipeline", out / "preview.png", xl=True)
        except Exception as e:  # noqa: BLE001 - a preview must never kill training
            log(f"preview failed: {e}")
        log(f"[{tag}] saved pipeline at step {step} ({(time.time() - t0) / 60:.1f} min, loss {ema_loss:.4f})")
        if info_cb:
            info_cb(
                {
                    "steps": step,
                    "seconds": round(time.time() - t0),
                    "loss_ema": round(ema_loss, 5),
                    "batch": batch,
                    "lr": lr,
                    "new_lr_mult": new_lr_mult,
                    "p_uncond": p_uncond,
                    "p_drop_context": p_drop_context,
                    "p_drop_pooled": p_drop_pooled,
                    "params_unet": n_params(unet),
                    "params_text": n_params(te1),
                    "params_text_2": n_params(te2),
                }
            )

    while time.time() - t0 < seconds and (max_steps is None or step < max_steps):
        frac = budget_fraction(t0, seconds, step, max_steps)
        cur = lr_at(lr, step, frac, warm)
        for g in opt.param_groups:
            g["lr"] = cur * mult[g["name"]]
        imgs, _, caps = world.sample_batch(
            batch, rng, SIZE, synonyms=True, split="train", p_drop_pattern=0.1, p_drop_color=0.05
        )
        u = rng.random(batch)
        drop_both = u < p_uncond
        drop_ctx = drop_both | ((u >= p_uncond) & (u < p_uncond + p_drop_context))
        drop_pool = drop_both | ((u >= p_uncond + p_drop_context) & (u < p_uncond + p_drop_context + p_drop_pooled))
        ids = tok(
            caps + [""], padding="max_length", max_length=xl.MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        with torch.no_grad():
            z = vae.encode(to_tensor(imgs, device)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (batch,), device=device)
        zt = noise_sched.add_noise(z, noise, t)
        with autocast(device):
            ctx, pooled = xl.encode(mods[0], mods[1], ids, ids)  # (n+1,77,192), (n+1,128)
            mc = torch.as_tensor(drop_ctx, device=device)[:, None, None]
            mp = torch.as_tensor(drop_pool, device=device)[:, None]
            ctx = torch.where(mc, ctx[-1:], ctx[:-1])  # empty prompt's context where dropped
            pooled = torch.where(mp, pooled[-1:], pooled[:-1])
            pred = mods[2](zt, t, ctx, added_cond_kwargs={"text_embeds": pooled, "time_ids": tids}).sample
        loss = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (loss * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(all_params, 1.0)
        opt.step()
        step += 1
        ema_update(zip(mods, emas), step)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema_loss:.4f}", lr=f"{cur:.1e}")
        if time.time() - last_save > save_every:
            save("periodic")
            last_save = time.time()
    bar.close()
    save("final")
    return emas


def main_xl(args, argv):
    """``train --arch xl``: warm start from ``--init-from`` then :func:`train_diffusion_xl`."""
    import json

    from .model_card_xl import write_model_card_xl

    if args.init_from is None:
        raise SystemExit(
            "--arch xl needs --init-from (a finished tinyworld folder, e.g. src/erasekit/tinyworld/weights)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log = open_log(out)
    src = Path(args.init_from)
    prev = json.loads((src / "train_log.json").read_text())
    info = {
        **run_info(args, argv),
        "init_from": {
            "command": prev.get("command"),
            "total_minutes": prev.get("total_minutes"),
            "diffusion": prev.get("diffusion"),
            "judge": prev.get("judge"),
        },
    }
    vae, te1, te2, unet = init_from_tinyworld(src / "pipeline", args.seed, args.distill_steps, log)
    info["warm_start_minutes"] = round((time.time() - t_start) / 60, 2)
    vae = vae.to(args.device).eval()
    for p in vae.parameters():
        p.requires_grad_(False)

    def on_save(d):
        info["diffusion"] = d
        info["total_minutes"] = (time.time() - t_start) / 60
        info["sizes_mb"] = {"pipeline": folder_mb(out / "pipeline")}
        (out / "train_log.json").write_text(json.dumps(info, indent=1, default=str))
        write_model_card_xl(out, info)

    remaining = args.minutes * 60 - (time.time() - t_start) - 30
    train_diffusion_xl(
        vae,
        te1,
        te2,
        unet,
        max(remaining, 10),
        args.seed,
        args.device,
        log,
        out,
        max_steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        save_every=args.save_every * 60,
        p_drop_context=args.p_drop_context,
        p_drop_pooled=args.p_drop_pooled,
        info_cb=on_save,
    )
    log(f"done in {(time.time() - t_start) / 60:.1f} min; pipeline {info['sizes_mb']['pipeline']:.1f} MB")
