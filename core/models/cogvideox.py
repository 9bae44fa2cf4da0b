"""Everything CogVideoX-specific: load, encode, noise, forward, loss and sampling.

The training loop talks to the model family only through this module (one file per family): a
second family would be a second file with the same surface, not branches in the loop.

Shapes: the VAE works on videos as [B, C, F, H, W]; the transformer on latents as [B, F, C, H, W].
Latents handed to the loop are already scaled by the VAE's scaling factor and, for the 1.5 family
(temporal patch 2), padded in front to a whole number of temporal patches, as the pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import UserError
from core.models.source import ModelSource, check_source, fetch_source, read_component_config

__all__ = ["ModelSource", "check_source", "fetch_source", "read_component_config"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP8_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
MAX_TEXT_TOKENS = 226  # the transformer's max_text_seq_length; the pipeline must use the same


def component_folder(source: ModelSource, component: str) -> Path:
    """The local folder a component's files load from (a Hub download's snapshot folder)."""
    if source.is_local:
        return Path(source.location) / component
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(
        source.name, revision=source.revision, allow_patterns=[f"{component}/*"]
    )
    return Path(snapshot) / component


def _load(loader, source: ModelSource, component: str, **kwargs):
    try:
        return loader.from_pretrained(
            source.location, subfolder=component, **source.kwargs(), **kwargs
        )
    except (OSError, ValueError) as error:
        raise UserError(
            f"--pretrained_model_name_or_path: could not load the {component} of "
            f"{source.name} ({str(error).splitlines()[0][:200]})"
        ) from None


def load_tokenizer(source: ModelSource):
    from transformers import T5Tokenizer

    return _load(T5Tokenizer, source, "tokenizer")


def load_text_encoder(source: ModelSource, dtype: torch.dtype):
    from transformers import T5EncoderModel

    model = _load(T5EncoderModel, source, "text_encoder", dtype=dtype)
    return model.requires_grad_(False).eval()


def load_vae(source: ModelSource, dtype: torch.dtype, slicing: bool = False, tiling: bool = False):
    from diffusers import AutoencoderKLCogVideoX

    vae = _load(AutoencoderKLCogVideoX, source, "vae", dtype=dtype)
    if slicing:
        vae.enable_slicing()
    if tiling:
        vae.enable_tiling()
    return vae.requires_grad_(False).eval()


def load_transformer(source: ModelSource, dtype: torch.dtype):
    from diffusers import CogVideoXTransformer3DModel

    return _load(CogVideoXTransformer3DModel, source, "transformer", dtype=dtype)


def load_scheduler(source: ModelSource):
    from diffusers import CogVideoXDPMScheduler

    return _load(CogVideoXDPMScheduler, source, "scheduler")


# ---------------------------------------------------------------------------------------------
# Family rules


@dataclass(frozen=True)
class FamilyRules:
    """What the loaded checkpoint's architecture asks of the data."""

    temporal_compression: int
    spatial_compression: int
    patch_size: int
    patch_size_t: int | None
    scaling_factor: float
    rotary: bool

    @property
    def frame_step(self) -> int:
        """Clips have frame_step*k+1 frames: 4k+1, and 8k+1 for the temporal-patch-2 family."""
        return self.temporal_compression * (self.patch_size_t or 1)

    @property
    def family(self) -> str:
        if self.patch_size_t:
            return "CogVideoX1.5"
        return "CogVideoX (5B-style, rotary)" if self.rotary else "CogVideoX (2B-style)"

    def latent_frames(self, frames: int) -> int:
        latent = (frames - 1) // self.temporal_compression + 1
        if self.patch_size_t and latent % self.patch_size_t:
            latent += self.patch_size_t - latent % self.patch_size_t
        return latent

    def video_tokens(self, frames: int, height: int, width: int) -> int:
        """The transformer's tokens for one clip: one per patch of the latent video."""
        side = self.spatial_compression * self.patch_size
        temporal_patches = self.latent_frames(frames) // (self.patch_size_t or 1)
        return temporal_patches * (height // side) * (width // side)


def family_rules(source: ModelSource) -> FamilyRules:
    transformer = read_component_config(source, "transformer")
    vae = read_component_config(source, "vae")
    return FamilyRules(
        temporal_compression=int(vae.get("temporal_compression_ratio", 4)),
        spatial_compression=2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1),
        patch_size=int(transformer.get("patch_size", 2)),
        patch_size_t=transformer.get("patch_size_t"),
        scaling_factor=float(vae.get("scaling_factor", 1.15258426)),
        rotary=bool(transformer.get("use_rotary_positional_embeddings", False)),
    )


