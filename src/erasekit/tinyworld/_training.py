"""What both tinyworld trainers share (``train`` for tinyworld, ``train_xl`` for tinyworld-xl).

Sizes, the noise schedule, the small CLIP text-encoder config, tensor conversions, the learning-rate
schedule and EMA, logging and run records, previews, and model-card sections. Neither trainer imports
the other's internals: ``train.main`` dispatches ``--arch xl`` to ``train_xl.main_xl``, and both import
from here.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import world
from ._images import to_tensor, to_uint8  # noqa: F401  (the trainers import them from here)

SIZE = 32  # image resolution
MAX_TOKENS = 77  # as in SD 1.x

SCHEDULER_KW = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="epsilon",
    steps_offset=1,
)


def clip_text_config(hidden: int, layers: int, max_tokens: int = MAX_TOKENS):
    """A small CLIP text encoder over the real CLIP vocabulary (tinyworld's, and tinyworld-xl's two)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=max_tokens,
        projection_dim=hidden,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def autocast(device):
    """bfloat16 autocast on ``device`` (both trainers' forward passes)."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


@torch.no_grad()
def preview(pipe_dir: Path, out_png: Path, seed: int = 0, xl: bool = False):
    """A grid: rows = colours, columns = shapes, pattern cycling (``xl``: a tinyworld-xl folder)."""
    from . import load_pipeline, load_pipeline_xl

    pipe = (load_pipeline_xl if xl else load_pipeline)(path=pipe_dir)
    prompts = []
    for ci, c in enumerate(world.COLOR_NAMES):
        for si, s in enumerate(world.SHAPE_NAMES):
            p = world.PATTERN_NAMES[(ci + si) % 4]
            prompts.append(world.caption(s, c, p, np.random.default_rng(0), synonyms=False, split="train", template=0))
    g = torch.Generator().manual_seed(seed)
    ims = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, generator=g, output_type="np").images
    world.contact_sheet((ims * 255).round().astype(np.uint8), ncol=6).save(out_png)


def budget_fraction(t_start: float, seconds: float, step: int, max_steps: int | None) -> float:
    """How much of the run is spent: the wall-clock share of ``seconds`` or, with a step budget, the step share if
    that is further along (the learning-rate schedule runs on it)."""
    frac = (time.time() - t_start) / seconds
    return max(frac, step / max_steps) if max_steps else frac


def lr_at(lr: float, step: int, frac: float, warm: int) -> float:
    """Linear warm-up over ``warm`` steps, then cosine decay to 10 % over the budget fraction ``frac``."""
    return lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


@torch.no_grad()
def ema_update(pairs, step: int, max_decay: float = 0.999) -> None:
    """EMA of each (trained, averaged) module pair, with the usual warm-up of the decay."""
    d = min(max_decay, (1 + step) / (10 + step))
    for src, dst in pairs:
        for ps, pd in zip(src.parameters(), dst.parameters()):
            pd.lerp_(ps, 1 - d)


def open_log(out: Path):
    """A ``log(msg)`` that prints with a timestamp and appends to ``out/train_log.txt``."""
    logf = open(out / "train_log.txt", "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    return log


def run_info(args, argv) -> dict:
    """What every train_log.json starts with: the command, the hardware, threads and seed."""
    return {
        "command": "python -m erasekit.tinyworld.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        if args.device == "cpu"
        else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
    }


# ----------------------------------------------------------------------------- model card
CARD_VALIDITY_START = "<!-- validity:start -->"
CARD_VALIDITY_END = "<!-- validity:end -->"


def write_card_section(card: Path, heading: str, start: str, end: str, body: str, new_card: str = "") -> Path:
    """Replace what lies between the ``start`` / ``end`` markers of a model card by ``body`` (which
    carries the markers itself), or append ``## heading`` + body; measurements rewrite only their own section."""
    card = Path(card)
    text = card.read_text() if card.exists() else new_card
    if start in text and end in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end) :]
    else:
        text += f"\n## {heading}\n" + body + "\n"
    card.write_text(text)
    return card
