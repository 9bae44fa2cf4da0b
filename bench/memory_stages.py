"""One training run's device memory, stage by stage, on fake tensors (or real ones, to check).

`run_stages` goes through a run as `core.train.Trainer.run` does, with the trainer's own parts
(the model family's encoders, loss and pipeline, the LoRA and fp8 set-up, gradient
checkpointing, activation offload, the optimizer), at the reference's stages:

    encode the prompts with T5, drop T5              -> after precomputing conditions
    encode the clip with the VAE, park the VAE       -> after precomputing latents
    load the transformer, add the LoRA, optimizer    -> before training start
    two optimizer steps                              -> after epoch 1, before validation start
    denoise and decode a validation video            -> after validation end, after training end

On fake tensors (`FakeTensorMode`: shapes, dtypes and storages, no data) the models are built
full size from their configs in seconds and nothing is computed. The accelerator is stood in
for by the `meta` device (a CPU-only torch cannot make fake CUDA tensors that survive a backward
pass), so moving a module to the CPU or back, as the trainer does, moves its bytes in and out of
the count. `core.live_memory.LiveMemoryTracker` counts the live bytes; its trace, replayed
through `core.caching_allocator`, gives the allocator's view (allocated and reserved).

With real tensors on the CPU (`fake=False`, tiny models) the same code runs for real, which is
how the fake count is checked against a measured one (tests/test_memory_model.py).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from unittest import mock

import torch

from core.caching_allocator import CachingAllocator
from core.config import TrainConfig
from core.events import (
    STAGE_AFTER_CONDITIONS,
    STAGE_AFTER_LATENTS,
    STAGE_AFTER_TRAINING,
    STAGE_AFTER_VALIDATION,
    STAGE_BEFORE_TRAINING,
    STAGE_BEFORE_VALIDATION,
    stage_after_epoch,
)
from core.live_memory import LiveMemoryTracker
from core.models import cogvideox as family

GPU_STAND_IN = torch.device("meta")
HOST = torch.device("cpu")

# The trainer empties the allocator's cache (core.memory.free_accelerator_memory) right before
# these stages: after dropping T5, after parking the VAE, and when validation ends.
EMPTIED_BEFORE = (STAGE_AFTER_CONDITIONS, STAGE_AFTER_LATENTS, STAGE_AFTER_VALIDATION)

# Two optimizer steps: the second one's backward pass runs with the optimizer's states alive
# (they are made during the first step), which is the training peak.
TRAIN_STEPS = 2
# Validation's denoising steps repeat one pattern (the DPM scheduler keeps one extra latent from
# the second step on), so two steps reach the peak of fifty.
VALIDATION_STEPS = 2


# ---- what the run records ------------------------------------------------------------------


@dataclass
class Mark:
    index: int  # position in the tracker's trace
    kind: str  # "stage" or "empty_cache"
    name: str = ""
    host_peak: int = 0  # the most host (CPU) bytes since the previous stage


@dataclass
class StageFigures:
    """One row of the stage table, in bytes."""

    stage: str
    live: int  # live tensor bytes at the stage (what the tracker counts)
    peak_live: int  # the most live bytes since the previous stage
    allocated: int  # the allocator's memory_allocated (blocks rounded up)
    peak_allocated: int
    reserved: int  # the allocator's memory_reserved
    max_reserved: int  # max_memory_reserved since the run began, as the trainer reports it
    host_peak: int = 0  # the most CPU memory in tensors since the previous stage


@dataclass
class Recording:
    """The tracker's trace of the accelerator's allocations, with the run's marks in it."""

    tracker: LiveMemoryTracker
    marks: list[Mark] = field(default_factory=list)
    parts: dict[str, int] = field(default_factory=dict)  # bytes: weights, trainable, optimizer
    parameters: int = 0  # the transformer's

    def mark(self, kind: str, name: str = "") -> None:
        self.marks.append(Mark(len(self.tracker.trace), kind, name))

    def stage(self, name: str) -> None:
        if name in EMPTIED_BEFORE:
            gc.collect()  # what the trainer's free_accelerator_memory does first
            self.mark("empty_cache")
        self.mark("stage", name)
        self.marks[-1].host_peak = self.tracker.peak(HOST.type)
        self.tracker.reset_peak()

    def table(self, expandable_segments: bool = False) -> list[StageFigures]:
        """Replay the trace: live bytes as counted, allocated and reserved as the allocator."""
        allocator = CachingAllocator(expandable_segments)
        live = peak_live = 0
        rows: list[StageFigures] = []
        marks = iter(self.marks)
        upcoming = next(marks, None)
        trace = self.tracker.trace
        for index in range(len(trace) + 1):
            while upcoming is not None and upcoming.index == index:
                if upcoming.kind == "empty_cache":
                    allocator.empty_cache()
                else:
                    rows.append(
                        StageFigures(
                            upcoming.name,
                            live,
                            peak_live,
                            allocator.allocated,
                            allocator.max_allocated,
                            allocator.reserved,
                            allocator.max_reserved,
                            upcoming.host_peak,
                        )
                    )
                    peak_live = live
                    allocator.max_allocated = allocator.allocated
                upcoming = next(marks, None)
            if index < len(trace):
                event = trace[index]
                live += event.size
                peak_live = max(peak_live, live)
                if event.size > 0:
                    allocator.malloc(event.key, event.size)
                else:
                    allocator.free(event.key)
        return rows


