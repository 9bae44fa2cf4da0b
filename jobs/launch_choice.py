"""Which accelerate config to launch with, and how much GPU memory the run needs under it.

Torch-free (the web process imports it). The figures live in one table, `MEMORY`, made from
`assets/memory/predicted.json` (bench/memory_model.py --write-figures): one GPU's figure is
predicted, the sharded backends' are estimated from the predicted parts; each entry says which,
and a measurement on a GPU can replace a figure in the same table.

Figures are per GPU, in GB of 1024**3 bytes (what torch and NVML report), for batch 1 with
gradient checkpointing and precomputed conditions at each family's usual size (49x480x720 for
CogVideoX-2b and -5b, 81x768x1360 for CogVideoX1.5-5B), under the recommended options, with
the CUDA context included.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.models.registry import spec_module, variant_at_hand

ACCELERATE_DIR = Path(__file__).resolve().parents[1] / "assets" / "accelerate"
AUTOMATIC = "auto"

Family = Literal["2b", "5b", "1.5"]
TrainingType = Literal["lora", "full-finetune"]
FAMILIES: tuple[Family, ...] = ("2b", "5b", "1.5")
TRAINING_TYPES: tuple[TrainingType, ...] = ("lora", "full-finetune")
BACKENDS = (
    "single_gpu",
    "ddp",
    "deepspeed_zero2",
    "deepspeed_zero2_offload",
    "deepspeed_zero3",
    "fsdp",
)
FAMILY_TITLES = {"2b": "CogVideoX-2b", "5b": "CogVideoX-5b", "1.5": "CogVideoX1.5-5B"}

GB = 1024**3


@dataclass(frozen=True)
class Need:
    """GPU memory of one run: `per_gpu_gb` on every GPU plus `sharded_gb` split over the
    processes; `validation_gb` more while validation videos are sampled; `cpu_ram_gb` of host
    memory for an optimizer offloaded to the CPU."""

    per_gpu_gb: float
    sharded_gb: float = 0.0
    validation_gb: float = 0.0
    cpu_ram_gb: float = 0.0
    basis: Literal["measured", "predicted", "estimate"] = "estimate"
    how: str = ""

    def training_gb(self, processes: int) -> float:
        return self.per_gpu_gb + self.sharded_gb / max(1, processes)

    def peak_gb(self, processes: int) -> float:
        return self.training_gb(processes) + self.validation_gb

    def source(self) -> str:
        """Where the figure comes from, as the page says it."""
        if self.basis == "measured":
            return f"measured: {self.how}"
        if self.basis == "predicted":
            return f"predicted by bench/memory_model.py: {self.how}"
        return f"an estimate from the predicted parts: {self.how}"


# ---- what the figures are made of ------------------------------------------------------------

# bench/memory_model.py --write-figures predicts, for each family and training type under the
# recommended options (one GPU), the reserved memory while training and through validation and
# what it is made of: the weights, the trainable parameters (their gradients take as much) and
# the optimizer's states. Other backends shard those parts.
PREDICTED = Path(__file__).resolve().parents[1] / "assets" / "memory" / "predicted.json"
# Sharded backends run DeepSpeed's or torch's AdamW with fp32 states (8 bytes a parameter) and
# an fp32 master copy of the weights (4 bytes): the 12 bytes a parameter the offload config
# puts in CPU RAM.
OPTIMIZER_SHARDED = 12


def _predicted_parts() -> dict[tuple[str, str], dict]:
    data = json.loads(PREDICTED.read_text(encoding="utf-8"))
    context = data["cuda_context_gb"]
    parts = {}
    for key, entry in data["launch"].items():
        family, training_type = key.split("/")
        parts[(family, training_type)] = {**entry, "cuda_context_gb": context}
    return parts


def _figure(parts: dict, training_type: TrainingType, backend: str) -> Need:
    """One backend's need from the predicted single-GPU parts (GB)."""
    training = parts["training_reserved_gb"] + parts["cuda_context_gb"]
    validation = max(0.0, parts["validation_reserved_gb"] - parts["training_reserved_gb"])
    weights, trainable, states = parts["weights_gb"], parts["trainable_gb"], parts["optimizer_gb"]
    sharded_states = OPTIMIZER_SHARDED * parts["parameters"] / GB
    options = parts["options"].replace("+", ", ")
    if backend == "single_gpu":
        return Need(training, 0.0, validation, basis="predicted", how=f"one GPU, {options}")
    if training_type == "lora":
        if backend in ("deepspeed_zero3", "fsdp"):
            frozen = weights - trainable
            return Need(training - frozen, frozen, validation, how="frozen weights sharded")
        return Need(training + trainable, 0.0, validation, how="plus a copy of the gradients")
    if backend == "ddp":  # DDP's gradient buckets are a second copy of the gradients
        return Need(training + trainable, 0.0, validation, how="plus DDP's gradient buckets")
    unsharded = training - trainable - states  # weights, activations and allocator slack
    if backend == "deepspeed_zero2":
        return Need(
            unsharded, trainable + sharded_states, validation, how="gradients and states sharded"
        )
    if backend == "deepspeed_zero2_offload":
        return Need(
            unsharded,
            trainable,
            validation,
            cpu_ram_gb=sharded_states,
            how="Adam states in CPU RAM, gradients sharded",
        )
    return Need(  # ZeRO-3 and FSDP shard the weights too
        unsharded - weights,
        weights + trainable + sharded_states,
        validation,
        how="weights, gradients and states sharded",
    )


