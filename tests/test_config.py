"""The trainer's command line is derived from TrainConfig and speaks the reference's flags."""

from __future__ import annotations

import json
import shlex

import pytest

from core.config import TrainConfig, build_parser, make_config, parse_args, to_argv
from core.errors import UserError

REFERENCE_FLAGS = """
--model_name cogvideox --pretrained_model_name_or_path THUDM/CogVideoX-5b
--data_root /data --video_column videos.txt --caption_column prompt.txt --id_token BW_STYLE
--video_resolution_buckets 49x480x720 --caption_dropout_p 0.05
--dataloader_num_workers 4
--training_type lora --seed 42 --batch_size 1 --precompute_conditions --train_steps 1000
--rank 128 --lora_alpha 128 --target_modules to_q to_k to_v to_out.0
--gradient_accumulation_steps 1 --gradient_checkpointing --checkpointing_steps 200
--checkpointing_limit 2 --resume_from_checkpoint=latest --enable_slicing --enable_tiling
--optimizer adamw --use_8bit_bnb --lr 3e-5 --lr_scheduler constant_with_warmup
--lr_warmup_steps 100 --lr_num_cycles 1 --beta1 0.9 --beta2 0.95 --weight_decay 1e-4
--epsilon 1e-8 --max_grad_norm 1.0
--tracker_name finetrainers-cog --output_dir /out --nccl_timeout 1800 --report_to wandb
"""


def test_reference_flags_parse_to_their_meanings():
    config = parse_args(shlex.split(REFERENCE_FLAGS))
    assert config.pretrained_model_name_or_path == "THUDM/CogVideoX-5b"
    assert config.buckets == [(49, 480, 720)]
    assert config.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    assert config.precompute_conditions and config.gradient_checkpointing and config.use_8bit_bnb
    assert config.resume_from_checkpoint == "latest"
    assert (config.rank, config.lora_alpha, config.lr) == (128, 128.0, 3e-5)
    assert (config.report_to, config.nccl_timeout, config.checkpointing_limit) == ("wandb", 1800, 2)


def test_validation_prompts_split_on_the_separator():
    config = parse_args(["--validation_prompts", "a cat:::a dog ::: a bird"])
    assert config.validation_prompts == ["a cat", "a dog", "a bird"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--video_resolution_buckets", "49x480"], "--video_resolution_buckets"),
        (["--video_resolution_buckets", "51x480x720"], "the nearest are 49 or 53"),
        (["--video_resolution_buckets", "49x470x720"], "the nearest are 464"),
        (["--lr", "-1e-4"], "--lr"),
        (["--rank", "0"], "--rank"),
        (["--training_type", "dora"], "--training_type"),
        (["--caption_dropout_p", "1.5"], "--caption_dropout_p"),
        (["--no_such_flag", "1"], "--no_such_flag"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_flag(argv, named):
    with pytest.raises(UserError) as raised:
        parse_args(argv)
    message = str(raised.value)
    assert named in message
    assert "\n" not in message


def test_show_command_flags_round_trip():
    config = parse_args([*shlex.split(REFERENCE_FLAGS), "--validation_prompts", "a:::b"])
    assert parse_args(to_argv(config)) == config


def test_config_file_reads_a_job_spec_and_flags_win(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "run", "train": {"rank": 8, "lr": 0.001}}))
    config = parse_args(["--config", str(spec), "--lr", "0.002"])
    assert (config.rank, config.lr) == (8, 0.002)


def test_every_field_has_a_flag_with_help_and_a_group():
    parser = build_parser()
    flags = {action.dest: action for action in parser._actions}
    for name, info in TrainConfig.model_fields.items():
        assert name in flags
        assert info.description, name
        assert (info.json_schema_extra or {}).get("group"), name


@pytest.mark.parametrize(
    ("settings", "flag", "sentence"),
    [
        (
            {"training_type": "full-finetune", "layerwise_upcasting_modules": ["transformer"]},
            "layerwise_upcasting_modules",
            "fp8 storage works with --training_type lora only",
        ),
        ({"offload_activations": True}, "offload_activations", "add --gradient_checkpointing"),
        (
            {"use_8bit_bnb": True, "optimizer_implementation": "fused"},
            "optimizer_implementation",
            "leave it at auto",
        ),
    ],
    ids=["fp8-with-full-finetune", "offload-without-checkpointing", "8bit-with-fused"],
)
def test_settings_that_cannot_work_together_are_refused_by_the_config(settings, flag, sentence):
    """Rules between two settings live in TrainConfig: the CLI, a job spec and the form refuse
    them at once, in one sentence that names the flag the form shows the error beside."""
    from jobs.spec import make_spec
    from ui.form import field_of_error

    with pytest.raises(UserError) as raised:
        make_config(settings)
    message = str(raised.value)
    assert message.startswith(f"--{flag}") and sentence in message and "\n" not in message
    assert field_of_error(raised.value) == flag
    with pytest.raises(UserError) as from_spec:
        make_spec(name="run", train=settings)
    assert str(from_spec.value) == message
