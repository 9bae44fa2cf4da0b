"""The training loss equals the reference trainers' step, line by line, on fixed inputs.

Each reference step is transcribed below as its authors wrote it, with each random draw
(`latent_dist.sample()`, `torch.randn_like`, `torch.normal`, `torch.randint`, the dropout coin)
replaced by a fixed tensor; the project's loss gets the same tensors through `Draws` and its
image-noise argument. The references:
- text-to-video 2b and 5b: diffusers `examples/cogvideo/train_cogvideox_lora.py`;
- text-to-video 1.5: CogVideo `finetune/models/cogvideox_t2v/lora_trainer.py` (the diffusers
  example has no temporal patch);
- 5b-I2V: diffusers `examples/cogvideo/train_cogvideox_image_to_video_lora.py`;
- 1.5-I2V: CogVideo `finetune/models/cogvideox_i2v/lora_trainer.py` (its 1.5 trainer subclasses
  it unchanged).
Two places where a transcription reads a value rather than copying a constant, each said where it
happens: the diffusers examples' rotary grid hard-codes the released checkpoints' 480x720 base
size, which the transcription reads from the (tiny) checkpoint's sample size as the pipeline
does; and the 1.5-I2V's image latents are scaled as the I2V pipeline scales them (by
1/scaling_factor when the VAE sets invert_scale_latents, as the released 1.5 VAE does), where
CogVideo's finetune multiplies by scaling_factor. A case with invert_scale_latents off shows the
project then equals the finetune's line exactly.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.models.cogvideox_loss import Draws
from core.models.registry import identify, open_family
from core.models.source import ModelSource

FRAMES, HEIGHT, WIDTH = 9, 32, 32
TIMESTEPS = (400, 731)  # moderate noise levels: 1/(1-a) stays small, so fp32 agrees to 1e-6


@pytest.fixture(scope="module")
def fixed_video():
    from core.data.buckets import to_training_tensor
    from core.data.synthetic import synthetic_frames

    frames = synthetic_frames(FRAMES, HEIGHT, WIDTH, seed=3)
    return to_training_tensor(frames, HEIGHT, WIDTH)[None]  # [1, F, 3, H, W] in [-1, 1]


def load(path, **rules):
    spec = identify(ModelSource(str(path)))
    if rules:
        spec = dataclasses.replace(spec, rules=dataclasses.replace(spec.rules, **rules))
    family = open_family(spec)
    vae = family.load_vae(torch.float32)
    transformer = family.load_transformer(torch.float32).eval()
    scheduler = family.load_scheduler()
    return family, vae, transformer, scheduler


def fixed_draws(family, conditions, timestep, seed=0):
    """Standard normal tensors of the shapes each draw has, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    video = conditions["video_latent_dist"]
    channels, frames, height, width = video.shape[1] // 2, *video.shape[2:]
    padded = frames + (-frames) % (family.rules.patch_size_t or 1)
    draws = Draws(
        posterior_noise=torch.randn(1, channels, frames, height, width, generator=g),
        timesteps=torch.tensor([timestep]),
        noise=torch.randn(1, padded, channels, height, width, generator=g),
    )
    if "image_latent_dist" in conditions:
        draws.image_posterior_noise = torch.randn(1, channels, 1, height, width, generator=g)
        draws.image_dropout = torch.tensor([0.5])  # above the dropout probability: kept
    return draws


def image_noise(seed=1):
    g = torch.Generator().manual_seed(seed)
    log_sigma = torch.randn(1, generator=g) * 0.5 - 3.0  # what torch.normal(-3, 0.5) draws
    return log_sigma, torch.randn(1, 3, HEIGHT, WIDTH, generator=g)


def project_loss(family, vae, transformer, scheduler, video, prompt_embeds, timestep, dropout):
    log_sigma, pixel_noise = image_noise()
    conditions = family.encode_media(vae, video, image_noise=(log_sigma, pixel_noise))
    conditions["prompt_embeds"] = prompt_embeds
    draws = fixed_draws(family, conditions, timestep)
    loss_fn = family.loss_function(
        scheduler, transformer.config, torch.device("cpu"), torch.float32, noised_image_dropout=0.05
    )
    if dropout:
        draws.image_dropout = torch.tensor([0.01])
    with torch.no_grad():
        return loss_fn(transformer, conditions, draws=draws).item(), conditions, draws


# ---- the references' own helpers, as they wrote them ----------------------------------------


def example_rotary(height, width, num_frames, vae_scale_factor_spatial, patch_size,
                   attention_head_dim, device, base_height, base_width):  # fmt: skip
    """diffusers examples/cogvideo: prepare_rotary_positional_embeddings (base_height and
    base_width default to 480 and 720 there, the released checkpoints' sample size)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    grid_height = height // (vae_scale_factor_spatial * patch_size)
    grid_width = width // (vae_scale_factor_spatial * patch_size)
    base_size_width = base_width // (vae_scale_factor_spatial * patch_size)
    base_size_height = base_height // (vae_scale_factor_spatial * patch_size)
    grid_crops_coords = get_resize_crop_region_for_grid(
        (grid_height, grid_width), base_size_width, base_size_height
    )
    freqs_cos, freqs_sin = get_3d_rotary_pos_embed(
        embed_dim=attention_head_dim,
        crops_coords=grid_crops_coords,
        grid_size=(grid_height, grid_width),
        temporal_size=num_frames,
        device=device,
    )
    return freqs_cos, freqs_sin


def finetune_rotary(height, width, num_frames, transformer_config, vae_scale_factor_spatial,
                    device):  # fmt: skip
    """CogVideo finetune: Trainer.prepare_rotary_positional_embeddings."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    grid_height = height // (vae_scale_factor_spatial * transformer_config.patch_size)
    grid_width = width // (vae_scale_factor_spatial * transformer_config.patch_size)
    if transformer_config.patch_size_t is None:
        base_num_frames = num_frames
    else:
        base_num_frames = (
            num_frames + transformer_config.patch_size_t - 1
        ) // transformer_config.patch_size_t
    freqs_cos, freqs_sin = get_3d_rotary_pos_embed(
        embed_dim=transformer_config.attention_head_dim,
        crops_coords=None,
        grid_size=(grid_height, grid_width),
        temporal_size=base_num_frames,
        grid_type="slice",
        max_size=(grid_height, grid_width),
        device=device,
    )
    return freqs_cos, freqs_sin


def sample(latent_dist, eps):
    """DiagonalGaussianDistribution.sample() with its randn replaced by `eps`."""
    return latent_dist.mean + latent_dist.std * eps


def weighted_x0_loss(scheduler, model_output, noisy, target, timesteps, batch_size):
    """The examples' and the finetune's shared tail, as written."""
    model_pred = scheduler.get_velocity(model_output, noisy, timesteps)
    alphas_cumprod = scheduler.alphas_cumprod[timesteps]
    weights = 1 / (1 - alphas_cumprod)
    while len(weights.shape) < len(model_pred.shape):
        weights = weights.unsqueeze(-1)
    loss = torch.mean((weights * (model_pred - target) ** 2).reshape(batch_size, -1), dim=1)
    return loss.mean()


# ---- the transcriptions ---------------------------------------------------------------------


def diffusers_t2v_step(vae, transformer, scheduler, video, prompt_embeds, draws):
    """examples/cogvideo/train_cogvideox_lora.py: encode_video, collate_fn, the loop's step."""
    # encode_video
    video = video.to(dtype=vae.dtype)
    video = video.permute(0, 2, 1, 3, 4)  # [B, C, F, H, W]
    latent_dist = vae.encode(video).latent_dist
    # collate_fn
    videos = sample(latent_dist, draws.posterior_noise) * vae.config.scaling_factor
    videos = videos.permute(0, 2, 1, 3, 4)  # [B, F, C, H, W]
    model_input = videos.to(memory_format=torch.contiguous_format).float()
    # the step
    model_config = transformer.config
    noise = draws.noise
    batch_size, num_frames, num_channels, height, width = model_input.shape  # noqa: RUF059
    timesteps = draws.timesteps.long()
    vae_scale_factor_spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    image_rotary_emb = (
        example_rotary(
            height=HEIGHT,  # args.height
            width=WIDTH,  # args.width
            num_frames=num_frames,
            vae_scale_factor_spatial=vae_scale_factor_spatial,
            patch_size=model_config.patch_size,
            attention_head_dim=model_config.attention_head_dim,
            device=model_input.device,
            # Read, not copied: the example's defaults (480, 720) are the released sample size.
            base_height=model_config.sample_height * vae_scale_factor_spatial,
            base_width=model_config.sample_width * vae_scale_factor_spatial,
        )
        if model_config.use_rotary_positional_embeddings
        else None
    )
    noisy_model_input = scheduler.add_noise(model_input, noise, timesteps)
    model_output = transformer(
        hidden_states=noisy_model_input,
        encoder_hidden_states=prompt_embeds,
        timestep=timesteps,
        image_rotary_emb=image_rotary_emb,
        return_dict=False,
    )[0]
    return weighted_x0_loss(
        scheduler, model_output, noisy_model_input, model_input, timesteps, batch_size
    )


