"""Checkpoints: when to save, saving (atomically), resuming exactly, and the final weights.

A checkpoint holds what accelerate saves (optimizer, schedule, the TrainingState) and the
trainable weights as users load them: the LoRA file, or the full transformer folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

from core.checkpoints import checkpoint_step, partial_dir, prune, publish, resolve_resume
from core.config import TrainConfig
from core.events import CheckpointEvent
from core.files import write_text_atomic
from core.training.backend import Backend
from core.training.reporter import Reporter
from core.training.state import TrainingState, fault

log = logging.getLogger("core.train")

CONFIG_FILE = "train_config.json"


class Checkpointer:
    def __init__(self, config: TrainConfig, backend: Backend, reporter: Reporter, family=None):
        self.config = config
        self.backend = backend
        self.reporter = reporter
        self.family = family  # saves and reads LoRA files; set once the model is known
        self.output_dir = config.output_path
        self.resume_path: Path | None = None
        self.last: Path | None = None  # the newest checkpoint this run wrote

    def find_resume(self) -> None:
        """The checkpoint --resume_from_checkpoint names (checked before anything loads)."""
        self.resume_path = resolve_resume(self.output_dir, self.config.resume_from_checkpoint)

    def due(self, step: int) -> bool:
        return step % self.config.checkpointing_steps == 0

    def attach(self, state: TrainingState, lr_scheduler) -> None:
        """Register what accelerate saves beside the model, and how the model is saved."""
        accelerator = self.backend.accelerator
        accelerator.register_for_checkpointing(lr_scheduler, state)
        accelerator.register_save_state_pre_hook(self._save_model_hook)
        accelerator.register_load_state_pre_hook(self._load_model_hook)

    # ---- saving -----------------------------------------------------------------------------

    def save(self, step: int) -> Path:
        """A complete checkpoint of `step` (every rank calls this)."""
        backend = self.backend
        staging = partial_dir(self.output_dir, step)
        if backend.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        backend.wait_for_everyone()
        backend.accelerator.save_state(str(staging))
        if fault("kill_in_checkpoint") == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        backend.wait_for_everyone()
        final = staging
        if backend.is_main:
            final = publish(self.output_dir, step, staging)
            prune(self.output_dir, self.config.checkpointing_limit)
            self.reporter.emit(CheckpointEvent(step=step, path=final.name))
            log.info("Saved checkpoint %s", final)
        backend.wait_for_everyone()
        self.last = final
        return final

    def save_for_stop(self, step: int) -> str:
        """The checkpoint a stop at `step` resumes from: the one just written, or a new one."""
        saved = self.last
        if saved is None or not saved.name.endswith(f"-{step}"):
            saved = self.save(step)
        return saved.name

    def write_weights(self, transformer, folder: Path, state: dict | None) -> None:
        """The LoRA file, or the transformer folder, of `transformer` (or of a gathered state)."""
        if self.config.training_type == "lora":
            self.family.save_lora(folder, transformer, state)
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

    def save_final(self, prepared, lora_file: str) -> list[str]:
        """The final weights (LoRA file or transformer folder) and train_config.json."""
        backend = self.backend
        backend.wait_for_everyone()
        state = backend.gathered_state(prepared)
        if not backend.is_main:
            return []
        transformer = backend.unwrap(prepared)
        staging = self.output_dir / ".final.partial"
        shutil.rmtree(staging, ignore_errors=True)
        self.write_weights(transformer, staging, state)
        if self.config.training_type == "lora":
            (staging / lora_file).replace(self.output_dir / lora_file)
            outputs = [lora_file]
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

    def _save_model_hook(self, models, weights, output_dir) -> None:
        """accelerate saves trainable weights only: a LoRA file or the transformer folder."""
        for model in models:
            state = self.backend.gathered_state(model)
            if self.backend.is_main:
                self.write_weights(self.backend.unwrap(model), Path(output_dir), state)
            if weights:
                weights.pop()

    # ---- resuming ---------------------------------------------------------------------------

    def resume(self, state: TrainingState) -> None:
        """Load the checkpoint named by --resume_from_checkpoint, if any, and check its step."""
        if self.resume_path is None:
            if self.config.resume_from_checkpoint:
                log.info("No checkpoint in %s yet: starting from step 0", self.output_dir)
            return
        log.info("Resuming from %s", self.resume_path)
        self.backend.accelerator.load_state(str(self.resume_path))
        expected = checkpoint_step(self.resume_path)
        if state.global_step != expected:
            raise RuntimeError(
                f"checkpoint {self.resume_path} holds step {state.global_step}, expected {expected}"
            )

    def _load_model_hook(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        while models:
            model = self.backend.unwrap(models.pop())
            folder = Path(input_dir)
            if self.config.training_type == "lora":
                from peft.utils import set_peft_model_state_dict

                state = self.family.read_lora(folder)
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
