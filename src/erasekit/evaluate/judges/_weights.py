"""Weight files for judges: safetensors only, pinned by sha256.

A judge never unpickles. A weight file given as ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` is read from its
safetensors twin (same name, ``.safetensors``) when there is one, and refused otherwise with the one line that
converts it; a model folder must hold ``*.safetensors`` weights (transformers is told ``use_safetensors=True``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ...errors import JudgeError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
# the small files that decide how a folder's weights are read: configs, tokenizer, processor, chat template
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.json",
    "chat_template.jinja",
    "added_tokens.json",
)
_SNAPSHOT = re.compile(r"^models--(?P<repo>.+)$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 16 MiB blocks (model weights do not fit twice in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def conversion_hint(src: Path, dst: Path) -> str:
    """The one line that turns a pickled state dict into safetensors without running its code."""
    return (
        f"python -c \"import torch, safetensors.torch as st; sd = torch.load('{src}', weights_only=True); "
        f"st.save_file({{k: v.contiguous() for k, v in sd.items()}}, '{dst}')\""
    )


def safetensors_file(path: str | Path, what: str) -> Path:
    """``path`` when it is a safetensors file; its ``.safetensors`` twin when ``path`` is a pickle format that has
    one; otherwise refused (a pickle-only file: with the conversion one-liner)."""
    p = Path(path).expanduser()
    if p.suffix.lower() in PICKLE_SUFFIXES:
        twin = p.with_suffix(".safetensors")
        if twin.is_file():
            return twin
        raise JudgeError(
            f"{what} {str(p)!r} is a pickle file, which erasekit never loads; convert it once with: "
            f"{conversion_hint(p, twin)}"
        )
    if p.suffix.lower() != ".safetensors":
        raise JudgeError(f"{what} must be a .safetensors file, got {str(p)!r}")
    if not p.is_file():
        raise JudgeError(f"{what} {str(p)!r} does not exist")
    return p


def safetensors_folder(folder: str | Path, what: str) -> list[Path]:
    """The ``*.safetensors`` weight files of a model folder (sorted); a folder holding only pickled weights is
    refused with the conversion one-liner, a folder without weights or ``config.json`` is refused too."""
    root = Path(folder).expanduser()
    if not (root / "config.json").is_file():
        raise JudgeError(f"{what} {str(root)!r} is not a local model folder (no config.json)")
    weights = sorted(p for p in root.iterdir() if p.suffix == ".safetensors" and p.is_file())
    if weights:
        return weights
    pickled = sorted(p for p in root.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickled:
        src = pickled[0]
        dst = src.with_name("model.safetensors" if len(pickled) == 1 else src.stem + ".safetensors")
        raise JudgeError(
            f"{what} {str(root)!r} holds only pickled weights ({', '.join(p.name for p in pickled)}), which erasekit "
            f"never loads; convert {'it' if len(pickled) == 1 else 'each'} once with: {conversion_hint(src, dst)}"
            + ("" if len(pickled) == 1 else " (and write model.safetensors.index.json naming the shards)")
        )
    raise JudgeError(f"{what} {str(root)!r} has no *.safetensors weights")


def hub_revision(folder: str | Path) -> dict[str, str] | None:
    """``{"repo": "org/name", "revision": <commit>}`` when ``folder`` is a Hugging Face cache snapshot
    (``.../models--org--name/snapshots/<commit>``), else None."""
    p = Path(folder).expanduser().resolve()
    if p.parent.name != "snapshots" or not _HEX40.match(p.name):
        return None
    m = _SNAPSHOT.match(p.parent.parent.name)
    return {"repo": m.group("repo").replace("--", "/"), "revision": p.name} if m else None


def folder_pins(folder: str | Path, weights: list[Path]) -> dict:
    """What pins a model folder: its path, hub revision (if a cache snapshot), the sha256 of every weight file and
    of every config / tokenizer / processor file present."""
    root = Path(folder).expanduser()
    configs = {n: file_sha256(root / n) for n in CONFIG_FILES if (root / n).is_file()}
    index = root / "model.safetensors.index.json"
    if index.is_file():
        configs[index.name] = file_sha256(index)
    return {
        "path": str(root),
        "hub": hub_revision(root),
        "weights_sha256": {p.name: file_sha256(p) for p in weights},
        "config_sha256": configs,
    }


def read_config(folder: str | Path) -> dict:
    """A model folder's ``config.json``, parsed."""
    path = Path(folder).expanduser() / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise JudgeError(f"cannot read {str(path)!r}: {e}") from None
    if not isinstance(data, dict):
        raise JudgeError(f"{str(path)!r} is not a JSON object")
    return data
