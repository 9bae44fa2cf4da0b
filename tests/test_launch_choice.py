"""The accelerate config the app recommends, and the memory table behind it (torch-free)."""

from __future__ import annotations

import json

import pytest

from jobs.launch_choice import (
    ACCELERATE_DIR,
    AUTOMATIC,
    BACKENDS,
    FAMILIES,
    MEMORY,
    PREDICTED,
    TRAINING_TYPES,
    config_choices,
    config_path,
    describe_config,
    model_kind,
    need,
    recommend,
)


def test_no_gpu_means_no_config_file():
    advice = recommend(0, None, "5b", "lora")
    assert advice.backend is None and advice.config_file is None
    assert "CPU" in advice.reason and advice.needs() == {}


@pytest.mark.parametrize("memory", [None, 24.0, 80.0])
def test_a_lora_on_one_gpu_takes_the_single_gpu_config(memory):
    advice = recommend(1, memory, "5b", "lora")
    assert advice.backend == "single_gpu"
    assert advice.config_file == ACCELERATE_DIR / "single_gpu.yaml"


def test_a_full_finetune_on_one_gpu_offloads_only_when_it_does_not_fit():
    single = need("5b", "full-finetune", "single_gpu").peak_gb(1)
    assert recommend(1, 80.0, "5b", "full-finetune").backend == "single_gpu"
    assert recommend(1, None, "5b", "full-finetune").backend == "single_gpu"  # unknown: assume
    small = recommend(1, single - 1, "5b", "full-finetune", deepspeed=False)
    assert small.backend == "deepspeed_zero2_offload"
    assert f"{single:.0f} GB" in small.reason and "DeepSpeed" in small.reason


@pytest.mark.parametrize("gpus, machines", [(2, 1), (8, 1), (1, 2)])
def test_a_lora_on_several_gpus_is_data_parallel(gpus, machines):
    advice = recommend(gpus, 80.0, "2b", "lora", machines=machines)
    assert advice.backend == "ddp" and advice.processes == gpus * machines


def test_a_full_finetune_on_several_gpus_shards_as_little_as_fits():
    zero2 = need("5b", "full-finetune", "deepspeed_zero2").peak_gb(2)
    zero3 = need("5b", "full-finetune", "deepspeed_zero3").peak_gb(2)
    assert zero3 < zero2
    assert recommend(2, 80.0, "5b", "full-finetune", deepspeed=True).backend == "deepspeed_zero2"
    assert recommend(2, None, "5b", "full-finetune", deepspeed=True).backend == "deepspeed_zero2"
    tight = recommend(2, zero2 - 1, "5b", "full-finetune", deepspeed=True)
    assert tight.backend == "deepspeed_zero3" and "ZeRO-2 would need" in tight.reason
    assert "add GPUs" not in tight.reason  # ZeRO-3 fits where ZeRO-2 does not
    assert "add GPUs" in recommend(2, zero3 - 1, "5b", "full-finetune", deepspeed=True).reason
    without = recommend(2, 80.0, "5b", "full-finetune", deepspeed=False)
    assert without.backend == "fsdp" and "DeepSpeed is not installed" in without.reason


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("training_type", TRAINING_TYPES)
def test_every_family_and_training_type_has_a_figure_under_every_backend(family, training_type):
    for backend in BACKENDS:
        figure = MEMORY[(family, training_type, backend)]
        assert figure.basis in ("measured", "predicted", "estimate") and figure.how
        assert 1 < figure.training_gb(1) <= figure.peak_gb(1) < 200, (backend, figure)
        assert figure.training_gb(8) <= figure.training_gb(2) <= figure.training_gb(1)
    assert set(recommend(2, None, family, training_type).needs()) == set(FAMILIES)


def test_one_gpu_figures_are_predicted_and_the_sharded_ones_estimated_from_them():
    """One GPU's figures come from bench/memory_model.py (assets/memory/predicted.json), with
    the CUDA context added; no GPU has measured them yet."""
    data = json.loads(PREDICTED.read_text())
    for (family, training_type, backend), figure in MEMORY.items():
        if backend != "single_gpu":
            assert figure.basis == "estimate", (family, training_type, backend)
            continue
        entry = data["launch"][f"{family}/{training_type}"]
        assert figure.basis == "predicted" and "predicted" in figure.source()
        assert figure.training_gb(1) == pytest.approx(
            entry["training_reserved_gb"] + data["cuda_context_gb"]
        )
        assert figure.peak_gb(1) >= entry["validation_reserved_gb"] + data["cuda_context_gb"]


