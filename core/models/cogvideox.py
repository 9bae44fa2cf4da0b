"""CogVideoX behind the family interface: load, encode into named conditions, loss, sample, LoRA.

One class serves every variant (see core/models/cogvideox_spec.py): the trainer, the precompute
cache, validation and previews call its methods and never name a diffusers class themselves.

Shapes: the VAE works on videos as [B, C, F, H, W]; the transformer on latents as [B, F, C, H, W].
Named conditions of a batch (what `encode_media` returns and the loss reads):
- `prompt_embeds` [B, 226, D]: T5 embeddings of the captions;
- `video_latent_dist` [B, 2C, f, h, w]: the VAE posterior (mean and log-variance) of the clips,
  kept rather than one sample so every step draws a fresh latent, as the reference trainers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.models.common import (
    LORA_FILE,
    component_folder,
    load_component,
    lora_target_check,
    per_sample_randint,
    per_sample_randn,
)
from core.models.registry import ModelSpec
from core.models.source import ModelSource

MAX_TEXT_TOKENS = 226  # the transformer's max_text_seq_length; the pipeline must use the same


class CogVideoX:
    """CogVideoX text-to-video (2b, 5b, 1.5) behind the family interface."""

    max_text_tokens = MAX_TEXT_TOKENS

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.rules = spec.rules
        self.source: ModelSource = spec.source

    # ---- loading ----------------------------------------------------------------------------

    def component_folder(self, component: str) -> Path:
        return component_folder(self.source, component)

    def load_tokenizer(self):
        from transformers import T5Tokenizer

        return load_component(T5Tokenizer, self.source, "tokenizer")

    def load_text_encoder(self, dtype: torch.dtype):
        from transformers import T5EncoderModel

        model = load_component(T5EncoderModel, self.source, "text_encoder", dtype=dtype)
        return model.requires_grad_(False).eval()

    def load_vae(self, dtype: torch.dtype, slicing: bool = False, tiling: bool = False):
        from diffusers import AutoencoderKLCogVideoX

        vae = load_component(AutoencoderKLCogVideoX, self.source, "vae", dtype=dtype)
        if slicing:
            vae.enable_slicing()
        if tiling:
            vae.enable_tiling()
        return vae.requires_grad_(False).eval()

    def load_transformer(self, dtype: torch.dtype, weights: bool = True):
        """The checkpoint's transformer; with `weights=False`, randomly initialised from its
        config (what a fake-tensor memory model builds: the same modules, no file read)."""
        from diffusers import CogVideoXTransformer3DModel

        if weights:
            return load_component(
                CogVideoXTransformer3DModel, self.source, "transformer", dtype=dtype
            )
        config = CogVideoXTransformer3DModel.load_config(
            self.source.location, subfolder="transformer", **self.source.kwargs()
        )
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built in the dtype: `.to` can't swap fake parameters
        try:
            return CogVideoXTransformer3DModel.from_config(config)
        finally:
            torch.set_default_dtype(previous)

    def load_transformer_folder(self, folder: Path, dtype: torch.dtype):
        """A finetuned transformer saved by a full-finetune run."""
        from diffusers import CogVideoXTransformer3DModel

        return CogVideoXTransformer3DModel.from_pretrained(folder, dtype=dtype)

    def load_scheduler(self):
        from diffusers import CogVideoXDPMScheduler

        return load_component(CogVideoXDPMScheduler, self.source, "scheduler")

    def sampling_scheduler(self, scheduler):
        """The scheduler validation samples with: the checkpoint's DPM settings, a fresh state."""
        from diffusers import CogVideoXDPMScheduler

        return CogVideoXDPMScheduler.from_config(scheduler.config)

    # ---- conditions -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(
        self, tokenizer, text_encoder, prompts: list[str], device: torch.device
    ) -> torch.Tensor:
        """T5 embeddings [B, 226, D] padded to the transformer's text length, as the pipeline
        does."""
        tokens = tokenizer(
            prompts,
            padding="max_length",
            max_length=MAX_TEXT_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return text_encoder(tokens.input_ids.to(device))[0]

    def count_prompt_tokens(self, tokenizer, prompt: str) -> int:
        return len(tokenizer(prompt, add_special_tokens=True).input_ids)

    @torch.no_grad()
    def encode_videos(self, vae, videos: torch.Tensor) -> torch.Tensor:
        """Videos [B, F, C, H, W] in [-1, 1] to the VAE's latent distribution parameters."""
        videos = videos.to(device=vae.device, dtype=vae.dtype).permute(0, 2, 1, 3, 4)
        return vae.encode(videos).latent_dist.parameters

    def encode_media(
        self,
        vae,
        videos: torch.Tensor,
        images: torch.Tensor | None = None,
        generators: list[torch.Generator] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named conditions a batch of clips [B, F, 3, H, W] gives, except the prompts."""
        return {"video_latent_dist": self.encode_videos(vae, videos)}

    def media_cache_parts(self) -> dict[str, Any]:
        """What besides the clip, its frames and the VAE decides `encode_media`'s result."""
        return {"conditions": ["video_latent_dist"]}

    # ---- the training loss ------------------------------------------------------------------

    def loss_function(
        self, scheduler, transformer_config, device: torch.device, compute_dtype: torch.dtype
    ) -> TrainingLoss:
        """The training loss of this checkpoint: call it with a transformer and named conditions."""
        alphas = scheduler.alphas_cumprod.to(device, torch.float32)
        return TrainingLoss(
            self.rules, alphas, RotaryCache(transformer_config, device), compute_dtype
        )

    # ---- sampling ---------------------------------------------------------------------------

    @property
    def pipeline_class(self):
        from diffusers import CogVideoXPipeline

        return CogVideoXPipeline

    def make_pipeline(self, transformer, vae, scheduler, tokenizer=None, text_encoder=None):
        """A pipeline around already-loaded components (the text encoder may be absent)."""
        return self.pipeline_class(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
        )

    def load_pipeline(self, dtype: torch.dtype, transformer=None):
        """The whole base pipeline from the checkpoint (with another transformer, if given)."""
        components = {} if transformer is None else {"transformer": transformer}
        return self.pipeline_class.from_pretrained(
            self.source.location, dtype=dtype, **self.source.kwargs(), **components
        )

    def render(
        self,
        pipeline,
        prompt: str,
        negative_prompt: str,
        frames: int,
        height: int,
        width: int,
        steps: int,
        guidance: float,
        generator: torch.Generator,
        on_step=None,
    ):
        """One preview video [F, H, W, 3] in [0, 1] from a whole pipeline (its own encoders);
        `on_step` is called after each denoising step."""

        def step_end(_pipeline, _step, _timestep, tensors):
            if on_step is not None:
                on_step()
            return tensors

        return pipeline(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            num_frames=frames,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="np",
            callback_on_step_end=step_end,
            max_sequence_length=MAX_TEXT_TOKENS,
        ).frames[0]

    @torch.no_grad()
    def generate(
        self,
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

    # ---- trainable weights ------------------------------------------------------------------

    def lora_target_check(self, transformer, target_modules: list[str]) -> None:
        lora_target_check(transformer, target_modules)

    def save_lora(self, folder: Path, transformer, state: dict | None = None) -> None:
        """The transformer's LoRA as the diffusers pipeline loads it, with its adapter metadata."""
        from peft.utils import get_peft_model_state_dict

        folder.mkdir(parents=True, exist_ok=True)
        self.pipeline_class.save_lora_weights(
            folder,
            transformer_lora_layers=get_peft_model_state_dict(transformer, state_dict=state),
            # Without the adapter metadata, lora_alpha is lost on reload and outputs differ.
            transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
        )

    def read_lora(self, folder: Path) -> dict[str, torch.Tensor]:
        """A saved LoRA as peft state-dict keys of the transformer."""
        from safetensors.torch import load_file

        state = load_file(folder / LORA_FILE)
        return {key.removeprefix("transformer."): value for key, value in state.items()}


# ---------------------------------------------------------------------------------------------
# Latents and the loss


def sample_latents(parameters: torch.Tensor, rules, posterior_noise: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, f, C, h, w] from stored distribution parameters and a standard normal
    draw of the mean's shape (fp32), padded to whole temporal patches."""
    mean, logvar = parameters.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    latents = (mean + std * posterior_noise) * rules.scaling_factor
    latents = latents.permute(0, 2, 1, 3, 4)
    return pad_temporal_patch(latents, rules)


def pad_temporal_patch(latents: torch.Tensor, rules) -> torch.Tensor:
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


@dataclass
class Draws:
    """Every random number one loss evaluation uses, drawn per sample (or given by a test)."""

    posterior_noise: torch.Tensor  # [B, C, f, h, w]: the video latents' draw from the posterior
    timesteps: torch.Tensor  # [B]
    noise: torch.Tensor  # [B, f', C, h, w]: diffusion noise on the padded latents


class TrainingLoss:
    """The v-prediction denoising loss of one checkpoint, from named conditions.

    The diffusers example's weighted x0-space loss, 1/(1-a) * |x0_pred - x0|^2, equals this plain
    MSE on the velocity; it is computed in fp32 because the scheduler's alphas lose precision in
    bf16.
    """

    def __init__(self, rules, alphas_cumprod: torch.Tensor, rotary, compute_dtype: torch.dtype):
        self.rules = rules
        self.alphas_cumprod = alphas_cumprod
        self.rotary = rotary
        self.compute_dtype = compute_dtype

    def draw(self, conditions: dict[str, torch.Tensor], generators: list) -> Draws:
        """The draws of each sample, from its own generator, in a fixed order."""
        parameters = conditions["video_latent_dist"]
        device = parameters.device
        channels2, frames, height, width = parameters.shape[1:]
        posterior = per_sample_randn((channels2 // 2, frames, height, width), generators, device)
        timesteps = per_sample_randint(self.alphas_cumprod.shape[0], generators, device)
        padded = frames + (-frames) % (self.rules.patch_size_t or 1)  # whole temporal patches
        noise = per_sample_randn((padded, channels2 // 2, height, width), generators, device)
        return Draws(posterior_noise=posterior, timesteps=timesteps, noise=noise)

    def __call__(
        self,
        transformer,
        conditions: dict[str, torch.Tensor],
        generators: list | None = None,
        draws: Draws | None = None,
    ) -> torch.Tensor:
        draws = draws if draws is not None else self.draw(conditions, generators)
        latents = sample_latents(conditions["video_latent_dist"], self.rules, draws.posterior_noise)
        batch = latents.shape[0]
        alpha = self.alphas_cumprod[draws.timesteps].view(batch, 1, 1, 1, 1)
        clean = latents.float()
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * draws.noise
        target = alpha.sqrt() * draws.noise - (1 - alpha).sqrt() * clean
        prediction = transformer(
            hidden_states=noisy.to(self.compute_dtype),
            encoder_hidden_states=conditions["prompt_embeds"].to(self.compute_dtype),
            timestep=draws.timesteps,
            image_rotary_emb=self.rotary(latents),
            return_dict=False,
        )[0]
        return F.mse_loss(prediction.float(), target)


# ---------------------------------------------------------------------------------------------
# Positions


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
