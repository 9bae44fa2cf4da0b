"""Pushing a run to a Hub test server on loopback with the real huggingface_hub client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import UserError
from core.events import read_events
from core.hub import build_model_card, push_run
from core.hub import main as hub_main
from core.train import main as train_main
from tests.hub_server import FakeHub

TOKEN = "hf_test_token_ABCDEFGHIJKLMNOPQRSTUVWXYZ"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tiny_models, reference_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = train_main(
        [
            "--pretrained_model_name_or_path",
            str(tiny_models["5b"]),
            "--data_root",
            str(reference_dataset),
            "--video_resolution_buckets",
            "9x32x32",
            "--train_steps",
            "20",
            "--checkpointing_steps",
            "10",
            "--output_dir",
            str(out),
            "--validation_prompts",
            "a square",
            "--validation_inference_steps",
            "2",
            "--lr",
            "1e-2",
            "--transformer_dtype",
            "fp32",
            "--id_token",
            "SQR",
        ]
    )
    assert code == 0
    return out


@pytest.fixture
def hub(monkeypatch):
    """The test server, with the Hub client allowed online (it reaches only loopback here)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with FakeHub(tokens={TOKEN: "tester"}) as server:
        yield server


def copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_a_private_push_arrives_whole_with_a_card_and_no_run_internals(trained_run, hub, tmp_path):
    run = copy_run(trained_run, tmp_path)
    url = push_run(run, "tester/square-lora", private=True, token=TOKEN, endpoint=hub.url)
    assert url == f"{hub.url}/tester/square-lora"
    repo = hub.repo("tester/square-lora")
    assert repo.private
    assert (
        repo.files["pytorch_lora_weights.safetensors"]
        == (run / "pytorch_lora_weights.safetensors").read_bytes()
    )
    videos = [name for name in repo.files if name.endswith(".mp4")]
    assert videos and all(repo.files[v] == (run / v).read_bytes() for v in videos)
    assert not any(
        name.startswith(("checkpoint-", "events", "train.log", "spec")) for name in repo.files
    )
    card = repo.files["README.md"].decode()
    assert 'pipe.load_lora_weights("tester/square-lora", adapter_name="cogvideox-lora")' in card
    assert "Trigger word: `SQR`" in card
    push_run(run, "tester/public-lora", private=False, token=TOKEN, endpoint=hub.url)
    assert not hub.repo("tester/public-lora").private


def test_a_rejected_token_is_one_sentence(trained_run, hub, tmp_path):
    with pytest.raises(UserError) as raised:
        push_run(copy_run(trained_run, tmp_path), "tester/x", token="hf_wrong", endpoint=hub.url)
    message = str(raised.value)
    assert "rejected the token" in message and "\n" not in message


def test_an_existing_repo_is_one_sentence_and_update_adds_to_it(trained_run, hub, tmp_path):
    other = copy_run(trained_run, tmp_path / "other")
    push_run(other, "tester/taken", token=TOKEN, endpoint=hub.url)
    mine = copy_run(trained_run, tmp_path / "mine")
    with pytest.raises(UserError, match="already exists; choose another name"):
        push_run(mine, "tester/taken", token=TOKEN, endpoint=hub.url)
    push_run(mine, "tester/taken", token=TOKEN, endpoint=hub.url, update=True)
    assert len(hub.repo("tester/taken").commits) == 2


def test_a_dropped_connection_is_one_sentence_and_a_retry_completes(
    trained_run, hub, tmp_path, capsys
):
    run = copy_run(trained_run, tmp_path)
    events = tmp_path / "events.jsonl"
    hub.drop_next_commit()
    argv = [
        "push",
        str(run),
        "tester/flaky",
        "--private",
        "--endpoint",
        hub.url,
        "--events",
        str(events),
    ]
    os.environ["HF_TOKEN"] = TOKEN
    try:
        assert hub_main(argv) == 2
        first = capsys.readouterr()
        assert "lost the connection" in first.err and "run the push again" in first.err
        assert hub_main(argv) == 0  # the run remembers it created the repo
        second = capsys.readouterr()
    finally:
        del os.environ["HF_TOKEN"]
    assert second.out.strip() == f"{hub.url}/tester/flaky"
    assert "pytorch_lora_weights.safetensors" in hub.repo("tester/flaky").files
    phases = [e.phase for e in read_events(events) if e.kind == "push"]
    assert phases[-1] == "done" and "failed" in phases
    # The token is nowhere: not in the run folder, the events, or what was printed.
    for path in [*run.rglob("*"), events]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in first.out + first.err + second.out + second.err


def test_the_card_matches_the_run(trained_run):
    card = build_model_card(trained_run, "someone/thing")
    config = json.loads((trained_run / "train_config.json").read_text())
    assert f"| steps | {config['train_steps']} |" in card
    assert "license: other" in card  # a local base: the license follows it


def test_the_pushed_lora_loads_back_with_the_guide_snippet(trained_run, tiny_models, hub, tmp_path):
    push_run(
        copy_run(trained_run, tmp_path),
        "tester/snippet",
        private=True,
        token=TOKEN,
        endpoint=hub.url,
    )
    snippet = f"""
import torch
from diffusers import CogVideoXPipeline

pipe = CogVideoXPipeline.from_pretrained(
    {str(tiny_models["5b"])!r}, torch_dtype=torch.bfloat16
).to("cpu")
pipe.load_lora_weights("tester/snippet", adapter_name="cogvideox-lora")
pipe.set_adapters(["cogvideox-lora"], [0.75])

video = pipe("SQR a square", num_frames=9, height=32, width=32, num_inference_steps=2).frames[0]
print("frames", len(video))
"""
    env = dict(
        os.environ,
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        HF_TOKEN=TOKEN,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_XET="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "frames 9" in result.stdout
    assert any("resolve" in request for request in hub.requests)
