"""Validation videos: when to render them, and rendering them with the model as it trains."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from core.config import TrainConfig
from core.events import STAGE_AFTER_VALIDATION, STAGE_BEFORE_VALIDATION, ValidationEvent
from core.training.backend import Backend
from core.training.data import Conditions
from core.training.reporter import Reporter

log = logging.getLogger("core.train")

VALIDATION_DIR = "validation"


class Validator:
    def __init__(self, config: TrainConfig, backend: Backend, reporter: Reporter):
        self.config = config
        self.backend = backend
        self.reporter = reporter
        self.output_dir = config.output_path
        self.family = None
        self.conditions: Conditions | None = None
        self.scheduler = None  # the training scheduler, whose config sampling starts from
        self.attention_backend = "auto"
        self.check_stop: Callable[[], None] = lambda: None
        self.samples: list = []  # the training samples: the first one's image is the default
        self._images: list | None = None  # image-to-video: one PIL image per prompt

    @property
    def enabled(self) -> bool:
        return bool(self.config.validation_prompts)

    def due(self, step: int) -> bool:
        steps = self.config.validation_steps
        return bool(self.enabled and steps and step % steps == 0)

    def prepare(
        self,
        family,
        conditions: Conditions,
        scheduler,
        attention_backend: str,
        check_stop: Callable[[], None],
        samples: list,
    ) -> None:
        self.family = family
        self.conditions = conditions
        self.scheduler = scheduler
        self.attention_backend = attention_backend
        self.check_stop = check_stop
        self.samples = samples

    def images(self) -> list:
        """Image-to-video: the image each prompt's videos start from, at the validation size
        (--validation_images, else the first training sample's); None each for text-to-video."""
        prompts = self.config.validation_prompts
        if not self.family.image_to_video:
            return [None] * len(prompts)
        if self._images is None:
            from core.data.dataset import load_condition_image, sample_image, to_pil

            _, height, width = self.shape()
            if self.config.validation_images:
                tensors = [
                    load_condition_image(Path(path).expanduser(), height, width)
                    for path in self.config.validation_images
                ]
            else:
                tensors = [sample_image(self.samples[0], height, width)] * len(prompts)
            self._images = [to_pil(tensor) for tensor in tensors]
        return self._images

    def shape(self) -> tuple[int, int, int]:
        """Frames, height and width of validation videos (default: the first bucket's)."""
        config = self.config
        frames, height, width = config.buckets[0]
        return (
            config.validation_frames or frames,
            config.validation_height or height,
            config.validation_width or width,
        )

    def run(self, step: int, prepared) -> None:
        """Render every validation video at `step` (all ranks call this) and report them."""
        from core.data.video import write_video
        from core.memory import free_accelerator_memory
        from core.performance import attention_context

        config = self.config
        backend = self.backend
        self.reporter.stage(STAGE_BEFORE_VALIDATION)
        frames, height, width = self.shape()
        folder = self.output_dir / VALIDATION_DIR / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        transformer = backend.unwrap(prepared)
        transformer.eval()
        encoders = self.conditions.encoders
        pipeline = self.family.make_pipeline(
            backend.inference_module(prepared),
            encoders.vae_on(backend.device),
            self.family.sampling_scheduler(self.scheduler),
        )
        pipeline.set_progress_bar_config(disable=True)
        files = []
        work = [
            (index, number)
            for index in range(len(config.validation_prompts))
            for number in range(config.num_validation_videos)
        ]
        writes = True
        if backend.weights_sharded:
            # Each forward pass gathers weight shards from every rank: all ranks run every
            # video in step, and the main one writes them.
            writes = backend.is_main
        else:
            # Every rank renders its share of the videos, so none waits on another for longer
            # than one video (a rank idling through all of them could outlast the NCCL timeout).
            work = work[backend.rank :: backend.world]
        negative = self.conditions.embed(config.validation_negative_prompt).to(backend.device)
        images = self.images()
        try:
            for index, number in work:
                prompt = config.validation_prompts[index]
                if backend.world == 1:
                    self.check_stop()
                generator = backend.generator(config.seed + number)
                with attention_context(self.attention_backend):
                    video = self.family.generate(
                        pipeline,
                        self.conditions.embed(prompt).to(backend.device),
                        negative,
                        frames,
                        height,
                        width,
                        config.validation_inference_steps,
                        config.validation_guidance_scale,
                        generator,
                        image=images[index],
                    )
                if not writes:
                    continue
                name = f"{index:02d}-{slug(prompt)}-{number}.mp4"
                write_video(folder / name, video, fps=config.validation_fps)
                files.append(str((folder / name).relative_to(self.output_dir)))
                if images[index] is not None:  # the image it started from, beside it
                    save_image(images[index], (folder / name).with_suffix(".png"))
        finally:
            transformer.train()
            if self.conditions.precomputed:
                encoders.park_vae()
            free_accelerator_memory(backend.device)
        files = sorted(backend.gather(files)) if backend.world > 1 else files
        self.reporter.emit(
            ValidationEvent(step=step, files=files, prompts=config.validation_prompts)
        )
        self.reporter.stage(STAGE_AFTER_VALIDATION)
        self.reporter.log_videos([self.output_dir / f for f in files], step)


def save_image(image, path: Path) -> None:
    """A PNG written under a temporary name and renamed (never half-written)."""
    temporary = path.with_name(f".{path.stem}.partial.png")
    image.save(temporary)
    temporary.replace(path)


def slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit] or "prompt"
