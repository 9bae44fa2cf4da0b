"""What a job must pass before it is queued: everything knowable without loading a model.

`python -m jobs start` and the Train tab's Start button call `check_before_queue` after the
spec itself validated (its values, buckets and launch settings): a base model that cannot
exist, a dataset with nothing to train on under the chosen buckets, or an output folder that
cannot be the run's are refused with one sentence naming the setting, before a job exists. The
trainer checks the same again when it starts (a spec can also reach it by hand). Torch-free: the
web process runs these.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.config import TrainConfig
from core.errors import UserError
from jobs.spec import JobSpec

if TYPE_CHECKING:  # the runner calls output_folder: no import cycle
    from jobs.runner import Runner


def check_before_queue(spec: JobSpec, runner: Runner) -> None:
    """Raise UserError (`--flag: sentence`) for a train job that would fail before its first
    step; `spec` as submitted (relative paths are the caller's)."""
    if spec.kind != "train":
        return
    from core.data.dataset import prepare_samples
    from core.models.source import ModelSource, check_source

    output_folder(spec, runner.store.runs_dir)
    train = runner.resolve_paths(spec).train
    check_source(ModelSource(train.pretrained_model_name_or_path, train.revision, train.variant))
    rules = check_buckets_for_model(train)
    # An empty dataset, or nothing that fits the buckets: one sentence (images alone are no
    # samples for an image-to-video model).
    prepare_samples(train, image_to_video=bool(rules is not None and rules.image_conditioned))


def check_buckets_for_model(train):
    """The buckets (and the validation size) against the base model's own shape rules (the 1.5
    family's 8k+1 frames, the 5b-I2V's one shape), when its configs are at hand: a local folder,
    or a Hub model already in the Hugging Face cache. Nothing is downloaded here; the trainer
    checks the rest at its start. Returns the rules (None when the configs are not at hand)."""
    from core.models.registry import rules_at_hand, shape_problem

    rules = rules_at_hand(train.pretrained_model_name_or_path)
    problem = shape_problem(rules, train) if rules is not None else None
    if problem:
        raise UserError(problem)
    return rules


def output_folder(spec: JobSpec, runs_dir: Path) -> Path | None:
    """The folder a train spec names for its run's files, or None when the job's own folder
    (`<workspace>/runs/<id>`) serves, as it does for every job the app starts.

    A spec that names `output_dir` gets it: the job folder becomes a link to it, so the page,
    `python -m jobs` and the trainer all find the run there. The trainer's default
    (`cogvideox-lora`, which every saved spec spells out) and a folder inside the runs folder (an
    earlier job's own, in a copied spec.json) name nothing: the new job gets its own folder. The
    folder must be new or empty, so two runs never write into one another.
    """
    if spec.kind != "train" or "output_dir" not in spec.train.model_fields_set:
        return None
    if spec.train.output_dir == TrainConfig.model_fields["output_dir"].default:
        return None
    folder = Path(spec.train.output_dir).expanduser().resolve()
    runs = Path(runs_dir).resolve()
    if folder == runs or folder.is_relative_to(runs):
        return None
    if runs.is_relative_to(folder):
        raise UserError(
            f"--output_dir: {folder} holds the workspace's job folders; name a folder of its own "
            "for this run (or leave output_dir out to use the job's folder)"
        )
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output_dir: {folder} is a file; name a folder for the run's files")
    if folder.is_dir() and any(folder.iterdir()):
        raise UserError(
            f"--output_dir: {folder} already holds files; name a new or empty folder (a run "
            "writes checkpoints and weights there), or leave output_dir out to use the job's "
            "folder; to continue a stopped run, resume its job"
        )
    return folder