# ---------------------------------------------------------------------------------------------
# Encoding


@torch.no_grad()
def encode_prompts(
    tokenizer,
    text_encoder,
    prompts: list[str],
    device: torch.device,
    max_tokens: int = MAX_TEXT_TOKENS,
) -> torch.Tensor:
    """T5 embeddings [B, 226, D] padded to the transformer's text length, as the pipeline does."""
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_tokens,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return text_encoder(tokens.input_ids.to(device))[0]


def count_prompt_tokens(tokenizer, prompt: str) -> int:
    return len(tokenizer(prompt, add_special_tokens=True).input_ids)


@torch.no_grad()
def encode_videos(vae, videos: torch.Tensor) -> torch.Tensor:
    """Videos [B, F, C, H, W] in [-1, 1] to the VAE's latent distribution parameters.

    The parameters (mean and log-variance, [B, 2C, f, h, w]) are kept rather than one sample,
    so every step draws a fresh latent from the posterior, as the reference trainers do.
    """
    videos = videos.to(device=vae.device, dtype=vae.dtype).permute(0, 2, 1, 3, 4)
    return vae.encode(videos).latent_dist.parameters


def per_sample_randn(
    shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device
) -> torch.Tensor:
    """Standard normal noise [B, *shape], sample i drawn from generators[i].

    Drawing each sample from its own generator makes a sample's noise independent of which
    process trains it and of what else is in its batch.
    """
    return torch.stack(
        [torch.randn(shape, generator=g, device=device, dtype=torch.float32) for g in generators]
    )


def sample_latents(
    parameters: torch.Tensor, rules: FamilyRules, generators: list[torch.Generator]
) -> torch.Tensor:
    """Draw scaled latents [B, f, C, h, w] from stored distribution parameters (fp32)."""
    mean, logvar = parameters.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = per_sample_randn(tuple(mean.shape[1:]), generators, mean.device)
    latents = (mean + std * noise) * rules.scaling_factor
    latents = latents.permute(0, 2, 1, 3, 4)
    return pad_temporal_patch(latents, rules)


def pad_temporal_patch(latents: torch.Tensor, rules: FamilyRules) -> torch.Tensor:
    """Repeat the first latent frame in front up to a whole number of temporal patches.

    The pipeline does the same when it samples (and drops the leading frames when it decodes),
    so training and inference see the same layout.
    """
    if not rules.patch_size_t:
        return latents
    remainder = latents.shape[1] % rules.patch_size_t
    if not remainder:
        return latents
    pad = latents[:, :1].repeat(1, rules.patch_size_t - remainder, 1, 1, 1)
    return torch.cat([pad, latents], dim=1)


# ---------------------------------------------------------------------------------------------
# Forward and loss


def rotary_embeddings(
    transformer_config,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    device: torch.device,
):
    """The 3D rotary embeddings the pipeline uses for this latent shape (None without rotary)."""
    if not transformer_config.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    patch = transformer_config.patch_size
    patch_t = transformer_config.patch_size_t
    grid_height, grid_width = latent_height // patch, latent_width // patch
    base_width = transformer_config.sample_width // patch
    base_height = transformer_config.sample_height // patch
    if patch_t is None:
        crops = get_resize_crop_region_for_grid((grid_height, grid_width), base_width, base_height)
        return get_3d_rotary_pos_embed(
            embed_dim=transformer_config.attention_head_dim,
            crops_coords=crops,
            grid_size=(grid_height, grid_width),
            temporal_size=latent_frames,
            device=device,
        )
    return get_3d_rotary_pos_embed(
        embed_dim=transformer_config.attention_head_dim,
        crops_coords=None,
        grid_size=(grid_height, grid_width),
        temporal_size=(latent_frames + patch_t - 1) // patch_t,
        grid_type="slice",
        max_size=(base_height, base_width),
        device=device,
    )


