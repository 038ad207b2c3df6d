"""Full-size SD 1.5 / SD 2.1 / SDXL pipelines with random weights, built offline and cached.

    python benchmarks/full_scale_models.py --family sd15|sd21|sdxl|all [--cache-dir DIR] [--force]

The architectures are public: ``benchmarks/configs/<family>.json`` holds each family's published
component configurations (UNet, text encoder(s), VAE, scheduler; weights not included). This
builder turns one into a regular diffusers folder that loads with ``from_pretrained``, offline:

* every model is instantiated on the ``meta`` device (no memory), so only shapes are known;
* each tensor is then drawn (seeded by its name), cast to float16 and streamed into the
  component's ``.safetensors`` file one at a time, so the builder's memory is one tensor
  (< 1 GB even for SDXL's 2.6 B-parameter UNet) and the result does not depend on the order;
* initialisation is "sane random": Linear / conv weights N(0, 1/fan_in), embeddings N(0, 0.02²),
  norm weights 1, biases 0, so activations stay O(1) through 12–32 text-encoder layers in float16.

Images from these pipelines are noise; time and memory are real. The folder is cached under
``~/.cache/erasekit/full_scale/<family>-<config hash>`` (override with ``--cache-dir`` or
``ERASEKIT_FULL_SCALE_CACHE``), written to a temporary folder and renamed when complete, so an
interrupted build never leaves a folder that looks finished. It is never written into the repository.

``scaled_config`` shrinks a published config (UNet / VAE channels ÷ 8, text encoders to 2 layers)
while keeping what erasekit depends on: the block structure (16 / 16 / 70 cross-attention
blocks, SDXL's per-block transformer depth), the context width (768 / 1024 / 2048), SD 2.1's
linear projections and the tokenizers. The default tests build those through the same code.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
FAMILIES = ("sd15", "sd21", "sdxl")
_DTYPE_TAGS = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
_CHUNK = 1 << 24  # elements drawn per step for large tensors (64 MB of float32)


def published_config(family: str) -> dict:
    """The published component configurations of ``family`` (``benchmarks/configs/<family>.json``)."""
    if family not in FAMILIES:
        raise SystemExit(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return json.loads((CONFIG_DIR / f"{family}.json").read_text(encoding="utf-8"))


def scaled_config(config: dict, divisor: int = 8, text_layers: int = 2) -> dict:
    """A small copy of ``config``: same block structure and context width, fewer channels and text layers."""
    cfg = copy.deepcopy(config)
    unet, vae = cfg["unet"], cfg["vae"]
    unet["block_out_channels"] = [c // divisor for c in unet["block_out_channels"]]
    unet["norm_num_groups"] = math.gcd(*unet["block_out_channels"], 8)
    vae["block_out_channels"] = [c // divisor for c in vae["block_out_channels"]]
    vae["norm_num_groups"] = math.gcd(*vae["block_out_channels"], 8)
    vae["layers_per_block"] = 1
    unet["sample_size"], vae["sample_size"] = 8, 64
    for key in ("text_encoder", "text_encoder_2"):
        if key in cfg:  # hidden size (the context width) stays; depth and MLP width shrink
            cfg[key]["num_hidden_layers"] = text_layers
            cfg[key]["intermediate_size"] = cfg[key]["hidden_size"]
    cfg["_comment"] = f"scaled-down copy (channels / {divisor}, {text_layers} text layers) of: " + config.get(
        "_comment", ""
    )
    return cfg


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------ meta models
def _meta_models(config: dict) -> dict:
    """component name -> model built on the meta device (no storage)."""
    import diffusers
    import transformers

    models = {}
    with torch.device("meta"):
        for name in ("unet", "vae"):
            cfg = {k: v for k, v in config[name].items() if not k.startswith("_")}
            models[name] = getattr(diffusers, config[name]["_class_name"]).from_config(cfg)
        for name in ("text_encoder", "text_encoder_2"):
            if name in config:
                tcfg = {k: v for k, v in config[name].items() if not k.startswith("_")}
                model_cls = getattr(transformers, config[name]["_class_name"])
                models[name] = model_cls(transformers.CLIPTextConfig(**tcfg))
    return models


def _init_rule(model: torch.nn.Module) -> dict[str, tuple[str, float]]:
    """state-dict key -> ('normal', std) | ('ones', 0) | ('zeros', 0) | ('arange', 0)."""
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    rules = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if key.endswith("position_ids"):
            rules[key] = ("arange", 0.0)
        elif key in embeddings:
            rules[key] = ("normal", 0.02)
        elif t.dim() == 1:
            rules[key] = ("ones" if key.endswith("weight") else "zeros", 0.0)
        else:
            fan_in = math.prod(t.shape[1:])
            rules[key] = ("normal", 1.0 / math.sqrt(fan_in))
    return rules


def _draw(key: str, shape: tuple[int, ...], dtype: torch.dtype, rule: tuple[str, float], seed: int) -> torch.Tensor:
    kind, std = rule
    if kind == "arange":
        return torch.arange(shape[-1], dtype=dtype).expand(shape).contiguous()
    if kind in ("ones", "zeros"):
        return (torch.ones if kind == "ones" else torch.zeros)(shape, dtype=dtype)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    n = math.prod(shape)
    out = torch.empty(n, dtype=dtype)
    for i in range(0, n, _CHUNK):  # bounded float32 scratch for the largest tensors
        m = min(_CHUNK, n - i)
        out[i : i + m] = torch.randn(m, generator=g, dtype=torch.float32).mul_(std)
    return out.view(shape)


def stream_safetensors(path: Path, model: torch.nn.Module, dtype: torch.dtype, seed: int) -> int:
    """Write ``model``'s state dict (drawn tensor by tensor, never all in memory) as safetensors; returns bytes."""
    rules = _init_rule(model)
    entries, offset = [], 0
    for key, t in model.state_dict(keep_vars=True).items():
        tdtype = torch.int64 if key.endswith("position_ids") else dtype
        nbytes = math.prod(t.shape) * torch.empty(0, dtype=tdtype).element_size()
        entries.append((key, tuple(t.shape), tdtype, offset, offset + nbytes))
        offset += nbytes
    header = {k: {"dtype": _DTYPE_TAGS[d], "shape": list(s), "data_offsets": [a, b]} for k, s, d, a, b in entries}
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape, tdtype, _start, _end in entries:
            x = _draw(key, shape, tdtype, rules[key], seed)
            f.write(x.view(torch.uint8).numpy().data if x.numel() else b"")
            del x
    return offset


