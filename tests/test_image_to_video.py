"""Image-to-video: CogVideoX-5b-I2V and CogVideoX1.5-5B-I2V (tiny) train with the guide's flags,
and their LoRAs load with diffusers' image-to-video pipeline as a model card says."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.events import read_events
from core.train import main as train_main

# The reference guide's flags (tests/data/reference_train.sh), scaled to the CPU the way
# tests/test_reference_script.py scales them: the bucket, 4 steps, warmup 2; no tracker.
GUIDE = """
--model_name cogvideox --id_token BW_STYLE --video_resolution_buckets 9x32x32
--caption_dropout_p 0.05 --dataloader_num_workers 4 --training_type lora --seed 42 --batch_size 1
--precompute_conditions --train_steps 4 --rank 128 --lora_alpha 128
--target_modules to_q to_k to_v to_out.0 --gradient_accumulation_steps 1
--gradient_checkpointing --checkpointing_steps 2 --checkpointing_limit 2
--resume_from_checkpoint=latest --enable_slicing --enable_tiling --optimizer adamw --use_8bit_bnb
--lr 3e-5 --lr_scheduler constant_with_warmup --lr_warmup_steps 2 --lr_num_cycles 1
--beta1 0.9 --beta2 0.95 --weight_decay 1e-4 --epsilon 1e-8 --max_grad_norm 1.0
--nccl_timeout 1800
"""
I2V = ("5b-i2v", "1.5-i2v")


@pytest.fixture(scope="module")
def clips_with_an_image(reference_dataset, tmp_path_factory):
    """The reference clips as name.mp4 + name.txt pairs; clip 01 has its own image beside it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("i2v-data")
    captions = (reference_dataset / "prompt.txt").read_text().splitlines()
    videos = (reference_dataset / "videos.txt").read_text().splitlines()
    for caption, video in zip(captions, videos, strict=True):
        name = root / video.split("/")[-1]
        shutil.copy(reference_dataset / video, name)
        name.with_suffix(".txt").write_text(caption)
    Image.new("RGB", (48, 40), (200, 30, 90)).save(root / "01.png")
    return root


@pytest.fixture(scope="module")
def guide_runs(tiny_i2v_models, clips_with_an_image, tmp_path_factory):
    """One LoRA per image-to-video variant, trained in this process with the guide's flags, and
    a validation video each from the first clip's image."""
    runs = {}
    for variant in I2V:
        out = tmp_path_factory.mktemp(f"guide-{variant}")
        argv = [
            *shlex.split(GUIDE),
            "--pretrained_model_name_or_path",
            str(tiny_i2v_models[variant]),
            "--data_root",
            str(clips_with_an_image),
            "--output_dir",
            str(out),
            "--validation_prompts",
            "BW_STYLE a square",
            "--validation_inference_steps",
            "2",
        ]
        assert train_main(argv) == 0, variant
        runs[variant] = out
    return runs


