"""Checkpoint folders: naming, atomic publication, pruning and finding the one to resume.

A checkpoint is written under a temporary name and renamed to `checkpoint-<step>` only once it is
complete (its `checkpoint.json` marker is the last file written), so a run killed while saving
leaves the previous checkpoint usable and no half-written one that resume could pick up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from core.errors import UserError

MARKER = "checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


def partial_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f".checkpoint-{step}.partial"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _NAME.match(path.name)
        if match and (path / MARKER).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def publish(output_dir: Path, step: int, staging: Path) -> Path:
    """Mark a fully written staging folder complete and rename it into place."""
    (staging / MARKER).write_text(json.dumps({"step": step}))
    final = checkpoint_dir(output_dir, step)
    if final.exists():  # the same step saved again (a resumed run stopped at once)
        shutil.rmtree(final)
    staging.replace(final)
    return final


def discard_partial(output_dir: Path) -> None:
    """Delete checkpoint folders that were never finished."""
    for stale in output_dir.glob(".checkpoint-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def prune(output_dir: Path, limit: int | None) -> list[Path]:
    """Delete all but the `limit` newest complete checkpoints, and stale partial folders."""
    removed = []
    discard_partial(output_dir)
    if limit is None:
        return removed
    checkpoints = list_checkpoints(output_dir)
    for _, path in checkpoints[: max(0, len(checkpoints) - limit)]:
        shutil.rmtree(path)
        removed.append(path)
    return removed


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names ('latest' with none yet: a fresh start)."""
    if not resume:
        return None
    flag = "--resume_from_checkpoint"
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    if resume.isdigit():
        path = checkpoint_dir(output_dir, int(resume))
        if not (path / MARKER).is_file():
            steps = ", ".join(str(step) for step, _ in list_checkpoints(output_dir)) or "none"
            raise UserError(
                f"{flag}: there is no checkpoint at step {resume} in {output_dir} "
                f"(saved steps: {steps})"
            )
        return path
    path = Path(resume).expanduser()
    if not (path / MARKER).is_file():
        raise UserError(f"{flag}: {path} is not a complete checkpoint folder")
    return path


def checkpoint_step(path: Path) -> int:
    return int(json.loads((path / MARKER).read_text())["step"])
