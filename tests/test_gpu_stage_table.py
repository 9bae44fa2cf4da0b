"""`bench/gpu_stage_table.py` runs end to end at tiny scale on the CPU (correctness only)."""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_stage_table.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_stage_table", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_flops_of_a_5b_step_at_the_reference_shape(bench):
    from core.models.cogvideox_spec import FamilyRules

    # The 5B transformer at 49x480x720: 17,550 video tokens + 226 text tokens, 42 blocks of 3072.
    config = {
        "patch_size": 2,
        "patch_size_t": None,
        "max_text_seq_length": 226,
        "num_attention_heads": 48,
        "attention_head_dim": 64,
        "num_layers": 42,
    }
    tokens, dim = 17_550 + 226, 3072
    expected = 42 * (24 * tokens * dim**2 + 4 * tokens**2 * dim)
    rules = FamilyRules(
        temporal_compression=4,
        spatial_compression=8,
        patch_size=2,
        patch_size_t=None,
        scaling_factor=0.7,
        rotary=True,
    )
    video_tokens = rules.video_tokens(49, 480, 720)
    assert video_tokens == 17_550
    assert bench.forward_flops(config, video_tokens) == expected
    assert 0.9e15 < 3 * expected < 1.3e15  # the "about 1.2e15 FLOPs a step"
    # The 1.5 family's temporal patch of 2 halves the frames (13 latent frames pad to 14).
    one_five = replace(rules, patch_size_t=2).video_tokens(49, 480, 720)
    assert one_five == 7 * 30 * 45
    assert bench.forward_flops(config, one_five) < expected


def test_unknown_option_is_one_sentence(bench):
    with pytest.raises(SystemExit, match="unknown option 'turbo'"):
        bench.option_flags("turbo")
    assert bench.option_flags("attention=cudnn") == ["--attention_backend", "cudnn"]
    start = bench.launcher("launch=deepspeed_zero2_offload", 2)
    assert start[1:3] == ["launch", "--config_file"] and start[3].endswith("_offload.yaml")
    assert start[start.index("--num_processes") + 1] == "2"
    with pytest.raises(SystemExit, match=r"no accelerate config zero9\.yaml"):
        bench.launcher("launch=zero9", 1)


def test_tiny_cpu_run_prints_both_tables(bench, tmp_path, capsys):
    code = bench.main(
        [
            "--device",
            "cpu",
            "--scale",
            "tiny",
            "--training",
            "lora",
            "full",
            "--options",
            "fp8",  # LoRA only: the full finetune runs its baseline alone
            "--steps",
            "3",
            "--warmup",
            "1",
            "--workdir",
            str(tmp_path),
        ]
    )
    output = capsys.readouterr().out
    assert code == 0, output
    for training, runs in (("lora", ["baseline", "fp8"]), ("full-finetune", ["baseline"])):
        section = output.split(f"## 5b {training}:")[1].split("## ")[0]
        assert "| after precomputing latents |" in section
        assert "| before validation start |" in section and "| after validation end |" in section
        for run in runs:
            row = re.search(rf"^\| {run} \| ([0-9.]+) \|.*\| ok \|$", section, re.MULTILINE)
            assert row and float(row.group(1)) > 0, section
    assert re.fullmatch(r"step_seconds_5b_lora: [0-9.]+", output.strip().splitlines()[-1])


def test_full_size_architectures_match_the_reference_counts(bench):
    """Built on the meta device (no memory): the parameter counts the guide's runs printed."""
    import torch
    from diffusers import CogVideoXTransformer3DModel
    from peft import LoraConfig

    def counts(family):
        with torch.device("meta"):
            transformer = CogVideoXTransformer3DModel(**bench.full_size_transformer_config(family))
        total = sum(p.numel() for p in transformer.parameters())
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        transformer.add_adapter(LoraConfig(r=128, lora_alpha=128, target_modules=targets))
        lora = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n)
        return total, lora

    # The guide's "trainable parameters" for the 5B full finetune and its rank-128 LoRA.
    assert counts("5b") == (5_570_283_072, 132_120_576)
    assert counts("2b")[0] == 1_693_783_872  # CogVideoX-2b's 1.69B
    assert counts("1.5")[1] == 132_120_576


def test_full_size_checkpoints_share_one_text_encoder_and_load(bench, tmp_path, monkeypatch):
    """The full-size assembly, with every component shrunk so it runs here in seconds."""
    from diffusers import CogVideoXPipeline

    from core.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline("5b")
    transformer = {
        key: value
        for key, value in tiny.transformer.config.items()
        if not key.startswith("_") and key != "patch_size_t"
    }
    monkeypatch.setattr(bench, "full_size_transformer_config", lambda family: transformer)
    encoder = tiny.text_encoder.config
    monkeypatch.setattr(
        bench,
        "T5_XXL",
        {key: getattr(encoder, key) for key in ("vocab_size", "d_model", "d_kv", "d_ff")}
        | {"num_layers": 1, "num_heads": 2, "decoder_start_token_id": 0, "pad_token_id": 0},
    )
    vae = tiny.vae.config
    vae_keys = ["down_block_types", "up_block_types", "block_out_channels", "latent_channels"]
    vae_keys += ["layers_per_block", "norm_num_groups"]
    monkeypatch.setattr(bench, "VAE_FULL_SIZE", {key: vae[key] for key in vae_keys})
    folders = [bench.model_for(family, "full", "cpu", tmp_path) for family in ("2b", "5b")]
    shared = tmp_path / "random-t5-xxl"
    for folder in folders:
        assert (folder / "text_encoder").resolve() == shared.resolve()
        pipeline = CogVideoXPipeline.from_pretrained(folder)
        assert next(pipeline.transformer.parameters()).dtype.is_floating_point
    assert CogVideoXPipeline.from_pretrained(folders[0]).vae.config.scaling_factor == 1.15258426
    assert not list(tmp_path.glob("*.partial"))
