"""Helpers every model family shares: dtypes, loading a component, per-sample random draws."""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import UserError
from core.models.source import ModelSource

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP8_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
LORA_FILE = "pytorch_lora_weights.safetensors"


def component_folder(source: ModelSource, component: str) -> Path:
    """The local folder a component's files load from (a Hub download's snapshot folder)."""
    if source.is_local:
        return Path(source.location) / component
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(
        source.name, revision=source.revision, allow_patterns=[f"{component}/*"]
    )
    return Path(snapshot) / component


def load_component(loader, source: ModelSource, component: str, **kwargs):
    """`loader.from_pretrained` of one component, failing with one sentence naming it."""
    try:
        return loader.from_pretrained(
            source.location, subfolder=component, **source.kwargs(), **kwargs
        )
    except (OSError, ValueError) as error:
        raise UserError(
            f"--pretrained_model_name_or_path: could not load the {component} of "
            f"{source.name} ({str(error).splitlines()[0][:200]})"
        ) from None


def per_sample_randn(
    shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device
) -> torch.Tensor:
    """Standard normal noise [B, *shape], sample i drawn from generators[i].

    Drawing each sample from its own generator makes a sample's noise independent of which
    process trains it and of what else is in its batch.
    """
    return torch.stack(
        [torch.randn(shape, generator=g, device=device, dtype=torch.float32) for g in generators]
    )


def per_sample_randint(
    high: int, generators: list[torch.Generator], device: torch.device
) -> torch.Tensor:
    """One integer in [0, high) per sample [B], sample i drawn from generators[i]."""
    return torch.cat([torch.randint(0, high, (1,), generator=g, device=device) for g in generators])


def per_sample_rand(generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    """One uniform number in [0, 1) per sample [B], sample i drawn from generators[i]."""
    return torch.cat([torch.rand(1, generator=g, device=device) for g in generators])


def linear_layer_names(module: torch.nn.Module) -> list[str]:
    return [name for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)]


def lora_target_check(transformer: torch.nn.Module, target_modules: list[str]) -> None:
    """Refuse a --target_modules entry that names no layer, listing the names that would work."""
    names = linear_layer_names(transformer)
    for target in target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            suffixes = sorted(
                {
                    ".".join(name.split(".")[-2:])
                    if name.split(".")[-1].isdigit()
                    else name.split(".")[-1]
                    for name in names
                }
            )
            raise UserError(
                f"--target_modules: '{target}' matches no layer of the transformer; "
                f"layers that can be targeted: {', '.join(suffixes)}"
            )
