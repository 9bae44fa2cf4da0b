"""CogVideoX's training loss from named conditions, and the random draws it takes.

Every random number of a step is drawn per sample from that sample's generator, in a fixed
order (`TrainingLoss.draw`), so a resumed run or another number of processes draws the same; a
test can hand the loss its own `Draws` instead, to compare it with a reference trainer's step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.models.common import per_sample_rand, per_sample_randint, per_sample_randn

# Image noise augmentation of the I2V trainers: sigma = exp(N(mean, std)), in pixel space.
IMAGE_NOISE_LOG_SIGMA = (-3.0, 0.5)
OFS = 2.0  # the 1.5-I2V's ofs embedding input, in training as in the pipeline


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


def draw_image_noise(
    shape: tuple[int, ...], generators: list[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's image noise augmentation: (log sigma [B], standard normal noise [B, *shape]),
    sigma = exp(N(-3, 0.5)) as in the reference I2V trainers, on the generators' device."""
    mean, std = IMAGE_NOISE_LOG_SIGMA
    device = generators[0].device
    log_sigma = torch.cat([torch.randn(1, generator=g, device=device) for g in generators])
    return log_sigma * std + mean, per_sample_randn(shape, generators, device)


@dataclass
class Draws:
    """Every random number one loss evaluation uses, drawn per sample (or given by a test)."""

    posterior_noise: torch.Tensor  # [B, C, f, h, w]: the video latents' draw from the posterior
    timesteps: torch.Tensor  # [B]
    noise: torch.Tensor  # [B, f', C, h, w]: diffusion noise on the padded latents
    # Image-to-video only:
    image_posterior_noise: torch.Tensor | None = None  # [B, C, 1, h, w]
    image_dropout: torch.Tensor | None = None  # [B] uniform: below --noised_image_dropout drops


class TrainingLoss:
    """The v-prediction denoising loss of one checkpoint, from named conditions.

    The diffusers example's weighted x0-space loss, 1/(1-a) * |x0_pred - x0|^2, equals this plain
    MSE on the velocity; it is computed in fp32 because the scheduler's alphas lose precision in
    bf16.
    """

    def __init__(
        self,
        rules,
        alphas_cumprod: torch.Tensor,
        rotary,
        compute_dtype: torch.dtype,
        noised_image_dropout: float = 0.0,
    ):
        self.rules = rules
        self.alphas_cumprod = alphas_cumprod
        self.rotary = rotary
        self.compute_dtype = compute_dtype
        self.noised_image_dropout = noised_image_dropout

    def draw(self, conditions: dict[str, torch.Tensor], generators: list) -> Draws:
        """The draws of each sample, from its own generator, in a fixed order."""
        parameters = conditions["video_latent_dist"]
        device = parameters.device
        channels2, frames, height, width = parameters.shape[1:]
        posterior = per_sample_randn((channels2 // 2, frames, height, width), generators, device)
        timesteps = per_sample_randint(self.alphas_cumprod.shape[0], generators, device)
        padded = frames + (-frames) % (self.rules.patch_size_t or 1)  # whole temporal patches
        noise = per_sample_randn((padded, channels2 // 2, height, width), generators, device)
        draws = Draws(posterior_noise=posterior, timesteps=timesteps, noise=noise)
        if "image_latent_dist" in conditions:
            shape = (channels2 // 2, 1, height, width)
            draws.image_posterior_noise = per_sample_randn(shape, generators, device)
            draws.image_dropout = per_sample_rand(generators, device)
        return draws

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
        model_input = noisy
        if "image_latent_dist" in conditions:
            image = self.image_latents(conditions["image_latent_dist"], draws, latents.shape[1])
            model_input = torch.cat([noisy, image], dim=2)
        prediction = transformer(
            hidden_states=model_input.to(self.compute_dtype),
            encoder_hidden_states=conditions["prompt_embeds"].to(self.compute_dtype),
            timestep=draws.timesteps,
            ofs=noisy.new_full((1,), OFS) if self.rules.ofs else None,
            image_rotary_emb=self.rotary(latents),
            return_dict=False,
        )[0]
        return F.mse_loss(prediction.float(), target)

    def image_latents(self, parameters: torch.Tensor, draws: Draws, frames: int) -> torch.Tensor:
        """The image's latents [B, frames, C, h, w] as the transformer takes them beside the
        noisy video's: drawn from the posterior, scaled as the I2V pipeline scales image latents
        (by 1/scaling_factor when the VAE says invert_scale_latents), the first latent frame,
        zeros after it; all zeros for a sample drawn below --noised_image_dropout."""
        mean, logvar = parameters.float().chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        scaling = self.rules.scaling_factor
        scale = 1 / scaling if self.rules.invert_scale_latents else scaling
        image = ((mean + std * draws.image_posterior_noise) * scale).permute(0, 2, 1, 3, 4)
        padding = image.new_zeros((image.shape[0], frames - 1, *image.shape[2:]))
        image = torch.cat([image, padding], dim=1)
        kept = draws.image_dropout >= self.noised_image_dropout
        return image * kept.view(-1, 1, 1, 1, 1).to(image.dtype)


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
