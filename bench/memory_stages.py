"""One training run's device memory, stage by stage, on fake tensors (or real ones, to check).

`run_stages` runs `core.train.Trainer`'s own parts on one device: the precompute of prompts and
media (`Conditions.precompute`), the transformer as `core.training.setup` builds it (LoRA, fp8
storage, gradient checkpointing), `Trainer.setup_training` (the optimizer, the loss),
`Trainer.train` (its steps, with offloaded activations if asked) and the `Validator` (denoising
and decoding a video). The trainer reports the reference's stages itself:

    encode the prompts with T5, drop T5              -> after precomputing conditions
    encode the clip with the VAE, park the VAE       -> after precomputing latents
    build the transformer, LoRA, optimizer           -> before training start
    two optimizer steps                              -> after epoch 1, before validation start
    denoise and decode a validation video            -> after validation end, after training end

What stands in: a backend without accelerate (one process), random weights built from the
checkpoint's configs, a precompute cache in memory, no checkpoints or files written.

On fake tensors (`FakeTensorMode`: shapes, dtypes and storages, no data) the models are built
full size in seconds and nothing is computed. The accelerator is stood in for by the `meta`
device (a CPU-only torch cannot make fake CUDA tensors that survive a backward pass), so moving
a module to the CPU or back, as the trainer does, moves its bytes in and out of the count.
`core.live_memory.LiveMemoryTracker` counts the live bytes; its trace, replayed through
`core.caching_allocator`, gives the allocator's view (allocated and reserved).

With real tensors on the CPU (`World(fake=False)`, tiny models) the same code runs for real,
which is how the fake count is checked against a measured one (tests/test_memory_model.py).
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch

from core.caching_allocator import CachingAllocator
from core.config import TrainConfig
from core.events import STAGE_AFTER_CONDITIONS, STAGE_AFTER_LATENTS, STAGE_AFTER_VALIDATION
from core.live_memory import LiveMemoryTracker
from core.training.backend import Backend
from core.training.checkpointer import Checkpointer
from core.training.data import Batches, Conditions
from core.training.reporter import Reporter
from core.training.validation import Validator

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
    tensor (fake tensors of two devices differ in type, real ones do not); a parameter two
    modules share (T5's tied embeddings) is moved once and stays shared.

    For fake parameters torch swaps whole tensors instead, which it refuses while autograd holds
    one (fp8 storage casts weights in every forward), and which would keep a cast weight's old
    storage alive where a real run frees it.
    """
    _replacing.depth += 1
    try:
        if recurse:
            for module in self.children():
                module._apply(fn)
        for key, parameter in self._parameters.items():
            if parameter is None:
                continue
            done = _replacing.done.get(id(parameter))
            if done is not None:
                self._parameters[key] = done[1]
                continue
            with torch.no_grad():
                applied = fn(parameter)
            if torch._has_compatible_shallow_copy_type(parameter, applied):
                parameter.data = applied
            else:
                replacement = torch.nn.Parameter(applied, parameter.requires_grad)
                _replacing.done[id(parameter)] = (parameter, replacement)
                self._parameters[key] = replacement
        for key, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[key] = fn(buffer)
    finally:
        _replacing.depth -= 1
        if _replacing.depth == 0:
            _replacing.done.clear()
    return self


class _Replacing:
    """Parameters replaced during one `_apply` call: id -> (the old one, kept so its id is not
    reused while the call runs, and its replacement)."""

    def __init__(self) -> None:
        self.depth = 0
        self.done: dict[int, tuple[torch.nn.Parameter, torch.nn.Parameter]] = {}


_replacing = _Replacing()


@contextlib.contextmanager
def _quantization_maps_from_numbers() -> Iterator[None]:
    """bitsandbytes' 8-bit optimizers compute their quantization maps (256 numbers) from real
    numbers when they are built; under fake tensors those few are computed for real."""
    try:
        from bitsandbytes import functional
    except ImportError:
        yield
        return
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    create = functional.create_dynamic_map

    def from_numbers(*args, **kwargs):
        with unset_fake_temporarily():
            return create(*args, **kwargs)

    with mock.patch.object(functional, "create_dynamic_map", from_numbers):
        yield


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
                stack.enter_context(_quantization_maps_from_numbers())
                stack.enter_context(
                    mock.patch.object(torch.nn.Module, "_apply", _apply_setting_data)
                )
                # An image-to-video validation image is a fake tensor too: a blank picture of
                # its size stands for it on the way into the pipeline.
                stack.enter_context(mock.patch("core.data.dataset.to_pil", _blank_picture))
                from diffusers.image_processor import VaeImageProcessor

                stack.enter_context(  # its range checks read pixel values
                    mock.patch.object(VaeImageProcessor, "preprocess", _blank_pixels)
                )
            stack.enter_context(tracker)
            if self.attention is not None:
                stack.enter_context(
                    mock.patch.object(F, "scaled_dot_product_attention", self.attention)
                )
            for size in self.persistent:
                tracker.hold(self.device.type, size)
            yield recording


