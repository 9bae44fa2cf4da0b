"""Publishing a finished run to the Hugging Face Hub: the weights, a model card and the samples.

    python -m core.hub push RUN_DIR REPO_ID [--private] [--update] [--endpoint URL] [--events F]
    python -m core.hub card RUN_DIR REPO_ID

The push is one commit holding the LoRA (or the full-finetune transformer), README.md and the
validation videos; never checkpoints, logs or the job's spec. The token comes from `HF_TOKEN` or
the login cache and is never written anywhere: not to a file, a log line, an event or an error.
A push that lost its connection can simply be run again: the run remembers (without the token)
that it created the repo, so the retry adds to it instead of stopping at "already exists".
Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from core.errors import EXIT_USER_ERROR, UserError
from core.events import EventWriter, PushEvent

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
STATE_FILE = ".push-state.json"
APACHE_BASES = {"thudm/cogvideox-2b"}
COGVIDEOX_LICENSE = "https://huggingface.co/THUDM/CogVideoX-5b/blob/main/LICENSE"


# ---------------------------------------------------------------------------------------------
# What goes up


def _train_config(run_dir: Path) -> dict:
    path = run_dir / "train_config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no finished run (train_config.json is missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def run_files(run_dir: Path) -> list[Path]:
    """The files a push uploads, relative to the run folder: weights, then samples."""
    config = _train_config(run_dir)
    if config.get("training_type") == "full-finetune":
        weights = sorted(
            p.relative_to(run_dir) for p in (run_dir / "transformer").glob("*") if p.is_file()
        )
    else:
        weights = [Path(LORA_WEIGHTS)] if (run_dir / LORA_WEIGHTS).is_file() else []
    if not weights:
        raise UserError(f"{run_dir} has no trained weights to push; let the run finish first")
    return [*weights, Path("train_config.json"), *latest_samples(run_dir)]


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


def _license(base: str) -> list[str]:
    if base.lower() in APACHE_BASES:
        return ["license: apache-2.0"]
    return [
        "license: other",
        "license_name: cogvideox-license",
        f"license_link: {COGVIDEOX_LICENSE}",
    ]


def build_model_card(run_dir: str | Path, repo_id: str) -> str:
    """README.md for the repo: base model, trigger word, settings, samples, and the snippet."""
    run_dir = Path(run_dir)
    config = _train_config(run_dir)
    base = config["pretrained_model_name_or_path"]
    hub_base = "/" in base and not Path(base).exists()
    lora = config.get("training_type") != "full-finetune"
    trigger = config.get("id_token")
    prompt = f"{trigger} {{your prompt}}" if trigger else "{your prompt}"
    front = [
        "---",
        *([f"base_model: {base}"] if hub_base else []),
        "library_name: diffusers",
        *_license(base),
        "tags:",
        "- text-to-video",
        "- cogvideox",
        "- diffusers",
        *(["- lora"] if lora else []),
        "---",
    ]
    kind = "LoRA" if lora else "full finetune"
    lines = [
        *front,
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A {kind} of [{base}](https://huggingface.co/{base}) trained with CogVideoX Studio."
        if hub_base
        else f"A {kind} of a local CogVideoX checkpoint ({Path(base).name}); "
        "its license follows that base model's.",
        "",
    ]
    if trigger:
        lines += [f"Trigger word: `{trigger}` (put it in your prompt).", ""]
    settings = [
        ("training type", config.get("training_type")),
        ("steps", config.get("train_steps")),
        ("rank / alpha", f"{config.get('rank')} / {config.get('lora_alpha')}" if lora else None),
        ("learning rate", config.get("lr")),
        ("optimizer", config.get("optimizer")),
        ("buckets", " ".join(config.get("video_resolution_buckets", []))),
        ("seed", config.get("seed")),
    ]
    lines += ["## Training settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in settings if value is not None]
    samples = [p for p in run_files(run_dir) if p.suffix == ".mp4"]
    if samples:
        lines += ["", "## Samples", ""]
        lines += [f"- [{p.stem} ({p.parent.name})]({p.as_posix()})" for p in samples]
    load = (
        (
            f'pipe.load_lora_weights("{repo_id}", adapter_name="cogvideox-lora")\n'
            'pipe.set_adapters(["cogvideox-lora"], [0.75])\n'
        )
        if lora
        else ""
    )
    transformer = (
        ""
        if lora
        else "from diffusers import CogVideoXTransformer3DModel\n\n"
        f'transformer = CogVideoXTransformer3DModel.from_pretrained("{repo_id}", '
        'subfolder="transformer", torch_dtype=torch.bfloat16)\n'
    )
    extra = "" if lora else ", transformer=transformer"
    lines += [
        "",
        "## Use it with diffusers",
        "",
        "```python",
        "import torch",
        "from diffusers import CogVideoXPipeline",
        "from diffusers.utils import export_to_video",
        "",
        transformer.rstrip("\n"),
        "pipe = CogVideoXPipeline.from_pretrained(",
        f'    "{base}", torch_dtype=torch.bfloat16{extra}',
        ').to("cuda")',
        load.rstrip("\n"),
        "",
        f'video = pipe("{prompt}").frames[0]',
        'export_to_video(video, "output.mp4")',
        "```",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


# ---------------------------------------------------------------------------------------------
# Pushing


def resolve_token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()  # HF_TOKEN, then the login cache
    if not found:
        raise UserError("no Hub token: set HF_TOKEN, run `hf auth login`, or type one in the app")
    return found


def _state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _remember(run_dir: Path, repo_id: str) -> None:
    state = _state(run_dir)
    state.setdefault("created", [])
    if repo_id not in state["created"]:
        state["created"].append(repo_id)
    temporary = run_dir / f".{STATE_FILE}.partial"
    temporary.write_text(json.dumps(state))
    temporary.replace(run_dir / STATE_FILE)


def _explain(error: Exception, endpoint: str, doing: str, repo_id: str, token: str) -> UserError:
    """One sentence for a failed Hub call; the token never appears in it."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        sentence = "the Hub can't be reached in offline mode: unset HF_HUB_OFFLINE to push"
    elif isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            sentence = (
                f"the Hub rejected the token while {doing} ({status}); create a write "
                "token at https://huggingface.co/settings/tokens"
            )
        elif status == 409:
            sentence = (
                f"the repo {repo_id} already exists; choose another name or push with "
                "--update to add a commit to it"
            )
        else:
            sentence = f"the Hub answered {status} while {doing}"
    elif isinstance(error, (httpx2.TransportError, OSError, ConnectionError)):
        sentence = f"lost the connection to {endpoint} while {doing}; run the push again to retry"
    else:
        sentence = f"the push failed while {doing} ({type(error).__name__})"
    return UserError(sentence.replace(token, "***"))