def diffusers_i2v_step(vae, transformer, scheduler, video, prompt_embeds, draws, noised):
    """examples/cogvideo/train_cogvideox_image_to_video_lora.py: encode_video, collate_fn, the
    loop's step (`noised`: the fixed (log sigma, pixel noise) of torch.normal / randn_like)."""
    log_sigma, pixel_noise = noised
    # encode_video
    video = video.to(dtype=vae.dtype)
    video = video.permute(0, 2, 1, 3, 4)  # [B, C, F, H, W]
    image = video[:, :, :1].clone()
    latent_dist = vae.encode(video).latent_dist
    image_noise_sigma = torch.exp(log_sigma).to(dtype=image.dtype)
    noisy_image = image + pixel_noise[:, :, None] * image_noise_sigma[:, None, None, None, None]
    image_latent_dist = vae.encode(noisy_image).latent_dist
    # collate_fn
    video_latents = sample(latent_dist, draws.posterior_noise) * vae.config.scaling_factor
    image_latents = sample(image_latent_dist, draws.image_posterior_noise)
    image_latents = image_latents * vae.config.scaling_factor
    video_latents = video_latents.permute(0, 2, 1, 3, 4)
    image_latents = image_latents.permute(0, 2, 1, 3, 4)
    padding_shape = (video_latents.shape[0], video_latents.shape[1] - 1, *video_latents.shape[2:])
    latent_padding = image_latents.new_zeros(padding_shape)
    image_latents = torch.cat([image_latents, latent_padding], dim=1)
    if draws.image_dropout.item() < 0.05:  # random.random() < args.noised_image_dropout
        image_latents = torch.zeros_like(image_latents)
    video_latents = video_latents.to(memory_format=torch.contiguous_format).float()
    image_latents = image_latents.to(memory_format=torch.contiguous_format).float()
    # the step
    model_config = transformer.config
    batch_size, num_frames, num_channels, height, width = video_latents.shape  # noqa: RUF059
    timesteps = draws.timesteps.long()
    noise = draws.noise
    noisy_video_latents = scheduler.add_noise(video_latents, noise, timesteps)
    noisy_model_input = torch.cat([noisy_video_latents, image_latents], dim=2)
    vae_scale_factor_spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    image_rotary_emb = (
        example_rotary(
            height=HEIGHT,
            width=WIDTH,
            num_frames=num_frames,
            vae_scale_factor_spatial=vae_scale_factor_spatial,
            patch_size=model_config.patch_size,
            attention_head_dim=model_config.attention_head_dim,
            device=video_latents.device,
            base_height=model_config.sample_height * vae_scale_factor_spatial,  # read, see above
            base_width=model_config.sample_width * vae_scale_factor_spatial,
        )
        if model_config.use_rotary_positional_embeddings
        else None
    )
    model_output = transformer(
        hidden_states=noisy_model_input,
        encoder_hidden_states=prompt_embeds,
        timestep=timesteps,
        image_rotary_emb=image_rotary_emb,
        return_dict=False,
    )[0]
    return weighted_x0_loss(
        scheduler, model_output, noisy_video_latents, video_latents, timesteps, batch_size
    )


