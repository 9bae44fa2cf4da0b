"""The first thing to run on a GPU: does every CUDA path work, and what do memory and speed
measure beside what bench/memory_model.py predicted? Start it with bench/gpu_check.sh, which
finds the Python environment first.

    bash bench/gpu_check.sh [--out DIR] [--minutes 8] [--dry-run]

Planned for one call of at most 8 minutes on one H100/H200-class GPU (16 cores, nothing
downloadable: every model is built here, random, from the real configs):

    phase 0  0.5 min  environment: Python packages, the GPU, nvidia-smi
    phase 1  2.0 min  CUDA smoke on tiny models: LoRA, fp8 storage with offloaded activations,
                      torch AdamW with compile, each attention kernel, full finetune with 8-bit
                      AdamW, validation in every run, a preview with model CPU offload, and a
                      two-process launch when there are two GPUs
    phase 2  3.0 min  the 5B LoRA at the reference's size (49x480x720), reference settings and
                      the recommended options: a random full-size checkpoint built on the GPU
                      and saved to /dev/shm (memory) if it has room, the stage table, s/step,
                      TFLOP/s
    phase 3  2.3 min  what time remains: fp8 storage, then the full finetune with 8-bit AdamW
    report   0.2 min  predicted beside measured, stage by stage

Every run appends its figures to OUT/runs.jsonl as it ends, and each phase its lines to
OUT/gpu_check.md as it ends, so a call cut short still reports what it did. A phase (or run)
that would not fit the minutes left is skipped with a line saying so. `--dry-run` (the test
suite's, on a CPU) checks every command's arguments and writes the report from the
predictions alone, running nothing on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gpu_stage_table  # noqa: E402  (both light: torch is imported by what they run)
from memory_model import FIGURES as PREDICTED  # noqa: E402
from memory_model import RECOMMENDED_OPTIONS as RECOMMENDED  # noqa: E402

# The random full-size checkpoints (21 GB: T5-XXL, the 5B transformer, the VAE) go to memory
# when /dev/shm has room, else to the disk.
CHECKPOINT_BYTES = 25 * 1024**3


def full_size_workdir(out: Path) -> Path:
    import shutil

    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > CHECKPOINT_BYTES:
        return shm / "cogvideox-studio-gpu-check"
    return out / "checkpoints"


@dataclass
class Run:
    """One command of a phase, with the minutes it is expected to take on an H100."""

    what: str
    argv: list[str]
    minutes: float
    needs_gpus: int = 1
    required: bool = False  # nothing after it can work when it fails


@dataclass
class Phase:
    number: int
    title: str
    runs: list[Run] = field(default_factory=list)

    @property
    def minutes(self) -> float:
        return sum(run.minutes for run in self.runs)


def stage_table_run(
    what: str, minutes: float, workdir: Path, results: Path, *arguments: str, needs_gpus: int = 1
) -> Run:
    argv = [sys.executable, str(ROOT / "bench" / "gpu_stage_table.py"), *arguments]
    argv += ["--workdir", str(workdir), "--results", str(results)]
    return Run(what, argv, minutes, needs_gpus)


def plan(out: Path) -> list[Phase]:
    """The phases and their runs, in order."""
    results = out / "runs.jsonl"
    tiny = out / "tiny"
    python = sys.executable
    environment = Phase(0, "environment")
    environment.runs = [
        Run(
            "packages and GPU",
            [python, str(ROOT / "bench" / "gpu_check.py"), "--versions"],
            0.4,
            needs_gpus=0,  # it says itself when there is none
            required=True,
        ),
        Run("nvidia-smi", ["nvidia-smi"], 0.1, needs_gpus=0),
    ]
    smoke = Phase(1, "CUDA smoke on tiny models")
    tiny_args = ["--device", "cuda", "--scale", "tiny", "--steps", "3", "--warmup", "1"]
    smoke.runs = [
        stage_table_run(
            "LoRA: reference settings, fp8 storage with offload, torch AdamW with compile, "
            "each attention kernel",
            1.3,
            tiny,
            results,
            *tiny_args,
            "--training",
            "lora",
            "--options",
            f"fp8+{RECOMMENDED}",
            "adamw+compile+attention=flash",
            "attention=cudnn",
            "attention=efficient",
            "attention=math",
        ),
        stage_table_run(
            "full finetune with 8-bit AdamW", 0.3, tiny, results, *tiny_args, "--training", "full"
        ),
        Run(
            "a preview with model CPU offload",
            [
                python,
                "-m",
                "core.infer",
                "generate",
                "--base",
                str(tiny / "tiny-5b"),
                "--prompt",
                "a gpu check",
                *("--frames", "9", "--height", "32", "--width", "32", "--steps", "2"),
                "--out",
                str(out / "preview.mp4"),
            ],
            0.2,
        ),
        stage_table_run(
            "a two-process launch (DDP)",
            0.2,
            tiny,
            results,
            *tiny_args,
            "--training",
            "lora",
            "--skip-baseline",
            "--options",
            "launch=ddp",
            "--processes",
            "2",
            needs_gpus=2,
        ),
    ]
    full = ["--family", "5b", "--steps", "5", "--warmup", "2"]
    workdir = full_size_workdir(out)
    reference = Phase(2, "5B LoRA at 49x480x720: reference settings and the recommended options")
    reference.runs = [
        stage_table_run(
            "5B LoRA, reference and recommended",
            3.0,
            workdir,
            results,
            *full,
            "--training",
            "lora",
            "--options",
            RECOMMENDED,
        )
    ]
    more = Phase(3, "5B fp8 storage, then the full finetune with 8-bit AdamW")
    more.runs = [
        stage_table_run(
            "5B LoRA, fp8 storage",
            1.1,
            workdir,
            results,
            *full,
            "--training",
            "lora",
            "--skip-baseline",
            "--options",
            f"fp8+{RECOMMENDED}",
        ),
        stage_table_run(
            "5B full finetune, 8-bit AdamW",
            1.2,
            workdir,
            results,
            *full,
            "--training",
            "full",
            "--options",
        ),
    ]
    return [environment, smoke, reference, more]


REPORT_MINUTES = 0.2


# ---- running ---------------------------------------------------------------------------------


def check_arguments(run: Run) -> None:
    """Refuse a run whose command its program would refuse (the dry run's check)."""
    argv = run.argv
    if argv[1:2] == [str(ROOT / "bench" / "gpu_stage_table.py")]:
        args = gpu_stage_table.build_parser().parse_args(argv[2:])
        for option in args.options:
            gpu_stage_table.option_settings(option)
    elif argv[1:3] == ["-m", "core.infer"]:
        from core.infer import _parser

        _parser().parse_args(argv[3:])


def gpu_count() -> int:
    """GPUs here: nvidia-smi's list, else torch's count."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False
        )
        return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.TimeoutExpired):
        pass
    counted = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return int(counted.stdout.strip() or 0) if counted.returncode == 0 else 0


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(text + "\n")


def execute(phases: list[Phase], out: Path, minutes: float, dry_run: bool) -> None:
    report = out / "gpu_check.md"
    deadline = time.monotonic() + minutes * 60 - REPORT_MINUTES * 60
    gpus = 0 if dry_run else gpu_count()
    blocked = ""  # why the rest cannot run
    for phase in phases:
        lines = [f"## Phase {phase.number}: {phase.title} (planned {phase.minutes:.1f} min)", ""]
        for run in phase.runs:
            left = deadline - time.monotonic()
            command = shlex.join(run.argv)
            if dry_run:
                check_arguments(run)
                lines.append(f"- {run.what}: would run `{command}` ({run.minutes:.1f} min)")
                continue
            if blocked:
                lines.append(f"- {run.what}: skipped, {blocked}")
                continue
            if run.needs_gpus > gpus:
                lines.append(f"- {run.what}: skipped, it needs {run.needs_gpus} GPUs ({gpus} here)")
                continue
            if left < run.minutes * 60:
                lines.append(f"- {run.what}: skipped, {left / 60:.1f} min left of the plan")
                continue
            started = time.monotonic()
            log = out / f"phase{phase.number}.log"
            with log.open("a", encoding="utf-8") as file:
                file.write(f"$ {command}\n")
                file.flush()
                try:
                    completed = subprocess.run(
                        run.argv, cwd=ROOT, stdout=file, stderr=subprocess.STDOUT, timeout=left
                    )
                    status = "ok" if completed.returncode == 0 else f"exit {completed.returncode}"
                except subprocess.TimeoutExpired:
                    status = "stopped at the plan's end"
            took = (time.monotonic() - started) / 60
            lines.append(f"- {run.what}: {status} in {took:.1f} min (planned {run.minutes:.1f})")
            if status != "ok":
                lines.append(f"  - last lines of {log.name}: `{tail(log)}`")
                if run.required:
                    blocked = f"{run.what} failed"
        append(report, "\n".join([*lines, ""]))
        print("\n".join(lines), flush=True)


def tail(path: Path, count: int = 3) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return " / ".join(line.strip() for line in lines[-count:])[:400]


# ---- predicted beside measured ---------------------------------------------------------------


def predicted_checks() -> dict:
    if not PREDICTED.is_file():
        return {}
    return json.loads(PREDICTED.read_text(encoding="utf-8")).get("checks", {})


def prediction_key(record: dict) -> str:
    options = "reference" if record["options"] == "baseline" else record["options"]
    return f"{record['family']}/{record['training']}/{options}"


def comparison(records: list[dict], checks: dict) -> list[str]:
    """One table per full-size configuration: predicted and measured, stage by stage (GB)."""
    lines = []
    full_size = {prediction_key(r): r for r in records if r["scale"] == "full"}
    for key in dict.fromkeys([*checks, *full_size]):
        predicted = checks.get(key, {}).get("stages", {})
        record = full_size.get(key)
        measured = record["stages"] if record else {}
        where = f"measured on {record['device']}" if record else "not measured"
        lines += [
            f"### {key} ({where})",
            "",
            "| stage | predicted allocated | measured allocated | predicted max reserved "
            "| measured max reserved |",
            "|---|---|---|---|---|",
        ]
        for stage in dict.fromkeys([*predicted, *measured]):
            mine, theirs = predicted.get(stage, {}), measured.get(stage, {})
            cells = [
                stage,
                _gb(mine.get("allocated")),
                _gb(theirs.get("memory_allocated")),
                _gb(mine.get("max_reserved")),
                _gb(theirs.get("max_memory_reserved")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if record and record.get("step_seconds"):
            tflops = record.get("tflops") or 0
            lines.append(f"\n{record['step_seconds']:.2f} s/step, {tflops:.0f} TFLOP/s")
        lines.append("")
    return lines


def _gb(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_report(out: Path) -> None:
    results = out / "runs.jsonl"
    records = []
    if results.is_file():
        records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    lines = ["## Tiny runs", ""]
    for record in records:
        if record["scale"] == "tiny":
            status = "ok" if record["exit"] == 0 else f"failed: {record['message']}"
            lines.append(f"- {record['family']} {record['training']} {record['options']}: {status}")
    lines += ["", "## Predicted beside measured (GB)", "", *comparison(records, predicted_checks())]
    append(out / "gpu_check.md", "\n".join(lines))
    print("\n".join(lines), flush=True)


# ---- the command line ------------------------------------------------------------------------


def versions() -> int:
    """Phase 0's check: every package the trainer needs imports, and the GPU answers."""
    import importlib

    missing = []
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            module = importlib.import_module(name)
            print(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError as error:
            missing.append(f"{name} ({error})")
    for name in ("pydantic", "av", "imageio_ffmpeg", "safetensors", "sentencepiece"):
        try:
            importlib.import_module(name)
        except ImportError as error:
            missing.append(f"{name} ({error})")
    import torch

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            print(f"GPU {index}: {properties.name}, {properties.total_memory / 1024**3:.0f} GB")
    if missing:
        print("error: missing packages: " + ", ".join(missing) + "; carry them as wheels in .whl/")
        return 2
    if not torch.cuda.is_available():
        print("error: torch sees no CUDA GPU here")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check"))
    parser.add_argument("--minutes", type=float, default=8.0, help="the whole call's time")
    parser.add_argument("--dry-run", action="store_true", help="check and plan; run nothing")
    parser.add_argument("--versions", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.versions:
        return versions()
    args.out.mkdir(parents=True, exist_ok=True)
    phases = plan(args.out)
    total = sum(phase.minutes for phase in phases) + REPORT_MINUTES
    header = [
        f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')} ({'dry run' if args.dry_run else 'run'})",
        "",
        "| phase | what | expected minutes (H100) |",
        "|---|---|---|",
        *(f"| {p.number} | {p.title} | {p.minutes:.1f} |" for p in phases),
        f"| report | predicted beside measured | {REPORT_MINUTES:.1f} |",
        f"| total | all phases and the report | {total:.1f} |",
        "",
    ]
    append(args.out / "gpu_check.md", "\n".join(header))
    print("\n".join(header), flush=True)
    execute(phases, args.out, args.minutes, args.dry_run)
    write_report(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