# ---- the fake world --------------------------------------------------------------------------


def _apply_setting_data(self, fn, recurse=True):
    """`Module._apply` (under `.to`, `.float` ...) as it runs for real tensors: each parameter's
    `.data` replaced in place, or the parameter replaced where `.data` cannot take the new
    tensor (fake tensors of two devices differ in type, real ones do not).

    For fake parameters torch swaps whole tensors instead, which it refuses while autograd holds
    one (fp8 storage casts weights in every forward), and which would keep a cast weight's old
    storage alive where a real run frees it.
    """
    if recurse:
        for module in self.children():
            module._apply(fn)
    for key, parameter in self._parameters.items():
        if parameter is None:
            continue
        with torch.no_grad():
            applied = fn(parameter)
        if torch._has_compatible_shallow_copy_type(parameter, applied):
            parameter.data = applied
        else:
            self._parameters[key] = torch.nn.Parameter(applied, parameter.requires_grad)
    for key, buffer in self._buffers.items():
        if buffer is not None:
            self._buffers[key] = fn(buffer)
    return self


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules in `dtype` (under fake tensors `.to(dtype)` afterwards would cost a copy)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@dataclass(frozen=True)
class World:
    """Where a run happens: fake or real tensors, the device standing for the GPU, and the
    GPU's own behaviour that fake tensors cannot show (kernel choice and workspaces)."""

    fake: bool
    device: torch.device
    attention: Callable | None = None  # replaces scaled_dot_product_attention on the stand-in
    workspaces: dict = field(default_factory=dict)  # op -> bytes(args) of scratch space
    persistent: tuple[int, ...] = ()  # bytes held from the first kernel on (cuBLAS workspaces)

    @contextlib.contextmanager
    def enter(self) -> Iterator[Recording]:
        import torch.nn.functional as F

        tracker = LiveMemoryTracker(traced=self.device.type, workspaces=self.workspaces)
        recording = Recording(tracker)
        with contextlib.ExitStack() as stack:
            # Objects made before the run (imports) are never garbage: the trainer's
            # collections then only walk the run's own, which keeps them fast.
            gc.freeze()
            stack.callback(gc.unfreeze)
            if self.fake:
                from torch._subclasses.fake_tensor import FakeTensorMode

                stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
                stack.enter_context(
                    mock.patch.object(torch.nn.Module, "_apply", _apply_setting_data)
                )
            stack.enter_context(tracker)
            if self.attention is not None:
                stack.enter_context(
                    mock.patch.object(F, "scaled_dot_product_attention", self.attention)
                )
            for size in self.persistent:
                tracker.hold(self.device.type, size)
            yield recording


# ---- the run's parts -------------------------------------------------------------------------