def finetune_step(vae, transformer, scheduler, video, prompt_embeds, draws, noised=None,
                  image_scale=None):  # fmt: skip
    """CogVideo finetune: encode_video (at caching) and compute_loss, of the T2V trainer, or of
    the I2V trainer when `noised` is given. `image_scale`: the I2V pipeline's factor, where the
    finetune multiplies by vae.config.scaling_factor (None: the finetune's own line)."""
    # encode_video, run once when the dataset caches a clip
    clip = video.permute(0, 2, 1, 3, 4).to(dtype=vae.dtype)  # [B, C, F, H, W]
    latent = sample(vae.encode(clip).latent_dist, draws.posterior_noise)
    latent = latent * vae.config.scaling_factor
    # compute_loss
    prompt_embedding = prompt_embeds
    patch_size_t = transformer.config.patch_size_t
    if patch_size_t is not None:
        ncopy = latent.shape[2] % patch_size_t
        first_frame = latent[:, :, :1, :, :]
        latent = torch.cat([first_frame.repeat(1, 1, ncopy, 1, 1), latent], dim=2)
        assert latent.shape[2] % patch_size_t == 0
    batch_size, num_channels, num_frames, height, width = latent.shape  # noqa: RUF059
    _, seq_len, _ = prompt_embedding.shape
    prompt_embedding = prompt_embedding.view(batch_size, seq_len, -1).to(dtype=latent.dtype)
    if noised is not None:
        log_sigma, pixel_noise = noised
        images = video[:, 0]  # the dataset's image: the clip's first frame, [B, C, H, W]
        images = images.unsqueeze(2)
        image_noise_sigma = torch.exp(log_sigma).to(dtype=images.dtype)
        noisy_images = (
            images + pixel_noise[:, :, None] * image_noise_sigma[:, None, None, None, None]
        )
        image_latent_dist = vae.encode(noisy_images.to(dtype=vae.dtype)).latent_dist
        scale = vae.config.scaling_factor if image_scale is None else image_scale
        image_latents = sample(image_latent_dist, draws.image_posterior_noise) * scale
    timesteps = draws.timesteps.long()
    latent = latent.permute(0, 2, 1, 3, 4)
    if noised is not None:
        image_latents = image_latents.permute(0, 2, 1, 3, 4)
        padding_shape = (latent.shape[0], latent.shape[1] - 1, *latent.shape[2:])
        latent_padding = image_latents.new_zeros(padding_shape)
        image_latents = torch.cat([image_latents, latent_padding], dim=1)
    noise = draws.noise
    latent_noisy = scheduler.add_noise(latent, noise, timesteps)
    model_input = latent_noisy
    if noised is not None:
        model_input = torch.cat([latent_noisy, image_latents], dim=2)
    vae_scale_factor_spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    transformer_config = transformer.config
    rotary_emb = (
        finetune_rotary(
            height=height * vae_scale_factor_spatial,
            width=width * vae_scale_factor_spatial,
            num_frames=num_frames,
            transformer_config=transformer_config,
            vae_scale_factor_spatial=vae_scale_factor_spatial,
            device=latent.device,
        )
        if transformer_config.use_rotary_positional_embeddings
        else None
    )
    extra = {}
    if noised is not None:
        ofs_emb = None if transformer_config.ofs_embed_dim is None else latent.new_full((1,), 2.0)
        extra["ofs"] = ofs_emb
    predicted_noise = transformer(
        hidden_states=model_input,
        encoder_hidden_states=prompt_embedding,
        timestep=timesteps,
        image_rotary_emb=rotary_emb,
        return_dict=False,
        **extra,
    )[0]
    return weighted_x0_loss(scheduler, predicted_noise, latent_noisy, latent, timesteps, batch_size)


# ---- the comparisons ------------------------------------------------------------------------


def prompt(transformer):
    g = torch.Generator().manual_seed(7)
    return torch.randn(1, 226, transformer.config.text_embed_dim, generator=g)


@pytest.mark.parametrize("variant", ["2b", "5b", "1.5"])
def test_text_to_video_loss_equals_the_reference_step(variant, tiny_models, fixed_video):
    family, vae, transformer, scheduler = load(tiny_models[variant])
    embeds = prompt(transformer)
    for timestep in TIMESTEPS:
        ours, _, draws = project_loss(
            family, vae, transformer, scheduler, fixed_video, embeds, timestep, dropout=False
        )
        with torch.no_grad():
            if variant == "1.5":
                theirs = finetune_step(vae, transformer, scheduler, fixed_video, embeds, draws)
            else:
                theirs = diffusers_t2v_step(vae, transformer, scheduler, fixed_video, embeds, draws)
        assert ours == pytest.approx(theirs.item(), rel=1e-5, abs=0)


@pytest.mark.parametrize("dropout", [False, True], ids=["image-kept", "image-dropped"])
def test_5b_i2v_loss_equals_the_diffusers_example(dropout, tiny_i2v_models, fixed_video):
    family, vae, transformer, scheduler = load(tiny_i2v_models["5b-i2v"])
    embeds = prompt(transformer)
    for timestep in TIMESTEPS:
        ours, _, draws = project_loss(
            family, vae, transformer, scheduler, fixed_video, embeds, timestep, dropout
        )
        with torch.no_grad():
            theirs = diffusers_i2v_step(
                vae, transformer, scheduler, fixed_video, embeds, draws, image_noise()
            )
        assert ours == pytest.approx(theirs.item(), rel=1e-5, abs=0)


@pytest.mark.parametrize("invert", [True, False], ids=["released-vae", "vae-without-invert"])
def test_1_5_i2v_loss_equals_the_cogvideo_finetune(invert, tiny_i2v_models, fixed_video):
    family, vae, transformer, scheduler = load(
        tiny_i2v_models["1.5-i2v"], invert_scale_latents=invert
    )
    assert vae.config.invert_scale_latents  # the tiny 1.5 VAE keeps the released setting
    embeds = prompt(transformer)
    # As the I2V pipeline scales image latents (pipeline_cogvideox_image2video.prepare_latents).
    image_scale = 1 / vae.config.scaling_factor if invert else None
    for timestep in TIMESTEPS:
        ours, _, draws = project_loss(
            family, vae, transformer, scheduler, fixed_video, embeds, timestep, dropout=False
        )
        with torch.no_grad():
            theirs = finetune_step(
                vae, transformer, scheduler, fixed_video, embeds, draws, image_noise(), image_scale
            )
        assert ours == pytest.approx(theirs.item(), rel=1e-5, abs=0)
