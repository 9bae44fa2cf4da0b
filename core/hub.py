"""Publishing a finished run to the Hugging Face Hub: the weights, a model card and the samples.

    python -m core.hub push RUN_DIR REPO_ID [--private] [--update] [--endpoint URL] [--events F]
    python -m core.hub card RUN_DIR REPO_ID

The push is one commit holding the LoRA (or the full-finetune transformer), README.md and the
last validation step's videos; never checkpoints, logs, events, the job's spec or
train_config.json (it names the machine's own folders; the card carries the settings).
The token comes from the caller, `HF_TOKEN` or the login cache and is never written anywhere:
not to a file, a log line, an event or an error. A push that lost its connection can simply be
run again: the run remembers (without the token) which repos it created, so the retry adds to
its own repo instead of stopping at "already exists". Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from core.errors import EXIT_USER_ERROR, UserError
from core.events import EventWriter, PushEvent

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
CONFIG_FILE = "train_config.json"
STATE_FILE = ".push-state.json"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"
OFFLINE_SENTENCE = (
    "HF_HUB_OFFLINE is set in the environment this push runs in, so the Hub can't be reached; "
    "start the app (or this command) without it: `make run` leaves it unset, or run it as "
    "`env -u HF_HUB_OFFLINE python app.py`"
)
COGVIDEOX_LICENSE = "https://huggingface.co/THUDM/CogVideoX-5b/blob/main/LICENSE"


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is on (read as huggingface_hub reads it): nothing reaches the Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


# ---------------------------------------------------------------------------------------------
# What goes up


def _train_config(run_dir: Path) -> dict:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no finished run ({CONFIG_FILE} is missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def run_files(run_dir: Path) -> list[Path]:
    """The files a push uploads besides README.md, relative to the run folder."""
    config = _train_config(run_dir)
    if config.get("training_type") == "full-finetune":
        folder = run_dir / "transformer"
        weights = sorted(p.relative_to(run_dir) for p in folder.glob("*") if p.is_file())
    else:
        weights = [Path(LORA_WEIGHTS)] if (run_dir / LORA_WEIGHTS).is_file() else []
    if not weights:
        raise UserError(f"{run_dir} has no trained weights to push; let the run finish first")
    # train_config.json stays home: it holds the machine's own paths (data, output, base).
    samples = latest_samples(run_dir)
    images = [p for p in map(sample_image, samples) if (run_dir / p).is_file()]
    return [*weights, *samples, *images]


def latest_samples(run_dir: Path) -> list[Path]:
    """The validation videos of the last validation step (what the finished model makes)."""
    steps = [
        (int(p.name.split("-")[-1]), p)
        for p in (run_dir / "validation").glob("step-*")
        if p.name.split("-")[-1].isdigit()
    ]
    if not steps:
        return []
    newest = max(steps)[1]
    return sorted(p.relative_to(run_dir) for p in newest.glob("*.mp4"))


def sample_image(sample: Path) -> Path:
    """The image an image-to-video validation video started from: saved beside it, as PNG."""
    return sample.with_suffix(".png")


def _license(base: str, hub_base: bool) -> list[str]:
    """The front matter's license: a fine-tune inherits its base model's."""
    name = base.lower()
    if hub_base and name == "thudm/cogvideox-2b":
        return ["license: apache-2.0"]
    if hub_base and name.startswith("thudm/cogvideox"):  # 5b, 1.5-5B and their I2V siblings
        return [
            "license: other",
            "license_name: cogvideox-license",
            f"license_link: {COGVIDEOX_LICENSE}",
        ]
    return ["license: other"]  # the text says it follows the base model


def _base_variant(base: str):
    """The base model's family spec module and variant (its configs if at hand, else its Hub
    id's name; the variant is None when neither tells)."""
    from core.models.registry import DEFAULT_FAMILY, spec_module, variant_at_hand

    family, variant, _ = variant_at_hand(base)
    return spec_module(family or DEFAULT_FAMILY), variant


def _card_code(base: str, repo_id: str, lora: bool, prompt: str, config: dict) -> list[str]:
    """The snippet, from the base model's family."""
    spec, variant = _base_variant(base)
    return spec.card_code(
        variant,
        base,
        repo_id,
        lora,
        prompt,
        ignore_learned_positions=bool(config.get("ignore_learned_positional_embeddings")),
    )


