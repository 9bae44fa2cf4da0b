"""The trainer's command line, derived from `TrainConfig` (one flag per field, grouped as in the
reference guide), and the reverse: the flags that reproduce a config. Torch-free."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from core.config import GROUPS, TrainConfig, make_config
from core.errors import UserError


def field_group(name: str) -> str:
    extra = TrainConfig.model_fields[name].json_schema_extra or {}
    return extra.get("group", "misc")


def _field_extra(name: str) -> dict[str, Any]:
    return dict(TrainConfig.model_fields[name].json_schema_extra or {})


def _unwrap_optional(annotation: Any) -> Any:
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) in (None,) or not args:
        return annotation
    if type(None) in get_args(annotation) and len(args) == 1:
        return args[0]
    return annotation


def _is_list(annotation: Any) -> bool:
    annotation = _unwrap_optional(annotation)
    if get_origin(annotation) is Annotated:
        return _is_list(get_args(annotation)[0])
    return get_origin(annotation) is list


def _choices(annotation: Any) -> list[str] | None:
    annotation = _unwrap_optional(annotation)
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        return [str(choice) for choice in get_args(annotation)]
    return None


class _OneSentenceParser(argparse.ArgumentParser):
    """argparse that answers a bad command line with one sentence and exit status 2."""

    def error(self, message: str) -> None:
        raise UserError(f"{message} (see --help)")


def build_parser(prog: str = "python -m core.train") -> argparse.ArgumentParser:
    """The trainer's CLI: one flag per `TrainConfig` field, plus `--config FILE`."""
    parser = _OneSentenceParser(
        prog=prog,
        description="Train a CogVideoX LoRA or full finetune. Flags follow the reference guide; "
        "--config reads the same settings from JSON (a job's spec.json or a plain config), and "
        "flags given beside it win.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="JSON file with the settings (spec.json or a config).")
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for name, info in TrainConfig.model_fields.items():
        extra = _field_extra(name)
        group = groups[extra.get("group", "misc")]
        help_text = info.description or ""
        default = info.get_default(call_default_factory=True)
        if default not in (None, [], ""):
            shown = " ".join(default) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%"), "dest": name}
        if info.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_list(info.annotation) and not extra.get("separator"):
            kwargs["nargs"] = "*"
            kwargs["metavar"] = name.upper()
        choices = _choices(info.annotation)
        if choices and info.annotation is not bool:
            kwargs["choices"] = choices
        group.add_argument(f"--{name}", **kwargs)
    return parser


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON file: a job's spec.json (its "train" part) or a plain config."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--config: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"--config: {path} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config: {path} must hold a JSON object")
    if isinstance(data.get("train"), dict):
        return dict(data["train"])
    return data


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line (and optional --config JSON) to a validated `TrainConfig`; raises UserError."""
    namespace = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    settings: dict[str, Any] = {}
    config_path = namespace.pop("config", None)
    if config_path:
        settings.update(load_config_file(config_path))
    settings.update(namespace)
    return make_config(settings)


def to_argv(config: TrainConfig, only_changed: bool = True) -> list[str]:
    """The flags that reproduce `config` on the command line (the "show command" text)."""
    argv: list[str] = []
    defaults = TrainConfig()
    for name, info in TrainConfig.model_fields.items():
        value = getattr(config, name)
        if only_changed and value == getattr(defaults, name):
            continue
        extra = _field_extra(name)
        flag = f"--{name}"
        if info.annotation is bool:
            argv.append(flag if value else f"--no-{name}")
        elif value is None:
            continue
        elif isinstance(value, list):
            if extra.get("separator"):
                argv += [flag, extra["separator"].join(value)]
            else:
                argv += [flag, *[str(item) for item in value]]
        else:
            argv += [flag, str(value)]
    return argv
