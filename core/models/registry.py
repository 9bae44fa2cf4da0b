"""Which model family and variant a checkpoint is, and the family object that runs it.

Torch-free: `identify` reads the checkpoint's component configs (a local folder, or the Hub) and
picks the family by the transformer class its config names, then the variant by that family's
rules. `open_family` imports the family's runtime module (torch, diffusers) only when a process
is about to load weights. A second family is one more `Family` entry with its two modules; the
trainer, previews and model card never branch on a family's name.

Every family's runtime class offers the same surface (see `core.models.cogvideox.CogVideoX`):
loaders, `encode_media` into named conditions, `loss_function`, `make_pipeline` / `load_pipeline`
/ `generate` (from an image for image-to-video variants), `save_lora` / `read_lora`, and its spec
module offers the torch-free rules and the model card's code (`card_code`).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from core.errors import UserError
from core.models.source import ModelSource, is_hub_id, read_component_config

FLAG = "--pretrained_model_name_or_path"


@dataclass(frozen=True)
class Family:
    name: str  # as --model_name spells it
    transformer_classes: tuple[str, ...]  # the `_class_name`s its transformer configs carry
    spec_module: str  # torch-free: rules_from_configs, guess_variant, card_code, TITLES
    runtime_module: str  # torch: the class named `runtime_class`
    runtime_class: str


DEFAULT_FAMILY = "cogvideox"  # what --model_name defaults to
FAMILIES: dict[str, Family] = {
    "cogvideox": Family(
        name="cogvideox",
        transformer_classes=("CogVideoXTransformer3DModel",),
        spec_module="core.models.cogvideox_spec",
        runtime_module="core.models.cogvideox",
        runtime_class="CogVideoX",
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """A base model as the trainer sees it: its family, variant, shape rules and files."""

    family: str
    variant: str
    rules: Any  # the family's FamilyRules
    source: ModelSource

    @property
    def title(self) -> str:
        return spec_module(self.family).TITLES[self.variant]

    @property
    def image_to_video(self) -> bool:
        return bool(getattr(self.rules, "image_conditioned", False))


def spec_module(family: str) -> ModuleType:
    return importlib.import_module(FAMILIES[family].spec_module)


def family_of_config(transformer: dict[str, Any], model_name: str | None = None) -> str:
    """The family a transformer config belongs to, checked against --model_name when given."""
    class_name = transformer.get("_class_name")
    found = next((f.name for f in FAMILIES.values() if class_name in f.transformer_classes), None)
    if found is None and class_name is None:
        found = model_name or DEFAULT_FAMILY  # a bare config: the family asked for
    if found is None:
        known = ", ".join(c for f in FAMILIES.values() for c in f.transformer_classes)
        raise UserError(
            f"{FLAG}: its transformer is a {class_name}, which no model family here trains "
            f"(known: {known})"
        )
    if model_name and found != model_name:
        raise UserError(
            f"--model_name {model_name}: the checkpoint's transformer ({class_name}) belongs to "
            f"the {found} family; set --model_name {found}"
        )
    return found


def identify(source: ModelSource, model_name: str | None = None) -> ModelSpec:
    """The family and variant of a base model, from its transformer and VAE configs."""
    transformer = read_component_config(source, "transformer")
    vae = read_component_config(source, "vae")
    family = family_of_config(transformer, model_name)
    rules = spec_module(family).rules_from_configs(transformer, vae)
    return ModelSpec(family=family, variant=rules.variant, rules=rules, source=source)


def cached_configs(name: str) -> tuple[dict, dict] | None:
    """A base model's transformer and VAE configs without the network: a local folder's, or a
    Hub id's from the Hugging Face cache (None when the transformer's is not there; the VAE's
    may be missing, its settings then take their defaults)."""
    source = ModelSource(name)
    if not source.is_local and not is_hub_id(name):
        return None  # a path that is not there (yet): nothing to read, and no Hub id to look up
    found: list[dict] = []
    for component in ("transformer", "vae"):
        if source.is_local:
            path = Path(source.location) / component / "config.json"
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, f"{component}/config.json")
            path = Path(cached) if isinstance(cached, str) else None
        if path is None or not path.is_file():
            if not found:
                return None
            found.append({})
            continue
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None
    return found[0], found[1]


def variant_at_hand(name: str | None) -> tuple[str | None, str | None, dict | None]:
    """(family, variant, transformer config) of a model named in a form, without downloading:
    from its configs when they are at hand, else the variant its Hub id names (estimates)."""
    if not name:
        return None, None, None
    configs = cached_configs(name)
    if configs is not None:
        transformer, vae = configs
        try:
            family = family_of_config(transformer)
        except UserError:
            return None, None, None
        return family, spec_module(family).rules_from_configs(transformer, vae).variant, transformer
    if not is_hub_id(name):
        return None, None, None  # a folder (here or not yet): its configs say, not its name
    for family in FAMILIES:
        variant = spec_module(family).guess_variant(name)
        if variant:
            return family, variant, None
    return None, None, None


def rules_at_hand(name: str | None):
    """A base model's shape rules from its configs, without the network (None when they are not
    at hand: a Hub id not downloaded yet, or no model there)."""
    configs = cached_configs(name) if name else None
    if configs is None:
        return None
    transformer, vae = configs
    try:
        family = family_of_config(transformer)
    except UserError:
        return None
    return spec_module(family).rules_from_configs(transformer, vae)


def shape_problem(rules, config) -> str | None:
    """The first training bucket, or the validation videos' size, that the checkpoint whose
    `rules` these are can't take under a TrainConfig `config`: one sentence naming the flag."""
    ignore = config.ignore_learned_positional_embeddings
    for bucket in config.buckets:
        problem = rules.shape_problem(*bucket, ignore_learned_positions=ignore)
        if problem:
            return f"--video_resolution_buckets: {problem}"
    if config.validation_prompts:
        frames, height, width = config.buckets[0]
        size = (
            config.validation_frames or frames,
            config.validation_height or height,
            config.validation_width or width,
        )
        problem = rules.shape_problem(*size, ignore_learned_positions=ignore)
        if problem:
            return f"--validation_frames/--validation_height/--validation_width: {problem}"
    return None


def open_family(spec: ModelSpec):
    """The family's runtime object for this checkpoint (imports torch and diffusers)."""
    entry = FAMILIES[spec.family]
    module = importlib.import_module(entry.runtime_module)
    return getattr(module, entry.runtime_class)(spec)