def _blank_picture(pixels):
    """A picture the size of a [3, H, W] tensor, for a fake one (which holds no pixels)."""
    from PIL import Image

    return Image.new("RGB", (pixels.shape[-1], pixels.shape[-2]))


def _blank_pixels(processor, image, height=None, width=None, **kwargs):
    """The image processor's output for pictures, [B, 3, H, W] in [-1, 1], without reading
    them (on fake tensors there is nothing to read)."""
    pictures = image if isinstance(image, list) else [image]
    height = height or pictures[0].height
    width = width or pictures[0].width
    return torch.zeros(len(pictures), 3, height, width)


# ---- the trainer, on one stand-in device -----------------------------------------------------


class OneDevice(Backend):
    """The trainer's backend for one process on `device`, without accelerate: what a one-GPU
    run's backend does (nothing wrapped, a plain backward pass, torch's clipping), and random
    generators on the host when the device (the meta stand-in) has none."""

    def __init__(self, config: TrainConfig, device: torch.device):
        super().__init__(config)
        self.device = device

    def prepare(self, model, optimizer):
        return model, optimizer

    def unwrap(self, model):
        return model

    def inference_module(self, prepared):
        return prepared

    def generator(self, seed: int) -> torch.Generator:
        if self.device.type == "meta":
            return torch.Generator(HOST).manual_seed(seed)
        return super().generator(seed)

    def accumulate(self, model):
        return contextlib.nullcontext()

    def backward(self, loss) -> None:
        loss.backward()

    @property
    def sync_gradients(self) -> bool:
        return True

    def clip_gradients(self, model, trainable: list, max_grad_norm: float):
        max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
        return torch.nn.utils.clip_grad_norm_(trainable, max_norm)

    def main_process_first(self):
        return contextlib.nullcontext()


class StageReporter(Reporter):
    """The trainer's reporter, its stages marked in the recording; losses are never read back
    (a fake one has no value), and no event file is written."""

    def __init__(self, config: TrainConfig, backend: Backend, recording: Recording):
        super().__init__(config, backend)
        self.recording = recording

    def stage(self, stage: str) -> None:
        self.recording.stage(stage)

    def flush(self) -> None:
        self._window.clear()


class NoCheckpoints(Checkpointer):
    """The run saves nothing: checkpoints write files, which fake tensors cannot fill."""

    def attach(self, state, lr_scheduler) -> None:
        pass

    def due(self, step: int) -> bool:
        return False


class FreshCache:
    """A first run's precompute cache: empty, then holding what the run encodes (in memory:
    fake tensors can't be written), so a second identical clip is read, not encoded."""

    def __init__(self, root):
        self.root = Path(root)
        self.entries: dict[str, dict] = {}
        self.hits = self.misses = self.repaired = 0

    def load(self, key: str):
        entry = self.entries.get(key)
        self.hits += entry is not None
        self.misses += entry is None
        return entry

    def save(self, key: str, entry: dict) -> None:
        self.entries[key] = entry


class WithoutWeights:
    """The model family's object, its components built from their configs with random weights
    (on fake tensors: shapes only), its validation video left as the decoded tensor."""

    def __init__(self, family):
        self._family = family

    def __getattr__(self, name: str):
        return getattr(self._family, name)

    def load_text_encoder(self, dtype: torch.dtype):
        return self._family.load_text_encoder(dtype, weights=False)

    def load_vae(self, dtype: torch.dtype, slicing: bool = False, tiling: bool = False):
        return self._family.load_vae(dtype, slicing, tiling, weights=False)

    def load_transformer(self, dtype: torch.dtype, weights: bool = True):
        return self._family.load_transformer(dtype, weights=False)

    def sampling_scheduler(self, scheduler):
        return _told_its_timesteps(self._family.sampling_scheduler(scheduler))

    def make_pipeline(self, *args, **kwargs):
        pipeline = self._family.make_pipeline(*args, **kwargs)
        # The video's conversion to numpy arrays needs numbers: stop at the decoded video.
        pipeline.video_processor.postprocess_video = lambda video, output_type: video.cpu()
        return pipeline