# ---- the table ---------------------------------------------------------------------------------


def _memory_table() -> dict[tuple[Family, TrainingType, str], Need]:
    parts = _predicted_parts()
    return {
        (family, training_type, backend): _figure(
            parts[(family, training_type)], training_type, backend
        )
        for family in FAMILIES
        for training_type in TRAINING_TYPES
        for backend in BACKENDS
    }


MEMORY: dict[tuple[Family, TrainingType, str], Need] = _memory_table()


def need(family: Family, training_type: TrainingType, backend: str) -> Need:
    return MEMORY[(family, training_type, backend)]


# ---- the model's family ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelKind:
    family: Family | None  # None: not recognised
    tiny: bool = False  # a test model built by core.tiny: figures for the real sizes don't apply
    image_to_video: bool = False  # each clip starts from an image (the I2V variants)
    learned_positions: bool = False  # learned positional embeddings fit one shape (5b-I2V)


def model_kind(name_or_path: str | None) -> ModelKind:
    """The family of a base model as the memory table sizes it: from its configs (the model
    family layer's rules) when they are at hand, else from its Hub id."""
    family, variant, transformer = variant_at_hand(name_or_path)
    if variant is None:
        return ModelKind(None)
    spec = spec_module(family)
    size = spec.size_class(variant)
    width = 0
    if transformer is not None:
        width = int(transformer.get("num_attention_heads", 0)) * int(
            transformer.get("attention_head_dim", 0)
        )
    return ModelKind(
        size if size in FAMILIES else None,
        tiny=0 < width < 1024,
        image_to_video=variant in spec.IMAGE_TO_VIDEO,
        learned_positions=spec.has_learned_positions(variant, transformer),
    )


# ---- the configs -------------------------------------------------------------------------------


def config_path(backend: str) -> Path:
    return ACCELERATE_DIR / f"{backend}.yaml"


def describe_config(path: Path) -> str:
    """The first sentence of the comment a config opens with (it says when to choose it)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    return text.split(". ")[0].rstrip(".") + "." if text else path.stem


def config_choices() -> list[tuple[str, str]]:
    """Dropdown choices: Automatic first, then every config with what it is."""
    configs = [config_path(b) for b in BACKENDS if config_path(b).is_file()]
    known = set(configs)
    configs += [p for p in sorted(ACCELERATE_DIR.glob("*.yaml")) if p not in known]
    return [
        ("Automatic (recommended)", AUTOMATIC),
        *[(f"{p.stem}: {describe_config(p)}", p.stem) for p in configs],
    ]


def backend_of(config_file: str | Path | None) -> str | None:
    """The backend a config file is (its stem, when it is one of ours)."""
    if not config_file:
        return None
    stem = Path(config_file).stem
    return stem if stem in BACKENDS else None


def distributed_type(config_file: str | Path) -> str | None:
    """A config's `distributed_type` (DEEPSPEED, FSDP, MULTI_GPU, NO), read without yaml."""
    try:
        text = Path(config_file).read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"^distributed_type:\s*[\"']?(\w+)", text, re.MULTILINE)
    return found.group(1).upper() if found else None


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


