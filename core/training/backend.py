"""accelerate, and every workaround DeepSpeed, FSDP and gloo need, in one place.

The rest of the trainer asks the backend: which device, which rank, whether weights are sharded,
to prepare the model and optimizer, to clip gradients, to gather a sharded state to save it,
which module validation should call, and whether any rank was asked to stop.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from core.config import TrainConfig

log = logging.getLogger("core.train")


class Backend:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.accelerator = None  # accelerate.Accelerator, from start()
        self.device = torch.device("cpu")
        # Only the main process writes; accelerate and torchrun set RANK for the others.
        self.is_main = os.environ.get("RANK", "0") == "0"
        self.world = 1
        self.rank = 0
        self.weights_sharded = False  # ZeRO-3 / FSDP: each rank holds a shard of the weights

    def start(self, output_dir: Path) -> None:
        """Create the Accelerator (and the process group), then set logging, seeds and TF32."""
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
                project_dir=str(output_dir),
                logging_dir=str(output_dir / config.logging_dir),
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
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
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
        log.warning("Process %d of %d on %s", self.rank + 1, self.world, self.device)

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

    # ---- preparing the model ----------------------------------------------------------------

    def prepare(self, model, optimizer):
        """The model and optimizer wrapped for this launch (DDP, DeepSpeed, FSDP or none)."""
        self._configure_deepspeed()
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self.weights_sharded = self._weights_sharded()
        return model, optimizer

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

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def gathered_state(self, model) -> dict | None:
        """The full state dict of a sharded model (a collective: every rank calls it)."""
        return self.accelerator.get_state_dict(model) if self.weights_sharded else None

    def inference_module(self, prepared):
        """The module validation calls: under FSDP (1) the wrapped root, whose forward gathers
        the root's own weight shards (the inner module's would run on shards); elsewhere the
        unwrapped model (DeepSpeed ZeRO-3 gathers through hooks on the inner modules)."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP and not getattr(
            self.accelerator, "is_fsdp2", False
        ):
            return prepared
        return self.unwrap(prepared)

    # ---- a step -----------------------------------------------------------------------------

    def accumulate(self, model) -> AbstractContextManager:
        return self.accelerator.accumulate(model)

    def backward(self, loss) -> None:
        self.accelerator.backward(loss)

    @property
    def sync_gradients(self) -> bool:
        return self.accelerator.sync_gradients

    def clip_gradients(self, model, trainable: list, max_grad_norm: float):
        """Clip the gradients to max_grad_norm (none when 0) and return their norm.

        Without sharding, torch clips the trainable parameters directly (accelerate's version
        walks the whole model every step); DeepSpeed and FSDP clip their own way.
        """
        from accelerate.utils import DistributedType

        max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
        plain = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
        if self.accelerator.distributed_type not in plain:
            return self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
        self.accelerator.unscale_gradients()  # fp16 autocast's loss scaling, if any
        return torch.nn.utils.clip_grad_norm_(trainable, max_norm)

    # ---- between ranks ----------------------------------------------------------------------

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` is set on any rank (a reduction that waits for the device)."""
        if self.world == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def main_process_first(self) -> AbstractContextManager:
        return self.accelerator.main_process_first()

    def wait_for_everyone(self) -> None:
        self.accelerator.wait_for_everyone()

    def gather(self, items: list) -> list:
        """Every rank's items, on every rank."""
        if self.world == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)


def _cpu_deepspeed_backend() -> str | None:
    """gloo for DeepSpeed launched on a machine without CUDA, else accelerate's own choice.

    There accelerate finds no device backend and counts one process, while DeepSpeed (on its
    CPU accelerator) starts all of them; naming gloo makes both see the same ranks.
    """
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    return "gloo" if deepspeed and not torch.cuda.is_available() else None
