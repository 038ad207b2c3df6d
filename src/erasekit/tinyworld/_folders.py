"""Writing a bundled model's pipeline folder: the steps every trainer's ``save_pipeline*`` shares.

The folder is written beside its destination (``<name>.tmp``) and swapped in only when complete, so an interrupted
save never leaves a folder that looks finished; weights are fp16 while the text encoders' configs say float32, so a
plain ``from_pretrained(path)`` (no dtype) loads every part in float32 and runs on a CPU.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from .._atomic import apply_umask_to_tree


def fresh_tmp(folder: Path) -> Path:
    """The empty staging folder ``<folder>.tmp`` (a leftover of an interrupted save is removed)."""
    tmp = Path(folder).with_name(Path(folder).name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def configs_say_float32(tmp: Path, components: Iterable[str]) -> None:
    """Rewrite each component's ``config.json`` dtype to float32 (its weights stay fp16 on disk)."""
    for name in components:
        cfg_path = tmp / name / "config.json"
        cfg = json.loads(cfg_path.read_text())
        for key in ("dtype", "torch_dtype"):
            if key in cfg:
                cfg[key] = "float32"
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def swap_in(tmp: Path, folder: Path) -> None:
    """Give ``tmp`` the user's umask (safetensors writes 0600) and put it in ``folder``'s place, keeping the old one
    until the new one is there."""
    apply_umask_to_tree(tmp)
    folder = Path(folder)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)
