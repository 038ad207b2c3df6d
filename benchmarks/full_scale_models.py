"""Full-size SD 1.5 / 2.1 / XL, FLUX.1-dev, SD3.5-Medium, PixArt-Σ and Sana-1600M pipelines with random weights,
built offline and cached.

    python benchmarks/full_scale_models.py --family sd15|sd21|sdxl|flux1-dev|sd35-medium|pixart-sigma|sana-1600m|all
                                           [--cache-dir DIR]
                                           [--force] [--scaled] [--check]

The architectures are public: ``benchmarks/configs/<family>.json`` holds each family's published
component configurations (UNet, text encoder(s), VAE, scheduler; weights not included). This
builder turns one into a regular diffusers folder that loads with ``from_pretrained``, offline:

* every model is instantiated on the ``meta`` device (no memory), so only shapes are known;
* each tensor is then drawn (seeded by its name), cast to the published storage dtype (float16; bfloat16 for
  FLUX.1-dev and SD3.5) and streamed into the component's ``.safetensors`` file one at a time, so the builder's
  memory is one tensor (< 1 GB even for FLUX.1-dev's 12 B-parameter transformer) and the result does not depend on
  the order; components above save_pretrained's shard size are sharded with a weight-map index, as published;
* each model component is built once into ``<cache>/components/`` and linked into the pipeline folders that use it
  (a relative symlink): FLUX.1-dev, SD3.5-Medium and PixArt-Σ share one T5-XXL encoder build (4.7 B parameters,
  9.5 GB);
* initialisation is "sane random": Linear / conv weights N(0, 1/fan_in), embeddings N(0, 0.02²),
  norm weights 1 (Gemma's RMSNorm, which scales by 1 + weight: 0), biases 0, so activations stay O(1) through
  12–32 text-encoder layers in float16.

Images from these pipelines are noise; time and memory are real. The folder is cached under
``~/.cache/erasekit/full_scale/<family>-<config hash>`` (override with ``--cache-dir`` or
``ERASEKIT_FULL_SCALE_CACHE``), written to a temporary folder and renamed when complete, so an
interrupted build never leaves a folder that looks finished. It is never written into the repository.

``scaled_config`` shrinks a published config (UNet / VAE channels ÷ 8, text encoders to 2 layers)
while keeping what erasekit depends on: the block structure (16 / 16 / 70 cross-attention
blocks, SDXL's per-block transformer depth), the context width (768 / 1024 / 2048), SD 2.1's
linear projections and the tokenizers; on the DiTs the component classes, the two static sites and the block
kinds, every width ÷ 8 (PixArt-Σ / Sana: the caption projection reading the text encoder's width, the cross-attention
blocks). The default tests build those through the same code.
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
FAMILIES = ("sd15", "sd21", "sdxl", "flux1-dev", "sd35-medium", "pixart-sigma", "sana-1600m")
DIT_FAMILIES = ("flux1-dev", "sd35-medium", "pixart-sigma", "sana-1600m")
_DTYPE_TAGS = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
_CHUNK = 1 << 24  # elements drawn per step for large tensors (64 MB of float32)


def published_config(family: str) -> dict:
    """The published component configurations of ``family`` (``benchmarks/configs/<family>.json``)."""
    if family not in FAMILIES:
        raise SystemExit(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return json.loads((CONFIG_DIR / f"{family}.json").read_text(encoding="utf-8"))


def scaled_config(config: dict, divisor: int = 8, text_layers: int = 2) -> dict:
    """A small copy of ``config``: same block structure and context width, fewer channels and text layers.

    A UNet family keeps its context width (768 / 1024 / 2048) and cross-attention block structure. A DiT family
    (FLUX.1, SD3.5) keeps its component classes, its two static sites (``context_embedder`` reading T5's width,
    the pooled embedder reading the CLIP pooled width) and its block kinds (FLUX: double- and single-stream;
    SD3.5-M: dual image attention in the first blocks), with every width ÷ ``divisor`` (T5 4096 → 512,
    CLIP-L 768 → 96, CLIP-G 1280 → 160, so SD3's zero-padding of CLIP to T5's width still holds), ``text_layers``
    text-encoder layers and two blocks of each kind; the vocabularies stay full size.
    """
    cfg = copy.deepcopy(config)
    vae = cfg["vae"]
    if vae["_class_name"] == "AutoencoderDC":  # Sana's DC-AE: channels ÷ divisor, one layer per stage
        for side in ("encoder", "decoder"):
            vae[f"{side}_block_out_channels"] = [c // divisor for c in vae[f"{side}_block_out_channels"]]
            vae[f"{side}_layers_per_block"] = [1] * len(vae[f"{side}_layers_per_block"])
        vae["attention_head_dim"] = min(vae["attention_head_dim"], min(vae["encoder_block_out_channels"][3:]))
    else:
        vae["block_out_channels"] = [c // divisor for c in vae["block_out_channels"]]
        vae["norm_num_groups"] = math.gcd(*vae["block_out_channels"], 8)
        vae["layers_per_block"] = 1
        vae["sample_size"] = 64
    if "unet" in cfg:
        unet = cfg["unet"]
        unet["block_out_channels"] = [c // divisor for c in unet["block_out_channels"]]
        unet["norm_num_groups"] = math.gcd(*unet["block_out_channels"], 8)
        unet["sample_size"] = 8
        for key in ("text_encoder", "text_encoder_2"):
            if key in cfg:  # hidden size (the context width) stays; depth and MLP width shrink
                cfg[key]["num_hidden_layers"] = text_layers
                cfg[key]["intermediate_size"] = cfg[key]["hidden_size"]
    else:
        _scale_dit(cfg, divisor, text_layers)
    cfg["_comment"] = f"scaled-down copy (channels / {divisor}, {text_layers} text layers) of: " + config.get(
        "_comment", ""
    )
    return cfg


def _scale_dit(cfg: dict, divisor: int, text_layers: int) -> None:
    if "PixArt" in cfg["transformer"]["_class_name"] or "Sana" in cfg["transformer"]["_class_name"]:
        _scale_caption_dit(cfg, divisor, text_layers)
        return
    widths = {}
    for key in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        te = cfg.get(key)
        if te is None:
            continue
        if te["model_type"] == "t5":
            te.update(d_model=te["d_model"] // divisor, d_ff=te["d_ff"] // divisor, num_heads=8, num_layers=text_layers)
            widths["t5"] = te["d_model"]
        else:  # CLIP: same head count, narrower heads
            te.update(
                hidden_size=te["hidden_size"] // divisor,
                intermediate_size=te["hidden_size"] // divisor,
                projection_dim=te["projection_dim"] // divisor,
                num_hidden_layers=text_layers,
            )
            widths[key] = te["projection_dim"]
    tr = cfg["transformer"]
    tr["joint_attention_dim"] = widths["t5"]
    tr["pooled_projection_dim"] = sum(w for k, w in widths.items() if k != "t5")
    tr["num_attention_heads"] = max(2, tr["num_attention_heads"] // divisor)
    tr["attention_head_dim"] = tr["attention_head_dim"] // 4
    tr["num_layers"] = 2
    if "num_single_layers" in tr:  # FLUX: RoPE axes ÷ 4 with the head (16, 56, 56) -> (4, 14, 14)
        tr["num_single_layers"] = 2
        tr["axes_dims_rope"] = [d // 4 for d in tr.get("axes_dims_rope", (16, 56, 56))]
    if "dual_attention_layers" in tr:  # SD3.5-M: the first block keeps its second image attention
        tr["dual_attention_layers"] = [0]
        tr["caption_projection_dim"] = tr["num_attention_heads"] * tr["attention_head_dim"]
        tr["sample_size"], tr["pos_embed_max_size"] = 8, 16


def _scale_caption_dit(cfg: dict, divisor: int, text_layers: int) -> None:
    """PixArt-Σ / Sana: one text encoder (T5 / Gemma-2) whose states the caption projection reads, then cross-attention
    blocks (``attn2``) on the projection: the text encoder's width, the model width and the heads ÷ ``divisor``."""
    te, tr = cfg["text_encoder"], cfg["transformer"]
    if te["model_type"] == "t5":
        te.update(d_model=te["d_model"] // divisor, d_ff=te["d_ff"] // divisor, num_heads=8, num_layers=text_layers)
        width = te["d_model"]
    else:  # Gemma-2: same heads, narrower; one sliding-window and one global layer
        te.update(
            hidden_size=te["hidden_size"] // divisor,
            intermediate_size=te["intermediate_size"] // divisor,
            head_dim=te["head_dim"] // divisor,
            query_pre_attn_scalar=te["head_dim"] // divisor,
            num_hidden_layers=text_layers,
        )
        width = te["hidden_size"]
    tr["caption_channels"] = width
    tr["num_layers"] = 2
    tr["num_attention_heads"] = max(2, tr["num_attention_heads"] // divisor)
    tr["attention_head_dim"] = max(4, tr["attention_head_dim"] // 4)
    inner = tr["num_attention_heads"] * tr["attention_head_dim"]
    tr["cross_attention_dim"] = inner  # attn2 reads the caption projected to the model width
    if "num_cross_attention_heads" in tr:  # Sana: its own cross-attention heads
        tr["num_cross_attention_heads"] = 2
        tr["cross_attention_head_dim"] = inner // 2
        tr["sample_size"] = 8
    else:  # PixArt: 8 × 8 latents, norm groups that divide the width
        tr["sample_size"] = 8
        tr["norm_num_groups"] = math.gcd(inner, 8)


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------ meta models
def storage_dtype(config: dict) -> torch.dtype:
    """The dtype the weights are stored in: the published one (``storage_dtype``; float16 when not stated)."""
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}[config.get("storage_dtype", "float16")]


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _meta_model(name: str, config: dict) -> torch.nn.Module:
    """Component ``name`` of ``config`` built on the meta device (no storage)."""
    import diffusers
    import transformers

    cfg = config[name]
    with torch.device("meta"):
        if hasattr(diffusers, cfg["_class_name"]) and not hasattr(transformers, cfg["_class_name"]):
            return getattr(diffusers, cfg["_class_name"]).from_config(_clean(cfg))
        tcfg = _clean(cfg)
        tcfg.pop("torch_dtype", None)  # the storage dtype is the family's; transformers reads it from the weights
        model_cfg = transformers.AutoConfig.for_model(tcfg.pop("model_type"), **tcfg)
        model: torch.nn.Module = getattr(transformers, cfg["_class_name"])(model_cfg)
        return model


def _init_rule(model: torch.nn.Module) -> dict[str, tuple[str, float]]:
    """state-dict key -> ('normal', std) | ('ones', 0) | ('zeros', 0) | ('arange', 0)."""
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    # Gemma's RMSNorm scales by (1 + weight): its unit scale is a zero weight
    offset_norms = {f"{n}.weight" for n, m in model.named_modules() if type(m).__name__.startswith("Gemma")
                    and type(m).__name__.endswith("RMSNorm")}  # fmt: skip
    rules = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if key.endswith("position_ids"):
            rules[key] = ("arange", 0.0)
        elif key in offset_norms:
            rules[key] = ("zeros", 0.0)
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


Entry = tuple[str, tuple[int, ...], torch.dtype]


def _entries(model: torch.nn.Module, dtype: torch.dtype) -> list[Entry]:
    """(key, shape, dtype) of every tensor to store; a tied tensor (T5's shared / embed_tokens) once, first name."""
    out, seen = [], set()
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out.append((key, tuple(t.shape), torch.int64 if key.endswith("position_ids") else dtype))
    return out


def _nbytes(entry: Entry) -> int:
    return math.prod(entry[1]) * torch.empty(0, dtype=entry[2]).element_size()


def _write_safetensors(path: Path, entries: list[Entry], rules: dict, seed: int) -> int:
    """Write ``entries`` (drawn one at a time) as one safetensors file; returns the data bytes."""
    header, offset = {}, 0
    for key, shape, tdtype in entries:
        n = _nbytes((key, shape, tdtype))
        header[key] = {"dtype": _DTYPE_TAGS[tdtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape, tdtype in entries:
            x = _draw(key, shape, tdtype, rules[key], seed)
            f.write(x.view(torch.uint8).numpy().data if x.numel() else b"")
            del x
    return offset


def stream_safetensors(path: Path, model: torch.nn.Module, dtype: torch.dtype, seed: int) -> int:
    """Write ``model``'s state dict (drawn tensor by tensor, never all in memory) as safetensors; returns bytes."""
    return _write_safetensors(Path(path), _entries(model, dtype), _init_rule(model), seed)


def stream_component(
    folder: Path, weights_name: str, model: torch.nn.Module, dtype: torch.dtype, seed: int, max_shard: int
) -> int:
    """``model``'s weights into ``folder``: one ``weights_name`` file, or shards of at most ``max_shard`` bytes plus
    the ``<weights_name>.index.json`` weight map (the published layout of the large components), as
    ``save_pretrained`` would write them. Returns the data bytes."""
    entries, rules = _entries(model, dtype), _init_rule(model)
    total = sum(_nbytes(e) for e in entries)
    if total <= max_shard:
        return _write_safetensors(folder / weights_name, entries, rules, seed)
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + _nbytes(e) > max_shard:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += _nbytes(e)
    stem = weights_name.removesuffix(".safetensors")
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(folder / name, shard, rules, seed)
        weight_map.update({key: name for key, _, _ in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{weights_name}.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return total


# ----------------------------------------------------------------- the folder
MODEL_COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
# largest file per component before it is sharded: diffusers' and transformers' save_pretrained defaults
_MAX_SHARD = {"diffusers": 10 * 10**9, "transformers": 5 * 10**9}


def _library(model: torch.nn.Module) -> str:
    import transformers

    return "transformers" if isinstance(model, transformers.PreTrainedModel) else "diffusers"


def _weights_name(library: str) -> str:
    return "model.safetensors" if library == "transformers" else "diffusion_pytorch_model.safetensors"


def component_folder(
    name: str, config: dict, root: Path, seed: int = 0, progress: bool = True, max_shard: int | None = None
) -> Path:
    """The cached folder of one model component (shared by every pipeline whose component has the same config,
    storage dtype and seed: FLUX.1-dev and SD3.5 would share one T5-XXL this way), built on first use."""
    dtype = storage_dtype(config)
    tag = _DTYPE_TAGS[dtype].lower()
    cfg = config[name]
    same = {k: v for k, v in cfg.items() if k != "torch_dtype"}  # the dtype is the tag: equal models share a build
    final = root / "components" / f"{cfg['_class_name']}-{tag}-s{seed}-{config_hash(same)}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model = _meta_model(name, config)
        library = _library(model)
        if library == "transformers":
            model.config.dtype = dtype  # type: ignore[union-attr]  # what the published config.json states
            model.config.save_pretrained(tmp)  # type: ignore[union-attr]
        else:
            model.save_config(tmp)  # type: ignore[operator]
        t0 = time.perf_counter()
        limit = max_shard if max_shard is not None else _MAX_SHARD[library]
        nbytes = stream_component(tmp, _weights_name(library), model, dtype, seed, limit)
        if progress:
            print(
                f"  {name:15s} {nbytes / 2**30:6.2f} GiB  {time.perf_counter() - t0:6.1f} s",
                file=sys.stderr,
                flush=True,
            )
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def write_pipeline_folder(
    config: dict,
    folder: str | Path,
    seed: int = 0,
    progress: bool = True,
    components: Path | None = None,
    max_shard: int | None = None,
) -> Path:
    """Write a complete diffusers folder for ``config`` into ``folder`` (which must not exist yet).

    Model components are built into the shared component store ``components`` (default: beside ``folder``) and
    linked into the folder by relative symlinks, so two pipelines with the same text encoder store it once.
    """
    import diffusers

    from erasekit.models.tokenizer import gemma_tokenizer, t5_tokenizer, write_clip_tokenizer_files

    folder = Path(folder)
    folder.mkdir(parents=True)
    store = Path(components) if components is not None else folder.parent
    index = {"_class_name": config["pipeline"], "_diffusers_version": diffusers.__version__}
    for name in MODEL_COMPONENTS:
        if name not in config:
            continue
        comp = component_folder(name, config, store, seed=seed, progress=progress, max_shard=max_shard)
        (folder / name).symlink_to(os.path.relpath(comp, folder))
        cls = config[name]["_class_name"]
        import transformers

        index[name] = ["transformers" if hasattr(transformers, cls) else "diffusers", cls]
    for name in TOKENIZERS:
        if name not in config:
            continue
        tcfg = config[name]
        if tcfg.get("_class_name") == "T5TokenizerFast":
            t5_tokenizer(tcfg["model_max_length"], tcfg["vocab_size"]).save_pretrained(folder / name)
            index[name] = ["transformers", "T5TokenizerFast"]
        elif tcfg.get("_class_name") == "GemmaTokenizerFast":
            # saved as a plain fast tokenizer: GemmaTokenizerFast.from_pretrained would rebuild Gemma's BPE pipeline
            # around the stand-in's Unigram vocabulary and tokenize character by character
            gemma_tokenizer(tcfg["model_max_length"]).save_pretrained(folder / name)
            tok_cfg = folder / name / "tokenizer_config.json"
            saved = json.loads(tok_cfg.read_text(encoding="utf-8"))
            tok_cfg.write_text(json.dumps({**saved, "tokenizer_class": "PreTrainedTokenizerFast"}), encoding="utf-8")
            index[name] = ["transformers", "PreTrainedTokenizerFast"]
        else:
            write_clip_tokenizer_files(folder / name, pad_token=tcfg["pad_token"])
            index[name] = ["transformers", "CLIPTokenizer"]
    sched_cfg = dict(config["scheduler"])
    scheduler = getattr(diffusers, sched_cfg.pop("_class_name")).from_config(sched_cfg)
    scheduler.save_config(folder / "scheduler")
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    if config["pipeline"] == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None])
    elif config["pipeline"] == "StableDiffusionXLPipeline":
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
    tag = {torch.float16: "fp16", torch.bfloat16: "bf16"}[storage_dtype(config)]
    final = root / f"{family}-{tag}-s{seed}-{config_hash(config)}"
    if final.is_dir() and (final / "model_index.json").is_file() and not force:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    if progress:
        print(f"building {family} into {final} ...", file=sys.stderr, flush=True)
    try:
        write_pipeline_folder(config, tmp, seed=seed, progress=progress, components=root)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def folder_bytes(folder: Path) -> int:
    """Bytes of the weight files of a pipeline folder (its component links followed)."""
    return sum(p.stat().st_size for c in Path(folder).iterdir() for p in c.resolve().glob("*.safetensors"))


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
            pipe = load_pipeline(str(folder), dtype=str(storage_dtype(cfg)).replace("torch.", ""))
            adapter = PipelineAdapter(pipe)
            for group in adapter.groups:  # one on UNets, PixArt, Sana; SD3 / FLUX: the text stream and pooled vector
                view = adapter.for_group(group)
                enc = view.encode(["a painting of a lighthouse by the sea"])
                print(
                    f"  loaded + encoded in {time.perf_counter() - t0:.1f} s: group {group!r}, {len(view.paths)} "
                    f"sites, d_in {view.d_in}, embeds {tuple(enc.embeds.shape)} "
                    f"finite={bool(torch.isfinite(enc.embeds).all())}",
                    flush=True,
                )
            del pipe, adapter
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
