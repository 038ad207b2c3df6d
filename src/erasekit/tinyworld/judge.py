"""TinyworldJudge: a small CNN that reads shape, colour and pattern off a tinyworld image.

It is the measuring instrument for erasure on tinyworld: trained on renders with blur, noise
and colour-jitter augmentation so it also judges the (slightly blurry) images the diffusion
model generates. Pure torch, no torchvision.

    judge = TinyworldJudge.load()
    probs = judge.predict(images)        # {"shape": (n,6), "color": (n,6), "pattern": (n,4)}
    labels = judge.classify(images)      # {"shape": ["circle", ...], ...}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import world

HEADS = {"shape": world.SHAPE_NAMES, "color": world.COLOR_NAMES, "pattern": world.PATTERN_NAMES}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyworldJudge(nn.Module):
    """Three-headed CNN classifier on 32-px RGB images."""

    def __init__(self, width: int = 32, size: int = 32):
        super().__init__()
        self.config: dict[str, Any] = {"width": width, "size": size, "heads": HEADS}
        w = width
        self.features = nn.Sequential(
            _block(3, w),
            nn.MaxPool2d(2),  # 16
            _block(w, 2 * w),
            nn.MaxPool2d(2),  # 8
            _block(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 4
        )
        self.flat = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in HEADS.items()})

    # ------------------------------------------------------------------ io
    @staticmethod
    def default_path() -> Path:
        from ._paths import weights_dir

        return weights_dir() / "judge.safetensors"

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> TinyworldJudge:
        from safetensors.torch import load_file

        path = Path(path) if path is not None else cls.default_path()
        cfg = json.loads(path.with_suffix(".json").read_text())
        model = cls(width=cfg["width"], size=cfg["size"])
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        return model.to(device).eval()

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
        save_file(sd, str(path))
        cfg = {k: v for k, v in self.config.items() if k != "heads"}
        cfg["heads"] = HEADS
        cfg.update(extra or {})
        path.with_suffix(".json").write_text(json.dumps(cfg, indent=1))

    # ------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: float (n,3,H,W) in [0,1]; returns logits per head."""
        h = self.flat(self.features((x - 0.5) / 0.25))
        return {k: head(h) for k, head in self.heads.items()}

    def to_input(self, images) -> torch.Tensor:
        """Accepts uint8 numpy/tensor (n,H,W,3), float tensor (n,3,H,W) in [0,1], a PIL image or a list of them."""
        if isinstance(images, (list, tuple)):
            images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
        elif hasattr(images, "convert"):  # one PIL image
            images = np.asarray(images.convert("RGB"))[None]
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        x = images
        if x.dtype == torch.uint8:
            if x.ndim == 3:
                x = x[None]
            if x.shape[-1] == 3:
                x = x.permute(0, 3, 1, 2)
            x = x.float() / 255.0
        else:
            if x.ndim == 3:
                x = x[None]
            if x.shape[-1] == 3 and x.shape[1] != 3:
                x = x.permute(0, 3, 1, 2)
            x = x.float()
        size = self.config["size"]
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear", antialias=False)
        dev = next(self.parameters()).device
        return x.to(dev).clamp(0, 1)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Per-attribute class probabilities: {"shape": (n,6), "color": (n,6), "pattern": (n,4)}."""
        self.eval()
        x = self.to_input(images)
        outs: dict[str, list] = {k: [] for k in HEADS}
        for i in range(0, len(x), batch_size):
            logits = self(x[i : i + batch_size])
            for k in HEADS:
                outs[k].append(logits[k].softmax(-1).cpu())
        return {k: torch.cat(v) for k, v in outs.items()}

    def classify(self, images) -> dict[str, list[str]]:
        probs = self.predict(images)
        return {k: [HEADS[k][i] for i in p.argmax(-1).tolist()] for k, p in probs.items()}


# ---------------------------------------------------------------------- training
def _gauss_kernel(sigma: torch.Tensor, k: int = 5) -> torch.Tensor:
    r = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    return g / g.sum(-1, keepdim=True)  # (n,k)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, down/up-sampling softness, noise and colour jitter resembling diffusion outputs. x: (n,3,H,W) in [0,1]."""
    n, c, h, w = x.shape
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    # separable gaussian blur, sigma in [0, 1.1], on ~70 % of the batch
    sigma = r(n) * 1.1 * (r(n) < 0.7)
    g = _gauss_kernel(sigma)  # (n,5)
    xb = x.reshape(1, n * c, h, w)
    kh = g.repeat_interleave(c, 0)[:, None, None, :]
    kv = g.repeat_interleave(c, 0)[:, None, :, None]
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kh, groups=n * c)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kv, groups=n * c)
    x = xb.reshape(n, c, h, w)
    # colour jitter: brightness, contrast, per-channel gain, saturation
    x = x * (1 + (r(n, 1, 1, 1) - 0.5) * 0.2) + (r(n, 1, 1, 1) - 0.5) * 0.12
    x = x * (1 + (r(n, 3, 1, 1) - 0.5) * 0.14)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * (1 + (r(n, 1, 1, 1) - 0.5) * 0.5)
    # gaussian + low-frequency noise
    x = x + torch.randn(x.shape, generator=gen) * (r(n, 1, 1, 1) * 0.06)
    lf = F.interpolate(torch.randn(n, 3, h // 4, w // 4, generator=gen), size=(h, w), mode="bilinear")
    x = x + lf * (r(n, 1, 1, 1) * 0.04)
    return x.clamp(0, 1)


def heldout_accuracy(judge: TinyworldJudge, n: int = 2000, seed: int = 12345, size: int = 32) -> dict[str, float]:
    """Accuracy per attribute on fresh renders (a seed never used in training)."""
    rng = np.random.default_rng(seed)
    imgs, lab, _ = world.sample_batch(n, rng, size)
    probs = judge.predict(imgs)
    truth = {"shape": lab.shape, "color": lab.color, "pattern": lab.pattern}
    return {k: float((probs[k].argmax(-1).numpy() == truth[k]).mean()) for k in HEADS}


def train_judge(
    steps: int = 1500, batch: int = 128, seed: int = 0, lr: float = 2e-3, size: int = 32, log=print, extra_images=None
) -> TinyworldJudge:
    """Train a judge on freshly rendered, augmented images. ``extra_images(n, rng)`` may add
    (images uint8, Labels) pairs, e.g. VAE reconstructions, mixed in at 25 %."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1000)
    gen = torch.Generator().manual_seed(seed + 2000)
    model = TinyworldJudge(size=size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.time()
    for step in (bar := tqdm(range(steps), desc="judge", mininterval=5)):
        imgs, lab, _ = world.sample_batch(batch, rng, size)
        if extra_images is not None and step % 4 == 3:
            imgs, lab = extra_images(batch, rng)
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
        x = augment(x, gen)
        out = model(x)
        # summed from a zero tensor, as Python's sum() did from 0 (same values); typed as a tensor
        loss = sum((F.cross_entropy(out[k], torch.from_numpy(getattr(lab, k)).long()) for k in HEADS), torch.zeros(()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    log(f"judge trained: {steps} steps in {time.time() - t0:.0f}s")
    return model
