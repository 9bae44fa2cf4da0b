"""The trainer: `accelerate launch -m core.train <reference flags>` or `--config spec.json`.

A run reads top to bottom in `Trainer.run`: check the inputs, load the models, find the data,
precompute conditions, set up what trains, resume, train, save. The components in core/training/
own their state and decide when they act (the checkpointer, the validator, the reporter, the
backend); the loop here only asks them. The model family (core/models/) does everything
model-specific: the loop never names a model class. The run reports through
`<output_dir>/events.jsonl` (core/events.py) and logs human lines to stderr (train.log when a job
runs it). Exit status: 0 done; 2 a problem the user can fix (one sentence says which); 1 anything
else; 128+signal after a SIGINT/SIGTERM stop, which first saves a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sys
import traceback
from collections import Counter
from dataclasses import replace
from pathlib import Path

from core.config import TrainConfig, parse_args
from core.data.dataset import PreparedSamples, describe_image, relative_name
from core.diskspace import full_disk_failure, tolerate_full_disk_in_std_streams
from core.errors import EXIT_FAILED, EXIT_USER_ERROR, UserError
from core.events import (
    STAGE_AFTER_TRAINING,
    STAGE_BEFORE_TRAINING,
    ConfigEvent,
    DatasetEvent,
    DoneEvent,
    FailedEvent,
    StoppedEvent,
    stage_after_epoch,
)
from core.models.common import LORA_FILE
from core.training.backend import Backend
from core.training.checkpointer import CONFIG_FILE, Checkpointer
from core.training.data import Batches, Conditions
from core.training.reporter import Reporter
from core.training.state import (
    FAULT_ENV,
    PendingStep,
    StopRequested,
    StopSignals,
    TrainingState,
    fault,
)
from core.training.validation import VALIDATION_DIR, Validator

log = logging.getLogger("core.train")

LORA_WEIGHTS = LORA_FILE
__all__ = ["CONFIG_FILE", "LORA_WEIGHTS", "VALIDATION_DIR", "Trainer", "main"]


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


class Trainer:
    def __init__(self, config: TrainConfig):
        if config.seed is None:
            config.seed = secrets.randbelow(2**31)
        self.config = config
        self.output_dir = config.output_path
        self.stop = StopSignals()
        self.state = TrainingState(config.seed)
        self.backend = Backend(config)
        self.reporter = Reporter(config, self.backend)
        self.checkpointer = Checkpointer(config, self.backend, self.reporter)
        self.validator = Validator(config, self.backend, self.reporter)
        self.batches = Batches(config, self.backend, self.state, self.reporter)
        self.conditions = Conditions(config, self.backend, self.reporter)
        # Filled as the run goes: the base model, its data, and what trains.
        self.spec = None  # core.models.registry.ModelSpec
        self.family = None  # the model family's runtime object
        self.prepared: PreparedSamples | None = None
        self.tokenizer = None
        self.scheduler = None  # the training noise schedule
        self.transformer = None  # as the backend prepared it (wrapped under DDP/DeepSpeed/FSDP)
        self.trainable: list = []
        self.optimizer = None
        self.lr_scheduler = None
        self.loss_fn = None
        self.attention_backend = config.attention_backend
        self.train_epochs = 0
        self.training_started = False

    @property
    def accelerator(self):
        return self.backend.accelerator

    # ---- the story of a run -----------------------------------------------------------------

    def run(self) -> int:
        self.stop.install()
        try:
            self.output_dir = prepare_output_dir(self.config)
            self.reporter.open(self.output_dir)
            self.check_inputs()
            self.backend.start(self.output_dir)
            self.prepare_data()
            self.conditions.precompute(
                self.family, self.batches.samples, self.tokenizer, self.stop.check
            )
            self.batches.load_media = not self.conditions.precomputed
            self.load_transformer()
            self.setup_training()
            self.checkpointer.resume(self.state)
            self.train()
            outputs = self.checkpointer.save_final(self.transformer, LORA_WEIGHTS)
            self.reporter.emit(DoneEvent(step=self.state.global_step, outputs=outputs))
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
            self.stop.restore()
            self.reporter.close()

    def check_inputs(self) -> None:
        """Everything that can be checked without loading a model; fails before writing."""
        from core.data.dataset import prepare_samples
        from core.models.registry import identify, shape_problem
        from core.models.source import ModelSource, check_source

        config = self.config
        source = ModelSource(config.pretrained_model_name_or_path, config.revision, config.variant)
        check_source(source)
        self.spec = identify(source, config.model_name)
        problem = shape_problem(self.spec.rules, config)
        if problem:
            raise UserError(problem)
        if config.validation_images and not self.spec.image_to_video:
            raise UserError(
                f"--validation_images: {self.spec.title} makes videos from text alone; remove "
                "the images, or train an image-to-video base model"
            )
        for image in config.validation_images:
            if not Path(image).expanduser().is_file():
                raise UserError(f"--validation_images: {image} does not exist")
        self.prepared = prepare_samples(config, image_to_video=self.spec.image_to_video)
        self.checkpointer.find_resume()

    def prepare_data(self) -> None:
        from core.models.registry import open_family
        from core.models.source import fetch_source

        prepared = self.prepared
        for skipped in prepared.skipped:
            log.warning("Skipping %s: %s", skipped.path, skipped.reason)
        samples = self.batches.samples = prepared.samples
        log.info(
            "Training on %d samples from %s (%s layout; %d files skipped)",
            len(samples),
            prepared.root,
            prepared.layout,
            len(prepared.skipped),
        )
        # A Hub id is fetched once (by the main process first), with its bytes as progress.
        with self.backend.main_process_first():
            source = fetch_source(self.spec.source, self.reporter.progress)
        self.spec = replace(self.spec, source=source)
        self.family = open_family(self.spec)
        self.checkpointer.family = self.family
        self.batches.images = self.family.image_to_video
        self.tokenizer = self.family.load_tokenizer()
        self.scheduler = self.family.load_scheduler()
        root = prepared.root
        limit = self.family.max_text_tokens
        long_captions = [
            relative_name(sample.path, root)
            for sample in samples
            if self.family.count_prompt_tokens(self.tokenizer, sample.caption) > limit
        ]
        for name in long_captions:
            log.warning(
                "The caption of %s is longer than %d tokens; the text encoder reads its start",
                name,
                limit,
            )
        # Image-to-video: which image each clip starts from (its own file, or its first frame).
        images = {}
        if self.family.image_to_video:
            images = {relative_name(s.path, root): describe_image(s, root) for s in samples}
            named = sum(1 for s in samples if s.image)
            log.info(
                "Image-to-video: %d clips start from their own image, %d from their first frame",
                named,
                len(samples) - named,
            )
        self.reporter.emit(
            DatasetEvent(
                root=str(root),
                layout=prepared.layout,
                samples=len(samples),
                buckets=dict(Counter("x".join(map(str, s.bucket)) for s in samples)),
                skipped=[
                    {"file": relative_name(item.path, root), "reason": item.reason}
                    for item in prepared.skipped
                ],
                long_captions=long_captions,
                **({"images": images} if images else {}),
            )
        )

    def load_transformer(self) -> None:
        from core.models.common import DTYPES
        from core.performance import check_attention_backend
        from core.training.setup import load_transformer

        config = self.config
        device = self.backend.device
        dtype = DTYPES[config.transformer_dtype]
        check_attention_backend(config.attention_backend, device, dtype)
        self.reporter.progress("loading transformer", 0, 1)
        self.transformer = load_transformer(self.family, config, device)
        if config.attention_backend == "fastest":
            self.attention_backend = self._fastest_attention(self.transformer.config, dtype)
        self.reporter.progress("loading transformer", 1, 1)

    def _fastest_attention(self, architecture, dtype) -> str:
        from core.performance import fastest_attention_backend

        tokens = architecture.max_text_seq_length + max(
            self.spec.rules.video_tokens(*bucket) for bucket in self.config.buckets
        )
        backend = fastest_attention_backend(
            self.backend.device,
            dtype,
            architecture.num_attention_heads,
            architecture.attention_head_dim,
            tokens,
        )
        log.info("Fastest attention kernel on %s: %s", self.backend.device, backend)
        return backend

    def setup_training(self) -> None:
        from core.models.common import DTYPES
        from core.training.setup import (
            build_lr_scheduler,
            build_optimizer,
            learning_rate,
            make_trainable,
        )

        config = self.config
        backend = self.backend
        self.trainable = make_trainable(self.transformer, config)
        lr = learning_rate(config, backend.world)
        optimizer = build_optimizer(self.trainable, config, backend.device, lr)
        self.lr_scheduler = build_lr_scheduler(optimizer, config)
        self.transformer, self.optimizer = backend.prepare(self.transformer, optimizer)
        self.checkpointer.attach(self.state, self.lr_scheduler)
        self.loss_fn = self.family.loss_function(
            self.scheduler,
            backend.unwrap(self.transformer).config,
            backend.device,
            DTYPES[config.transformer_dtype],
            noised_image_dropout=config.noised_image_dropout,
        )
        self.validator.prepare(
            self.family,
            self.conditions,
            self.scheduler,
            self.attention_backend,
            self.stop.check,
            self.batches.samples,
        )
        micro_steps = config.train_steps * config.gradient_accumulation_steps
        self.train_epochs = math.ceil(micro_steps / len(self.batches.epoch(0)))

    # ---- the loop ---------------------------------------------------------------------------

    def train(self) -> None:
        config = self.config
        world = self.backend.world
        self.reporter.emit(
            ConfigEvent(
                training_configuration={
                    "trainable parameters": sum(p.numel() for p in self.trainable),
                    "total samples": len(self.batches.samples),
                    "train epochs": self.train_epochs,
                    "train steps": config.train_steps,
                    "batches per device": config.batch_size,
                    "total batches observed per epoch": len(self.batches.epoch(0)),
                    "train batch size": config.batch_size
                    * world
                    * config.gradient_accumulation_steps,
                    "gradient accumulation steps": config.gradient_accumulation_steps,
                },
                config=config.model_dump(mode="json"),
                resumed_from_step=self.state.global_step,
            )
        )
        self.reporter.start_trackers(self.output_dir)
        self.reporter.stage(STAGE_BEFORE_TRAINING)
        self.training_started = True
        stream = self.batches.stream()
        self.reporter.restart_clock()
        while self.state.global_step < config.train_steps:
            self.reporter.record(self.train_step(stream))
            step = self.state.global_step
            checkpoint_due = self.checkpointer.due(step)
            validation_due = self.validator.due(step)
            # Reading the loss waits for the GPU to finish the step, so it happens every
            # --logging_steps steps, and before anything that reports where the run stands.
            if self.reporter.due(step) or checkpoint_due or validation_due:
                self.reporter.flush()
            if step == config.train_steps:
                break
            if checkpoint_due:
                self.checkpointer.save(step)
            if validation_due:
                self.validator.run(step, self.transformer)
            if checkpoint_due or validation_due:
                self.reporter.restart_clock()  # a step's time is the step's alone
            # Agreeing on a stop between ranks is a reduction that waits for the GPU too.
            if (world == 1 or not self.reporter.pending) and self.backend.any_rank(
                self.stop.requested
            ):
                raise StopRequested
        self.reporter.stage(stage_after_epoch(self.state.epoch + 1))
        if self.validator.enabled:
            self.validator.run(self.state.global_step, self.transformer)
        self.reporter.stage(STAGE_AFTER_TRAINING)

    def train_step(self, stream) -> PendingStep:
        """One optimizer step over --gradient_accumulation_steps micro-batches."""
        import torch

        from core.performance import attention_context

        config = self.config
        backend = self.backend
        loss_sum = torch.zeros((), device=backend.device)
        samples = 0
        grad_norm = None
        if fault("oom") is not None:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 20.00 GiB (injected by {FAULT_ENV})"
            )
        for micro in range(config.gradient_accumulation_steps):
            indices, media = next(stream)
            with backend.accumulate(self.transformer), attention_context(self.attention_backend):
                loss = self.loss(indices, media, micro)
                backend.backward(loss)
                if backend.sync_gradients:
                    grad_norm = backend.clip_gradients(
                        self.transformer, self.trainable, config.max_grad_norm
                    )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.state.position += 1
            loss_sum += loss.detach()
            samples += len(indices)
        self.lr_scheduler.step()
        self.state.global_step += 1
        return PendingStep(
            step=self.state.global_step,
            epoch=self.state.epoch + 1,
            loss=loss_sum / config.gradient_accumulation_steps,
            grad_norm=grad_norm,
            lr=self.lr_scheduler.get_last_lr()[0],
            samples=samples * backend.world,
        )

    def loss(self, indices: list[int], media, micro: int):
        """The family's loss on one micro-batch's named conditions."""
        from core.performance import offload_activations

        generators = self.batches.generators(indices, micro)
        conditions = self.conditions.for_batch(indices, media, generators)
        with offload_activations(self.config.offload_activations, self.backend.device):
            return self.loss_fn(self.transformer, conditions, generators)

    # ---- stops and failures -----------------------------------------------------------------

    def _stop(self) -> int:
        checkpoint = None
        step = self.state.global_step
        self.reporter.flush()  # the steps since the last read are done: report them first
        if self.training_started and step > 0:
            checkpoint = self.checkpointer.save_for_stop(step)
        exit_code = self.stop.exit_status()
        self.reporter.emit(StoppedEvent(step=step, checkpoint=checkpoint, exit_code=exit_code))
        log.warning(
            "Stopped at step %d%s", step, f"; resume from {checkpoint}" if checkpoint else ""
        )
        return exit_code

    def _fail(self, message: str, user_error: bool = False) -> int:
        step = self.state.global_step if self.training_started else None
        exit_code = EXIT_USER_ERROR if user_error else EXIT_FAILED
        self.reporter.emit(
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


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Run the trainer; `own_process`: this interpreter runs nothing else (the module's entry
    point), so the imports a run has no use for may be kept out of it."""
    try:
        config = parse_args(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    if own_process:
        skip_unused_imports(config)
    return Trainer(config).run()


def skip_unused_imports(config: TrainConfig) -> None:
    """Keep bitsandbytes and DeepSpeed out of a run that has no use for them.

    diffusers and peft import bitsandbytes whenever it is installed (only --use_8bit_bnb needs
    it): about 1.6 s of every run's start on a 2-core machine. accelerate imports DeepSpeed to
    unwrap any model when it is installed (only a run that accelerate launched under a DeepSpeed
    config needs it): about 0.8 s more. A None entry in sys.modules makes importlib report a
    package missing, so each library takes its path for a machine without it. Only a process of
    the trainer's own does this, before anything imports them.
    """
    unused = []
    if not config.use_8bit_bnb:
        unused.append("bitsandbytes")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        unused.append("deepspeed")
    for package in unused:
        if package not in sys.modules:
            sys.modules[package] = None


if __name__ == "__main__":
    tolerate_full_disk_in_std_streams()  # train.log on a full disk must not end the run
    arguments = None
    if sys.argv[1:2] == ["--standby"]:  # started ahead of Start: wait for a job (core/standby.py)
        from core.standby import wait_for_job

        arguments = wait_for_job(sys.argv[2:])
    sys.exit(main(arguments, own_process=True))
