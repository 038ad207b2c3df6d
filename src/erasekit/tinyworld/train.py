"""Train tinyworld from a seed: VAE, judge, then text encoder + UNet jointly.

    python -m erasekit.tinyworld.train --out DIR --seed 0 [--minutes M] [--steps N] [--device cpu|cuda]
    python -m erasekit.tinyworld.train --arch xl --init-from src/erasekit/tinyworld/weights --out DIR ...
    python -m erasekit.tinyworld.train --arch flux --init-from src/erasekit/tinyworld/weights --out DIR [--resume] ...

Writes ``DIR/pipeline/`` (a diffusers StableDiffusionPipeline folder, fp16 safetensors),
``DIR/judge.safetensors`` + ``DIR/judge.json``, ``DIR/MODEL_CARD.md`` and ``DIR/train_log.json``.
The pipeline folder is rewritten every ``--save-every`` minutes so a partial run is usable.
``--minutes`` is the budget for the whole run; the diffusion stage gets what the VAE and judge
stages leave.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from ._training import (  # noqa: F401  (CARD_*, write_card_section, preview, ...: re-exported for validity / pooled)
    CARD_VALIDITY_END,
    CARD_VALIDITY_START,
    MAX_TOKENS,
    SCHEDULER_KW,
    SIZE,
    autocast,
    budget_fraction,
    clip_text_config,
    ema_update,
    folder_mb,
    lr_at,
    n_params,
    open_log,
    preview,
    run_info,
    to_tensor,
    to_uint8,
    write_card_section,
)

LATENT = 16  # latent resolution (VAE downsamples by 2)
TEXT_HIDDEN = 128


# ----------------------------------------------------------------------------- model definitions
def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=SIZE,
        mid_block_add_attention=False,
    )


def make_text_encoder():
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_text_config(TEXT_HIDDEN, 2))


def make_unet():
    from diffusers import UNet2DConditionModel

    # No attention at the 16x16 level (as SD has none at its lowest-resolution level, here the
    # cheapest place to drop it on a CPU); cross-attention at 8x8 and 4x4 plus the mid block.
    return UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(48, 96, 144),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        norm_num_groups=16,
    )


# ----------------------------------------------------------------------------- stages
def train_vae(seconds: float, seed: int, device, log, batch: int = 32, max_steps: int | None = None):
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    vae = make_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    t0 = time.time()
    step = 0
    bar = tqdm(desc="vae", mininterval=5)
    while time.time() - t0 < seconds and (max_steps is None or step < max_steps):
        frac = min(1.0, (time.time() - t0) / seconds)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (step + 1) / 50)
        imgs, _, _ = world.sample_batch(batch, rng, SIZE)
        x = to_tensor(imgs, device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    vae.eval()
    with torch.no_grad():
        imgs, _, _ = world.sample_batch(512, np.random.default_rng(seed + 99), SIZE)
        x = to_tensor(imgs, device)
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x).item()
        std = z.std().item()
    vae.register_to_config(scaling_factor=float(1.0 / std))
    psnr = 10 * math.log10(4.0 / mse)
    log(f"vae: {step} steps in {time.time() - t0:.0f}s, recon PSNR {psnr:.1f} dB, latent std {std:.3f}")
    return vae, {"steps": step, "seconds": round(time.time() - t0), "psnr_db": round(psnr, 2), "params": n_params(vae)}


def train_judge_stage(vae, steps: int, seed: int, device, log):
    from .judge import heldout_accuracy, train_judge

    def recon(n, rng):  # VAE round-trips, so the judge also knows the decoder's softness
        imgs, lab, _ = world.sample_batch(n, rng, SIZE)
        with torch.no_grad():
            x = to_tensor(imgs, device)
            out = vae.decode(vae.encode(x).latent_dist.sample()).sample
        return to_uint8(out), lab

    t0 = time.time()
    judge = train_judge(steps=steps, batch=96, seed=seed, log=log, extra_images=recon)
    acc = heldout_accuracy(judge, 2000)
    log(f"judge: held-out render accuracy {acc}")
    return judge, {"steps": steps, "seconds": round(time.time() - t0), "heldout_acc": acc, "params": n_params(judge)}


def build_pipeline(vae, text_encoder, unet, tokenizer):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sched = DPMSolverMultistepScheduler(**SCHEDULER_KW)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(folder: Path, vae, text_encoder, unet, tokenizer_dir: Path):
    """Write the pipeline folder in fp16 safetensors (atomically: write to a temp dir, then swap)."""
    import shutil

    from transformers import CLIPTokenizer

    from erasekit.models.tokenizer import write_clip_tokenizer_files

    from ._folders import fresh_tmp, swap_in

    tmp = fresh_tmp(folder)
    mods = [copy.deepcopy(m).to("cpu", torch.float16) for m in (vae, text_encoder, unet)]
    pipe = build_pipeline(mods[0], mods[1], mods[2], CLIPTokenizer.from_pretrained(str(tokenizer_dir)))
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(tmp / "tokenizer")  # the tokenizer files as written by erasekit (identical to CLIP's)
    write_clip_tokenizer_files(tmp / "tokenizer", model_max_length=MAX_TOKENS)
    swap_in(tmp, folder)


def train_diffusion(
    vae,
    seconds: float,
    seed: int,
    device,
    log,
    out: Path,
    tokenizer_dir: Path,
    max_steps: int | None = None,
    batch: int = 64,
    lr: float = 8e-4,
    save_every: float = 600,
    p_uncond: float = 0.1,
    info_cb=None,
    init=None,
    warm: int = 200,
):
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm
    from transformers import CLIPTokenizer

    torch.manual_seed(seed + 10)
    rng = np.random.default_rng(seed + 11)
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    if init is not None:  # (text_encoder, unet) to continue from
        te, unet = (m.to(device, torch.float32) for m in init)
    else:
        te = make_text_encoder().to(device)
        unet = make_unet().to(device)
    ema_te, ema_unet = copy.deepcopy(te).eval(), copy.deepcopy(unet).eval()
    for p in list(ema_te.parameters()) + list(ema_unet.parameters()):
        p.requires_grad_(False)
    emb = te.get_input_embeddings().weight
    other = [p for p in list(te.parameters()) + list(unet.parameters()) if p is not emb]
    opt = torch.optim.AdamW(
        [{"params": other, "weight_decay": 0.01}, {"params": [emb], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99)
    )
    noise_sched: Any = DDPMScheduler(
        **SCHEDULER_KW
    )  # diffusers' schedulers set their attributes in an untyped __init__
    acp = noise_sched.alphas_cumprod.to(device)
    snr = acp / (1 - acp)
    weight = snr.clamp(max=5.0) / snr  # min-SNR-5 weighting for epsilon prediction
    vae.eval()
    t0 = time.time()
    last_save = t0
    step, ema_loss = 0, None
    bar = tqdm(desc="unet+text", total=max_steps, mininterval=10)
    te.train(), unet.train()

    def save(tag):
        save_pipeline(out / "pipeline", vae, ema_te, ema_unet, tokenizer_dir)
        try:
            preview(out / "pipeline", out / "preview.png")
        except Exception as e:  # noqa: BLE001 - a preview must never kill training
            log(f"preview failed: {e}")
        log(f"[{tag}] saved pipeline at step {step} ({(time.time() - t0) / 60:.1f} min, loss {ema_loss:.4f})")
        if info_cb:
            info_cb({"steps": step, "seconds": round(time.time() - t0), "loss_ema": round(ema_loss, 5)})

    while time.time() - t0 < seconds and (max_steps is None or step < max_steps):
        frac = budget_fraction(t0, seconds, step, max_steps)
        cur_lr = lr_at(lr, step, frac, warm)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        imgs, _, caps = world.sample_batch(
            batch, rng, SIZE, synonyms=True, split="train", p_drop_pattern=0.1, p_drop_color=0.05
        )
        caps = ["" if rng.random() < p_uncond else c for c in caps]
        ids = tok(caps, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids.to(
            device
        )
        with torch.no_grad():
            z = vae.encode(to_tensor(imgs, device)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (batch,), device=device)
        zt = noise_sched.add_noise(z, noise, t)
        with autocast(device):
            enc = te(ids)[0]
            pred = unet(zt, t, enc).sample
        loss = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (loss * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(other + [emb], 1.0)
        opt.step()
        step += 1
        ema_update(((te, ema_te), (unet, ema_unet)), step)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema_loss:.4f}", lr=f"{cur_lr:.1e}")
        if time.time() - last_save > save_every:
            save("periodic")
            last_save = time.time()
    bar.close()
    save("final")
    return (
        ema_te,
        ema_unet,
        {
            "steps": step,
            "seconds": round(time.time() - t0),
            "loss_ema": round(ema_loss, 5) if ema_loss is not None else None,
            "batch": batch,
            "lr": lr,
            "params_unet": n_params(unet),
            "params_text": n_params(te),
        },
    )


# ----------------------------------------------------------------------------- model card
def write_model_card(out: Path, info: dict):
    out = Path(out)
    card = out / "MODEL_CARD.md"
    validity = (
        f"{CARD_VALIDITY_START}\n_Not measured yet: run `python -m erasekit.tinyworld.validity`._\n{CARD_VALIDITY_END}"
    )
    if card.exists():
        old = card.read_text()
        if CARD_VALIDITY_START in old and CARD_VALIDITY_END in old:
            validity = old[old.index(CARD_VALIDITY_START) : old.index(CARD_VALIDITY_END) + len(CARD_VALIDITY_END)]
    v, d, j = info.get("vae", {}), info.get("diffusion", {}), info.get("judge", {})
    sizes = info.get("sizes_mb", {})
    prev_runs = ""
    runs = info.get("previous_runs", [])
    if runs:
        tot = sum((r.get("diffusion") or {}).get("steps", 0) for r in runs) + d.get("steps", 0)
        prev_runs = "".join(
            f"- earlier run `{r.get('command')}`: {(r.get('diffusion') or {}).get('steps', 0)} diffusion steps "
            f"in {(r.get('diffusion') or {}).get('seconds', 0) / 60:.1f} min\n"
            for r in runs
        )
        prev_runs += (
            "- the text encoder + UNet line above continues (`--init`) the run(s) listed here; "
            f"diffusion steps in all: {tot}\n"
        )
    text = f"""# tinyworld — model card

