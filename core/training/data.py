"""What each step trains on: which samples, their random draws, and their named conditions.

`Batches` gives the deterministic order of micro-batches from the current data position, and one
random generator per sample seeded by what identifies its draw in the whole run. `Conditions`
encodes prompts (always once: validation needs them) and, with --precompute_conditions, every
sample's media once through the cache; otherwise it encodes a batch's media at its step.
"""

from __future__ import annotations

import hashlib
import logging

import torch

from core.config import TrainConfig
from core.data.dataset import ClipDataset, Sample, epoch_batches
from core.events import STAGE_AFTER_CONDITIONS, STAGE_AFTER_LATENTS, stage_after_epoch
from core.training.backend import Backend
from core.training.reporter import Reporter
from core.training.state import TrainingState

log = logging.getLogger("core.train")


class Batches:
    def __init__(
        self, config: TrainConfig, backend: Backend, state: TrainingState, reporter: Reporter
    ):
        self.config = config
        self.backend = backend
        self.state = state
        self.reporter = reporter
        self.samples: list[Sample] = []
        self.load_media = True  # False once every sample's media conditions are precomputed
        self.images = False  # image-to-video: each sample's image comes with its clip

    def epoch(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of one epoch (sample indices)."""
        return epoch_batches(
            self.samples,
            self.config.batch_size,
            self.config.seed,
            epoch,
            self.backend.rank,
            self.backend.world,
        )

    def stream(self):
        """Micro-batches from the current data position on: (sample indices, media or None)."""
        from torch.utils.data import DataLoader

        while True:
            remaining = self.epoch(self.state.epoch)[self.state.position :]
            if not self.load_media:
                for indices in remaining:
                    yield indices, None
            else:
                loader = DataLoader(
                    ClipDataset(self.samples, images=self.images),
                    batch_sampler=remaining,
                    num_workers=self.config.dataloader_num_workers,
                    pin_memory=self.config.pin_memory,
                    collate_fn=collate_media,
                )
                for indices, media in zip(remaining, loader, strict=True):
                    yield indices, media
            self.reporter.stage(stage_after_epoch(self.state.epoch + 1))
            self.state.epoch += 1
            self.state.position = 0

    def generators(self, indices: list[int], micro: int) -> list[torch.Generator]:
        """One generator per sample, seeded by what identifies its draw in the whole run."""
        key = f"{self.config.seed}-{self.state.global_step}-{micro}"
        seeds = [
            int.from_bytes(hashlib.blake2b(f"{key}-{i}".encode(), digest_size=8).digest()) >> 1
            for i in indices
        ]
        return [self.backend.generator(seed) for seed in seeds]


def collate_media(items: list[dict]) -> dict[str, torch.Tensor]:
    """A batch of decoded samples: each tensor field stacked (videos, and images for I2V)."""
    names = [name for name, value in items[0].items() if isinstance(value, torch.Tensor)]
    return {name: torch.stack([item[name] for item in items]) for name in names}


class Conditions:
    def __init__(self, config: TrainConfig, backend: Backend, reporter: Reporter):
        self.config = config
        self.backend = backend
        self.reporter = reporter
        self.family = None  # the model family object, once the base model is known
        self.samples: list[Sample] = []
        self.encoders = None  # core.data.precompute.Encoders
        self.cache = None  # core.data.cache.PrecomputeCache
        self.prompt_embeds: dict[str, torch.Tensor] = {}  # prompt -> [226, D]
        self.sample_embeds: list[torch.Tensor] | None = None  # with --precompute_conditions
        self.sample_media: list[dict[str, torch.Tensor]] | None = None  # idem

    @property
    def precomputed(self) -> bool:
        return self.sample_media is not None

    def precompute(self, family, samples: list[Sample], tokenizer, check_stop) -> None:
        """Prompt embeddings always (validation needs them); media conditions too when asked.

        Everything goes through the precompute cache, so a second run on the same data and
        model loads neither encoder. The main process encodes first; other ranks then read
        its entries.
        """
        from core.data.cache import PrecomputeCache
        from core.data.precompute import Encoders, precompute_media, precompute_prompts

        config = self.config
        self.family = family
        self.samples = samples
        self.encoders = Encoders(
            family,
            tokenizer,
            self.backend.device,
            config.text_encoder_dtype,
            config.vae_dtype,
            config.enable_slicing,
            config.enable_tiling,
        )
        self.cache = PrecomputeCache(config.cache_path)
        prompts = ["", config.validation_negative_prompt, *config.validation_prompts]
        if config.precompute_conditions:
            prompts += [sample.caption for sample in samples]
        with self.backend.main_process_first():
            self.prompt_embeds = precompute_prompts(
                prompts, self.cache, self.encoders, self.reporter.progress, check_stop
            )
        if not config.precompute_conditions:
            return  # captions and clips are encoded at every step; the encoders stay loaded
        self.sample_embeds = [self.prompt_embeds[sample.caption] for sample in samples]
        # The text encoder is done for the whole run: drop it before the VAE works.
        self.encoders.drop_text_encoder()
        self.reporter.stage(STAGE_AFTER_CONDITIONS)
        with self.backend.main_process_first():
            media = precompute_media(
                samples, self.cache, self.encoders, self.reporter.progress, check_stop
            )
        self.encoders.park_vae()
        if config.pin_memory and torch.cuda.is_available():
            media = [{name: t.pin_memory() for name, t in entry.items()} for entry in media]
            self.sample_embeds = [t.pin_memory() for t in self.sample_embeds]
        self.sample_media = media
        log.info(
            "Precompute cache %s: %d entries read, %d encoded (%d damaged ones among them)",
            self.cache.root,
            self.cache.hits,
            self.cache.misses,
            self.cache.repaired,
        )
        self.reporter.stage(STAGE_AFTER_LATENTS)

    def embed(self, prompt: str) -> torch.Tensor:
        """A prompt's embedding [1, 226, D] (the validation prompts and the empty prompt)."""
        return self.prompt_embeds[prompt][None]

    def for_batch(self, indices: list[int], media, generators: list) -> dict[str, torch.Tensor]:
        """The named conditions of a micro-batch, on the device, captions dropped as drawn."""
        device = self.backend.device
        if self.sample_media is not None:
            conditions = {
                name: torch.stack([self.sample_media[i][name] for i in indices]).to(
                    device, non_blocking=True
                )
                for name in self.sample_media[indices[0]]
            }
            embeds = torch.stack([self.sample_embeds[i] for i in indices])
            embeds = embeds.to(device, non_blocking=True)
        else:
            captions = [self.samples[i].caption for i in indices]
            embeds = self.family.encode_prompts(
                self.encoders.tokenizer, self.encoders.text_encoder, captions, device
            )
            conditions = None
        # Caption dropout is drawn first, so each sample's later draws don't depend on it.
        embeds = self._drop_captions(embeds, generators)
        if conditions is None:
            conditions = self.family.encode_media(
                self.encoders.vae,
                media["video"],
                media.get("image"),
                generators,
            )
        return {"prompt_embeds": embeds, **conditions}

    def _drop_captions(self, embeds: torch.Tensor, generators: list) -> torch.Tensor:
        """Replace each caption by the empty prompt (or zeros) with --caption_dropout_p."""
        probability = self.config.caption_dropout_p
        if probability <= 0:
            return embeds
        device = self.backend.device
        draws = torch.cat([torch.rand(1, generator=g, device=device) for g in generators])
        # No early return when nothing is dropped: asking would wait for the GPU every step.
        dropped = draws < probability
        if self.config.caption_dropout_technique == "zero":
            replacement = torch.zeros_like(embeds[:1])
        else:
            replacement = self.embed("").to(device, embeds.dtype)
        return torch.where(dropped.view(-1, 1, 1), replacement, embeds)
