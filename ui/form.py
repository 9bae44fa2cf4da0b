"""The training form, generated from `TrainConfig` so it cannot drift from the trainer.

Each field becomes one widget (labels, help, bounds and groups come from the model's `Field`s);
the values go back through the same `make_config` the trainer's CLI uses, so an invalid value is
refused here with the same sentence the trainer would print.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args, get_origin

import annotated_types
import gradio as gr

from core.config import GROUPS, TrainConfig, make_config
from core.errors import UserError

# Settings the app decides itself: the run's folder, the workspace cache, resume (Runs tab).
APP_OWNED = ("output_dir", "cache_dir", "resume_from_checkpoint", "logging_dir")
GROUP_TITLES = {
    "model": "Model",
    "dataset": "Dataset",
    "dataloader": "Data loading",
    "training": "Training",
    "optimizer": "Optimizer",
    "validation": "Validation",
    "misc": "Tracking and misc",
}
OPEN_GROUPS = ("model", "dataset", "training", "optimizer")


LABELS = {"lr": "Learning rate", "id_token": "Trigger word (id token)"}


def label(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


def _bounds(info) -> str:
    parts = []
    for rule in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(rule, attr, None)
            if value is not None and isinstance(rule, annotated_types.BaseMetadata):
                parts.append(f"{sign} {value:g}")
        if isinstance(rule, annotated_types.MultipleOf):
            parts.append(f"multiple of {rule.multiple_of}")
    return f" ({', '.join(parts)})" if parts else ""


def _core_type(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not None and type(None) in get_args(annotation) and args:
        return args[0]
    return annotation


def help_text(name: str) -> str:
    """A field's help line under its label: the flag, what it does and its bounds."""
    info = TrainConfig.model_fields[name]
    return f"--{name}. {info.description or ''}{_bounds(info)}"


def number_step(default: float | None) -> float:
    """How far the arrows of a float box move it: one unit of the default's leading digit, so
    a learning rate of 1e-4 steps by 1e-4 (never by 1)."""
    if not default:
        return 0.01
    magnitude = 10 ** math.floor(math.log10(abs(default)))
    return float(magnitude) if abs(default) < 1 else (1.0 if abs(default) >= 10 else 0.1)


def image_to_video_only(name: str) -> bool:
    """Whether a setting applies to image-to-video base models only (shown for those)."""
    return bool((TrainConfig.model_fields[name].json_schema_extra or {}).get("image_to_video"))


def _widget(name: str, info) -> gr.components.Component:
    annotation = _core_type(info.annotation)
    extra = info.json_schema_extra or {}
    default = info.get_default(call_default_factory=True)
    common = {
        "label": label(name),
        "info": help_text(name),
        "elem_id": f"field-{name}",
        # Image-to-video settings appear once an image-to-video base is chosen.
        "visible": not image_to_video_only(name),
    }
    origin = get_origin(annotation)
    if annotation is bool:
        return gr.Checkbox(value=bool(default), **common)
    if origin is Literal:
        return gr.Dropdown(choices=list(get_args(annotation)), value=default, **common)
    if origin is list:
        inner = get_args(annotation)[0]
        if get_origin(inner) is Literal:
            return gr.CheckboxGroup(choices=list(get_args(inner)), value=default, **common)
        if extra.get("separator"):  # prompts: one per line
            return gr.Textbox(value="\n".join(default or []), lines=3, **common)
        return gr.Textbox(value=" ".join(map(str, default or [])), **common)
    if annotation is int and default is not None:
        return gr.Number(value=default, precision=0, **common)
    if annotation is float and default is not None:
        return gr.Number(value=default, step=number_step(default), **common)
    if annotation in (int, float):  # optional: blank means "not set", which a Number can't show
        return gr.Textbox(value="", placeholder="not set", **common)
    return gr.Textbox(value="" if default is None else str(default), **common)


