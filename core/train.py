"""The trainer: `accelerate launch -m core.train <reference flags>` or `--config spec.json`.

A run reads top to bottom in `Trainer.run`: check the inputs, load the models, find the data,
precompute conditions, set up what trains, resume, train, save. It reports through
`<output_dir>/events.jsonl` (core/events.py) and logs human lines to stderr (train.log when a job
runs it). Exit status: 0 done; 2 a problem the user can fix (one sentence says which); 1 anything
else; 128+signal after a SIGINT/SIGTERM stop, which first saves a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import shutil
import signal
import sys
import time
import traceback
from collections import Counter, deque
from pathlib import Path
from typing import Any, NamedTuple

from core.config import TrainConfig, parse_args
from core.data.dataset import relative_name
from core.diskspace import full_disk_failure, tolerate_full_disk_in_std_streams
from core.errors import EXIT_FAILED, EXIT_USER_ERROR, UserError
from core.events import (
    STAGE_AFTER_CONDITIONS,
    STAGE_AFTER_LATENTS,
    STAGE_AFTER_TRAINING,
    STAGE_AFTER_VALIDATION,
    STAGE_BEFORE_TRAINING,
    STAGE_BEFORE_VALIDATION,
    CheckpointEvent,
    ConfigEvent,
    DatasetEvent,
    DoneEvent,
    EventWriter,
    FailedEvent,
    ProgressEvent,
    StageEvent,
    StepEvent,
    StoppedEvent,
    ValidationEvent,
    stage_after_epoch,
)
from core.files import write_text_atomic

log = logging.getLogger("core.train")

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
CONFIG_FILE = "train_config.json"
VALIDATION_DIR = "validation"


# Test-only fault switch, so the jobs layer's handling of real failures can be proven with real
# processes: "oom" raises CUDA's out-of-memory error at the first step; "kill_in_checkpoint:N"
# kills the process with SIGKILL halfway through writing the checkpoint of step N.
FAULT_ENV = "COGVIDEOX_STUDIO_FAULT"


def _fault(name: str) -> str | None:
    value = os.environ.get(FAULT_ENV, "")
    kind, _, argument = value.partition(":")
    return argument or "" if kind == name else None


class PendingStep(NamedTuple):
    """A finished step whose loss (and gradient norm) may still be on the device."""

    step: int
    epoch: int
    loss: Any  # a 0-d tensor
    grad_norm: Any  # a 0-d tensor, a float, or None before the first optimizer step
    lr: float
    samples: int


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: finish the step, checkpoint, report `stopped`."""


def prepare_output_dir(config: TrainConfig) -> Path:
    """Create the output folder (or check the existing one) and prove it is writable."""
    output_dir = config.output_path
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(f"--output_dir: cannot write to {output_dir} ({reason.lower()})") from None
    return output_dir