def push_run(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    progress: Callable[[PushEvent], None] | None = None,
    update: bool = False,
) -> str:
    """Push a finished run to `repo_id`; returns the repo's URL."""
    import httpx2  # the HTTP client huggingface_hub is built on
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    run_dir = Path(run_dir)
    report = progress or (lambda event: None)
    files = run_files(run_dir)
    card = build_model_card(run_dir, repo_id)
    token = resolve_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    endpoint = api.endpoint
    ours = repo_id in _state(run_dir).get("created", [])
    doing = "creating the repo"
    try:
        report(PushEvent(repo_id=repo_id, phase="creating repo"))
        url = api.create_repo(repo_id, private=private, exist_ok=update or ours)
        _remember(run_dir, repo_id)
        doing = "uploading the files"
        total = len(files) + 1
        report(PushEvent(repo_id=repo_id, phase="uploading", done=0, total=total))
        operations = [CommitOperationAdd("README.md", card.encode("utf-8"))]
        operations += [CommitOperationAdd(path.as_posix(), str(run_dir / path)) for path in files]
        api.create_commit(repo_id, operations, commit_message="Upload from CogVideoX Studio")
        report(PushEvent(repo_id=repo_id, phase="uploading", done=total, total=total))
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as error:
        failure = _explain(error, endpoint, doing, repo_id, token)
        report(PushEvent(repo_id=repo_id, phase="failed", message=str(failure)))
        raise failure from None
    repo_url = str(url)
    report(PushEvent(repo_id=repo_id, phase="done", done=total, total=total, url=repo_url))
    return repo_url


# ---------------------------------------------------------------------------------------------
# The command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.hub")
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="push a finished run to the Hub")
    card = commands.add_parser("card", help="print the model card a push would write")
    for command in (push, card):
        command.add_argument("run_dir")
        command.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--update", action="store_true", help="add a commit to an existing repo")
    push.add_argument("--endpoint", help="the Hub's address (default: the public Hub)")
    push.add_argument("--events", help="append push progress events to this file")
    args = parser.parse_args(argv)
    try:
        if args.command == "card":
            print(build_model_card(args.run_dir, args.repo_id))
            return 0
        writer = None
        if args.events:
            events = Path(args.events)
            events.parent.mkdir(parents=True, exist_ok=True)
            writer = EventWriter(events.parent, filename=events.name)
        try:
            url = push_run(
                args.run_dir,
                args.repo_id,
                private=args.private,
                endpoint=args.endpoint,
                update=args.update,
                progress=writer.emit if writer else None,
            )
        finally:
            if writer:
                writer.close()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