def _told_its_timesteps(scheduler):
    """The validation scheduler, told each step's timesteps as the numbers they are.

    The DPM scheduler decides with them (`prev_timestep >= 0`), which a fake tensor cannot
    answer. The pipeline steps through its timesteps in order, so each step reads them from the
    schedule `set_timesteps` made (the same values, kept on the host).
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    base = type(scheduler)

    class ToldItsTimesteps(base):
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

    return ToldItsTimesteps.from_config(scheduler.config)


def _stand_in_samples(clip_shape: tuple[int, int, int], count: int) -> list:
    """`count` samples of one clip and caption: one epoch of the run's steps."""
    from core.data.dataset import Sample

    return [
        Sample(
            path=Path("clip.mp4"),
            caption="a caption",
            bucket=clip_shape,
            indices=tuple(range(clip_shape[0])),
            info=None,
            digest="clip",
            source="memory model",
        )
        for _ in range(count)
    ]


def run_stages(config: TrainConfig, world: World, clip_shape: tuple[int, int, int]) -> Recording:
    """A run of `config` (--train_steps of it, on one batch of clips of `clip_shape`: frames,
    height, width) through the trainer's own parts in `world`; returns its trace.

    What runs is `core.train.Trainer`'s: the precompute of prompts and media (an empty cache),
    the transformer built as the trainer builds it, its optimizer, `train()` with its steps and
    loss, and validation. What stands in: a one-device backend without accelerate, a reporter
    that marks stages, no checkpoints, random weights, and no files written.
    """
    from core.data import cache, precompute, video
    from core.models.registry import identify, open_family
    from core.models.source import ModelSource
    from core.train import Trainer
    from core.training.setup import load_transformer

    if not config.precompute_conditions:
        raise ValueError("the memory model covers runs with --precompute_conditions only")
    frames, height, width = clip_shape
    spec = identify(ModelSource(config.pretrained_model_name_or_path), config.model_name)
    family = WithoutWeights(open_family(spec))
    tokenizer = family.load_tokenizer()
    micro_batches = TRAIN_STEPS * config.gradient_accumulation_steps
    samples = _stand_in_samples(clip_shape, config.batch_size * micro_batches)
    with tempfile.TemporaryDirectory() as scratch, world.enter() as recording:
        config = config.model_copy(
            update={
                "output_dir": scratch,
                "report_to": "none",
                "train_steps": TRAIN_STEPS,
                "validation_steps": None,  # validation once, when training ends
                "num_validation_videos": 1,
                "validation_prompts": config.validation_prompts[:1],
                "validation_inference_steps": min(
                    VALIDATION_STEPS, config.validation_inference_steps
                ),
            }
        )
        clips = {  # decoded frames in [-1, 1], as core.data.dataset.load_clip gives them
            "clip": torch.empty(frames, 3, height, width)
            if world.fake
            else torch.rand(frames, 3, height, width) * 2 - 1
        }
        trainer = Trainer(config)
        trainer.backend = backend = OneDevice(config, world.device)
        trainer.reporter = reporter = StageReporter(config, backend, recording)
        trainer.checkpointer = NoCheckpoints(config, backend, reporter)
        trainer.validator = Validator(config, backend, reporter)
        trainer.batches = Batches(config, backend, trainer.state, reporter)
        trainer.conditions = Conditions(config, backend, reporter)
        trainer.spec, trainer.family, trainer.tokenizer = spec, family, tokenizer
        trainer.scheduler = family.load_scheduler()
        trainer.batches.samples = samples
        with (
            mock.patch.object(cache, "PrecomputeCache", FreshCache),
            mock.patch.object(precompute, "load_clip", lambda sample: clips[sample.digest]),
            mock.patch.object(video, "write_video", lambda *args, **kwargs: None),
        ):
            trainer.conditions.precompute(family, samples, tokenizer, lambda: None)
            clips.clear()
            trainer.batches.load_media = False
            trainer.transformer = load_transformer(family, config, backend.device)
            trainer.setup_training()
            trainer.train()
        recording.parts = memory_parts(trainer.transformer, trainer.trainable, trainer.optimizer)
        recording.parameters = parameter_count(trainer.transformer)
        del trainer
        gc.collect()
    return recording


def memory_parts(transformer, trainable: list, optimizer) -> dict[str, int]:
    """Bytes of the weights (all parameters), of the trainable ones (their gradients take as
    much), and of the optimizer's states (each storage once: bitsandbytes shares its maps)."""

    def size(tensors) -> int:
        storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())

    states = [
        value
        for state in optimizer.state.values()
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
