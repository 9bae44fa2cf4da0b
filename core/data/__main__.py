"""`python -m core.data report FOLDER [--buckets FxHxW ...] [--json]`: what a run will train on.

Exit status 0 when there is something to train on, 2 when there is nothing (or the folder is
wrong), with one sentence saying why.
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
        help="base model (folder or Hub id) whose tokenizer counts caption tokens",
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

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
        result = build_report(config, tokenizer)
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


def _tokenizer(model: str):
    from transformers import T5Tokenizer

    from core.models.source import ModelSource, check_source

    source = ModelSource(model)
    check_source(source)
    return T5Tokenizer.from_pretrained(source.location, subfolder="tokenizer")


if __name__ == "__main__":
    sys.exit(main())
