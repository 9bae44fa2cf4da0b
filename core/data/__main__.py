"""`python -m core.data`: the dataset commands.

    report FOLDER [--buckets FxHxW ...] [--json]     what a run will train on
    split INPUT... OUT [--family ...] [...]           long videos into scene clips
    caption FOLDER [--model ID] [...]                 captions from a vision-language model

`report` exits 0 when there is something to train on, 2 when there is nothing (or the folder is
wrong), with one sentence saying why. `split` and `caption` exit 0 when done, 2 for a problem
with their input, 128+signal when stopped (run them again to continue).
"""

from __future__ import annotations

import argparse
import json
import sys

from core.config import make_config
from core.errors import EXIT_USER_ERROR, UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.data")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="describe a dataset folder or zip")
    report.add_argument("folder", help="dataset folder or .zip")
    report.add_argument(
        "--buckets",
        nargs="+",
        default=None,
        metavar="FxHxW",
        help="training shapes, as --video_resolution_buckets",
    )
    report.add_argument(
        "--layout", default="auto", choices=["auto", "reference", "metadata", "pairs"]
    )
    report.add_argument("--caption_column", default=None)
    report.add_argument("--video_column", default=None)
    report.add_argument("--id_token", default=None)
    report.add_argument("--cache_dir", default=None)
    report.add_argument(
        "--model",
        default=None,
        help="base model (folder or Hub id): its tokenizer counts caption tokens; an "
        "image-to-video base reports images alone as skipped",
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_split(commands)
    _add_caption(commands)
    args = parser.parse_args(argv)
    if args.command == "split":
        from core.data.split import run_split

        return run_split(args)
    if args.command == "caption":
        from core.data.autocaption import run_caption

        return run_caption(args)

    from core.data.report import build_report, format_report

    settings = {
        "data_root": args.folder,
        "dataset_layout": args.layout,
        "id_token": args.id_token,
        "cache_dir": args.cache_dir,
    }
    if args.buckets:
        settings["video_resolution_buckets"] = args.buckets
    if args.caption_column:
        settings["caption_column"] = args.caption_column
    if args.video_column:
        settings["video_column"] = args.video_column
    try:
        config = make_config(settings)
        tokenizer = _tokenizer(args.model) if args.model else None
        result = build_report(config, tokenizer, image_to_video=_image_to_video(args.model))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(
        json.dumps(result.to_dict(), indent=2, ensure_ascii=False)
        if args.json
        else format_report(result)
    )
    if not result.samples:
        print(
            f"error: nothing in {result.root} can be trained on; see the skipped files above",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return 0


def _add_split(commands) -> None:
    split = commands.add_parser(
        "split", help="cut long videos into scene clips", description=_split_doc()
    )
    split.add_argument("inputs", nargs="+", metavar="INPUT", help="long videos")
    split.add_argument("out", metavar="OUT", help="folder for the clips and split.json")
    split.add_argument(
        "--family",
        default="5b",
        help="2b, 5b, 1.5, or a model folder or Hub id: sets the frame counts (4k+1, 8k+1 for "
        "1.5), the longest clip and the default frame rate (default: 5b)",
    )
    split.add_argument(
        "--frames",
        type=int,
        help="every clip this many frames (default: the longest the scene "
        "allows, up to the family's 49 or 81)",
    )
    split.add_argument("--fps", type=float, help="clip frame rate (default: the family's, 8 or 16)")
    split.add_argument("--size", help="HEIGHTxWIDTH to resize clips to (default: the source's)")
    split.add_argument("--crop", default="center", help="center (default) or none, with --size")
    split.add_argument(
        "--min-seconds", type=float, default=1.0, help="shorter scenes are left out (default 1)"
    )
    split.add_argument(
        "--max-clips-per-scene",
        type=int,
        help="at most this many clips a scene (default: all that fit, spread over the scene)",
    )
    split.add_argument("--events", help="append progress events to this events.jsonl")


def _add_caption(commands) -> None:
    from core.data.autocaption import DEFAULT_FRAMES

    caption = commands.add_parser(
        "caption",
        help="caption clips with a vision-language model",
        description="Clips without a caption get one; see core/data/autocaption.py.",
    )
    caption.add_argument("folder", metavar="FOLDER", help="the dataset folder")
    caption.add_argument(
        "--model",
        default=None,
        help="a Qwen2-VL, Qwen2.5-VL or Qwen3-VL folder or Hub id "
        "(default: Qwen/Qwen3-VL-8B-Instruct)",
    )
    caption.add_argument("--prompt", default=None, help="what to ask the model for each clip")
    caption.add_argument("--prefix", default="", help="a trigger word put before every caption")
    caption.add_argument(
        "--frames", type=int, default=DEFAULT_FRAMES, help="frames shown per clip (default 8)"
    )
    caption.add_argument(
        "--overwrite", action="store_true", help="also replace captions the model wrote before"
    )
    caption.add_argument(
        "--overwrite-person",
        action="store_true",
        help="also replace captions a person wrote or edited (they are kept otherwise)",
    )
    caption.add_argument("--batch-size", type=int, default=1, help="clips per model call")
    caption.add_argument(
        "--max-new-tokens", type=int, default=200, help="longest caption in tokens (default 200)"
    )
    caption.add_argument("--events", help="append progress events to this events.jsonl")


def _split_doc() -> str:
    from core.data import split

    return split.__doc__.split("\n\n", 1)[1]


def _image_to_video(model: str | None) -> bool:
    """Whether --model is an image-to-video base (its configs, or a Hub id's name)."""
    from core.models.registry import spec_module, variant_at_hand

    family, variant, _ = variant_at_hand(model)
    return family is not None and variant in spec_module(family).IMAGE_TO_VIDEO


def _tokenizer(model: str):
    from transformers import T5Tokenizer

    from core.models.source import ModelSource, check_source

    source = ModelSource(model)
    check_source(source)
    return T5Tokenizer.from_pretrained(source.location, subfolder="tokenizer")


if __name__ == "__main__":
    sys.exit(main())
