"""CogVideoX behind the family interface: load, encode into named conditions, loss, sample, LoRA.

One class serves every variant (see core/models/cogvideox_spec.py): the trainer, the precompute
cache, validation and previews call its methods and never name a diffusers class themselves.

Shapes: the VAE works on videos as [B, C, F, H, W]; the transformer on latents as [B, F, C, H, W].
Named conditions of a batch (what `encode_media` returns and the loss reads):
- `prompt_embeds` [B, 226, D]: T5 embeddings of the captions;
- `video_latent_dist` [B, 2C, f, h, w]: the VAE posterior (mean and log-variance) of the clips,
  kept rather than one sample so every step draws a fresh latent, as the reference trainers do;
- `image_latent_dist` [B, 2C, 1, h, w] (image-to-video): the posterior of each clip's image after
  noise augmentation in pixel space (sigma = exp(N(-3, 0.5))), as the reference I2V trainers
  condition: scaled as the I2V pipeline scales image latents, zero-padded over the other latent
  frames, concatenated with the noisy video latents on channels, dropped (zeroed) with
  --noised_image_dropout; the 1.5-I2V also gets `ofs` = 2.0.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.models.cogvideox_loss import (
    IMAGE_NOISE_LOG_SIGMA,
    RotaryCache,
    TrainingLoss,
    draw_image_noise,
)
from core.models.common import (
    LORA_FILE,
    component_folder,
    load_component,
    lora_target_check,
)
from core.models.registry import ModelSpec
from core.models.source import ModelSource

MAX_TEXT_TOKENS = 226  # the transformer's max_text_seq_length; the pipeline must use the same


class CogVideoX:
    """CogVideoX text-to-video (2b, 5b, 1.5) and image-to-video (5b-I2V, 1.5-I2V)."""

    max_text_tokens = MAX_TEXT_TOKENS

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.rules = spec.rules
        self.source: ModelSource = spec.source

    @property
    def image_to_video(self) -> bool:
        return bool(self.rules.image_conditioned)

    # ---- loading ----------------------------------------------------------------------------

    def component_folder(self, component: str) -> Path:
        return component_folder(self.source, component)

    def load_tokenizer(self):
        from transformers import T5Tokenizer

        return load_component(T5Tokenizer, self.source, "tokenizer")

    def load_text_encoder(self, dtype: torch.dtype, weights: bool = True):
        """T5's encoder; with `weights=False`, randomly initialised from its config."""
        from transformers import T5Config, T5EncoderModel

        if weights:
            model = load_component(T5EncoderModel, self.source, "text_encoder", dtype=dtype)
        else:
            config = T5Config.from_pretrained(
                self.source.location, subfolder="text_encoder", **self.source.kwargs()
            )
            model = _from_config(lambda: T5EncoderModel(config), dtype)
        return model.requires_grad_(False).eval()

    def load_vae(
        self, dtype: torch.dtype, slicing: bool = False, tiling: bool = False, weights: bool = True
    ):
        """The VAE; with `weights=False`, randomly initialised from its config."""
        from diffusers import AutoencoderKLCogVideoX

        if weights:
            vae = load_component(AutoencoderKLCogVideoX, self.source, "vae", dtype=dtype)
        else:
            config = AutoencoderKLCogVideoX.load_config(
                self.source.location, subfolder="vae", **self.source.kwargs()
            )
            vae = _from_config(lambda: AutoencoderKLCogVideoX.from_config(config), dtype)
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
        return _from_config(lambda: CogVideoXTransformer3DModel.from_config(config), dtype)

    def drop_learned_positions(self, transformer) -> bool:
        """Run the transformer without its learned positional embeddings (5b-I2V: they fit one
        shape only), as the legacy cogvideox-factory --ignore_learned_positional_embeddings did;
        rotary positions remain. Returns whether there were any to drop."""
        embed = transformer.patch_embed
        if not getattr(embed, "use_learned_positional_embeddings", False):
            return False
        embed.use_learned_positional_embeddings = False
        if hasattr(embed, "pos_embedding"):
            del embed.pos_embedding
        # A saved full finetune then builds without them when loaded.
        transformer.register_to_config(use_learned_positional_embeddings=False)
        return True

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
        image_noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named conditions a batch of clips [B, F, 3, H, W] gives, except the prompts.

        Image-to-video: `images` [B, 3, H, W] in [-1, 1] (default: each clip's first frame), with
        noise drawn from `generators` (or the given (log sigma [B], noise [B, 3, H, W])).
        """
        conditions = {"video_latent_dist": self.encode_videos(vae, videos)}
        if not self.image_to_video:
            return conditions
        images = (videos[:, 0] if images is None else images).float()
        if image_noise is None:
            image_noise = draw_image_noise(tuple(images.shape[1:]), generators)
        log_sigma, noise = (t.to(images.device) for t in image_noise)
        noisy = images + noise * torch.exp(log_sigma).view(-1, 1, 1, 1)
        conditions["image_latent_dist"] = self.encode_videos(vae, noisy[:, None])
        return conditions

    def media_cache_parts(self) -> dict[str, Any]:
        """What besides the clip, its frames and the VAE decides `encode_media`'s result."""
        if not self.image_to_video:
            return {"conditions": ["video_latent_dist"]}
        return {
            "conditions": ["video_latent_dist", "image_latent_dist"],
            "image_noise": f"exp(N{IMAGE_NOISE_LOG_SIGMA}) x N(0, 1), drawn once per entry",
        }

    # ---- the training loss ------------------------------------------------------------------

    def loss_function(
        self,
        scheduler,
        transformer_config,
        device: torch.device,
        compute_dtype: torch.dtype,
        noised_image_dropout: float = 0.0,
    ) -> TrainingLoss:
        """The training loss of this checkpoint: call it with a transformer and named conditions
        (image-to-video: each sample's image dropped with probability `noised_image_dropout`)."""
        alphas = scheduler.alphas_cumprod.to(device, torch.float32)
        rotary = RotaryCache(transformer_config, device)
        return TrainingLoss(self.rules, alphas, rotary, compute_dtype, noised_image_dropout)

    # ---- sampling ---------------------------------------------------------------------------

    @property
    def pipeline_class(self):
        from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline

        return CogVideoXImageToVideoPipeline if self.image_to_video else CogVideoXPipeline

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
        image=None,
    ):
        """One preview video [F, H, W, 3] in [0, 1] from a whole pipeline (its own encoders),
        image-to-video from `image` (a PIL image); `on_step` is called after each step."""

        def step_end(_pipeline, _step, _timestep, tensors):
            if on_step is not None:
                on_step()
            return tensors

        return pipeline(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            output_type="np",
            callback_on_step_end=step_end,
            **self._sampling(image, frames, height, width, steps, guidance, generator),
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
        image=None,
    ):
        """One video as a float array [F, H, W, 3] in [0, 1], from precomputed prompt embeddings
        (image-to-video: from `image`, a PIL image)."""
        dtype = pipeline.transformer.dtype
        with _encoder_casts_inputs(pipeline.vae):
            latents = pipeline(
                prompt_embeds=prompt_embeds.to(dtype),
                negative_prompt_embeds=negative_embeds.to(dtype),
                output_type="latent",
                **self._sampling(image, frames, height, width, steps, guidance, generator),
            ).frames
        # Decoded here rather than by the pipeline: the VAE may keep another dtype than the
        # transformer (fp32 training beside a bf16 VAE), and the pipeline doesn't cast between them.
        patch_t = pipeline.transformer.config.patch_size_t
        latent_frames = (frames - 1) // pipeline.vae_scale_factor_temporal + 1
        if patch_t and latent_frames % patch_t:
            latents = latents[:, patch_t - latent_frames % patch_t :]
        video = pipeline.decode_latents(latents.to(pipeline.vae.dtype))
        return pipeline.video_processor.postprocess_video(video=video, output_type="np")[0]

    def _sampling(self, image, frames, height, width, steps, guidance, generator) -> dict:
        """The pipeline's arguments for what to sample: the shape, the steps, the guidance and
        the generator, and the image (required by image-to-video, refused by the others)."""
        arguments = {
            "num_frames": frames,
            "height": height,
            "width": width,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": generator,
            "max_sequence_length": MAX_TEXT_TOKENS,
        }
        if self.image_to_video:
            if image is None:
                raise UserError(
                    f"{self.spec.title} makes videos from an image: give one to start from"
                )
            return {"image": image, **arguments}
        if image is not None:
            raise UserError(
                f"{self.spec.title} makes videos from text alone: it takes no image (choose an "
                "image-to-video base model to start from one)"
            )
        return arguments

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


def _from_config(build, dtype: torch.dtype):
    """A module built in `dtype` from its config (random weights): built in the dtype rather
    than cast after, since `.to` can't swap fake tensors' parameters (a memory model's)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build()
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _encoder_casts_inputs(vae):
    """While the I2V pipeline encodes its image: cast the image to the VAE's dtype.

    The pipeline hands the VAE the image in the prompt embeddings' dtype (the transformer's); a
    VAE kept in another dtype (bf16 beside an fp32 transformer) would refuse it.
    """
    encode = vae.encode

    def cast(x, *args, **kwargs):
        return encode(x.to(vae.dtype), *args, **kwargs)

    vae.encode = cast
    try:
        yield
    finally:
        del vae.encode  # the class's method again