class TrainForm:
    """The widgets of every user-facing TrainConfig field, grouped as in the reference."""

    def __init__(self):
        self.fields = [name for name in TrainConfig.model_fields if name not in APP_OWNED]
        self.image_fields = [name for name in self.fields if image_to_video_only(name)]
        self.widgets: dict[str, gr.components.Component] = {}
        # The folds around each field, outermost first: opened to show a refused value.
        self.folds: dict[str, list[gr.Accordion]] = {}

    def render(self) -> None:
        """Each group a fold; its fields flow in columns (`.form-grid`), advanced ones folded."""
        by_group: dict[str, list[str]] = {group: [] for group in GROUPS}
        for name in self.fields:
            extra = TrainConfig.model_fields[name].json_schema_extra or {}
            by_group[extra.get("group", "misc")].append(name)
        for group, names in by_group.items():
            if not names:
                continue
            basic = [n for n in names if not _advanced(n)]
            advanced = [n for n in names if _advanced(n)]
            with gr.Accordion(GROUP_TITLES[group], open=group in OPEN_GROUPS) as fold:
                with gr.Column(elem_classes=["form-grid"]):
                    for name in basic:
                        self.widgets[name] = _widget(name, TrainConfig.model_fields[name])
                        self.folds[name] = [fold]
                if advanced:
                    with (
                        gr.Accordion("Advanced", open=False) as inner,
                        gr.Column(elem_classes=["form-grid"]),
                    ):
                        for name in advanced:
                            self.widgets[name] = _widget(name, TrainConfig.model_fields[name])
                            self.folds[name] = [fold, inner]

    @property
    def fold_components(self) -> list[gr.Accordion]:
        return list({id(fold): fold for folds in self.folds.values() for fold in folds}.values())

    def marked(self, name: str, sentence: str) -> dict:
        """Updates that show `sentence` at the field (in red, its folds opened)."""
        updates: dict = {fold: gr.Accordion(open=True) for fold in self.folds.get(name, [])}
        updates[self.widgets[name]] = gr.update(
            info=f"⚠ {sentence}", elem_classes=["field-error"], visible=True
        )
        return updates

    def unmarked(self, name: str) -> dict:
        """Updates that give the field its help line back."""
        return {self.widgets[name]: gr.update(info=help_text(name), elem_classes=[])}

    @property
    def components(self) -> list[gr.components.Component]:
        return [self.widgets[name] for name in self.fields]

    def settings(self, values: list[Any]) -> dict[str, Any]:
        """Widget values to TrainConfig settings (blank optional fields mean "not set")."""
        settings = {}
        for name, value in zip(self.fields, values, strict=True):
            info = TrainConfig.model_fields[name]
            annotation = _core_type(info.annotation)
            extra = info.json_schema_extra or {}
            if get_origin(annotation) is list and isinstance(value, str):
                if extra.get("separator"):
                    value = [line.strip() for line in value.splitlines() if line.strip()]
                else:
                    value = value.split()
            if value in ("", None) and info.default is None:
                value = None
            if annotation is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            settings[name] = value
        return settings

    def config(self, values: list[Any], **fixed: Any) -> TrainConfig:
        """A validated TrainConfig, or UserError naming the field and what to fix."""
        return make_config({**self.settings(values), **fixed})

    def values_of(self, config_like: dict[str, Any]) -> list[Any]:
        """Widget values showing a config (preset, saved file or an earlier run)."""
        merged = TrainConfig.model_validate({**_defaults(), **config_like})
        values = []
        for name in self.fields:
            value = getattr(merged, name)
            extra = TrainConfig.model_fields[name].json_schema_extra or {}
            widget = self.widgets.get(name)
            if isinstance(value, list) and isinstance(widget, gr.Textbox):
                value = ("\n" if extra.get("separator") else " ").join(map(str, value))
            elif value is None and isinstance(widget, gr.Textbox):
                value = ""
            elif isinstance(widget, gr.Textbox) and not isinstance(value, str):
                value = str(value)
            values.append(value)
        return values


def _advanced(name: str) -> bool:
    return bool((TrainConfig.model_fields[name].json_schema_extra or {}).get("advanced"))


def _defaults() -> dict[str, Any]:
    return TrainConfig().model_dump(mode="json")


def field_of_error(error: UserError) -> str | None:
    """The field a trainer error names (`--lr: ...` -> "lr")."""
    text = str(error)
    if text.startswith("--"):
        return text[2:].split(":")[0].split(" ")[0]
    return None