class TrainingState:
    """Where the run is: the step and the data position.

    Registered with accelerate for checkpointing. Randomness needs no saved state: each sample's
    noise, timestep and caption dropout come from a generator seeded by (seed, step, micro-batch,
    sample), so a resumed run, or the same run on another number of processes, draws the same.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.global_step = 0
        self.epoch = 0
        self.position = 0  # micro-batches of the current epoch already consumed

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


class Trainer:
    def __init__(self, config: TrainConfig):
        if config.seed is None:
            config.seed = secrets.randbelow(2**31)
        self.config = config
        self.events: EventWriter | None = None
        self.stop_signal: int | None = None
        self.training_started = False
        self.last_checkpoint: Path | None = None

    # ---- the story of a run -----------------------------------------------------------------

    def run(self) -> int:
        previous_handlers = self._install_signal_handlers()
        try:
            self.output_dir = prepare_output_dir(self.config)
            # Only the main process writes events; accelerate and torchrun set RANK for the rest.
            self.events = EventWriter(self.output_dir, enabled=os.environ.get("RANK", "0") == "0")
            self.check_inputs()
            self.setup_accelerator()
            self.prepare_data()
            self.precompute_conditions()
            self.load_transformer()
            self.setup_training()
            self.resume()
            self.train()
            outputs = self.save_outputs()
            self.emit(DoneEvent(step=self.state.global_step, outputs=outputs))
            log.info(
                "Training finished at step %d; outputs: %s",
                self.state.global_step,
                ", ".join(outputs),
            )
            return 0
        except StopRequested:
            try:
                return self._stop()
            except Exception as error:  # its checkpoint could not be written (a full disk)
                traceback.print_exc()
                return self._fail(self._crash_message(error))
        except UserError as error:
            return self._fail(str(error), user_error=True)
        except KeyboardInterrupt:
            return self._fail("interrupted before the run could save a checkpoint")
        except Exception as error:  # the one place every other failure is reported and exits 1
            traceback.print_exc()
            return self._fail(self._crash_message(error))
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self._end_trackers()
            if self.events is not None:
                self.events.close()

    def check_inputs(self) -> None:
        """Everything that can be checked without loading a model; fails before writing."""
        from core.checkpoints import resolve_resume
        from core.config import nearest_valid_frames
        from core.data.dataset import prepare_samples
        from core.models import cogvideox as family

        config = self.config
        self.source = family.ModelSource(
            config.pretrained_model_name_or_path, config.revision, config.variant
        )
        family.check_source(self.source)
        if config.training_type == "full-finetune" and config.layerwise_upcasting_modules:
            raise UserError(
                "--layerwise_upcasting_modules: fp8 storage works with "
                "--training_type lora only (full finetuning updates those weights)"
            )
        if config.offload_activations and not config.gradient_checkpointing:
            raise UserError(
                "--offload_activations moves the inputs of checkpointed blocks to the CPU: "
                "add --gradient_checkpointing"
            )
        if config.use_8bit_bnb and config.optimizer_implementation != "auto":
            raise UserError(
                "--optimizer_implementation applies to torch's Adam/AdamW; the 8-bit optimizers "
                "of --use_8bit_bnb have their own kernels, so leave it at auto"
            )
        self.rules = family.family_rules(self.source)
        step = self.rules.frame_step
        for frames, height, width in config.buckets:
            if (frames - 1) % step:
                nearest = " or ".join(str(v) for v in nearest_valid_frames(frames, step))
                raise UserError(
                    f"--video_resolution_buckets: {frames}x{height}x{width} has {frames} frames, "
                    f"but {self.rules.family} needs {step}k+1 frames; the nearest are {nearest}"
                )
        self.prepared = prepare_samples(config)
        self.resume_path = resolve_resume(self.output_dir, config.resume_from_checkpoint)

    def setup_accelerator(self) -> None:
        import datetime

        import torch
        from accelerate import Accelerator, InitProcessGroupKwargs
        from accelerate.utils import ProjectConfiguration, set_seed

        config = self.config
        if config.expandable_segments:
            from core.performance import enable_expandable_segments

            enable_expandable_segments()  # before accelerate touches the GPU
        log_with = None if config.report_to == "none" else config.report_to
        self.accelerator = Accelerator(
            log_with=log_with,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir),
                logging_dir=str(self.output_dir / config.logging_dir),
            ),
            kwargs_handlers=[
                InitProcessGroupKwargs(
                    backend=_cpu_deepspeed_backend(),
                    timeout=datetime.timedelta(seconds=config.nccl_timeout),
                )
            ],
        )
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self._load_frozen_models_whole()
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(message)s",
            stream=sys.stderr,
            force=True,
        )
        if not self.is_main:
            log.setLevel(logging.WARNING)
        set_seed(config.seed)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        rank = self.accelerator.process_index
        self.state = TrainingState(config.seed)
        log.warning("Process %d of %d on %s", rank + 1, self.accelerator.num_processes, self.device)

    def _load_frozen_models_whole(self) -> None:
        """Under ZeRO-3, load the text encoder and VAE whole on every rank (no zero.Init).

        With the configs' zero3_init_flag, transformers would build the T5 encoder partitioned
        across ranks; the main process, encoding prompts first, would then wait forever for the
        other ranks' shards. Only the trained transformer is sharded, by DeepSpeed itself.
        """
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:
            # transformers asks its global DeepSpeed config whether ZeRO-3 is on (accelerate
            # sets it whatever zero3_init_flag says); without it, models load whole.
            from transformers.integrations import unset_hf_deepspeed_config

            plugin.zero3_init_flag = False
            unset_hf_deepspeed_config()

    def prepare_data(self) -> None:
        from core.models import cogvideox as family

        for skipped in self.prepared.skipped:
            log.warning("Skipping %s: %s", skipped.path, skipped.reason)
        self.samples = self.prepared.samples
        log.info(
            "Training on %d samples from %s (%s layout; %d files skipped)",
            len(self.samples),
            self.prepared.root,
            self.prepared.layout,
            len(self.prepared.skipped),
        )
        # A Hub id is fetched once (by the main process first), with its bytes as progress.
        with self.accelerator.main_process_first():
            self.source = family.fetch_source(self.source, self._progress)
        self.tokenizer = family.load_tokenizer(self.source)
        self.scheduler = family.load_scheduler(self.source)
        root = self.prepared.root
        long_captions = [
            relative_name(sample.path, root)
            for sample in self.samples
            if family.count_prompt_tokens(self.tokenizer, sample.caption) > family.MAX_TEXT_TOKENS
        ]
        for name in long_captions:
            log.warning(
                "The caption of %s is longer than %d tokens; the text encoder reads its start",
                name,
                family.MAX_TEXT_TOKENS,
            )
        self.emit(
            DatasetEvent(
                root=str(root),
                layout=self.prepared.layout,
                samples=len(self.samples),
                buckets=dict(Counter("x".join(map(str, s.bucket)) for s in self.samples)),
                skipped=[
                    {"file": relative_name(item.path, root), "reason": item.reason}
                    for item in self.prepared.skipped
                ],
                long_captions=long_captions,
            )
        )

    def precompute_conditions(self) -> None:
        """Prompt embeddings always (validation needs them); clip latents too when asked.

        Everything goes through the precompute cache, so a second run on the same data and
        model loads neither encoder. The main process encodes first; other ranks then read
        its entries.
        """
        import torch

        from core.data.cache import PrecomputeCache
        from core.data.precompute import Encoders, precompute_latents, precompute_prompts

        config = self.config
        self.encoders = Encoders(
            self.source,
            self.tokenizer,
            self.device,
            config.text_encoder_dtype,
            config.vae_dtype,
            config.enable_slicing,
            config.enable_tiling,
        )
        self.cache = PrecomputeCache(config.cache_path)
        self.cached_embeds = self.cached_latents = None
        prompts = ["", config.validation_negative_prompt, *config.validation_prompts]
        if config.precompute_conditions:
            prompts += [sample.caption for sample in self.samples]
        with self.accelerator.main_process_first():
            embeds = precompute_prompts(
                prompts, self.cache, self.encoders, self._progress, self._check_stop
            )
        self.empty_embed = embeds[""][None]
        self.negative_embed = embeds[config.validation_negative_prompt][None]
        self.validation_embeds = [embeds[prompt][None] for prompt in config.validation_prompts]
        if not config.precompute_conditions:
            return  # captions and clips are encoded at every step; the encoders stay loaded
        self.cached_embeds = [embeds[sample.caption] for sample in self.samples]
        # The text encoder is done for the whole run: drop it before the VAE works.
        self.encoders.drop_text_encoder()
        self.emit_stage(STAGE_AFTER_CONDITIONS)
        with self.accelerator.main_process_first():
            self.cached_latents = precompute_latents(
                self.samples, self.cache, self.encoders, self._progress, self._check_stop
            )
        self.encoders.park_vae()
        if config.pin_memory and torch.cuda.is_available():
            self.cached_latents = [t.pin_memory() for t in self.cached_latents]
            self.cached_embeds = [t.pin_memory() for t in self.cached_embeds]
        log.info(
            "Precompute cache %s: %d entries read, %d encoded (%d damaged ones among them)",
            self.cache.root,
            self.cache.hits,
            self.cache.misses,
            self.cache.repaired,
        )
        self.emit_stage(STAGE_AFTER_LATENTS)

    def load_transformer(self) -> None:
        from core.models import cogvideox as family
        from core.performance import check_attention_backend

        config = self.config
        dtype = family.DTYPES[config.transformer_dtype]
        check_attention_backend(config.attention_backend, self.device, dtype)
        self.emit(ProgressEvent(phase="loading transformer", done=0, total=1))
        transformer = family.load_transformer(self.source, dtype)
        if config.training_type == "lora":
            family.lora_target_check(transformer, config.target_modules)
        if config.layerwise_upcasting_modules:  # LoRA only (checked with the inputs)
            # Cast to fp8 storage before the move, so the bf16 weights never sit on the GPU:
            # for the 5B they alone (10.4 GB) would set the run's peak of reserved memory.
            transformer.enable_layerwise_casting(
                storage_dtype=family.FP8_DTYPES[config.layerwise_upcasting_storage_dtype],
                compute_dtype=dtype,
                skip_modules_pattern=tuple(config.layerwise_upcasting_skip_modules_pattern),
            )
        self.transformer = transformer.to(self.device)
        self.attention_backend = config.attention_backend
        if config.attention_backend == "fastest":
            self.attention_backend = self._fastest_attention(transformer.config, dtype)
        self.emit(ProgressEvent(phase="loading transformer", done=1, total=1))

    def _fastest_attention(self, architecture, dtype) -> str:
        from core.performance import fastest_attention_backend

        tokens = architecture.max_text_seq_length + max(
            self.rules.video_tokens(*bucket) for bucket in self.config.buckets
        )
        backend = fastest_attention_backend(
            self.device,
            dtype,
            architecture.num_attention_heads,
            architecture.attention_head_dim,
            tokens,
        )
        log.info("Fastest attention kernel on %s: %s", self.device, backend)
        return backend

    def setup_training(self) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        from core.models import cogvideox as family
        from core.performance import checkpoint_blocks, compile_blocks

        config = self.config
        accelerator = self.accelerator
        transformer = self.transformer
        compute_dtype = family.DTYPES[config.transformer_dtype]
        if config.training_type == "lora":
            transformer.requires_grad_(False)
            from peft import LoraConfig

            transformer.add_adapter(
                LoraConfig(
                    r=config.rank,
                    lora_alpha=config.lora_alpha,
                    init_lora_weights=True,
                    target_modules=config.target_modules,
                )
            )
            # LoRA weights train in fp32 even when the frozen base computes in bf16.
            for parameter in transformer.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()
        else:
            transformer.requires_grad_(True)
        if config.gradient_checkpointing:
            blocks = checkpoint_blocks(
                transformer, config.gradient_checkpointing_ratio, config.offload_activations
            )
            log.info(
                "Gradient checkpointing in %d of %d blocks",
                blocks,
                len(transformer.transformer_blocks),
            )
        if config.compile_transformer_blocks:
            compile_blocks(transformer)
        transformer.train()
        self.compute_dtype = compute_dtype
        trainable = [p for p in transformer.parameters() if p.requires_grad]
        self.trainable_count = sum(p.numel() for p in trainable)
        self.trainable = trainable

        batches_per_epoch = len(self._epoch_batches(0))
        self.batches_per_epoch = batches_per_epoch
        world = accelerator.num_processes
        lr = config.lr
        if config.scale_lr:
            lr *= config.batch_size * config.gradient_accumulation_steps * world
        optimizer = self._make_optimizer(trainable, lr)
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.train_steps,
            num_cycles=config.lr_num_cycles,
            power=config.lr_power,
        )
        self._configure_deepspeed()
        self.transformer, self.optimizer = accelerator.prepare(transformer, optimizer)
        self.weights_sharded = self._weights_sharded()
        accelerator.register_for_checkpointing(self.lr_scheduler, self.state)
        accelerator.register_save_state_pre_hook(self._save_model_hook)
        accelerator.register_load_state_pre_hook(self._load_model_hook)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.rotary = family.RotaryCache(
            accelerator.unwrap_model(self.transformer).config, self.device
        )
        micro_steps = config.train_steps * config.gradient_accumulation_steps
        self.train_epochs = math.ceil(micro_steps / batches_per_epoch)

    def _configure_deepspeed(self) -> None:
        """Settings DeepSpeed takes from its own config, set from the trainer's flags.

        With no dataloader passed to `prepare` (batches come from the precompute cache or the
        trainer's own loader), accelerate cannot infer the micro-batch size and refuses to start;
        clipping is DeepSpeed's to do, at the trainer's --max_grad_norm.
        """
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            return
        settings = self.accelerator.state.deepspeed_plugin.deepspeed_config
        settings["train_micro_batch_size_per_gpu"] = self.config.batch_size
        settings["gradient_clipping"] = max(self.config.max_grad_norm, 0.0)

    def _weights_sharded(self) -> bool:
        """Whether each process holds only a shard of the transformer's weights (ZeRO-3, FSDP).

        Then every process must take part in each forward pass and in gathering the weights to
        save them, so validation and saving run on all ranks, and only the main one writes.
        """
        from accelerate.utils import DistributedType

        kind = self.accelerator.distributed_type
        if kind == DistributedType.FSDP:
            return True
        if kind == DistributedType.DEEPSPEED:
            return self.accelerator.state.deepspeed_plugin.zero_stage == 3
        return False

    def _gathered_state(self, model) -> dict | None:
        """The full state dict of a sharded model (a collective: every rank calls it)."""
        return self.accelerator.get_state_dict(model) if self.weights_sharded else None

    def _write_weights(self, transformer, folder: Path, state: dict | None) -> None:
        """The LoRA file, or the transformer folder, of `transformer` (or of a gathered state)."""
        if self.config.training_type == "lora":
            self._save_lora(transformer, folder, state)
        elif state is None:
            transformer.save_pretrained(folder / "transformer")
        else:
            from huggingface_hub import save_torch_state_dict

            transformer.save_config(folder / "transformer")
            save_torch_state_dict(
                state,
                folder / "transformer",
                filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
            )

    def resume(self) -> None:
        from core.checkpoints import checkpoint_step

        if self.resume_path is None:
            if self.config.resume_from_checkpoint:
                log.info("No checkpoint in %s yet: starting from step 0", self.output_dir)
            return
        log.info("Resuming from %s", self.resume_path)
        self.accelerator.load_state(str(self.resume_path))
        expected = checkpoint_step(self.resume_path)
        if self.state.global_step != expected:
            raise RuntimeError(
                f"checkpoint {self.resume_path} holds step "
                f"{self.state.global_step}, expected {expected}"
            )

    def train(self) -> None:
        import torch

        from core.performance import attention_context

        config = self.config
        accelerator = self.accelerator
        world = accelerator.num_processes
        self.emit(
            ConfigEvent(
                training_configuration={
                    "trainable parameters": self.trainable_count,
                    "total samples": len(self.samples),
                    "train epochs": self.train_epochs,
                    "train steps": config.train_steps,
                    "batches per device": config.batch_size,
                    "total batches observed per epoch": self.batches_per_epoch,
                    "train batch size": config.batch_size
                    * world
                    * config.gradient_accumulation_steps,
                    "gradient accumulation steps": config.gradient_accumulation_steps,
                },
                config=config.model_dump(mode="json"),
                resumed_from_step=self.state.global_step,
            )
        )
        self._init_trackers()
        self.emit_stage(STAGE_BEFORE_TRAINING)
        self.training_started = True
        stream = self._batches()
        self._recent_seconds = deque(maxlen=20)
        self._window = []  # steps whose loss is still on the device
        self._window_started = time.perf_counter()
        while self.state.global_step < config.train_steps:
            loss_sum = torch.zeros((), device=self.device)
            samples = 0
            grad_norm = None
            if _fault("oom") is not None:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate 20.00 GiB (injected by {FAULT_ENV})"
                )
            for micro in range(config.gradient_accumulation_steps):
                indices, videos = next(stream)
                with (
                    accelerator.accumulate(self.transformer),
                    attention_context(self.attention_backend),
                ):
                    loss = self._loss(indices, videos, micro)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = self._clip_gradients()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.state.position += 1
                loss_sum += loss.detach()
                samples += len(indices)
            self.lr_scheduler.step()
            self.state.global_step += 1
            step = self.state.global_step
            self._window.append(
                PendingStep(
                    step=step,
                    epoch=self.state.epoch + 1,
                    loss=loss_sum / config.gradient_accumulation_steps,
                    grad_norm=grad_norm,
                    lr=self.lr_scheduler.get_last_lr()[0],
                    samples=samples * world,
                )
            )
            checkpoint_due = step % config.checkpointing_steps == 0
            validation_due = bool(
                config.validation_prompts
                and config.validation_steps
                and step % config.validation_steps == 0
            )
            # Reading the loss waits for the GPU to finish the step, so it happens every
            # --logging_steps steps, and before anything that reports where the run stands.
            if (
                step % config.logging_steps == 0
                or step == config.train_steps
                or checkpoint_due
                or validation_due
            ):
                self._report_steps()
            if step == config.train_steps:
                break
            if checkpoint_due:
                self.save_checkpoint()
            if validation_due:
                self.validate()
            if checkpoint_due or validation_due:
                self._window_started = time.perf_counter()  # a step's time is the step's alone
            # Agreeing on a stop between ranks is a reduction that waits for the GPU too.
            if (world == 1 or not self._window) and self._stop_agreed():
                raise StopRequested
        self.emit_stage(stage_after_epoch(self.state.epoch + 1))
        if config.validation_prompts:
            self.validate()
        self.emit_stage(STAGE_AFTER_TRAINING)

    def _clip_gradients(self):
        """Clip the gradients to --max_grad_norm (none when 0) and return their norm.

        Without sharding, torch clips the trainable parameters directly (accelerate's version
        walks the whole model every step); DeepSpeed and FSDP clip their own way.
        """
        import torch
        from accelerate.utils import DistributedType

        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        plain = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
        if self.accelerator.distributed_type not in plain:
            return self.accelerator.clip_grad_norm_(self.transformer.parameters(), max_norm)
        self.accelerator.unscale_gradients()  # fp16 autocast's loss scaling, if any
        return torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)

    def _report_steps(self) -> None:
        """Read the window's losses and gradient norms back in one transfer; report each step."""
        import torch

        config = self.config
        window, self._window = self._window, []
        now = time.perf_counter()
        seconds = (now - self._window_started) / len(window)  # queued steps share the time
        self._window_started = now
        nan = torch.full((), float("nan"), device=self.device)
        values = [pending.loss.float() for pending in window]
        values += [
            nan if pending.grad_norm is None else torch.as_tensor(pending.grad_norm).float()
            for pending in window
        ]
        numbers = torch.stack([value.to(self.device) for value in values]).tolist()
        losses, norms = numbers[: len(window)], numbers[len(window) :]
        for pending, loss_value, norm_value in zip(window, losses, norms, strict=True):
            if not math.isfinite(loss_value):
                raise UserError(
                    f"the loss became {loss_value} at step {pending.step}: lower --lr, or "
                    "train the transformer in bf16/fp32 rather than fp16"
                )
            norm = None if pending.grad_norm is None else norm_value
            self._recent_seconds.append(seconds)
            recent = self._recent_seconds
            self.emit(
                StepEvent(
                    step=pending.step,
                    total_steps=config.train_steps,
                    epoch=pending.epoch,
                    loss=loss_value,
                    lr=pending.lr,
                    grad_norm=norm,
                    step_seconds=seconds,
                    samples_per_second=pending.samples / seconds if seconds else 0.0,
                    eta_seconds=(config.train_steps - pending.step) * sum(recent) / len(recent),
                )
            )
            if self.trackers_on:
                self.accelerator.log(
                    {"loss": loss_value, "lr": pending.lr, "grad_norm": norm or 0.0},
                    step=pending.step,
                )

    def save_outputs(self) -> list[str]:
        """The final weights (LoRA file or transformer folder) and train_config.json."""
        self.accelerator.wait_for_everyone()
        state = self._gathered_state(self.transformer)
        if not self.is_main:
            return []
        transformer = self.accelerator.unwrap_model(self.transformer)
        staging = self.output_dir / ".final.partial"
        shutil.rmtree(staging, ignore_errors=True)
        self._write_weights(transformer, staging, state)
        if self.config.training_type == "lora":
            (staging / LORA_WEIGHTS).replace(self.output_dir / LORA_WEIGHTS)
            outputs = [LORA_WEIGHTS]
        else:
            target = self.output_dir / "transformer"
            previous = self.output_dir / ".transformer.previous"
            if target.exists():
                target.replace(previous)
            (staging / "transformer").replace(target)
            shutil.rmtree(previous, ignore_errors=True)
            outputs = ["transformer"]
        shutil.rmtree(staging, ignore_errors=True)
        write_text_atomic(self.output_dir / CONFIG_FILE, self.config.model_dump_json(indent=2))
        return [*outputs, CONFIG_FILE]

    # ---- steps ------------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        from core.data.dataset import epoch_batches

        return epoch_batches(
            self.samples,
            self.config.batch_size,
            self.config.seed,
            epoch,
            self.accelerator.process_index,
            self.accelerator.num_processes,
        )

    def _batches(self):
        """Micro-batches from the current data position on: (sample indices, videos or None)."""
        from torch.utils.data import DataLoader

        from core.data.dataset import ClipDataset

        while True:
            remaining = self._epoch_batches(self.state.epoch)[self.state.position :]
            if self.cached_latents is not None:
                for indices in remaining:
                    yield indices, None
            else:
                loader = DataLoader(
                    ClipDataset(self.samples),
                    batch_sampler=remaining,
                    num_workers=self.config.dataloader_num_workers,
                    pin_memory=self.config.pin_memory,
                    collate_fn=_collate_videos,
                )
                for indices, videos in zip(remaining, loader, strict=True):
                    yield indices, videos
            self.emit_stage(stage_after_epoch(self.state.epoch + 1))
            self.state.epoch += 1
            self.state.position = 0

    def _sample_generators(self, indices: list[int], micro: int) -> list:
        """One generator per sample, seeded by what identifies its draw in the whole run."""
        import hashlib

        import torch

        key = f"{self.config.seed}-{self.state.global_step}-{micro}"
        seeds = [
            int.from_bytes(hashlib.blake2b(f"{key}-{i}".encode(), digest_size=8).digest()) >> 1
            for i in indices
        ]
        return [torch.Generator(self.device).manual_seed(seed) for seed in seeds]

    def _loss(self, indices: list[int], videos, micro: int):
        import torch

        from core.models import cogvideox as family
        from core.performance import offload_activations

        generators = self._sample_generators(indices, micro)
        if self.cached_latents is not None:
            parameters = torch.stack([self.cached_latents[i] for i in indices])
            embeds = torch.stack([self.cached_embeds[i] for i in indices])
            parameters = parameters.to(self.device, non_blocking=True)
            embeds = embeds.to(self.device, non_blocking=True)
        else:
            parameters = family.encode_videos(self.encoders.vae, videos)
            captions = [self.samples[i].caption for i in indices]
            embeds = family.encode_prompts(
                self.tokenizer, self.encoders.text_encoder, captions, self.device
            )
        embeds = self._drop_captions(embeds, generators)
        latents = family.sample_latents(parameters, self.rules, generators)
        with offload_activations(self.config.offload_activations, self.device):
            return family.training_loss(
                self.transformer,
                self.alphas_cumprod,
                latents,
                embeds,
                generators,
                self.rotary,
                self.compute_dtype,
            )

    def _drop_captions(self, embeds, generators: list):
        """Replace each caption by the empty prompt (or zeros) with --caption_dropout_p."""
        import torch

        probability = self.config.caption_dropout_p
        if probability <= 0:
            return embeds
        draws = torch.cat([torch.rand(1, generator=g, device=self.device) for g in generators])
        # No early return when nothing is dropped: asking would wait for the GPU every step.
        dropped = draws < probability
        if self.config.caption_dropout_technique == "zero":
            replacement = torch.zeros_like(embeds[:1])
        else:
            replacement = self.empty_embed.to(self.device, embeds.dtype)
        return torch.where(dropped.view(-1, 1, 1), replacement, embeds)

    def _make_optimizer(self, parameters, lr: float):
        import torch

        from core.performance import optimizer_kwargs

        config = self.config
        kwargs = dict(
            lr=lr,
            betas=(config.beta1, config.beta2),
            eps=config.epsilon,
            weight_decay=config.weight_decay,
        )
        if config.use_8bit_bnb:
            import bitsandbytes as bnb

            cls = bnb.optim.AdamW8bit if config.optimizer == "adamw" else bnb.optim.Adam8bit
            return cls(parameters, **kwargs)
        cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        return cls(
            parameters, **kwargs, **optimizer_kwargs(config.optimizer_implementation, self.device)
        )

    # ---- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        from core.checkpoints import partial_dir, prune, publish

        step = self.state.global_step
        staging = partial_dir(self.output_dir, step)
        if self.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(staging))
        if _fault("kill_in_checkpoint") == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        self.accelerator.wait_for_everyone()
        final = staging
        if self.is_main:
            final = publish(self.output_dir, step, staging)
            prune(self.output_dir, self.config.checkpointing_limit)
            self.emit(CheckpointEvent(step=step, path=final.name))
            log.info("Saved checkpoint %s", final)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = final
        return final

    def _save_lora(self, transformer, folder: Path, state: dict | None = None) -> None:
        from diffusers import CogVideoXPipeline
        from peft.utils import get_peft_model_state_dict

        folder.mkdir(parents=True, exist_ok=True)
        CogVideoXPipeline.save_lora_weights(
            folder,
            transformer_lora_layers=get_peft_model_state_dict(transformer, state_dict=state),
            # Without the adapter metadata, lora_alpha is lost on reload and outputs differ.
            transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
        )

    def _save_model_hook(self, models, weights, output_dir) -> None:
        """accelerate saves trainable weights only: a LoRA file or the transformer folder."""
        for model in models:
            state = self._gathered_state(model)
            if self.is_main:
                unwrapped = self.accelerator.unwrap_model(model)
                self._write_weights(unwrapped, Path(output_dir), state)
            if weights:
                weights.pop()

    def _load_model_hook(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        while models:
            model = self.accelerator.unwrap_model(models.pop())
            folder = Path(input_dir)
            if self.config.training_type == "lora":
                from peft.utils import set_peft_model_state_dict

                state = load_file(folder / LORA_WEIGHTS)
                state = {key.removeprefix("transformer."): value for key, value in state.items()}
                result = set_peft_model_state_dict(model, state, adapter_name="default")
                if result.unexpected_keys:
                    raise RuntimeError(
                        f"checkpoint {folder} has unexpected LoRA keys, such as "
                        f"{result.unexpected_keys[0]}"
                    )
            else:
                loaded: set[str] = set()
                for shard in sorted((folder / "transformer").glob("*.safetensors")):
                    state = load_file(shard)
                    model.load_state_dict(state, strict=False)
                    loaded.update(state)
                missing = set(model.state_dict()) - loaded
                if missing:
                    raise RuntimeError(
                        f"checkpoint {folder} lacks weights such as {sorted(missing)[0]}"
                    )

    # ---- validation -------------------------------------------------------------------------

    def validate(self) -> None:
        import torch
        from diffusers import CogVideoXDPMScheduler

        from core.data.video import write_video
        from core.memory import free_accelerator_memory
        from core.models import cogvideox as family
        from core.performance import attention_context

        config = self.config
        self.emit_stage(STAGE_BEFORE_VALIDATION)
        frames, height, width = config.buckets[0]
        frames = config.validation_frames or frames
        height = config.validation_height or height
        width = config.validation_width or width
        step = self.state.global_step
        folder = self.output_dir / VALIDATION_DIR / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        transformer = self.accelerator.unwrap_model(self.transformer)
        transformer.eval()
        vae = self.encoders.vae_on(self.device)
        pipeline = family.make_pipeline(
            self._inference_transformer(transformer),
            vae,
            CogVideoXDPMScheduler.from_config(self.scheduler.config),
        )
        pipeline.set_progress_bar_config(disable=True)
        files = []
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        work = [
            (index, number)
            for index in range(len(config.validation_prompts))
            for number in range(config.num_validation_videos)
        ]
        writes = True
        if self.weights_sharded:
            # Each forward pass gathers weight shards from every rank: all ranks run every
            # video in step, and the main one writes them.
            writes = self.is_main
        else:
            # Every rank renders its share of the videos, so none waits on another for longer
            # than one video (a rank idling through all of them could outlast the NCCL timeout).
            work = work[rank::world]
        try:
            for index, number in work:
                prompt, embed = config.validation_prompts[index], self.validation_embeds[index]
                if world == 1:
                    self._check_stop()
                generator = torch.Generator(self.device).manual_seed(config.seed + number)
                with attention_context(self.attention_backend):
                    video = family.generate(
                        pipeline,
                        embed.to(self.device),
                        self.negative_embed.to(self.device),
                        frames,
                        height,
                        width,
                        config.validation_inference_steps,
                        config.validation_guidance_scale,
                        generator,
                    )
                if not writes:
                    continue
                name = f"{index:02d}-{_slug(prompt)}-{number}.mp4"
                write_video(folder / name, video, fps=config.validation_fps)
                files.append(str((folder / name).relative_to(self.output_dir)))
        finally:
            transformer.train()
            if self.cached_latents is not None:
                self.encoders.park_vae()
            free_accelerator_memory(self.device)
        if world > 1:
            from accelerate.utils import gather_object

            files = sorted(gather_object(files))
        self.emit(ValidationEvent(step=step, files=files, prompts=config.validation_prompts))
        self.emit_stage(STAGE_AFTER_VALIDATION)
        if self.trackers_on and config.report_to == "wandb":
            import wandb

            tracker = self.accelerator.get_tracker("wandb", unwrap=True)
            tracker.log(
                {"validation": [wandb.Video(str(self.output_dir / f)) for f in files]}, step=step
            )

    def _inference_transformer(self, transformer):
        """The module validation calls: under FSDP (1) the wrapped root, whose forward gathers
        the root's own weight shards (the inner module's would run on shards); elsewhere the
        unwrapped model (DeepSpeed ZeRO-3 gathers through hooks on the inner modules)."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP and not getattr(
            self.accelerator, "is_fsdp2", False
        ):
            return self.transformer
        return transformer

    # ---- reporting, signals, failures --------------------------------------------------------

    def emit(self, event) -> None:
        if self.events is not None:
            self.events.emit(event)

    def _progress(self, phase: str, done: int, total: int) -> None:
        self.emit(ProgressEvent(phase=phase, done=done, total=total))

    def emit_stage(self, stage: str) -> None:
        from core.memory import memory_snapshot

        memory = memory_snapshot(self.device)
        self.emit(StageEvent(stage=stage, device=str(self.device), memory=memory))
        log.info("Memory %s: %s", stage, memory)

    def _init_trackers(self) -> None:
        self.trackers_on = self.config.report_to != "none"
        if not self.trackers_on:
            return
        flat = {
            key: (" ".join(map(str, value)) if isinstance(value, list) else value)
            for key, value in self.config.model_dump(mode="json").items()
        }
        flat = {key: ("" if value is None else value) for key, value in flat.items()}
        logging_dir = self.output_dir / self.config.logging_dir
        logging_dir.mkdir(parents=True, exist_ok=True)
        # wandb writes beside the run, not into whatever folder the trainer was started from.
        init_kwargs = {"wandb": {"dir": str(logging_dir)}}
        self.accelerator.init_trackers(
            self.config.tracker_name, config=flat, init_kwargs=init_kwargs
        )

    def _end_trackers(self) -> None:
        if getattr(self, "trackers_on", False):
            self.accelerator.end_training()

    def _install_signal_handlers(self) -> dict:
        def request_stop(signum, _frame):
            if self.stop_signal is not None:  # a second signal: stop now, without saving
                raise KeyboardInterrupt
            self.stop_signal = signum
            log.warning("Received %s: stopping after the current step", signal.Signals(signum).name)

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
        return previous

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: all ranks must stop at the same step."""
        if self.accelerator.num_processes == 1:
            return self.stop_signal is not None
        import torch

        flag = torch.tensor([0.0 if self.stop_signal is None else 1.0], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _check_stop(self) -> None:
        if self.stop_signal is not None:
            raise StopRequested

    def _stop(self) -> int:
        checkpoint = None
        step = self.state.global_step if hasattr(self, "state") else 0
        if getattr(self, "_window", None):
            self._report_steps()  # the steps since the last read are done: report them first
        if self.training_started and step > 0:
            saved = self.last_checkpoint
            if saved is None or not saved.name.endswith(f"-{step}"):
                saved = self.save_checkpoint()
            checkpoint = saved.name
        exit_code = 128 + (self.stop_signal or signal.SIGTERM)
        self.emit(StoppedEvent(step=step, checkpoint=checkpoint, exit_code=exit_code))
        log.warning(
            "Stopped at step %d%s", step, f"; resume from {checkpoint}" if checkpoint else ""
        )
        return exit_code

    def _fail(self, message: str, user_error: bool = False) -> int:
        step = self.state.global_step if hasattr(self, "state") else None
        exit_code = EXIT_USER_ERROR if user_error else EXIT_FAILED
        self.emit(
            FailedEvent(message=message, user_error=user_error, step=step, exit_code=exit_code)
        )
        print(f"error: {message}", file=sys.stderr, flush=True)
        return exit_code

    def _crash_message(self, error: Exception) -> str:
        config = self.config
        return full_disk_failure(error, config.output_dir, config.cache_path) or (
            self._describe_crash(error)
        )

    @staticmethod
    def _describe_crash(error: Exception) -> str:
        text = f"{type(error).__name__}: {error}".strip()
        if "out of memory" in text.lower():
            return "out of memory: " + text.splitlines()[0][:300]
        return text.splitlines()[0][:500] if text else type(error).__name__


def _cpu_deepspeed_backend() -> str | None:
    """gloo for DeepSpeed launched on a machine without CUDA, else accelerate's own choice.

    There accelerate finds no device backend and counts one process, while DeepSpeed (on its
    CPU accelerator) starts all of them; naming gloo makes both see the same ranks.
    """
    import torch

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    return "gloo" if deepspeed and not torch.cuda.is_available() else None


def _collate_videos(items: list[dict]):
    import torch

    return torch.stack([item["video"] for item in items])


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit] or "prompt"


def main(argv: list[str] | None = None) -> int:
    tolerate_full_disk_in_std_streams()  # train.log on a full disk must not end the run
    try:
        config = parse_args(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return Trainer(config).run()


if __name__ == "__main__":
    sys.exit(main())