def build_model_card(
    run_dir: str | Path, repo_id: str, sample_link: Callable[[Path], str] | None = None
) -> str:
    """README.md for the repo: base model, trigger word, settings, samples, and the snippet.

    Samples link to their path in the repo (where the push puts them); `sample_link` gives
    another address for a sample's file, such as where the app serves it before the push.
    """
    run_dir = Path(run_dir)
    config = _train_config(run_dir)
    base = config["pretrained_model_name_or_path"]
    # A path on this machine means nothing on the Hub: no base_model link for it.
    hub_base = "/" in base and not Path(base).exists()
    lora = config.get("training_type") != "full-finetune"
    trigger = config.get("id_token")
    example = (config.get("validation_prompts") or ["your prompt"])[0]
    if trigger and trigger not in example:
        example = f"{trigger} {example}"
    spec, variant = _base_variant(base)
    task = "image-to-video" if variant in spec.IMAGE_TO_VIDEO else "text-to-video"
    front = [
        "---",
        *([f"base_model: {base}"] if hub_base else []),
        "library_name: diffusers",
        *_license(base, hub_base),
        f"pipeline_tag: {task}",
        "tags:",
        f"- {task}",
        "- cogvideox",
        "- diffusers",
        *(["- lora"] if lora else []),
        *([f"instance_prompt: {json.dumps(trigger)}"] if trigger else []),
        "---",
    ]
    kind = "LoRA" if lora else "full finetune"
    if hub_base:
        about = (
            f"A {kind} of [{base}](https://huggingface.co/{base}), trained with CogVideoX Studio."
        )
        if _license(base, hub_base) == ["license: other"]:
            about += " It is released under its base model's license."
    else:
        about = (
            f"A {kind} of a local CogVideoX checkpoint (`{Path(base).name}`), trained with "
            "CogVideoX Studio. It is released under that base model's license; in the snippet "
            "below, put the base model's Hub id in place of the local path."
        )
    lines = [*front, "", f"# {repo_id.split('/')[-1]}", "", about, ""]
    if trigger:
        lines += [
            f"Trigger word: `{trigger}`. Every training caption began with it: put it in your "
            "prompt to bring out what the LoRA learned.",
            "",
        ]
    settings = [
        ("training type", config.get("training_type")),
        ("steps", config.get("train_steps")),
        ("rank", config.get("rank") if lora else None),
        ("alpha", config.get("lora_alpha") if lora else None),
        ("learning rate", config.get("lr")),
        ("optimizer", config.get("optimizer")),
        ("buckets", " ".join(config.get("video_resolution_buckets") or [])),
        ("seed", config.get("seed")),
    ]
    lines += ["## Training settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in settings if value not in (None, "")]
    samples = latest_samples(run_dir)
    if samples:
        lines += ["", "## Samples", ""]
        link = sample_link or (lambda path: path.relative_to(run_dir).as_posix())
        images = [sample_image(p) for p in samples]
        if any((run_dir / image).is_file() for image in images):
            # Image-to-video: each sample beside the image it started from.
            lines += ["| image | sample |", "| --- | --- |"]
            lines += [
                f"| ![{image.name}]({link(run_dir / image)}) | [{p.stem} ({p.parent.name})]"
                f"({link(run_dir / p)}) |"
                for p, image in zip(samples, images, strict=True)
            ]
        else:
            lines += [f"- [{p.stem} ({p.parent.name})]({link(run_dir / p)})" for p in samples]
    code = _card_code(base, repo_id, lora, example, config)
    lines += ["", "## Use it with diffusers", "", "```python", *code, "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Pushing


def resolve_token(token: str | None) -> str:
    """The caller's token, else HF_TOKEN, else the login cache."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise UserError("no Hub token: set HF_TOKEN, run `hf auth login`, or type one in the app")
    return found


def _state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no push yet (or a damaged file): nothing is known to be ours


def _remember(run_dir: Path, field: str, key: str) -> None:
    """Add `key` to a list in the run's push state (repos it tried to create, and created)."""
    state = _state(run_dir)
    if key in state.setdefault(field, []):
        return
    state[field].append(key)
    partial = run_dir / f"{STATE_FILE}.partial"
    try:
        partial.write_text(json.dumps(state, indent=2), encoding="utf-8")
        partial.replace(run_dir / STATE_FILE)
    except OSError:
        pass  # a read-only run folder can still be pushed; only a retry's shortcut is lost


def _explain(error: Exception, endpoint: str, doing: str, repo_id: str) -> str:
    """One sentence for a failed Hub call, naming what to do about it."""
    import httpx2  # the HTTP client huggingface_hub is built on
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return OFFLINE_SENTENCE
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return (
                f"the Hub rejected the token while {doing} ({status}); create a write token "
                f"that may write to {repo_id.split('/')[0]} at {TOKENS_PAGE}"
            )
        if status == 409:
            return (
                f"the repo {repo_id} already exists; choose another name or push with "
                "--update to add a commit to it"
            )
        return f"the Hub answered {status} while {doing}; run the push again to retry"
    if isinstance(error, httpx2.ConnectError):
        return (
            f"could not reach {endpoint} while {doing}; check the address and the network, "
            "then run the push again to retry"
        )
    if isinstance(error, (httpx2.TransportError, ConnectionError)):
        return f"lost the connection to {endpoint} while {doing}; run the push again to retry"
    if isinstance(error, OSError) and error.filename:
        return f"cannot access {error.filename} while {doing} ({error.strerror})"
    return f"the push failed while {doing} ({type(error).__name__})"


def push_run(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    progress: Callable[[PushEvent], None] | None = None,
    update: bool = False,
) -> str:
    """Push a finished run to `repo_id` in one commit; returns the repo's URL."""
    report = progress or (lambda event: None)
    try:
        return _push(Path(run_dir), repo_id, private, token, endpoint, report, update)
    except UserError as error:
        report(PushEvent(repo_id=repo_id, phase="failed", message=str(error)))
        raise


def _push(run_dir, repo_id, private, token, endpoint, report, update) -> str:
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    _check_repo_id(repo_id)
    files = run_files(run_dir)
    card = build_model_card(run_dir, repo_id)
    token = resolve_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    # The state names repos by endpoint too: the same id on another Hub is another repo.
    key = f"{api.endpoint}/{repo_id}"
    state = _state(run_dir)
    doing = "creating the repo"
    try:
        report(PushEvent(repo_id=repo_id, phase="creating repo"))
        # Recorded before asking, so a retry after a lost answer can recognise its own repo.
        _remember(run_dir, "creating", key)
        ours = key in state.get("created", [])
        try:
            url = str(api.create_repo(repo_id, private=private, exist_ok=update or ours))
        except HfHubHTTPError as error:
            # The Hub made the repo but the answer was lost: it is ours if it is still empty.
            if error.response is None or error.response.status_code != 409:
                raise
            if key not in state.get("creating", []) or not _empty(api, repo_id):
                raise
            url = f"{api.endpoint}/{repo_id}"
        _remember(run_dir, "created", key)
        doing = "uploading the files"
        total = len(files) + 1
        report(PushEvent(repo_id=repo_id, phase="uploading", done=0, total=total))
        operations = [CommitOperationAdd("README.md", card.encode("utf-8"))]
        operations += [CommitOperationAdd(path.as_posix(), str(run_dir / path)) for path in files]
        api.create_commit(repo_id, operations, commit_message="Upload from CogVideoX Studio")
        report(PushEvent(repo_id=repo_id, phase="uploading", done=total, total=total))
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as error:
        # `from None`: the chained error would repeat the request, and the sentence says it all.
        sentence = _explain(error, api.endpoint, doing, repo_id).replace(token, "***")
        raise UserError(sentence) from None
    report(PushEvent(repo_id=repo_id, phase="done", done=total, total=total, url=url))
    return url


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        valid = repo_id.count("/") == 1  # the card's snippet needs the owner too
    except HFValidationError:
        valid = False
    if not valid:
        raise UserError(
            f"{repo_id!r} is not a repo id; write owner/name with letters, digits, '-', '_' "
            "and '.' (like your-name/my-lora)"
        )


def _empty(api, repo_id: str) -> bool:
    """Whether a repo holds nothing yet but what the Hub puts in a new one."""
    siblings = api.model_info(repo_id).siblings or []
    return {sibling.rfilename for sibling in siblings} <= {".gitattributes"}


# ---------------------------------------------------------------------------------------------
# The command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.hub", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="push a finished run to the Hub")
    card = commands.add_parser("card", help="print the model card a push would write")
    for command in (push, card):
        command.add_argument("run_dir")
        command.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--update", action="store_true", help="add a commit to an existing repo")
    push.add_argument("--endpoint", help="the Hub's address (default: HF_ENDPOINT or the Hub)")
    push.add_argument("--events", help="append push progress events (JSON lines) to this file")
    args = parser.parse_args(argv)
    writer = None
    try:
        if args.command == "card":
            print(build_model_card(args.run_dir, args.repo_id))
            return 0
        if args.events:
            events = Path(args.events)
            events.parent.mkdir(parents=True, exist_ok=True)
            writer = EventWriter(events.parent, filename=events.name)
        url = push_run(
            args.run_dir,
            args.repo_id,
            private=args.private,
            endpoint=args.endpoint,
            update=args.update,
            progress=writer.emit if writer else None,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if writer:
            writer.close()
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
