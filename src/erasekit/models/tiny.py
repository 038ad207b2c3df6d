"""Tiny, randomly initialised SD 1.x / 2.x / XL, PixArt-Σ, Sana, SD3 and FLUX.1 pipelines built offline from configs.

They have the exact module structure of the real families (same classes, cross-attention
layout, SDXL's two encoders and 2-part embeddings, the real CLIP tokenizer; PixArt's, SD3's and
FLUX's T5 and Sana's Gemma-2 with offline stand-in tokenizers, models/tokenizer.py) at a size that
runs in milliseconds: the project's test matrix and the CLI's smoke runs use them. The SD3 build has
SD3.5-Medium's layout (a dual-attention block whose ``attn2`` is image self-attention, RMS q/k norms), ``sd3.0``
SD3-Medium's (no ``attn2``, no q/k norms);
``flux`` is FLUX.1-dev-like (guidance embedding), ``flux-schnell`` has none.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from .tokenizer import CLIP_VOCAB_SIZE, gemma_tokenizer, t5_tokenizer, write_clip_tokenizer_files

if TYPE_CHECKING:
    from diffusers import FluxPipeline, PixArtSigmaPipeline, SanaPipeline, StableDiffusion3Pipeline
    from diffusers.models import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTokenizer, PreTrainedTokenizerBase, T5EncoderModel

    from .families import Pipeline

FAMILIES = ("sd", "sd2", "sdxl", "pixart", "sana", "sd3", "sd3.0", "flux", "flux-schnell")
_M = TypeVar("_M", bound=nn.Module)


def _eval(module: _M) -> _M:
    """``module`` in eval mode, as from_pretrained leaves a model (a fresh module is in train mode)."""
    module.eval()
    return module


def _text_config(hidden: int, projection_dim: int | None = None) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=projection_dim or hidden,
        hidden_act="quick_gelu",
    )


def _vae(**extra: Any) -> AutoencoderKL:
    from diffusers.models import AutoencoderKL  # not `from diffusers`: mypy reads that as a placeholder class

    vae: AutoencoderKL = AutoencoderKL(  # its __init__ is wrapped by diffusers' untyped register_to_config
        **extra,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    return vae


def _tokenizer(pad_token: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(tmp, pad_token=pad_token)
        tok: CLIPTokenizer = CLIPTokenizer.from_pretrained(tmp)
        return tok


def _tiny_pixart() -> PixArtSigmaPipeline:
    """PixArt-Σ: T5 (24-d) → caption_projection → 2 blocks of width 16 whose attn2 reads it."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline
    from diffusers.models import PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    te = T5EncoderModel(
        T5Config(
            vocab_size=len(tok),
            d_model=24,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
        )
    )
    tr = PixArtTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=8,  # learned sigma, as the real models
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=24,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
    )
    # eval(), as from_pretrained leaves a model: T5 has dropout 0.1, and a fresh module is in train mode
    return PixArtSigmaPipeline(
        tokenizer=tok,
        text_encoder=_eval(te),
        vae=_eval(_vae()),
        transformer=_eval(tr),
        scheduler=DPMSolverMultistepScheduler(),
    )


def _tiny_sana() -> SanaPipeline:
    """Sana: Gemma-2 (16-d) → caption_projection → caption_norm → 2 linear-attention blocks; attn2 reads it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline
    from diffusers.models import AutoencoderDC, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = gemma_tokenizer()
    te = Gemma2Model(
        Gemma2Config(
            head_dim=8,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            num_key_value_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=1024,
        )
    )
    tr = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=8,
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    return SanaPipeline(  # eval(), as from_pretrained leaves a model
        tokenizer=tok,
        text_encoder=_eval(te),
        vae=_eval(vae),
        transformer=_eval(tr),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


def _t5(tok: PreTrainedTokenizerBase, d_model: int) -> T5EncoderModel:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8,
    )  # fmt: skip
    return _eval(T5EncoderModel(cfg))  # T5 has dropout 0.1


def _tiny_sd3(medium_35: bool = True) -> StableDiffusion3Pipeline:
    """SD3.5-Medium-like: CLIP-L (16-d) ⊕ CLIP-G (24-d) padded to T5's 48-d, joined with T5 → context_embedder;
    pooled (16 + 24) → the pooled embedder; block 0 has a second image self-attention ``attn2``. ``medium_35`` False:
    SD3-Medium-like (3.0), no ``attn2`` and no q/k norms."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from diffusers.models import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    tr = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=48,
        caption_projection_dim=16,
        pooled_projection_dim=16 + 24,
        pos_embed_max_size=16,
        dual_attention_layers=(0,) if medium_35 else (),
        qk_norm="rms_norm" if medium_35 else None,
    )
    tok3 = t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=_eval(tr),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_eval(_vae(shift_factor=0.0609)),
        text_encoder=_eval(CLIPTextModelWithProjection(_text_config(16, 16))),
        tokenizer=_tokenizer("<|endoftext|>"),
        text_encoder_2=_eval(CLIPTextModelWithProjection(_text_config(24, 24))),
        tokenizer_2=_tokenizer("!"),
        text_encoder_3=_t5(tok3, 48),
        tokenizer_3=tok3,
    )