def _frames(pipe, image):
    import torch

    return pipe(
        image=image,
        prompt="BW_STYLE a square moving",
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames[0]


@pytest.mark.parametrize("variant", I2V)
def test_lora_loads_with_the_image_to_video_pipeline_and_changes_the_frames(
    variant, guide_runs, tiny_i2v_models
):
    """The model card's snippet: from_pretrained(base), load_lora_weights, set_adapters 0.75;
    the same image and seed give other frames with the LoRA, and the base's exactly at 0."""
    import torch
    from diffusers import CogVideoXImageToVideoPipeline
    from PIL import Image

    image = Image.new("RGB", (32, 32), (30, 160, 60))
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(
        tiny_i2v_models[variant], torch_dtype=torch.float32
    )
    base = _frames(pipe, image)
    pipe.load_lora_weights(guide_runs[variant], adapter_name="cogvideox-lora")
    pipe.set_adapters(["cogvideox-lora"], [0.75])
    with_lora = _frames(pipe, image)
    pipe.set_adapters(["cogvideox-lora"], [0.0])
    at_zero = _frames(pipe, image)
    assert np.abs(with_lora - base).mean() > 1e-4
    assert np.array_equal(at_zero, base)


@pytest.mark.parametrize("variant", I2V)
def test_the_run_reports_each_clips_image_and_validates_from_one(variant, guide_runs):
    from core.data.video import probe

    out = guide_runs[variant]
    events = read_events(out / "events.jsonl")
    dataset = next(e for e in events if e.kind == "dataset")
    assert dataset.images == {
        "00.mp4": "first frame",
        "01.mp4": "01.png",
        "02.mp4": "first frame",
        "03.mp4": "first frame",
    }
    assert dataset.samples == 4  # 01.png is clip 01's image, not a sample of its own
    validation = [e for e in events if e.kind == "validation"][-1]
    video = out / validation.files[0]
    info = probe(video)
    assert (info.frames, info.height, info.width) == (9, 32, 32)
    # The image the video started from (the first training sample's) is saved beside it.
    assert video.with_suffix(".png").is_file()


def test_a_second_precomputed_run_loads_neither_encoder(
    guide_runs, tiny_i2v_models, clips_with_an_image, tmp_path, monkeypatch
):
    """The cache holds each clip's image latents too (its noise drawn once, at precompute), so
    a run on the same data and model trains without the VAE or the text encoder."""
    from core.models.cogvideox import CogVideoX

    loads = []

    def counting(name, original):
        def wrapper(*args, **kwargs):
            loads.append(name)
            return original(*args, **kwargs)

        return wrapper

    for name in ("load_vae", "load_text_encoder"):
        monkeypatch.setattr(CogVideoX, name, counting(name, getattr(CogVideoX, name)))
    argv = [
        *shlex.split(GUIDE.replace("--train_steps 4", "--train_steps 1")),
        "--pretrained_model_name_or_path",
        str(tiny_i2v_models["1.5-i2v"]),
        "--data_root",
        str(clips_with_an_image),
        "--output_dir",
        str(tmp_path / "again"),
    ]
    assert train_main(argv) == 0
    assert loads == []


def test_the_5b_i2v_refuses_another_shape_in_one_sentence(
    tiny_i2v_models, clips_with_an_image, tmp_path, capsys
):
    code = train_main(
        [
            "--pretrained_model_name_or_path",
            str(tiny_i2v_models["5b-i2v"]),
            "--data_root",
            str(clips_with_an_image),
            "--video_resolution_buckets",
            "9x32x48",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert errors[0] == (
        "error: --video_resolution_buckets: 9x32x48 is not 9x32x32, the only shape "
        "CogVideoX-5b-I2V's learned positional embeddings know; use 9x32x32, or add "
        "--ignore_learned_positional_embeddings to train without them (the model card and "
        "previews then drop them too)"
    )


@pytest.fixture(scope="module")
def start_image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("start") / "start.png"
    Image.new("RGB", (64, 48), (220, 180, 40)).save(path)
    return path


@pytest.fixture(scope="module")
def without_learned_positions(tiny_i2v_models, clips_with_an_image, start_image, tmp_path_factory):
    """5b-I2V at another shape, its learned positional embeddings dropped, each step encoding
    its clips and images on the spot (no precompute): the image noise is drawn every step. Its
    validation video starts from an image of its own (--validation_images)."""
    out = tmp_path_factory.mktemp("no-learned-positions")
    argv = [
        "--pretrained_model_name_or_path",
        str(tiny_i2v_models["5b-i2v"]),
        "--data_root",
        str(clips_with_an_image),
        "--video_resolution_buckets",
        "9x32x48",
        "--ignore_learned_positional_embeddings",
        "--train_steps",
        "3",
        "--rank",
        "8",
        "--lora_alpha",
        "8",
        "--lr",
        "1e-2",
        "--transformer_dtype",
        "fp32",
        "--seed",
        "1",
        "--validation_prompts",
        "a square",
        "--validation_images",
        str(start_image),
        "--validation_inference_steps",
        "2",
        "--output_dir",
        str(out),
    ]
    assert train_main(argv) == 0
    return out


def test_ignoring_learned_positions_trains_and_validates_at_another_shape(
    without_learned_positions, start_image
):
    from PIL import Image

    events = read_events(without_learned_positions / "events.jsonl")
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3]
    assert all(np.isfinite(e.loss) for e in events if e.kind == "step")
    assert (without_learned_positions / "pytorch_lora_weights.safetensors").is_file()
    video = without_learned_positions / next(e for e in events if e.kind == "validation").files[0]
    # The validation image, covering the 32x48 frame and center-cropped, beside the video.
    with Image.open(video.with_suffix(".png")) as image:
        assert image.size == (48, 32)
        assert np.abs(np.asarray(image, int) - (220, 180, 40)).max() <= 1


def test_a_preview_from_an_image_puts_the_lora_beside_the_base(
    guide_runs, tiny_i2v_models, start_image, tmp_path
):
    from core.data.video import read_frames
    from core.infer import PipelineCache, generate
    from core.preview_protocol import LoraChoice, PreviewRequest

    cache = PipelineCache("cpu")
    request = PreviewRequest(
        base=str(tiny_i2v_models["1.5-i2v"]),
        loras=[LoraChoice(path=str(guide_runs["1.5-i2v"]), scale=0.75)],
        image=str(start_image),
        prompt="BW_STYLE a square",
        frames=9,
        height=32,
        width=32,
        steps=2,
        compare_scales=[4.0],
        dtype="fp32",
    )
    result = generate(request, cache, tmp_path / "grid.mp4")
    frames = read_frames(result.path, [0, 8]).astype(int)
    assert result.panels == ["base", "LoRA x4"] and frames.shape[2] == 64
    assert np.abs(frames[:, :, :32] - frames[:, :, 32:]).mean() > 0.5
    # Without an image, an image-to-video base says what it needs.
    with pytest.raises(Exception, match="makes videos from an image: give one to start from"):
        generate(request.model_copy(update={"image": None}), cache, tmp_path / "none.mp4")


def test_the_card_and_the_preview_drop_learned_positions_as_the_run_did(
    without_learned_positions, guide_runs, tiny_i2v_models, start_image, tmp_path
):
    from core.errors import UserError
    from core.hub import build_model_card, run_files
    from core.infer import PipelineCache, generate
    from core.preview_protocol import LoraChoice, PreviewRequest

    card = build_model_card(without_learned_positions, "someone/i2v")
    assert "\npipeline_tag: image-to-video\n" in card
    assert "from diffusers import CogVideoXImageToVideoPipeline\n" in card
    assert "pipe.transformer.patch_embed.use_learned_positional_embeddings = False\n" in card
    assert 'video = pipe(image=image, prompt="' in card and "load_image(" in card
    # The 5b-I2V run's samples are shown beside the images they started from.
    card = build_model_card(guide_runs["5b-i2v"], "someone/i2v")
    assert "| image | sample |" in card and ".png) | [00-bw-style-a-square-0 (step-4)]" in card
    assert "use_learned_positional_embeddings" not in card
    assert any(p.suffix == ".png" for p in run_files(guide_runs["5b-i2v"]))

    request = PreviewRequest(
        base=str(tiny_i2v_models["5b-i2v"]),
        loras=[LoraChoice(path=str(without_learned_positions))],
        image=str(start_image),
        prompt="a square",
        frames=9,
        height=32,
        width=48,
        steps=2,
        dtype="fp32",
    )
    cache = PipelineCache("cpu")
    with pytest.raises(UserError, match=r"^the preview's size: 9x32x48 is not 9x32x32"):
        generate(request, cache, tmp_path / "refused.mp4")
    dropped = request.model_copy(update={"ignore_learned_positional_embeddings": True})
    assert generate(dropped, cache, tmp_path / "ok.mp4").path.is_file()


# ---- the page: image settings for an image-to-video base, a preview's start image -----------


def test_the_train_tab_shows_image_settings_for_an_image_to_video_base(
    tiny_models, tiny_i2v_models, tmp_path
):
    import gradio as gr

    from ui.studio import Studio
    from ui.train_tab import TrainTab

    tab = TrainTab(Studio(tmp_path / "workspace"))
    with gr.Blocks():
        tab.render()

    def shown(model: str) -> set[str]:
        updates = tab.image_settings(model)
        return {n for n, u in zip(tab.form.image_fields, updates, strict=True) if u["visible"]}

    every = set(tab.form.image_fields)
    assert every == {
        "ignore_learned_positional_embeddings",
        "image_column",
        "noised_image_dropout",
        "validation_images",
    }
    assert not any(tab.form.widgets[name].visible for name in every)  # the default base: T2V
    assert shown(str(tiny_models["5b"])) == set()
    assert shown(str(tiny_i2v_models["5b-i2v"])) == every
    assert shown(str(tiny_i2v_models["1.5-i2v"])) == every - {
        "ignore_learned_positional_embeddings"
    }
    assert shown("THUDM/CogVideoX-5b-I2V") == every  # not downloaded: its name tells


def test_a_preview_starts_from_an_upload_or_a_clip_of_the_runs_dataset(
    clips_with_an_image, tiny_i2v_models, start_image, tmp_path
):
    import json

    from ui.preview_tab import START_IMAGES, PreviewTab
    from ui.studio import Studio

    studio = Studio(tmp_path / "workspace")
    preview = PreviewTab(studio)
    job = studio.runner.store.add("i2v", "train", [])
    Path(job.job_dir).mkdir(parents=True)
    config = {
        "pretrained_model_name_or_path": str(tiny_i2v_models["5b-i2v"]),
        "data_root": str(clips_with_an_image),
        "video_resolution_buckets": ["9x32x48"],
        "ignore_learned_positional_embeddings": True,
    }
    (Path(job.job_dir) / "train_config.json").write_text(json.dumps(config))

    assert preview.image_visibility(str(tiny_i2v_models["5b-i2v"]))["visible"]
    assert not preview.image_visibility("THUDM/CogVideoX-5b")["visible"]
    clips, ignore = preview.run_images(job.id)
    assert clips.choices == [(name, name) for name in ("00.mp4", "01.mp4", "02.mp4", "03.mp4")]
    assert ignore is True  # the run dropped the learned positions: its previews do too
    frame, message = preview.use_first_frame(job.id, "02.mp4")
    assert message == "" and Path(frame).parent == studio.workspace / START_IMAGES
    _, refused = preview.use_first_frame(job.id, "../../escape.mp4")
    assert "is not a clip of the run&#x27;s dataset" in refused  # the message, escaped
    kept = preview._kept_image(str(start_image))  # an upload is copied into the workspace
    assert Path(kept).parent == studio.workspace / START_IMAGES
    assert Path(kept).read_bytes() == start_image.read_bytes()


def test_the_queue_refuses_a_shape_the_5b_i2v_cannot_take_before_a_job_exists(
    tiny_i2v_models, clips_with_an_image, runner
):
    from core.errors import UserError
    from jobs.checks import check_before_queue
    from jobs.spec import JobSpec

    train = {
        "pretrained_model_name_or_path": str(tiny_i2v_models["5b-i2v"]),
        "data_root": str(clips_with_an_image),
        "video_resolution_buckets": ["9x32x48"],
    }
    with pytest.raises(UserError, match=r"^--video_resolution_buckets: 9x32x48 is not 9x32x32"):
        check_before_queue(JobSpec(name="i2v", train=train), runner)
    assert runner.store.list() == []
    allowed = {**train, "ignore_learned_positional_embeddings": True}
    check_before_queue(JobSpec(name="i2v", train=allowed), runner)
