"""What trains and how: the trainable transformer from a config, the optimizer from its
trainable parameters, and the learning-rate schedule. No accelerate here: these run on any
device, fake tensors included (a memory model builds the same objects the trainer does)."""

from __future__ import annotations

import logging

import torch

from core.config import TrainConfig
from core.models.common import DTYPES, FP8_DTYPES

log = logging.getLogger("core.train")


def load_transformer(family, config: TrainConfig, device: torch.device, weights: bool = True):
    """The base transformer in --transformer_dtype on `device` (fp8 storage if asked for).

    `weights=False` builds it from the checkpoint's config without reading its weights.
    """
    dtype = DTYPES[config.transformer_dtype]
    transformer = family.load_transformer(dtype, weights=weights)
    if config.ignore_learned_positional_embeddings and not family.drop_learned_positions(
        transformer
    ):
        log.warning(
            "%s has no learned positional embeddings: --ignore_learned_positional_embeddings "
            "changes nothing",
            family.spec.title,
        )
    if config.training_type == "lora":
        family.lora_target_check(transformer, config.target_modules)
    if config.layerwise_upcasting_modules:  # LoRA only (TrainConfig refuses it otherwise)
        # Cast to fp8 storage before the move, so the bf16 weights never sit on the GPU:
        # for the 5B they alone (10.4 GB) would set the run's peak of reserved memory.
        transformer.enable_layerwise_casting(
            storage_dtype=FP8_DTYPES[config.layerwise_upcasting_storage_dtype],
            compute_dtype=dtype,
            skip_modules_pattern=tuple(config.layerwise_upcasting_skip_modules_pattern),
        )
    return transformer.to(device)


def make_trainable(transformer, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Add the LoRA (or unfreeze everything), set up checkpointing and compilation, and return
    the trainable parameters, in the order the optimizer takes them."""
    from core.performance import checkpoint_blocks, compile_blocks

    if config.training_type == "lora":
        from peft import LoraConfig

        transformer.requires_grad_(False)
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
            "Gradient checkpointing in %d of %d blocks", blocks, len(transformer.transformer_blocks)
        )
    if config.compile_transformer_blocks:
        compile_blocks(transformer)
    transformer.train()
    return [p for p in transformer.parameters() if p.requires_grad]


def build_trainable_transformer(
    family, config: TrainConfig, device: torch.device, weights: bool = True
):
    """The transformer exactly as the trainer trains it, and its trainable parameters."""
    transformer = load_transformer(family, config, device, weights)
    return transformer, make_trainable(transformer, config)


def learning_rate(config: TrainConfig, processes: int) -> float:
    """--lr, scaled by the global batch with --scale_lr."""
    if config.scale_lr:
        return config.lr * config.batch_size * config.gradient_accumulation_steps * processes
    return config.lr


def build_optimizer(parameters, config: TrainConfig, device: torch.device, lr: float):
    """Adam or AdamW (8-bit with --use_8bit_bnb) over the trainable parameters."""
    from core.performance import optimizer_kwargs

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
    return cls(parameters, **kwargs, **optimizer_kwargs(config.optimizer_implementation, device))


def build_lr_scheduler(optimizer, config: TrainConfig):
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.train_steps,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )
