"""`JobSpec`: a training run as the app and the CLI submit it.

A job spec is a `TrainConfig` plus what the trainer itself does not decide: a name, the kind of
job, the GPUs it runs on and how accelerate launches it. More kinds reuse the machinery:
`infer` (a warm preview worker), `push` (a push of a finished run to the Hub), and the dataset
preparation commands `split` (long videos into scene clips) and `caption` (automatic captions).

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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.config import TrainConfig, describe_validation_error, to_argv
from core.errors import UserError
from jobs.launch_choice import distributed_type

SPEC_FILE = "spec.json"


class LaunchSettings(BaseModel):
    """How `accelerate launch` starts the trainer."""

    model_config = ConfigDict(extra="forbid")

    num_processes: int | None = Field(
        None, ge=1, description="Processes on this machine (default: one per GPU, or one)."
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
        None,
        description="accelerate's mixed precision; by default the config file's (DeepSpeed and "
        "FSDP keep fp32 master weights under bf16), or none, as the trainer's dtypes set it.",
    )
    config_file: str | None = Field(
        None, description="An accelerate config (DDP, DeepSpeed, FSDP) to launch with."
    )
    num_machines: int = Field(1, ge=1, description="Machines taking part in the run.")
    machine_rank: int = Field(0, ge=0, description="This machine's rank among them.")
    main_process_ip: str | None = Field(
        None, validate_default=True, description="Address of the rank-0 machine."
    )
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="Port of the rank-0 machine."
    )

    @field_validator("machine_rank")
    @classmethod
    def _rank_among_machines(cls, rank: int, info: ValidationInfo) -> int:
        machines = info.data.get("num_machines")
        if machines is not None and rank >= machines:
            raise ValueError(
                f"this machine's rank must be below the number of machines ({machines}): "
                f"0 to {machines - 1}"
            )
        return rank

    @field_validator("main_process_ip")
    @classmethod
    def _address_for_several_machines(cls, address: str | None, info: ValidationInfo):
        address = (address or "").strip() or None
        if address is None and (info.data.get("num_machines") or 1) > 1:
            raise ValueError(
                "a run on several machines needs the address of the rank-0 machine "
                "(an IP or host name every machine can reach)"
            )
        return address


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


def _absolute_path(path: str) -> str:
    """The job runs in its own folder: a path typed relative to here must not move."""
    return str(Path(path).expanduser().resolve())


class SplitSettings(BaseModel):
    """`python -m core.data split`: long videos into scene clips (core/data/split.py)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1)
    out: str
    family: str = "5b"
    frames: int | None = Field(None, ge=2)
    fps: float | None = Field(None, gt=0, le=120)
    size: str | None = None
    crop: Literal["center", "none"] = "center"
    min_seconds: float = Field(1.0, ge=0)
    max_clips_per_scene: int | None = Field(None, ge=1)

    @field_validator("inputs")
    @classmethod
    def _inputs_absolute(cls, inputs: list[str]) -> list[str]:
        return [_absolute_path(path) for path in inputs]

    @field_validator("out")
    @classmethod
    def _out_absolute(cls, out: str) -> str:
        return _absolute_path(out)

    def to_argv(self) -> list[str]:
        argv = ["split", *self.inputs, self.out, "--family", self.family, "--crop", self.crop]
        argv += ["--min-seconds", str(self.min_seconds)]
        for flag, value in (
            ("--frames", self.frames),
            ("--fps", self.fps),
            ("--size", self.size),
            ("--max-clips-per-scene", self.max_clips_per_scene),
        ):
            argv += [flag, str(value)] if value is not None else []
        return argv


class CaptionSettings(BaseModel):
    """`python -m core.data caption`: captions from a vision-language model."""

    model_config = ConfigDict(extra="forbid")

    folder: str
    model: str | None = None  # the captioner's default (core/captioner.py)
    prompt: str | None = None
    prefix: str = ""
    frames: int = Field(8, ge=1, le=64)
    overwrite: bool = False
    overwrite_person: bool = False
    batch_size: int = Field(1, ge=1, le=64)
    max_new_tokens: int = Field(200, ge=1, le=1000)

    @field_validator("folder")
    @classmethod
    def _folder_absolute(cls, folder: str) -> str:
        return _absolute_path(folder)

    def to_argv(self) -> list[str]:
        argv = ["caption", self.folder, "--frames", str(self.frames)]
        argv += ["--batch-size", str(self.batch_size), "--max-new-tokens", str(self.max_new_tokens)]
        # flag=value: a prompt that starts with "-" must not read as a flag
        for flag, value in (("--model", self.model), ("--prompt", self.prompt)):
            argv += [f"{flag}={value}"] if value else []
        argv += [f"--prefix={self.prefix.strip()}"] if self.prefix.strip() else []
        argv += ["--overwrite"] if self.overwrite else []
        argv += ["--overwrite-person"] if self.overwrite_person else []
        return argv