def test_the_estimates_shard_what_each_backend_shards():
    for family in FAMILIES:
        full = {backend: need(family, "full-finetune", backend) for backend in BACKENDS}
        assert full["deepspeed_zero2_offload"].cpu_ram_gb > 0
        assert full["deepspeed_zero3"].sharded_gb > full["deepspeed_zero2"].sharded_gb
        assert full["deepspeed_zero3"].per_gpu_gb < full["deepspeed_zero2"].per_gpu_gb
        assert full["ddp"].sharded_gb == 0 and full["single_gpu"].sharded_gb == 0
        # The 5b's unsharded full finetune needs an 80 GB card; eight GPUs with ZeRO-3 don't.
    assert need("5b", "full-finetune", "deepspeed_zero3").training_gb(8) < 40
    assert need("2b", "lora", "single_gpu").peak_gb(1) < need("5b", "lora", "single_gpu").peak_gb(1)
    assert need("1.5", "lora", "single_gpu").peak_gb(1) > need("5b", "lora", "single_gpu").peak_gb(
        1
    )


@pytest.mark.parametrize(
    "name, family",
    [
        ("THUDM/CogVideoX-2b", "2b"),
        ("THUDM/CogVideoX-5b", "5b"),
        ("THUDM/CogVideoX-5b-I2V", "5b"),
        ("THUDM/CogVideoX1.5-5B", "1.5"),
        ("someone/another-model", None),
        ("", None),
    ],
)
def test_a_hub_id_names_its_family(name, family):
    assert model_kind(name).family == family and not model_kind(name).tiny


def test_a_local_folder_is_recognised_by_its_transformer_config(tmp_path):
    """The same rules as the tiny checkpoints of core/tiny.py: 2b sincos, 5b rotary, 1.5
    rotary with a temporal patch; real widths are not tiny."""
    configs = {
        "2b": {"num_attention_heads": 30, "attention_head_dim": 64},
        "5b": {
            "num_attention_heads": 48,
            "attention_head_dim": 64,
            "use_rotary_positional_embeddings": True,
        },
        "1.5": {
            "num_attention_heads": 2,
            "attention_head_dim": 16,
            "use_rotary_positional_embeddings": True,
            "patch_size_t": 2,
        },
        # Image-to-video: the image's latents double the input channels; sized as its sibling.
        "5b-i2v": {
            "num_attention_heads": 48,
            "attention_head_dim": 64,
            "use_rotary_positional_embeddings": True,
            "in_channels": 32,
            "out_channels": 16,
        },
    }
    for name, config in configs.items():
        (tmp_path / name / "transformer").mkdir(parents=True)
        (tmp_path / name / "transformer" / "config.json").write_text(json.dumps(config))
        kind = model_kind(str(tmp_path / name))
        assert kind.family == name.removesuffix("-i2v")
        assert kind.tiny == (name == "1.5")
    assert model_kind(str(tmp_path)).family is None  # a folder that is no model
    # A folder not there yet (the demo's tiny model before its first build): no family, and
    # no look-up in the Hub cache under a name that is no Hub id (that raised on Start).
    assert model_kind(str(tmp_path / "models" / "tiny-cogvideox-5b")).family is None


def test_the_tiny_checkpoints_are_recognised(tiny_models):
    for family, path in tiny_models.items():
        assert model_kind(str(path)).family == family
        assert model_kind(str(path)).tiny


def test_the_dropdown_offers_automatic_then_every_config_with_what_it_is():
    choices = config_choices()
    assert choices[0] == ("Automatic (recommended)", AUTOMATIC)
    stems = [value for _, value in choices[1:]]
    assert sorted(stems) == sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml"))
    assert set(BACKENDS) <= set(stems)
    for text, stem in choices[1:]:
        assert text == f"{stem}: {describe_config(config_path(stem))}"
    assert describe_config(config_path("single_gpu")) == "One GPU, one process."
