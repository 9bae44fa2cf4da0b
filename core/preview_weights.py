"""Finding the weights a preview request names, and refusing what isn't there in one sentence.

A base (local diffusers folder or Hub id), a full-finetune transformer folder that must fit that
base, and LoRAs (a folder, a .safetensors file, a training run's folder, or a Hub id). Nothing
here loads weights: a typo fails in milliseconds, before anything moves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from core.checkpoints import list_checkpoints
from core.errors import UserError
from core.models.common import LORA_FILE
from core.models.registry import identify, spec_module
from core.models.source import ModelSource, check_source, read_component_config
from core.preview_protocol import PreviewRequest


def check_base(base: str) -> ModelSource:
    """The base as a ModelSource, refused at once if it names a local folder that isn't one.

    Without this a mistyped path would be tried as a Hub id and fail late with a network error.
    """
    source = ModelSource(base)
    try:
        check_source(source)
    except UserError as error:
        # check_source speaks to the trainer's flag; here the setting is the preview's base.
        reason = str(error).split(": ", 1)[-1]
        raise UserError(f"base model: {reason}") from None
    return source


def transformer_folder(path: str, source: ModelSource) -> Path:
    """The folder of a full-finetune transformer: the folder itself, or a run's `transformer/`."""
    folder = Path(path).expanduser()
    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"  # a run's output folder or one of its checkpoints
    if not (folder / "config.json").is_file():
        if not folder.exists():
            raise UserError(f"the transformer folder {folder} does not exist")
        raise UserError(f"the transformer folder {folder} holds no config.json")
    if source.is_local:
        ours = json.loads((folder / "config.json").read_text())
        base = read_component_config(source, "transformer")
        for key in spec_module(identify(source).family).SHAPE_KEYS:
            if ours.get(key) != base.get(key):
                raise UserError(
                    f"the transformer in {folder} does not fit the base model {source.name}: "
                    f"its {key} is {ours.get(key)}, the base's is {base.get(key)}"
                )
    return folder


def folder_stamp(folder: Path) -> tuple[int, ...]:
    """Changes when any file in the folder is rewritten (a run saved again to the same place)."""
    return tuple(sorted(p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()))


@dataclass(frozen=True)
class LoraFile:
    where: str  # what load_lora_weights is given: a folder or a Hub id
    weight_name: str | None
    stamp: tuple  # changes when the weights on disk change, so a cached adapter goes stale


def find_lora(path: str) -> LoraFile:
    """A LoRA folder, a .safetensors file, a training run's folder, or a Hub id."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        stat = candidate.stat()
        return LoraFile(str(candidate.parent), candidate.name, (stat.st_mtime_ns, stat.st_size))
    if candidate.is_dir():
        weights = candidate / LORA_FILE
        if not weights.is_file():
            # A run still training has no final weights yet: preview its newest checkpoint.
            checkpoints = [c for _, c in list_checkpoints(candidate) if (c / LORA_FILE).is_file()]
            if not checkpoints:
                raise UserError(f"the LoRA folder {candidate} holds no {LORA_FILE}")
            weights = checkpoints[-1] / LORA_FILE
        stat = weights.stat()
        return LoraFile(str(weights.parent), LORA_FILE, (stat.st_mtime_ns, stat.st_size))
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) and not path.startswith((".", "~")):
        return LoraFile(path, None, ())  # a Hub id: diffusers fetches it (or finds it cached)
    raise UserError(f"the LoRA {path} does not exist")


def lora_error(path: str, base: str, error: Exception) -> UserError:
    """One sentence for a LoRA that diffusers refused, naming the first mismatched layer."""
    text = str(error)
    mismatch = re.search(
        r"size mismatch for ([\w.]+?)\.(lora_[AB])\.[\w-]+\.weight: copying a param with shape "
        r"torch\.Size\((\[[\d, ]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[\d, ]*\])\)",
        text,
    )
    if mismatch:
        layer, matrix, theirs, ours = mismatch.groups()
        return UserError(
            f"the LoRA {path} does not fit the base model {base}: its {matrix} for the layer "
            f"{layer} has shape {theirs} where the base needs {ours}"
        )
    return UserError(f"the LoRA {path} does not load into {base} ({first_line(error)})")


def check_request(request: PreviewRequest) -> None:
    """Refuse, in one sentence, a request naming weights that aren't there (nothing is loaded)."""
    source = check_base(request.base)
    if request.transformer:
        transformer_folder(request.transformer, source)
    for lora in request.loras:
        find_lora(lora.path)
    if request.image and not Path(request.image).expanduser().is_file():
        raise UserError(f"the image {request.image} does not exist")


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines[0]) <= 200 else lines[0][:197] + "..."