erasekit's bundled text-to-image model (DESIGN.md §8). A genuine diffusers
`StableDiffusionPipeline` (CLIP tokenizer, `CLIPTextModel`, `UNet2DConditionModel` with
cross-attention, `AutoencoderKL`, DPM-Solver++ scheduler) trained from scratch on a procedural
world whose ground truth is known, plus a classifier ("judge") that reads the ground truth
back from images.

## Data
Procedural renders (`erasekit.tinyworld.world`), {SIZE}x{SIZE} px, generated on the fly:
one shape ({", ".join(world.SHAPE_NAMES)}) in one colour ({", ".join(world.COLOR_NAMES)})
with one fill pattern ({", ".join(world.PATTERN_NAMES)}), random position / size, light or
dark grey noisy background. Shapes play the role of objects / characters, patterns of
artistic styles, colours of attributes.
Captions: {len(world.TRAIN_TEMPLATES)} training templates, 3 names per value (canonical +
2 synonyms, all seen in training); 10 % empty captions (classifier-free guidance), the
pattern left unnamed in 10 % and the colour in 5 % of captions.
Held out for evaluation: the templates {world.EVAL_TEMPLATES}.

## Architecture and size
| part | details | parameters |
|---|---|---|
| tokenizer | CLIP BPE, 49,408 tokens, max length {MAX_TOKENS} (identical ids to SD 1.x) | – |
| text encoder | `CLIPTextModel`, hidden {TEXT_HIDDEN}, 2 layers, 4 heads | {d.get("params_text", 0):,} |
| UNet | `UNet2DConditionModel`, channels (48, 96, 144), 1 layer per block, cross-attention (dim {TEXT_HIDDEN}) at \
8x8, 4x4 and mid; latent 4x{LATENT}x{LATENT} | {d.get("params_unet", 0):,} |
| VAE | `AutoencoderKL`, channels (32, 64), downsampling x2, 4 latent channels, scaling factor \
{info.get("scaling_factor", 0):.4f} | {v.get("params", 0):,} |
| scheduler | trained with DDPM (1000 steps, scaled-linear betas as SD 1.x, epsilon prediction); ships \
DPMSolverMultistep (use 20 steps, guidance 5) | – |
| judge | CNN, 3 heads (shape / colour / pattern) | {j.get("params", 0):,} |