PREPARATION_KINDS = ("split", "caption")


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", min_length=1, max_length=120)
    kind: Literal["train", "infer", "push", "split", "caption"] = "train"
    gpu_ids: list[int] = Field(
        default_factory=list, description="GPU indices to run on; empty means the CPU."
    )
    launch: LaunchSettings = Field(default_factory=LaunchSettings)
    train: TrainConfig | None = None
    infer: InferSettings | None = None
    push: PushSettings | None = None
    split: SplitSettings | None = None
    caption: CaptionSettings | None = None

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> JobSpec:
        if getattr(self, self.kind) is None:
            raise ValueError(f"a {self.kind} job needs its '{self.kind}' settings")
        return self

    @property
    def exclusive(self) -> bool:
        """Whether the job holds its GPUs (or the CPU) so that others wait for them: a caption
        job holds its GPUs until its process has exited, so a training job queued behind it
        starts on a GPU whose memory has been given back."""
        if self.kind == "push":
            return False
        return not (self.kind == "infer" and self.infer.allow_busy_gpu)

    @field_validator("gpu_ids")
    @classmethod
    def _distinct_gpus(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(gpu < 0 for gpu in value):
            raise ValueError("GPU ids must be distinct and not negative")
        return sorted(value)

    @field_validator("launch")
    @classmethod
    def _sharding_needs_gpus(cls, launch: LaunchSettings, info: ValidationInfo):
        """FSDP configs cannot run on the CPU (accelerate refuses FSDP without a GPU, or
        silently trains plain data parallel). DeepSpeed can: on its CPU accelerator, over gloo,
        slowly, which is enough to try a ZeRO setup before renting GPUs."""
        on_cpu = not info.data.get("gpu_ids", [0])
        if on_cpu and launch.config_file and distributed_type(launch.config_file) == "FSDP":
            raise ValueError(
                f"--config_file: {Path(launch.config_file).name} shards the model over GPUs "
                "(FSDP), which does not run on the CPU; select GPUs, or choose a DeepSpeed "
                "config or none"
            )
        return launch

    @property
    def deepspeed(self) -> bool:
        return bool(self.launch.config_file) and (
            distributed_type(self.launch.config_file) == "DEEPSPEED"
        )

    @property
    def processes(self) -> int:
        return self.launch.num_processes or max(1, len(self.gpu_ids))

    @property
    def single_cpu_process(self) -> bool:
        """One trainer process on this machine's CPU, no accelerate config: it runs as a plain
        Python module with the environment `accelerate launch --cpu` would give it. The launcher
        would be one more interpreter importing torch, seconds before the first step."""
        return (
            self.kind == "train"
            and not self.gpu_ids
            and self.processes == 1
            and self.launch.num_machines == 1
            and not self.launch.config_file
        )

    def launch_env(self) -> dict[str, str]:
        """Environment the launch needs: CPU runs tell accelerate to use gloo on the CPU.

        Not under DeepSpeed: that flag would make accelerate drop DeepSpeed for plain data
        parallel; the trainer names gloo for DeepSpeed's ranks itself.
        """
        if self.single_cpu_process:
            return single_cpu_process_env(self.launch.mixed_precision)
        return {} if self.gpu_ids or self.deepspeed else {"ACCELERATE_USE_CPU": "1"}

    def _torchrun_argv(self) -> list[str]:
        """Several processes on the CPU (on one machine or more): `accelerate launch --cpu`
        would start only one, so torchrun starts them (and accelerate, told to use the CPU, joins
        them over gloo)."""
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
        """`accelerate launch` and its flags, up to the module it runs (the interpreter alone
        for a single CPU process)."""
        if self.single_cpu_process:
            return [sys.executable]
        launch = self.launch
        cpu_ranks = self.processes > 1 or launch.num_machines > 1
        if not self.gpu_ids and cpu_ranks and not self.deepspeed:
            return self._torchrun_argv()
        argv = [accelerate_executable(), "launch"]
        if launch.config_file:
            argv += ["--config_file", launch.config_file]
        argv += [
            "--num_processes",  # accelerate counts every machine's processes
            str(self.processes * launch.num_machines),
            "--num_machines",
            str(launch.num_machines),
            "--dynamo_backend",
            "no",
        ]
        if launch.mixed_precision or not launch.config_file:
            argv += ["--mixed_precision", launch.mixed_precision or "no"]
        if self.gpu_ids:
            argv += ["--gpu_ids", ",".join(map(str, self.gpu_ids))]
        elif not self.deepspeed:  # --cpu would drop DeepSpeed; it finds the CPU itself
            argv += ["--cpu", "--num_cpu_threads_per_process", str(os.cpu_count() or 1)]
        if self.processes > 1 and not launch.config_file:
            argv += ["--multi_gpu"]
        if launch.num_machines > 1:
            argv += ["--machine_rank", str(launch.machine_rank)]
            if launch.main_process_ip:
                argv += ["--main_process_ip", launch.main_process_ip]
            if launch.main_process_port:
                argv += ["--main_process_port", str(launch.main_process_port)]
            if self.deepspeed:
                # Each machine starts its own ranks (the node commands), not pdsh over ssh.
                argv += ["--deepspeed_multinode_launcher", "standard"]
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
        if self.kind in PREPARATION_KINDS:
            settings = getattr(self, self.kind)
            events = ["--events", str(folder / "events.jsonl")]
            return [sys.executable, "-m", "core.data", *settings.to_argv(), *events]
        if spec_path is not None:
            return [*self.launch_argv(), "-m", "core.train", "--config", str(spec_path)]
        return [*self.launch_argv(), "-m", "core.train", *to_argv(self.train)]

    def show_command(self, spec_path: str | Path | None = None) -> str:
        argv = self.to_argv(spec_path)
        argv[0] = Path(argv[0]).name if self.kind == "train" else "python"
        if self.kind == "train" and self.single_cpu_process:
            argv = ["ACCELERATE_USE_CPU=true", "python", *argv[1:]]  # as the runner starts it
        return shlex.join(argv)

    def node_commands(self) -> list[str]:
        """The command each machine of a multi-machine run types, rank 0 first: the same
        launch with that machine's rank, the trainer's settings spelled out as flags (the other
        machines have no spec.json; the model, data and config paths must exist on each)."""
        commands = []
        for rank in range(self.launch.num_machines):
            launch = self.launch.model_copy(update={"machine_rank": rank})
            commands.append(self.model_copy(update={"launch": launch}).show_command())
        return commands


def single_cpu_process_env(mixed_precision: str | None = None) -> dict[str, str]:
    """What accelerate's simple launcher sets for one process on the CPU, flag by flag."""
    return {
        "ACCELERATE_USE_CPU": "True",
        "ACCELERATE_MIXED_PRECISION": mixed_precision or "no",
        "ACCELERATE_DYNAMO_BACKEND": "NO",
        "OMP_NUM_THREADS": str(os.cpu_count() or 1),
        "KMP_AFFINITY": "granularity=fine,compact,1,0",
        "KMP_BLOCKTIME": "1",
    }


def make_spec(**fields) -> JobSpec:
    """A validated JobSpec, or UserError naming the one setting to fix (`--flag: sentence`)."""
    try:
        return JobSpec.model_validate(fields)
    except ValidationError as error:
        raise UserError(describe_spec_error(error)) from None


def describe_spec_error(error: ValidationError) -> str:
    """The first problem as one sentence: a trainer or launch setting is named by its flag, any
    other part of the spec by its key."""
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if not isinstance(part, int)]
    kind = first.get("type")
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if kind == "json_invalid":
        return f"not valid JSON ({message.removeprefix('Invalid JSON: ')})"
    if not location:  # the spec as a whole, or its own checks (which name what to fix)
        if kind == "model_type":
            return f"a job spec must be a JSON object with {_keys(JobSpec)}"
        return message
    section = location[0]
    if section == "train":
        return describe_validation_error(error)
    if kind == "extra_forbidden":
        if len(location) == 1:
            return f"{section!r} is not part of a job spec, which holds {_keys(JobSpec)}"
        if section == "launch":
            return f"--{location[-1]} is not a launch setting; they are {_keys(LaunchSettings)}"
        return f"{'.'.join(location)!r} is not a setting of a {section} job"
    value = first.get("input")
    got = f" (got {value!r})" if value is not None and str(value) not in message else ""
    if section == "launch" and len(location) > 1:
        return f"--{location[-1]}: {message}{got}"
    if section == "launch":  # the spec's own check of its launch names the flag itself
        return message
    return f"{'.'.join(location)!r} in the spec: {message}{got}"


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _venv_executable(name: str) -> str:
    """A console script of this environment (the venv's, when the app runs from one)."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    return shutil.which(name) or name


def accelerate_executable() -> str:
    return _venv_executable("accelerate")
