"""The reference guide's training script runs on our trainer with only its entry point changed.

`tests/data/reference_train.sh` is the guide's script verbatim (a test checks it still matches
the guide). Each run edits a copy the way a user of this machine would:
- the paths: `DATA_ROOT`, `OUTPUT_DIR` and the base model point at generated data and a tiny
  checkpoint;
- the entry point: `train.py` becomes `-m core.train`;
- the GPU selection dropped: `--gpu_ids` and the DeepSpeed config (DeepSpeed needs CUDA) go;
- CPU scale: the 49x480x720 bucket becomes 9x32x32 and 1000 steps become 4 (checkpoints every 2,
  warmup 2), so six runs fit in the suite's time.
Every other flag, `--use_8bit_bnb`, `--report_to wandb` and `--resume_from_checkpoint=latest`
included, is the guide's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from core.events import read_events

HERE = Path(__file__).parent
SCRIPT = HERE / "data" / "reference_train.sh"
GUIDE = HERE.parents[1] / "shared" / "reference" / "000_85c99dadff7f4b75.txt"
RUNS = [(variant, kind) for variant in ("2b", "5b", "1.5") for kind in ("lora", "full-finetune")]


def adapt_script(data_root: Path, output_dir: Path, model: Path, training_type: str) -> str:
    script = SCRIPT.read_text()
    edits = [
        ('DATA_ROOT="/path/to/dataset"', f'DATA_ROOT="{data_root}"'),
        ('OUTPUT_DIR="/path/to/models/cog/"', f'OUTPUT_DIR="{output_dir}"'),
        ("THUDM/CogVideoX-5b", str(model)),
        (
            "--config_file accelerate_configs/deepspeed.yaml --gpu_ids $GPU_IDS train.py",
            "-m core.train",
        ),
        ("--video_resolution_buckets 49x480x720", "--video_resolution_buckets 9x32x32"),
        ("--train_steps 1000", "--train_steps 4"),
        ("--checkpointing_steps 200", "--checkpointing_steps 2"),
        ("--lr_warmup_steps 100", "--lr_warmup_steps 2"),
        ("--training_type lora", f"--training_type {training_type}"),
    ]
    for old, new in edits:
        assert old in script, f"the reference script no longer contains {old!r}"
        script = script.replace(old, new)
    return script


@pytest.fixture(scope="module")
def reference_runs(tiny_models, reference_dataset, tmp_path_factory, subprocess_env):
    """All six runs, started together (each spends most of its time importing)."""
    root = tmp_path_factory.mktemp("reference-runs")
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    procs = {}
    for variant, kind in RUNS:
        out = root / f"{variant}-{kind}"
        script = root / f"{variant}-{kind}.sh"
        script.write_text(adapt_script(reference_dataset, out, tiny_models[variant], kind))
        log = open(root / f"{variant}-{kind}.log", "w")  # noqa: SIM115 - closed below
        procs[(variant, kind)] = (
            subprocess.Popen(
                ["bash", str(script)],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
            out,
        )
    results = {}
    for key, (proc, log, out) in procs.items():
        code = proc.wait(timeout=600)
        log.close()
        results[key] = (code, Path(log.name).read_text(), out)
    return results


def test_vendored_script_matches_the_guide():
    if not GUIDE.is_file():
        pytest.skip(f"the guide is not beside this checkout ({GUIDE})")
    assert SCRIPT.read_text() in GUIDE.read_text()


@pytest.mark.parametrize(("variant", "kind"), RUNS)
def test_reference_script_runs_to_the_end(reference_runs, variant, kind):
    code, log, out = reference_runs[(variant, kind)]
    assert code == 0, log[-3000:]
    assert "Finished executing script" in log
    events = read_events(out / "events.jsonl")
    assert events[-1].kind == "done"
    steps = [event.step for event in events if event.kind == "step"]
    assert steps == [1, 2, 3, 4]
    training = next(event for event in events if event.kind == "config").training_configuration
    assert training["train steps"] == 4 and training["total samples"] == 4
    stages = [event.stage for event in events if event.kind == "stage"]
    assert stages[:3] == [
        "after precomputing conditions",
        "after precomputing latents",
        "before training start",
    ]
    assert stages[-1] == "after training end"
    # --checkpointing_limit 2 keeps the newest two; the final weights sit beside them.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["seed"] == 42 and saved["rank"] == 128 and saved["report_to"] == "wandb"
    if kind == "lora":
        assert (out / "pytorch_lora_weights.safetensors").is_file()
    else:
        assert (out / "transformer" / "config.json").is_file()
    assert list((out / "logs").rglob("*.wandb")), "the offline wandb run was not recorded"


def test_full_finetune_output_loads_into_the_pipeline(reference_runs, tiny_models):
    import torch
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    _, _, out = reference_runs[("5b", "full-finetune")]
    transformer = CogVideoXTransformer3DModel.from_pretrained(out / "transformer")
    pipe = CogVideoXPipeline.from_pretrained(tiny_models["5b"], transformer=transformer)
    base = CogVideoXTransformer3DModel.from_pretrained(tiny_models["5b"], subfolder="transformer")
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(transformer.state_dict().values(), base.state_dict().values(), strict=True)
    )
    assert changed, "full finetuning left every weight as it was"
    video = pipe(
        "a square", num_frames=9, height=32, width=32, num_inference_steps=2, output_type="np"
    ).frames[0]
    assert video.shape == (9, 32, 32, 3)


def test_resume_latest_in_the_script_continues_a_finished_run(
    reference_runs, tiny_models, reference_dataset, subprocess_env, tmp_path
):
    """Running the same script again resumes from the newest checkpoint, not from step 0."""
    _, _, out = reference_runs[("2b", "lora")]
    rerun = tmp_path / "rerun"
    import shutil

    shutil.copytree(out, rerun)
    script = tmp_path / "again.sh"
    script.write_text(adapt_script(reference_dataset, rerun, tiny_models["2b"], "lora"))
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    result = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    events = read_events(rerun / "events.jsonl")
    configs = [event for event in events if event.kind == "config"]
    assert configs[-1].resumed_from_step == 2
    last_attempt = events[events.index(configs[-1]) :]
    assert [e.step for e in last_attempt if e.kind == "step"] == [3, 4]
    assert os.path.getsize(rerun / "pytorch_lora_weights.safetensors") > 0