def build_component(source: family.ModelSource, component: str, dtype: torch.dtype):
    """A component built from its config on the host, without weights (random or fake)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    config = family.read_component_config(source, component)
    with default_dtype(dtype), torch.device(HOST):
        if component == "text_encoder":
            return T5EncoderModel(T5Config(**config))
        if component == "vae":
            return AutoencoderKLCogVideoX.from_config(config)
        return CogVideoXTransformer3DModel.from_config(config)


@dataclass
class Run:
    """The state a trainer holds between stages."""

    config: TrainConfig
    source: family.ModelSource
    world: World
    recording: Recording
    rules: family.FamilyRules = None
    embeds: dict = field(default_factory=dict)
    latents: list = field(default_factory=list)
    vae: torch.nn.Module | None = None
    transformer: torch.nn.Module | None = None
    trainable: list = field(default_factory=list)
    optimizer: object = None

    @property
    def device(self) -> torch.device:
        return self.world.device


def precompute(run: Run, tokenizer, clips: list[torch.Tensor]) -> None:
    """Encode the prompts and clips; the encoders leave the device (core/train.py,
    precompute_conditions; core/data/precompute.py)."""
    config = run.config
    text_encoder = build_component(
        run.source, "text_encoder", family.DTYPES[config.text_encoder_dtype]
    )
    text_encoder = text_encoder.requires_grad_(False).eval().to(run.device)
    prompts = ["", config.validation_negative_prompt, *config.validation_prompts]
    prompts += ["a caption" for _ in clips]
    for prompt in dict.fromkeys(prompts):
        encoded = family.encode_prompts(tokenizer, text_encoder, [prompt], run.device)[0]
        run.embeds[prompt] = encoded.cpu()
    del text_encoder, encoded
    run.recording.stage(STAGE_AFTER_CONDITIONS)
    vae = build_component(run.source, "vae", family.DTYPES[config.vae_dtype])
    if config.enable_slicing:
        vae.enable_slicing()
    if config.enable_tiling:
        vae.enable_tiling()
    run.vae = vae.requires_grad_(False).eval().to(run.device)
    for clip in clips:
        run.latents.append(family.encode_videos(run.vae, clip.unsqueeze(0))[0].cpu())
    run.vae.to(HOST)
    run.recording.stage(STAGE_AFTER_LATENTS)


def load_transformer(run: Run) -> None:
    """Load, store frozen weights in fp8 if asked, move to the device, add the LoRA, set up
    checkpointing and the optimizer (core/train.py, load_transformer and setup_training)."""
    from peft import LoraConfig

    from core.performance import checkpoint_blocks

    config = run.config
    dtype = family.DTYPES[config.transformer_dtype]
    transformer = build_component(run.source, "transformer", dtype)
    if config.layerwise_upcasting_modules:
        transformer.enable_layerwise_casting(
            storage_dtype=family.FP8_DTYPES[config.layerwise_upcasting_storage_dtype],
            compute_dtype=dtype,
            skip_modules_pattern=tuple(config.layerwise_upcasting_skip_modules_pattern),
        )
    transformer = transformer.to(run.device)
    if config.training_type == "lora":
        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=config.rank,
                lora_alpha=config.lora_alpha,
                init_lora_weights=True,
                target_modules=config.target_modules,
            )
        )
        for parameter in transformer.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    else:
        transformer.requires_grad_(True)
    if config.gradient_checkpointing:
        checkpoint_blocks(
            transformer, config.gradient_checkpointing_ratio, config.offload_activations
        )
    transformer.train()
    run.transformer = transformer
    run.trainable = [p for p in transformer.parameters() if p.requires_grad]


def _trainer_for(run: Run):
    """A `Trainer` holding this run's state, so its own loss and optimizer code runs."""
    from core.train import Trainer

    trainer = Trainer(run.config.model_copy())
    trainer.device = run.device
    trainer.rules = run.rules
    trainer.transformer = run.transformer
    trainer.trainable = run.trainable
    trainer.compute_dtype = family.DTYPES[run.config.transformer_dtype]
    trainer.cached_latents = run.latents
    trainer.cached_embeds = [run.embeds["a caption"] for _ in run.latents]
    trainer.empty_embed = run.embeds[""][None]
    scheduler = family.load_scheduler(run.source)
    trainer.alphas_cumprod = scheduler.alphas_cumprod.to(run.device, torch.float32)
    trainer.rotary = family.RotaryCache(run.transformer.config, run.device)
    # Noise is drawn from per-sample generators on the device; the stand-in device has none,
    # so they live on the CPU (the same draws, the same shapes).
    trainer._sample_generators = lambda indices, micro: [
        torch.Generator(HOST).manual_seed(index + micro) for index in indices
    ]
    return trainer


