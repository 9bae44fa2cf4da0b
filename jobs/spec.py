"""`JobSpec`: a training run as the app and the CLI submit it.

A job spec is a `TrainConfig` plus what the trainer itself does not decide: a name, the kind of
job, the GPUs it runs on and how accelerate launches it. Two more kinds reuse the machinery:
`infer` (a warm preview worker) and `push` (a push of a finished run to the Hub).

Its JSON form is what `spec.json` holds: `{"name", "kind", "gpu_ids", "launch": {...}, "train":
{TrainConfig fields by flag name}}`; the trainer reads the "train" part of the same file
(`--config spec.json`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.config import TrainConfig, to_argv

SPEC_FILE = "spec.json"


class LaunchSettings(BaseModel):
    """How `accelerate launch` starts the trainer."""

    model_config = ConfigDict(extra="forbid")

    num_processes: int | None = Field(
        None, ge=1, description="Processes on this machine (default: one per GPU, or one)."
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="accelerate's autocast; the trainer's dtypes already set precision."
    )
    config_file: str | None = Field(
        None, description="An accelerate config (DDP, DeepSpeed, FSDP) to launch with."
    )
    num_machines: int = Field(1, ge=1, description="Machines taking part in the run.")
    machine_rank: int = Field(0, ge=0, description="This machine's rank among them.")
    main_process_ip: str | None = Field(None, description="Address of the rank-0 machine.")
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="Port of the rank-0 machine."
    )


class InferSettings(BaseModel):
    """A warm preview worker: it serves preview requests until it has been idle this long."""

    model_config = ConfigDict(extra="forbid")

    idle_timeout: float = Field(600.0, gt=0)
    allow_busy_gpu: bool = Field(
        False, description="Run beside a training job on the same GPU (may run out of memory)."
    )


class PushSettings(BaseModel):
    """A push of a finished run to the Hugging Face Hub (the token travels in the environment)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    repo_id: str = Field(min_length=3, pattern=r"^[\w.-]+/[\w.-]+$")
    private: bool = False
    update: bool = False
    endpoint: str | None = None


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", min_length=1, max_length=120)
    kind: Literal["train", "infer", "push"] = "train"
    gpu_ids: list[int] = Field(
        default_factory=list, description="GPU indices to run on; empty means the CPU."
    )
    launch: LaunchSettings = Field(default_factory=LaunchSettings)
    train: TrainConfig | None = None
    infer: InferSettings | None = None
    push: PushSettings | None = None

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> JobSpec:
        if getattr(self, self.kind) is None:
            raise ValueError(f"a {self.kind} job needs its '{self.kind}' settings")
        return self

    @property
    def exclusive(self) -> bool:
        """Whether the job holds its GPUs (or the CPU) so that others wait for them."""
        if self.kind == "push":
            return False
        return not (self.kind == "infer" and self.infer.allow_busy_gpu)

    @field_validator("gpu_ids")
    @classmethod
    def _distinct_gpus(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(gpu < 0 for gpu in value):
            raise ValueError("GPU ids must be distinct and not negative")
        return sorted(value)

    @property
    def processes(self) -> int:
        return self.launch.num_processes or max(1, len(self.gpu_ids))

    def launch_env(self) -> dict[str, str]:
        """Environment the launch needs: CPU runs tell accelerate to use gloo on the CPU."""
        return {} if self.gpu_ids else {"ACCELERATE_USE_CPU": "1"}

    def _torchrun_argv(self) -> list[str]:
        """Several processes on the CPU: `accelerate launch --cpu` would start only one, so
        torchrun starts them (and accelerate, told to use the CPU, joins them over gloo)."""
        launch = self.launch
        argv = [
            _venv_executable("torchrun"),
            "--nproc_per_node",
            str(self.processes),
            "--nnodes",
            str(launch.num_machines),
        ]
        if launch.num_machines > 1:
            argv += [
                "--node_rank",
                str(launch.machine_rank),
                "--master_addr",
                launch.main_process_ip or "127.0.0.1",
                "--master_port",
                str(launch.main_process_port or 29500),
            ]
        return argv

    def launch_argv(self) -> list[str]:
        """`accelerate launch` and its flags, up to the module it runs."""
        launch = self.launch
        if not self.gpu_ids and self.processes > 1:
            return self._torchrun_argv()
        argv = [accelerate_executable(), "launch"]
        if launch.config_file:
            argv += ["--config_file", launch.config_file]
        argv += [
            "--num_processes",
            str(self.processes),
            "--num_machines",
            str(launch.num_machines),
            "--mixed_precision",
            launch.mixed_precision,
            "--dynamo_backend",
            "no",
        ]
        if self.gpu_ids:
            argv += ["--gpu_ids", ",".join(map(str, self.gpu_ids))]
        else:
            argv += ["--cpu", "--num_cpu_threads_per_process", str(os.cpu_count() or 1)]
        if self.processes > 1 and not launch.config_file:
            argv += ["--multi_gpu"]
        if launch.num_machines > 1:
            argv += ["--machine_rank", str(launch.machine_rank)]
            if launch.main_process_ip:
                argv += ["--main_process_ip", launch.main_process_ip]
            if launch.main_process_port:
                argv += ["--main_process_port", str(launch.main_process_port)]
        return argv

    def to_argv(self, spec_path: str | Path | None = None) -> list[str]:
        """The exact command the runner starts: the trainer reads this spec from spec_path.

        Without a path, the trainer's settings are spelled out as flags instead: the same run,
        as a user would type it. Preview workers and pushes run as plain Python modules in the
        job's folder.
        """
        folder = Path(spec_path).parent if spec_path else Path("JOB_DIR")
        if self.kind == "infer":
            return [
                sys.executable,
                "-m",
                "core.infer",
                "serve",
                "--dir",
                str(folder),
                "--idle-timeout",
                str(self.infer.idle_timeout),
            ]
        if self.kind == "push":
            push = self.push
            argv = [
                sys.executable,
                "-m",
                "core.hub",
                "push",
                push.run_dir,
                push.repo_id,
                "--events",
                str(folder / "events.jsonl"),
            ]
            argv += ["--private"] if push.private else []
            argv += ["--update"] if push.update else []
            argv += ["--endpoint", push.endpoint] if push.endpoint else []
            return argv
        if spec_path is not None:
            return [*self.launch_argv(), "-m", "core.train", "--config", str(spec_path)]
        return [*self.launch_argv(), "-m", "core.train", *to_argv(self.train)]

    def show_command(self, spec_path: str | Path | None = None) -> str:
        argv = self.to_argv(spec_path)
        argv[0] = Path(argv[0]).name if self.kind == "train" else "python"
        return shlex.join(argv)


def _venv_executable(name: str) -> str:
    """A console script of this environment (the venv's, when the app runs from one)."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    return shutil.which(name) or name


def accelerate_executable() -> str:
    return _venv_executable("accelerate")