def _tiny_flux(guidance: bool) -> FluxPipeline:
    """FLUX.1: T5 (24-d) → context_embedder, CLIP-L pooled (16-d) → the pooled embedder; one double and one single
    block of width 16; dev embeds the guidance scale, schnell does not."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from diffusers.models import FluxTransformer2DModel
    from transformers import CLIPTextModel

    tr = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 4,  # 4 latent channels, packed 2 × 2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=24,
        pooled_projection_dim=16,
        guidance_embeds=guidance,
        axes_dims_rope=(2, 2, 4),
    )
    tok2 = t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_eval(_vae(shift_factor=0.1159)),
        text_encoder=_eval(CLIPTextModel(_text_config(16))),
        tokenizer=_tokenizer("<|endoftext|>"),
        text_encoder_2=_t5(tok2, 24),
        tokenizer_2=tok2,
        transformer=_eval(tr),
    )
    # the latent side of the default image (FluxPipeline says 128; an attribute, not saved in the folder)
    setattr(pipe, "default_sample_size", 8)  # noqa: B010
    return pipe


def build_tiny_pipeline(family: str = "sd", seed: int = 0) -> Pipeline:
    """A randomly initialised pipeline of ``family``: ``sd`` (SD 1.x), ``sd2``, ``sdxl``, ``pixart`` (Σ), ``sana``,
    ``sd3`` (3.5-Medium layout), ``sd3.0`` (3.0-Medium layout), ``flux`` (FLUX.1-dev layout) or ``flux-schnell``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")
    torch.manual_seed(seed)
    if family == "pixart":
        return _tiny_pixart()
    if family == "sana":
        return _tiny_sana()
    if family in ("sd3", "sd3.0"):
        return _tiny_sd3(medium_35=family == "sd3")
    if family in ("flux", "flux-schnell"):
        return _tiny_flux(guidance=family == "flux")
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    common = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    if family == "sdxl":
        # Two encoders of 24 and 40 dims: prompt embeddings are their concatenation (64-d), like SDXL's 768 + 1280.
        unet = UNet2DConditionModel(
            **common,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=64,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 40,
        )
        return StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(_text_config(24)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(40, 40)),
            tokenizer=_tokenizer("<|endoftext|>"),
            tokenizer_2=_tokenizer("!"),
            unet=unet,
            scheduler=scheduler,
        )
    hidden = 32 if family == "sd" else 48
    unet = UNet2DConditionModel(
        **common,
        attention_head_dim=(2, 4) if family == "sd2" else 8,
        use_linear_projection=family == "sd2",
        cross_attention_dim=hidden,
    )
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(hidden)),
        tokenizer=_tokenizer("<|endoftext|>" if family == "sd" else "!"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: str | Path, family: str = "sd", seed: int = 0) -> Path:
    """Build and save a tiny pipeline as a regular diffusers folder (loads with ``from_pretrained``)."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(family, seed)
    pipe.save_pretrained(folder)
    if type(pipe.tokenizer).__name__.startswith("GemmaTokenizer"):  # transformers 5 names the fast one GemmaTokenizer
        plain_fast_tokenizer(folder, "tokenizer")
    return folder


def plain_fast_tokenizer(folder: Path, name: str) -> None:
    """Mark a saved Gemma stand-in tokenizer as a plain ``PreTrainedTokenizerFast`` (its tokenizer.json as it is):
    ``GemmaTokenizerFast.from_pretrained`` would rebuild Gemma's BPE pipeline around the stand-in's Unigram vocabulary
    and tokenize character by character, so a saved tiny Sana would encode other ids than the built one."""
    import json

    cfg_path = folder / name / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg_path.write_text(json.dumps({**cfg, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2), encoding="utf-8")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index[name] = ["transformers", "PreTrainedTokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2), encoding="utf-8")


def save_tiny_clip(folder: str | Path, projection_dim: int = 16, seed: int = 0) -> Path:
    """A tiny random ``CLIPModel`` (32-px vision tower, one layer each) with the real CLIP tokenizer files, saved
    offline with ``save_pretrained``: what the CLIP and aesthetics judges read. Its judgements are meaningless;
    it checks plumbing (preprocessing, prompts, recorded settings)."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=CLIP_VOCAB_SIZE - 2,
            eos_token_id=CLIP_VOCAB_SIZE - 1,
            pad_token_id=CLIP_VOCAB_SIZE - 1,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=projection_dim,
    )
    CLIPModel(cfg).save_pretrained(folder)
    write_clip_tokenizer_files(folder)
    return folder
