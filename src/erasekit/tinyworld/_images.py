"""Image tensors of the world's renders: uint8 (n, H, W, 3) <-> float (n, 3, H, W) in [-1, 1], as the VAE takes them.

Its own module (torch and numpy only) so that the model builders (``flux``) and the trainers (``_training``) share it
without importing each other.
"""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(imgs: np.ndarray, device) -> torch.Tensor:
    """uint8 (n,H,W,3) -> float (n,3,H,W) in [-1,1]."""
    return torch.from_numpy(imgs).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (n,3,H,W) in [-1,1] -> uint8 (n,H,W,3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
