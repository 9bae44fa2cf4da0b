"""Encoding captions and clips once, through the precompute cache.

The text encoder and the VAE are loaded only when an entry is missing from the cache, one at a
time, and let go as soon as their part is done, so the transformer trains with neither in GPU
memory. A run whose entries are all cached loads no encoder at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.data.cache import PrecomputeCache, cache_key, component_identity
from core.data.dataset import Sample, load_clip, sample_image
from core.memory import free_accelerator_memory
from core.models.common import DTYPES

Progress = Callable[[str, int, int], None]


class Encoders:
    """The text encoder and VAE of a base model (a model family object), loaded on first use."""

    def __init__(
        self,
        family,
        tokenizer,
        device: torch.device,
        text_encoder_dtype: str,
        vae_dtype: str,
        slicing: bool,
        tiling: bool,
    ):
        self.family = family
        self.tokenizer = tokenizer
        self.device = device
        self.text_encoder_dtype = text_encoder_dtype
        self.vae_dtype = vae_dtype
        self.slicing = slicing
        self.tiling = tiling
        self._text_encoder = None
        self._vae = None
        self.loads = {"text_encoder": 0, "vae": 0}

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            self._text_encoder = self.family.load_text_encoder(DTYPES[self.text_encoder_dtype]).to(
                self.device
            )
            self.loads["text_encoder"] += 1
        return self._text_encoder

    @property
    def vae(self):
        if self._vae is None:
            self._vae = self.family.load_vae(DTYPES[self.vae_dtype], self.slicing, self.tiling).to(
                self.device
            )
            self.loads["vae"] += 1
        return self._vae

    def vae_on(self, device: torch.device):
        """The VAE moved to `device` (it waits on the CPU between validations)."""
        return self.vae.to(device)

    def drop_text_encoder(self) -> None:
        self._text_encoder = None
        free_accelerator_memory(self.device)

    def park_vae(self) -> None:
        """Move a loaded VAE off the accelerator; it only decodes validation videos from now."""
        if self._vae is not None:
            self._vae.to("cpu")
        free_accelerator_memory(self.device)

    def prompt_identity(self) -> dict:
        folder = self.family.component_folder("text_encoder")
        return {
            "text_encoder": component_identity(folder),
            "dtype": self.text_encoder_dtype,
            "tokens": self.family.max_text_tokens,
        }

    def latent_identity(self) -> dict:
        folder = self.family.component_folder("vae")
        # Tiling changes what the encoder computes at tile seams; slicing does not.
        return {
            "vae": component_identity(folder),
            "dtype": self.vae_dtype,
            "tiling": self.tiling,
            **self.family.media_cache_parts(),
        }


def precompute_prompts(
    prompts: list[str],
    cache: PrecomputeCache,
    encoders: Encoders,
    progress: Progress,
    check_stop: Callable[[], None],
) -> dict[str, torch.Tensor]:
    """Embedding [226, D] of each distinct prompt, from the cache or encoded and cached."""
    identity = encoders.prompt_identity()
    embeds: dict[str, torch.Tensor] = {}
    distinct = list(dict.fromkeys(prompts))
    progress("encoding prompts", 0, len(distinct))
    for index, prompt in enumerate(distinct):
        check_stop()
        key = cache_key("prompt", text=prompt, **identity)
        entry = cache.load(key)
        if entry is None:
            encoded = encoders.family.encode_prompts(
                encoders.tokenizer, encoders.text_encoder, [prompt], encoders.device
            )[0]
            entry = {"embeds": encoded.cpu()}
            cache.save(key, entry)
        embeds[prompt] = entry["embeds"]
        progress("encoding prompts", index + 1, len(distinct))
    return embeds


def precompute_media(
    samples: list[Sample],
    cache: PrecomputeCache,
    encoders: Encoders,
    progress: Progress,
    check_stop: Callable[[], None],
) -> list[dict[str, torch.Tensor]]:
    """The named conditions each sample's media give (the clip's latent distribution, and for
    an image-to-video model its image's), from the cache or encoded and cached.

    What an entry draws at random (the image's noise augmentation) is drawn once, from a
    generator seeded by the entry's key: the same entry whichever run encodes it.
    """
    identity = encoders.latent_identity()
    encoded = []
    progress("encoding clips", 0, len(samples))
    for index, sample in enumerate(samples):
        check_stop()
        image_to_video = encoders.family.image_to_video
        key = cache_key(
            "latents",
            content=sample.digest,
            bucket=list(sample.bucket),
            frames=list(sample.indices),
            **({"image": sample.image_digest or "first frame"} if image_to_video else {}),
            **identity,
        )
        entry = cache.load(key)
        if entry is None:
            video = load_clip(sample).unsqueeze(0)
            image = sample_image(sample).unsqueeze(0) if sample.image else None
            generator = torch.Generator().manual_seed(int(key[:15], 16))
            conditions = encoders.family.encode_media(encoders.vae, video, image, [generator])
            entry = {name: tensor[0].cpu() for name, tensor in conditions.items()}
            cache.save(key, entry)
        encoded.append(entry)
        progress("encoding clips", index + 1, len(samples))
    return encoded