class RotaryCache:
    """Rotary embeddings per latent shape: computed once per bucket, not once per step."""

    def __init__(self, transformer_config, device: torch.device):
        self.config = transformer_config
        self.device = device
        self._cache: dict[tuple[int, int, int], Any] = {}

    def __call__(self, latents: torch.Tensor):
        frames, _, height, width = latents.shape[1:]
        key = (frames, height, width)
        if key not in self._cache:
            self._cache[key] = rotary_embeddings(self.config, frames, height, width, self.device)
        return self._cache[key]


def training_loss(
    transformer,
    alphas_cumprod: torch.Tensor,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generators: list[torch.Generator],
    rotary: RotaryCache,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """One v-prediction denoising loss on scaled latents [B, f, C, h, w], computed in fp32.

    The diffusers example's weighted x0-space loss, 1/(1-a) * |x0_pred - x0|^2, equals this plain
    MSE on the velocity; fp32 because the scheduler's alphas lose precision in bf16.
    """
    batch = latents.shape[0]
    steps = alphas_cumprod.shape[0]
    timesteps = torch.cat(
        [torch.randint(0, steps, (1,), generator=g, device=latents.device) for g in generators]
    )
    noise = per_sample_randn(tuple(latents.shape[1:]), generators, latents.device)
    alpha = alphas_cumprod[timesteps].view(batch, 1, 1, 1, 1)
    clean = latents.float()
    noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
    target = alpha.sqrt() * noise - (1 - alpha).sqrt() * clean
    prediction = transformer(
        hidden_states=noisy.to(compute_dtype),
        encoder_hidden_states=prompt_embeds.to(compute_dtype),
        timestep=timesteps,
        image_rotary_emb=rotary(latents),
        return_dict=False,
    )[0]
    return F.mse_loss(prediction.float(), target)


# ---------------------------------------------------------------------------------------------
# Sampling


def make_pipeline(transformer, vae, scheduler, tokenizer=None, text_encoder=None):
    """A CogVideoXPipeline around already-loaded components (the text encoder may be absent)."""
    from diffusers import CogVideoXPipeline

    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )


@torch.no_grad()
def generate(
    pipeline,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    frames: int,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    generator: torch.Generator,
):
    """One video as a float array [F, H, W, 3] in [0, 1], from precomputed prompt embeddings."""
    dtype = pipeline.transformer.dtype
    latents = pipeline(
        prompt_embeds=prompt_embeds.to(dtype),
        negative_prompt_embeds=negative_embeds.to(dtype),
        num_frames=frames,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        output_type="latent",
        max_sequence_length=MAX_TEXT_TOKENS,
    ).frames
    # Decoded here rather than by the pipeline: the VAE may keep another dtype than the
    # transformer (fp32 training beside a bf16 VAE), and the pipeline doesn't cast between them.
    patch_t = pipeline.transformer.config.patch_size_t
    latent_frames = (frames - 1) // pipeline.vae_scale_factor_temporal + 1
    if patch_t and latent_frames % patch_t:
        latents = latents[:, patch_t - latent_frames % patch_t :]
    video = pipeline.decode_latents(latents.to(pipeline.vae.dtype))
    return pipeline.video_processor.postprocess_video(video=video, output_type="np")[0]


# ---------------------------------------------------------------------------------------------
# Trainable parameters


def lora_target_check(transformer, target_modules: list[str]) -> None:
    """Refuse a --target_modules entry that names no layer, listing the names that would work."""
    names = [
        name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)
    ]
    for target in target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            suffixes = sorted(
                {
                    ".".join(name.split(".")[-2:])
                    if name.split(".")[-1].isdigit()
                    else name.split(".")[-1]
                    for name in names
                }
            )
            raise UserError(
                f"--target_modules: '{target}' matches no layer of the transformer; "
                f"layers that can be targeted: {', '.join(suffixes)}"
            )