# ----------------------------------------------------------------- the folder
_WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
}


def write_pipeline_folder(
    config: dict, folder: str | Path, dtype: torch.dtype = torch.float16, seed: int = 0, progress: bool = True
) -> Path:
    """Write a complete diffusers folder for ``config`` into ``folder`` (which must not exist yet)."""
    import diffusers
    import transformers

    from erasekit.models.tokenizer import write_clip_tokenizer_files

    folder = Path(folder)
    folder.mkdir(parents=True)
    models = _meta_models(config)
    index = {"_class_name": config["pipeline"], "_diffusers_version": diffusers.__version__}
    for name, model in models.items():
        sub = folder / name
        sub.mkdir()
        if isinstance(model, transformers.PreTrainedModel):
            model.config.save_pretrained(sub)
            index[name] = ["transformers", type(model).__name__]
        else:
            model.save_config(sub)
            index[name] = ["diffusers", type(model).__name__]
        t0 = time.perf_counter()
        nbytes = stream_safetensors(sub / _WEIGHT_FILES[name], model, dtype, seed)
        if progress:
            print(
                f"  {name:15s} {nbytes / 2**30:6.2f} GiB  {time.perf_counter() - t0:6.1f} s",
                file=sys.stderr,
                flush=True,
            )
    for name in ("tokenizer", "tokenizer_2"):
        if name in config:
            write_clip_tokenizer_files(folder / name, pad_token=config[name]["pad_token"])
            index[name] = ["transformers", "CLIPTokenizer"]
    sched_cfg = dict(config["scheduler"])
    scheduler = getattr(diffusers, sched_cfg.pop("_class_name")).from_config(sched_cfg)
    scheduler.save_config(folder / "scheduler")
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    if config["pipeline"] == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None])
    else:
        index.update(image_encoder=[None, None], feature_extractor=[None, None])
    index.update(config.get("model_index", {}))
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ERASEKIT_FULL_SCALE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "erasekit" / "full_scale"


def pipeline_folder(
    family: str,
    cache_dir: str | Path | None = None,
    *,
    config: dict | None = None,
    force: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """The cached diffusers folder of ``family`` at full size (or of ``config``), built on first use."""
    config = config if config is not None else published_config(family)
    root = cache_root(cache_dir)
    final = root / f"{family}-fp16-s{seed}-{config_hash(config)}"
    if final.is_dir() and (final / "model_index.json").is_file() and not force:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    if progress:
        print(f"building {family} into {final} ...", file=sys.stderr, flush=True)
    try:
        write_pipeline_folder(config, tmp, seed=seed, progress=progress)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="sd15", choices=(*FAMILIES, "all"))
    ap.add_argument("--cache-dir", default=None, help="where the folders live (default ~/.cache/erasekit/full_scale)")
    ap.add_argument("--scaled", action="store_true", help="build the scaled-down copy instead (seconds; for checks)")
    ap.add_argument("--force", action="store_true", help="rebuild even if a cached folder exists")
    ap.add_argument("--check", action="store_true", help="load the folder with from_pretrained and encode one prompt")
    args = ap.parse_args(argv)
    for family in FAMILIES if args.family == "all" else (args.family,):
        cfg = published_config(family)
        if args.scaled:
            cfg = scaled_config(cfg)
        t0 = time.perf_counter()
        folder = pipeline_folder(family, args.cache_dir, config=cfg, force=args.force)
        built = time.perf_counter() - t0
        print(
            f"{family}: {folder}  {folder_bytes(folder) / 2**30:.2f} GiB on disk  {built:.1f} s  "
            f"peak RSS {_peak_rss_bytes() / 2**30:.2f} GiB",
            flush=True,
        )
        if args.check:
            from erasekit.models.adapter import PipelineAdapter
            from erasekit.models.loading import load_pipeline

            t0 = time.perf_counter()
            pipe = load_pipeline(str(folder), dtype="float16")
            adapter = PipelineAdapter(pipe)
            enc = adapter.encode(["a painting of a lighthouse by the sea"])
            print(
                f"  loaded + encoded in {time.perf_counter() - t0:.1f} s: {len(adapter.attention_layers())} "
                f"cross-attention blocks, d_in {adapter.d_in}, embeds {tuple(enc.embeds.shape)} "
                f"finite={bool(torch.isfinite(enc.embeds).all())}",
                flush=True,
            )
            del pipe, adapter
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