Pipeline folder: {sizes.get("pipeline", 0):.1f} MB (fp16 safetensors); judge {sizes.get("judge", 0):.2f} MB.

## Training
Command: `{info.get("command", "")}`
Hardware: {info.get("hardware", "")}; torch threads: {info.get("threads", "")}.
- VAE: {v.get("steps", 0)} steps of batch 32 in {v.get("seconds", 0) / 60:.1f} min, reconstruction PSNR \
{v.get("psnr_db", 0)} dB.
- judge: {j.get("steps", 0)} steps of batch 96 in {j.get("seconds", 0) / 60:.1f} min (blur / noise / colour-jitter \
augmentation, 25 % VAE round-trips); held-out render accuracy {j.get("heldout_acc", {})}.
- text encoder + UNet (jointly, AdamW lr {d.get("lr", 0)}, warmup + cosine over the time budget, min-SNR-5 weighting, \
bf16 autocast, EMA 0.999 shipped): {d.get("steps", 0)} steps of batch {d.get("batch", 0)} in \
{d.get("seconds", 0) / 60:.1f} min; final loss (EMA) {d.get("loss_ema", 0)}.
{prev_runs}- total wall time {info.get("total_minutes", 0) + info.get("total_minutes_prev", 0):.1f} min.

## Validity
{validity}
"""
    card.write_text(text)


# ----------------------------------------------------------------------------- main


def _shape_weights(text: str) -> dict[str, float]:
    """'star=3,cross=2' -> {'star': 3.0, 'cross': 2.0}; names must be tinyworld shapes, weights positive."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in world.SHAPE_NAMES:
            raise argparse.ArgumentTypeError(f"{name!r} is not a tinyworld shape ({', '.join(world.SHAPE_NAMES)})")
        try:
            out[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: write SHAPE=WEIGHT, e.g. star=3") from None
        if not out[name] > 0:
            raise argparse.ArgumentTypeError(f"{part!r}: a weight must be positive")
    return out


def main(argv=None):
    from . import weights_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=weights_dir())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=85.0, help="wall-clock budget for the whole run")
    ap.add_argument("--steps", type=int, default=None, help="cap on diffusion steps (else time-budgeted)")
    ap.add_argument("--vae-minutes", type=float, default=None, help="default: 8%% of --minutes, at most 6")
    ap.add_argument("--judge-steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--save-every", type=float, default=10.0, help="minutes between pipeline saves")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from a finished run's folder: reuse its VAE and judge, keep training text encoder + UNet",
    )
    ap.add_argument(
        "--arch",
        choices=("sd1", "xl", "flux"),
        default="sd1",
        help="sd1: tinyworld (StableDiffusionPipeline); xl: tinyworld-xl (StableDiffusionXLPipeline); "
        "flux: tinyworld-flux (FluxPipeline); xl and flux are warm-started from --init-from",
    )
    ap.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="--arch xl / flux: a finished tinyworld folder to warm-start from (VAE and judge reused)",
    )
    ap.add_argument(
        "--t-uniform",
        type=float,
        default=0.0,
        help="--arch flux: share of training times drawn uniformly instead of logit-normal (both then shifted)",
    )
    ap.add_argument(
        "--shape-weights",
        type=_shape_weights,
        default=None,
        help="--arch flux: draw some shapes more often, e.g. 'star=3,cross=2' (others 1): a later training phase "
        "for shapes the model confuses",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="--arch flux: continue from OUT/ckpt.safetensors (weights, optimizer, step, elapsed time) "
        "within the same --minutes",
    )
    ap.add_argument(
        "--distill-steps",
        type=int,
        default=300,
        help="--arch xl: steps that make the warm start's LayerNorm fold exact on prompts; "
        "--arch flux: steps regressing the T5 encoder onto tinyworld's CLIP states",
    )
    ap.add_argument(
        "--p-drop-context",
        type=float,
        default=0.15,
        help="--arch xl: share of samples whose context alone is replaced by the empty prompt's",
    )
    ap.add_argument(
        "--p-drop-pooled",
        type=float,
        default=0.10,
        help="--arch xl: share of samples whose pooled embedding alone is replaced",
    )
    args = ap.parse_args(argv)
    if args.arch == "xl":
        from .train_xl import main_xl

        return main_xl(args, argv)
    if args.arch == "flux":
        from .train_flux import main_flux

        return main_flux(args, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log = open_log(out)
    budget = args.minutes * 60
    info = run_info(args, argv)
    tok_dir = out / "_tokenizer"
    from erasekit.models.tokenizer import write_clip_tokenizer_files

    write_clip_tokenizer_files(tok_dir, model_max_length=MAX_TOKENS)

    init = None
    if args.init is not None:
        import shutil

        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        src = Path(args.init)
        prev = json.loads((src / "train_log.json").read_text())
        vae = AutoencoderKL.from_pretrained(str(src / "pipeline" / "vae"), torch_dtype=torch.float32).to(args.device)
        init = (
            CLIPTextModel.from_pretrained(str(src / "pipeline" / "text_encoder"), dtype=torch.float32),
            UNet2DConditionModel.from_pretrained(str(src / "pipeline" / "unet"), torch_dtype=torch.float32),
        )
        for f in ("judge.safetensors", "judge.json"):
            if (src / f).resolve() != (out / f).resolve():
                shutil.copy(src / f, out / f)
        info.update({k: prev[k] for k in ("vae", "judge", "scaling_factor") if k in prev})
        info["previous_runs"] = prev.get("previous_runs", []) + [
            {"command": prev.get("command"), "diffusion": prev.get("diffusion")}
        ]
        info["total_minutes_prev"] = prev.get("total_minutes", 0) + prev.get("total_minutes_prev", 0)
        log(f"continuing from {src} ({prev.get('diffusion', {}).get('steps')} diffusion steps)")
    else:
        vae_s = 60 * (args.vae_minutes if args.vae_minutes is not None else min(6.0, 0.08 * args.minutes))
        vae, info["vae"] = train_vae(
            vae_s, args.seed, args.device, log, max_steps=None if args.steps is None else max(20, args.steps)
        )
        info["scaling_factor"] = vae.config.scaling_factor
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)

    if args.init is None:
        judge, info["judge"] = train_judge_stage(vae, args.judge_steps, args.seed, args.device, log)
        judge.save(out / "judge.safetensors", {"heldout_acc": info["judge"]["heldout_acc"], "seed": args.seed})

    def on_save(d):
        info["diffusion"] = {**info.get("diffusion", {}), **d}
        info["total_minutes"] = (time.time() - t_start) / 60
        info["sizes_mb"] = {
            "pipeline": folder_mb(out / "pipeline"),
            "judge": (out / "judge.safetensors").stat().st_size / 1e6,
        }
        (out / "train_log.json").write_text(json.dumps(info, indent=1, default=str))
        write_model_card(out, info)

    remaining = budget - (time.time() - t_start) - 30
    _, _, info["diffusion"] = train_diffusion(
        vae,
        max(remaining, 10),
        args.seed,
        args.device,
        log,
        out,
        tok_dir,
        max_steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        save_every=args.save_every * 60,
        info_cb=on_save,
        init=init,
        warm=200 if init is None else 20,
    )
    on_save(info["diffusion"])
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    log(f"done in {(time.time() - t_start) / 60:.1f} min; pipeline {info['sizes_mb']['pipeline']:.1f} MB")


if __name__ == "__main__":
    main()