def train(run: Run, optimizer_kwargs: Callable[[TrainConfig], dict] | None = None) -> None:
    """Optimizer steps as `Trainer.train` takes them, with the stages it reports around them."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    trainer = _trainer_for(run)
    if optimizer_kwargs is not None:
        trainer.config = trainer.config.model_copy(update=optimizer_kwargs(run.config))
    # bitsandbytes computes its quantization maps from real numbers when it is built.
    with unset_fake_temporarily() if run.world.fake else contextlib.nullcontext():
        optimizer = trainer._make_optimizer(run.trainable, run.config.lr)
    run.recording.stage(STAGE_BEFORE_TRAINING)
    max_norm = run.config.max_grad_norm if run.config.max_grad_norm > 0 else float("inf")
    for step in range(TRAIN_STEPS):
        loss = trainer._loss(list(range(len(run.latents))), None, step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.trainable, max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    run.optimizer = optimizer
    run.recording.parts = memory_parts(run.transformer, run.trainable, optimizer)
    run.recording.parameters = parameter_count(run.transformer)
    run.recording.stage(stage_after_epoch(1))
    run.recording.stage(STAGE_BEFORE_VALIDATION)


def _validation_scheduler(source: family.ModelSource):
    """The validation scheduler, told each step's timesteps as the numbers they are.

    The DPM scheduler decides with them (`prev_timestep >= 0`), which a fake tensor cannot
    answer. The pipeline steps through its timesteps in order, so each step reads them from the
    schedule `set_timesteps` made (the same values, kept on the host).
    """
    from diffusers import CogVideoXDPMScheduler
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    class Scheduler(CogVideoXDPMScheduler):
        def set_timesteps(self, num_inference_steps, device=None):
            with unset_fake_temporarily():
                super().set_timesteps(num_inference_steps, device=HOST)
            self.schedule = [int(t) for t in self.timesteps.tolist()]
            self.steps_taken = 0
            self.timesteps = self.timesteps.to(device)

        def step(self, model_output, old_pred, timestep, timestep_back, sample, **kwargs):
            index, self.steps_taken = self.steps_taken, self.steps_taken + 1
            timestep = self.schedule[index]
            timestep_back = self.schedule[index - 1] if index > 0 else None
            return super().step(model_output, old_pred, timestep, timestep_back, sample, **kwargs)

    return Scheduler.from_config(family.load_scheduler(source).config)


def memory_parts(transformer, trainable: list, optimizer) -> dict[str, int]:
    """Bytes of the weights (all parameters), of the trainable ones (their gradients take as
    much), and of the optimizer's states (each storage once: bitsandbytes shares its maps)."""

    def size(tensors) -> int:
        storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())

    states = [
        value
        for state in getattr(optimizer, "optimizer", optimizer).state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]
    return {
        "weights": size(transformer.parameters()),
        "trainable": size(trainable),
        "optimizer": size(states),
    }


def parameter_count(transformer) -> int:
    return sum(parameter.numel() for parameter in transformer.parameters())


def validate(run: Run) -> None:
    """One validation video, as `Trainer.validate` renders it, the VAE brought back for it."""
    config = run.config
    frames, height, width = config.buckets[0]
    frames = config.validation_frames or frames
    height = config.validation_height or height
    width = config.validation_width or width
    run.transformer.eval()
    vae = run.vae.to(run.device)
    pipeline = family.make_pipeline(run.transformer, vae, _validation_scheduler(run.source))
    pipeline.set_progress_bar_config(disable=True)
    prompt = config.validation_prompts[0] if config.validation_prompts else ""
    # The video's conversion to numpy arrays needs numbers: stop at the decoded video.
    with mock.patch.object(
        pipeline.video_processor, "postprocess_video", lambda video, output_type: video.cpu()
    ):
        video = family.generate(
            pipeline,
            run.embeds[prompt][None].to(run.device),
            run.embeds[config.validation_negative_prompt][None].to(run.device),
            frames,
            height,
            width,
            min(VALIDATION_STEPS, config.validation_inference_steps),
            config.validation_guidance_scale,
            torch.Generator(HOST).manual_seed(config.seed or 0),
        )
    del video, pipeline
    run.transformer.train()
    run.vae.to(HOST)
    run.recording.stage(STAGE_AFTER_VALIDATION)
    run.recording.stage(STAGE_AFTER_TRAINING)


def run_stages(
    config: TrainConfig,
    world: World,
    tokenizer,
    clip_shape: tuple[int, int, int],
    optimizer_kwargs: Callable[[TrainConfig], dict] | None = None,
) -> Recording:
    """The whole run on one batch of clips of `clip_shape` (frames, height, width); returns its
    trace. Runs that encode every step (no --precompute_conditions) are not modelled."""
    if not config.precompute_conditions:
        raise ValueError("the memory model covers runs with --precompute_conditions only")
    source = family.ModelSource(config.pretrained_model_name_or_path)
    frames, height, width = clip_shape
    with world.enter() as recording:
        run = Run(config, source, world, recording, rules=family.family_rules(source))
        clips = [
            torch.empty(frames, 3, height, width)
            if world.fake
            else torch.rand(frames, 3, height, width) * 2 - 1
            for _ in range(config.batch_size)
        ]
        precompute(run, tokenizer, clips)
        del clips
        load_transformer(run)
        train(run, optimizer_kwargs)
        if config.validation_prompts:
            validate(run)
        else:
            run.recording.stage(STAGE_AFTER_TRAINING)
        del run
        gc.collect()
    return recording
