"""The presets' and the Launch group's memory figures, from the memory model.

    python bench/memory_model.py --write-figures [--jobs N]

Predicts every GPU preset in assets/presets/ (its own settings, at its first bucket) and, for
the Launch group (jobs/launch_choice.py), each family and training type under the recommended
options; writes assets/memory/predicted.json and each preset's "gpu_memory" line from it. The
file keeps each preset's memory settings, so tests/test_memory_model.py notices a preset changed
since its figure was predicted.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gpu_stage_table import PRESETS, TRAINING_TYPES, option_settings, reference_settings
from memory_model import (
    CUDA_CONTEXT_GB,
    FAMILY_BUCKETS,
    FIGURES,
    I2V_BUCKETS,
    RECOMMENDED_OPTIONS,
    config_checkpoint,
    make_train_config,
    predict,
)

# The settings that change how much memory a run takes (the rest are schedules, paths, seeds).
MEMORY_SETTINGS = (
    "pretrained_model_name_or_path",
    "video_resolution_buckets",
    "training_type",
    "batch_size",
    "rank",
    "target_modules",
    "gradient_checkpointing",
    "gradient_checkpointing_ratio",
    "offload_activations",
    "expandable_segments",
    "attention_backend",
    "transformer_dtype",
    "text_encoder_dtype",
    "vae_dtype",
    "layerwise_upcasting_modules",
    "layerwise_upcasting_storage_dtype",
    "use_8bit_bnb",
    "optimizer",
    "optimizer_implementation",
    "enable_slicing",
    "enable_tiling",
    "precompute_conditions",
    "validation_frames",
    "validation_height",
    "validation_width",
)


def memory_settings(train: dict) -> dict:
    """The memory settings a preset names (the others are the trainer's defaults)."""
    return {name: train[name] for name in MEMORY_SETTINGS if name in train}


def memory_text(figures: dict) -> str:
    """A preset's "gpu_memory" line."""
    return (
        f"predicted: {figures['training_reserved_gb']:.1f} GB reserved while training, "
        f"{figures['validation_reserved_gb']:.1f} GB through validation, plus about "
        f"{CUDA_CONTEXT_GB:g} GB for the CUDA context"
    )


# The base models the presets name, and the family whose real configs size them.
PRESET_FAMILIES = {
    "THUDM/CogVideoX-2b": "2b",
    "THUDM/CogVideoX-5b": "5b",
    "THUDM/CogVideoX1.5-5B": "1.5",
    "THUDM/CogVideoX-5b-I2V": "5b-i2v",
    "THUDM/CogVideoX1.5-5B-I2V": "1.5-i2v",
}


def family_of(train: dict) -> str:
    name = train["pretrained_model_name_or_path"]
    if name not in PRESET_FAMILIES:
        raise SystemExit(f"error: a preset names {name}; add its family to PRESET_FAMILIES")
    return PRESET_FAMILIES[name]


def gpu_presets() -> dict[str, dict]:
    """Preset file name -> its JSON, for the presets that train a real model on a GPU."""
    presets = {}
    for path in sorted(PRESETS.glob("*.json")):
        data = json.loads(path.read_text())
        if not data.get("tiny_model"):
            presets[path.name] = data
    return presets


# The configurations bench/gpu_check.py measures at full size, for its predicted columns.
CHECKS = (
    ("5b", "lora", ""),
    ("5b", "lora", RECOMMENDED_OPTIONS),
    ("5b", "lora", f"fp8+{RECOMMENDED_OPTIONS}"),
    ("5b", "full", ""),
)


def _predict_one(job: tuple[str, str, dict, str]) -> dict:
    family, bucket, settings, workdir = job
    model = config_checkpoint(Path(workdir) / f"configs-{family}", family)
    return predict("figures", model, bucket, settings).figures()


def write_figures(workdir: Path, jobs: int = 1) -> int:
    """Predict every preset, Launch and GPU-check configuration (each distinct one once); write
    the figures file and the presets' gpu_memory lines."""
    wanted: dict[str, tuple[str, str, dict]] = {}  # key -> (family, bucket, settings)
    presets = gpu_presets()
    for name, data in presets.items():
        train = data["train"]
        bucket = train["video_resolution_buckets"][0]
        wanted[f"preset:{name}"] = (family_of(train), bucket, train)
    for family, bucket in FAMILY_BUCKETS.items():
        for training, training_type in TRAINING_TYPES.items():
            settings = {**reference_settings(training), **option_settings(RECOMMENDED_OPTIONS)}
            wanted[f"launch:{family}/{training_type}"] = (family, bucket, settings)
    for family, training, options in CHECKS:
        settings = {**reference_settings(training), **option_settings(options)}
        key = f"check:{family}/{training}/{options or 'reference'}"
        wanted[key] = (family, FAMILY_BUCKETS[family], settings)
    distinct: dict[str, tuple[str, str, dict]] = {}
    for family, bucket, settings in wanted.values():
        distinct.setdefault(_identity(family, bucket, settings), (family, bucket, settings))
    for family in {*FAMILY_BUCKETS, *I2V_BUCKETS}:  # once, before processes race to write them
        config_checkpoint(workdir / f"configs-{family}", family)
    for family, bucket, settings in distinct.values():  # a bad one fails before any runs
        make_train_config(workdir / f"configs-{family}", bucket, settings)
    print(f"predicting {len(distinct)} distinct configurations, {jobs} at a time ...", flush=True)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        jobs_ = [(*job, str(workdir)) for job in distinct.values()]
        results = dict(zip(distinct, pool.map(_predict_one, jobs_), strict=True))

    def figures_of(key: str) -> dict:
        return results[_identity(*wanted[key])]

    import diffusers
    import torch

    figures = {
        "generated_by": "python bench/memory_model.py --write-figures",
        "note": "predicted on fake tensors on a CPU, not measured on a GPU",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cuda_context_gb": CUDA_CONTEXT_GB,
        "recommended_options": RECOMMENDED_OPTIONS,
        "presets": {
            name: {"settings": memory_settings(data["train"]), **figures_of(f"preset:{name}")}
            for name, data in presets.items()
        },
        "launch": {
            key.removeprefix("launch:"): {
                "options": RECOMMENDED_OPTIONS,
                "bucket": wanted[key][1],
                **figures_of(key),
            }
            for key in wanted
            if key.startswith("launch:")
        },
        "checks": {
            key.removeprefix("check:"): figures_of(key)
            for key in wanted
            if key.startswith("check:")
        },
    }
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    for name in presets:
        write_preset_memory(PRESETS / name, memory_text(figures_of(f"preset:{name}")))
    print(f"wrote {FIGURES} and the gpu_memory line of {len(presets)} presets\n")
    print("\n".join(readme_table(figures)))
    return 0


def readme_table(figures: dict) -> list[str]:
    """The README's table of predicted figures (GB)."""
    lines = [
        "| configuration | weights | optimizer states | peak allocated while training "
        "| max reserved while training | max reserved through validation |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(f"preset {name}", entry) for name, entry in figures["presets"].items()]
    rows += [(f"check {key}", entry) for key, entry in figures["checks"].items()]
    rows += [(f"Launch {key}, {RECOMMENDED_OPTIONS}", e) for key, e in figures["launch"].items()]
    for name, entry in rows:
        lines.append(
            f"| {name} | {entry['weights_gb']:.2f} | {entry['optimizer_gb']:.2f} "
            f"| {entry['training_peak_allocated_gb']:.2f} | {entry['training_reserved_gb']:.2f} "
            f"| {entry['validation_reserved_gb']:.2f} |"
        )
    return lines


def _identity(family: str, bucket: str, settings: dict) -> str:
    """Two configurations with the same identity take the same memory."""
    memory = memory_settings(settings)
    memory.pop("pretrained_model_name_or_path", None)  # the family says which model
    memory.pop("video_resolution_buckets", None)  # the bucket says which size
    return json.dumps([family, bucket, memory], sort_keys=True)


def write_preset_memory(path: Path, text: str) -> None:
    """Replace a preset's "gpu_memory" value in place, leaving the rest of its layout alone."""
    source = path.read_text(encoding="utf-8")
    line = re.compile(r'^(\s*"gpu_memory":\s*)"(?:[^"\\]|\\.)*"', re.MULTILINE)
    updated, count = line.subn(lambda match: match.group(1) + json.dumps(text), source)
    if count != 1:
        raise SystemExit(f'error: {path.name} has no one-line "gpu_memory" entry to update')
    json.loads(updated)  # still valid JSON
    path.write_text(updated, encoding="utf-8")
