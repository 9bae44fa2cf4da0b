"""The accelerate configs the app offers parse, and say when to choose them; a launch on several
machines gives each machine its command."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from core.errors import UserError
from jobs.launch_choice import config_path
from jobs.spec import JobSpec, LaunchSettings, make_spec

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "assets" / "accelerate").glob("*.yaml"))

# Why the sharded backends cannot be tried on a machine without CUDA GPUs, as found with
# accelerate 1.15 and torch 2.13 on the CPU (two processes, gloo):
# - `accelerate launch --config_file fsdp.yaml --num_processes 2` starts both ranks, and each
#   fails building the FSDP plugin (fsdp_sync_module_states, forced on by
#   fsdp_cpu_ram_efficient_loading, needs an accelerator device);
# - `torchrun --nproc_per_node 2` with ACCELERATE_USE_CPU=1 and ACCELERATE_USE_FSDP=true gives
#   DistributedType.MULTI_CPU: accelerate only turns FSDP on for GPU-like devices, so the run
#   would train as plain data parallel, not sharded (and without ACCELERATE_USE_CPU each rank
#   trains alone, DistributedType.NO). The job spec therefore refuses these configs on the CPU.
FSDP_ON_CPU = (
    'accelerate cannot shard with FSDP on the CPU: each rank raises "RuntimeError: There are '
    "currently no available devices found, must be one of 'XPU', 'CUDA', 'MLU', 'NPU', 'MUSA', "
    "or 'HPU'.\" building FullyShardedDataParallelPlugin, and under torchrun with "
    "ACCELERATE_USE_CPU=1 accelerate picks MULTI_CPU and ignores ACCELERATE_USE_FSDP"
)
DEEPSPEED_MISSING = (
    'accelerate launch says "ImportError: DeepSpeed is not installed => run `pip3 install '
    'deepspeed` or build it from source." (install requirements-gpu.txt on a CUDA machine)'
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_config_parses_and_explains_itself(path):
    config = load_config_from_file(str(path))
    assert config.num_machines == 1 and config.num_processes >= 1
    assert path.read_text().startswith("# "), "the first line says when to choose it"
    spec = JobSpec(gpu_ids=[0, 1], train={}, launch=LaunchSettings(config_file=str(path)))
    argv = spec.to_argv("spec.json")
    assert argv[argv.index("--config_file") + 1] == str(path)
    # The config's own mixed precision holds (DeepSpeed/FSDP keep fp32 masters under bf16).
    assert "--mixed_precision" not in argv
    assert "--num_processes" in argv and argv[argv.index("--num_processes") + 1] == "2"


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if "deepspeed" in p.stem or "fsdp" in p.stem], ids=lambda p: p.stem
)
def test_sharded_backends_train_a_full_finetune_on_two_gpus(
    path, tiny_models, reference_dataset, tmp_path
):
    deepspeed = "deepspeed" in path.stem
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        pytest.skip(DEEPSPEED_MISSING)
    if torch.cuda.device_count() < 2:
        why = (
            "the CPU runs of ZeRO-2/3 are in tests/test_multiprocess.py"
            if deepspeed
            else FSDP_ON_CPU
        )
        pytest.skip(f"{path.stem} needs two CUDA GPUs (found {torch.cuda.device_count()}): {why}")
    from jobs.runner import Runner

    runner = Runner(tmp_path / "workspace")
    job = runner.submit(
        JobSpec(
            name=path.stem,
            gpu_ids=[0, 1],
            launch=LaunchSettings(config_file=str(path)),
            train={
                "pretrained_model_name_or_path": str(tiny_models["5b"]),
                "data_root": str(reference_dataset),
                "video_resolution_buckets": ["9x32x32"],
                "training_type": "full-finetune",
                "train_steps": 2,
                "checkpointing_steps": 1,
                "precompute_conditions": True,
            },
        )
    )
    job = runner.wait(job.id, timeout=600)
    assert job.status == "succeeded", job.reason


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_fsdp_is_refused_on_the_cpu_and_the_others_are_not(path):
    if "fsdp" not in path.stem:
        spec = make_spec(train={}, launch={"config_file": str(path), "num_processes": 2})
        if "deepspeed" in path.stem:  # DeepSpeed finds the CPU itself; these flags would drop it
            argv = spec.to_argv("spec.json")
            assert argv[1] == "launch" and "--cpu" not in argv
            assert "ACCELERATE_USE_CPU" not in spec.launch_env()
        return
    with pytest.raises(UserError, match=r"^--config_file: .* does not run on the CPU"):
        make_spec(train={}, launch={"config_file": str(path)})


def test_each_machine_gets_its_command_with_its_rank():
    spec = make_spec(
        gpu_ids=[0, 1],
        train={"train_steps": 7},
        launch={
            "config_file": str(config_path("ddp")),
            "num_machines": 3,
            "machine_rank": 1,
            "main_process_ip": "10.0.0.5",
            "main_process_port": 29555,
        },
    )
    commands = spec.node_commands()
    assert len(commands) == 3
    for rank, command in enumerate(commands):
        argv = shlex.split(command)
        assert argv[:2] == ["accelerate", "launch"]
        assert argv[argv.index("--machine_rank") + 1] == str(rank)
        assert argv[argv.index("--main_process_ip") + 1] == "10.0.0.5"
        assert argv[argv.index("--main_process_port") + 1] == "29555"
        # accelerate's --num_processes counts every machine's: 3 machines x 2 GPUs.
        assert argv[argv.index("--num_processes") + 1] == "6"
        assert argv[argv.index("--num_machines") + 1] == "3"
        assert argv[-2:] == ["--train_steps", "7"]  # the trainer's flags, no spec.json
    # Only the rank differs; this machine's own command is the one of its rank.
    assert commands[0].replace("--machine_rank 0", "--machine_rank 1") == commands[1]
    assert commands[1] == spec.show_command()


def test_deepspeed_on_several_machines_starts_each_machine_itself():
    launch = {"num_machines": 2, "main_process_ip": "node0"}
    deepspeed = make_spec(
        gpu_ids=[0], train={}, launch={**launch, "config_file": str(config_path("deepspeed_zero3"))}
    )
    assert "--deepspeed_multinode_launcher standard" in deepspeed.node_commands()[1]
    ddp = make_spec(gpu_ids=[0], train={}, launch={**launch, "config_file": None})
    assert "deepspeed_multinode_launcher" not in ddp.node_commands()[1]


def test_cpu_machines_are_joined_by_torchrun():
    spec = make_spec(train={}, launch={"num_machines": 2, "main_process_ip": "10.0.0.5"})
    for rank, command in enumerate(spec.node_commands()):
        argv = shlex.split(command)
        assert argv[0] == "torchrun"
        assert argv[argv.index("--nnodes") + 1] == "2"
        assert argv[argv.index("--node_rank") + 1] == str(rank)
        assert argv[argv.index("--master_addr") + 1] == "10.0.0.5"
        assert argv[argv.index("--master_port") + 1] == "29500"
    assert len(make_spec(train={}).node_commands()) == 1


@pytest.mark.parametrize(
    "launch, flag, words",
    [
        ({"num_machines": 2, "machine_rank": 2, "main_process_ip": "a"}, "machine_rank", "0 to 1"),
        ({"machine_rank": 1}, "machine_rank", "below the number of machines (1)"),
        ({"num_machines": 2}, "main_process_ip", "address of the rank-0 machine"),
        ({"num_machines": 2, "main_process_ip": "  "}, "main_process_ip", "rank-0 machine"),
        ({"main_process_port": 70000}, "main_process_port", "65535"),
        ({"num_machines": 0}, "num_machines", "greater than or equal to 1"),
    ],
)
def test_a_bad_launch_setting_is_one_sentence_naming_its_flag(launch, flag, words):
    with pytest.raises(UserError) as raised:
        make_spec(gpu_ids=[0], train={}, launch=launch)
    message = str(raised.value)
    assert message.startswith(f"--{flag}: ") and words in message
    assert "\n" not in message


def test_without_a_config_file_accelerate_adds_no_autocast():
    argv = JobSpec(gpu_ids=[0], train={}).to_argv("spec.json")
    assert argv[argv.index("--mixed_precision") + 1] == "no"
    explicit = JobSpec(
        gpu_ids=[0, 1],
        train={},
        launch=LaunchSettings(config_file=str(CONFIGS[0]), mixed_precision="fp16"),
    ).to_argv("spec.json")
    assert explicit[explicit.index("--mixed_precision") + 1] == "fp16"


def test_fsdp_launches_on_the_cpu_until_accelerate_asks_for_a_gpu(
    tiny_models, reference_dataset, subprocess_env, tmp_path
):
    """The FSDP config really launched here: two ranks start, and both stop where accelerate
    builds its FSDP plugin and finds no GPU; the trainer reports that as the run's failure."""
    import subprocess

    from core.events import read_events
    from jobs.spec import accelerate_executable

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine trains with FSDP in the two-GPU test instead")
    out = tmp_path / "out"
    completed = subprocess.run(
        [
            accelerate_executable(),
            "launch",
            "--config_file",
            str(config_path("fsdp")),
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--dynamo_backend",
            "no",
            "-m",
            "core.train",
            "--pretrained_model_name_or_path",
            str(tiny_models["5b"]),
            "--data_root",
            str(reference_dataset),
            "--video_resolution_buckets",
            "9x32x32",
            "--training_type",
            "full-finetune",
            "--train_steps",
            "1",
            "--output_dir",
            str(out),
        ],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0
    assert completed.stderr.count("no available devices found") >= 2  # both ranks got there
    failed = [e for e in read_events(out / "events.jsonl") if e.kind == "failed"]
    assert len(failed) == 1 and "no available devices found" in failed[0].message