# ---- the recommendation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    backend: str | None  # a config of assets/accelerate, or None: no config (the CPU)
    reason: str
    processes: int
    training_type: TrainingType
    family: Family | None

    @property
    def config_file(self) -> Path | None:
        return config_path(self.backend) if self.backend else None

    def needs(self, backend: str | None = None) -> dict[Family, Need]:
        """What each family needs under `backend` (default: the recommended one)."""
        backend = backend or self.backend
        if backend not in BACKENDS:
            return {}
        return {family: need(family, self.training_type, backend) for family in FAMILIES}


def _fits(need_: Need, processes: int, gpu_memory_gb: float | None) -> bool:
    return gpu_memory_gb is None or need_.peak_gb(processes) <= gpu_memory_gb


def recommend(
    gpus: int,
    gpu_memory_gb: float | None,
    family: Family | None,
    training_type: TrainingType,
    machines: int = 1,
    deepspeed: bool | None = None,
) -> Recommendation:
    """The config to launch with for `gpus` GPUs a machine of `gpu_memory_gb` each (None: not
    known) on `machines` machines; an unrecognised model is sized as the 5b."""
    sized = family or "5b"
    processes = max(1, gpus) * max(1, machines)
    deepspeed = deepspeed_installed() if deepspeed is None else deepspeed

    def choice(backend: str | None, reason: str) -> Recommendation:
        return Recommendation(backend, reason, processes, training_type, family)

    def fits(backend: str) -> bool:
        return _fits(need(sized, training_type, backend), processes, gpu_memory_gb)

    def gb(backend: str) -> str:
        return f"{need(sized, training_type, backend).peak_gb(processes):.0f} GB"

    if gpus < 1:
        return choice(None, "No GPU selected: the run trains on the CPU, with no config file.")
    if training_type == "lora":
        if processes == 1:
            return choice("single_gpu", "A LoRA trains on one GPU with one process.")
        return choice(
            "ddp",
            f"A LoRA on {processes} GPUs: data parallel, each GPU holds the whole model and "
            "trains its share of the batch.",
        )
    if processes == 1:
        if fits("single_gpu"):
            known = "" if gpu_memory_gb is not None else " if your GPU has it"
            return choice(
                "single_gpu", f"A full finetune fits one GPU ({gb('single_gpu')}){known}."
            )
        tail = "" if deepspeed else "; it needs DeepSpeed (pip install -r requirements-gpu.txt)"
        if not fits("deepspeed_zero2_offload"):
            tail += "; even that is more than the GPU has: use several GPUs"
        return choice(
            "deepspeed_zero2_offload",
            f"A full finetune needs {gb('single_gpu')} on one GPU, more than its "
            f"{gpu_memory_gb:.0f} GB: ZeRO-2 moves the Adam states to CPU RAM "
            f"({gb('deepspeed_zero2_offload')} on the GPU){tail}.",
        )
    if deepspeed and fits("deepspeed_zero2"):
        return choice(
            "deepspeed_zero2",
            f"A full finetune on {processes} GPUs: ZeRO-2 shards the Adam states and gradients "
            f"({gb('deepspeed_zero2')} a GPU).",
        )
    sharded = "deepspeed_zero3" if deepspeed else "fsdp"
    why = (
        f"ZeRO-2 would need {gb('deepspeed_zero2')} a GPU, more than {gpu_memory_gb:.0f} GB"
        if deepspeed
        else "DeepSpeed is not installed"
    )
    warning = "" if fits(sharded) else "; that is still more than your GPUs have: add GPUs"
    return choice(
        sharded,
        f"A full finetune on {processes} GPUs: {why}, so {sharded} shards the weights too "
        f"({gb(sharded)} a GPU){warning}.",
    )
