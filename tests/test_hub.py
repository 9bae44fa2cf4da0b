"""Pushing a run to a Hub test server on loopback with the real huggingface_hub client."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from core.errors import UserError
from core.events import read_events
from core.hub import STATE_FILE, build_model_card, push_run
from core.hub import main as hub_main
from tests.hub_server import FakeHub

TOKEN = "hf_test_token_ABCDEFGHIJKLMNOPQRSTUVWXYZ"
WRONG_TOKEN = "hf_wrong_token_0123456789abcdef"
RUN_INTERNALS = ("checkpoint-", "events", "train.log", "spec.json", STATE_FILE)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def trained_run(tiny_models, reference_dataset, tmp_path_factory) -> Path:
    """A finished 3-step LoRA run with a checkpoint and one validation video."""
    from core.train import main as train_main

    out = tmp_path_factory.mktemp("run")
    # fmt: off
    argv = [
        "--pretrained_model_name_or_path", str(tiny_models["5b"]),
        "--data_root", str(reference_dataset),
        "--video_resolution_buckets", "9x32x32",
        "--train_steps", "3",
        "--checkpointing_steps", "2",
        "--output_dir", str(out),
        "--validation_prompts", "a square",
        "--validation_inference_steps", "2",
        "--lr", "1e-2",
        "--transformer_dtype", "fp32",
        "--id_token", "SQR",
    ]
    # fmt: on
    assert train_main(argv) == 0
    assert list(out.glob("checkpoint-*")), "the run should hold a checkpoint not to push"
    return out


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Every connection this test opens goes to 127.0.0.1; anything else fails loudly."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a test tried to reach {address[0]}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def hub(monkeypatch):
    """The test server, with the Hub client allowed online (it reaches only loopback here)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(tokens={TOKEN: "tester"}) as server:
        yield server


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A private copy of the trained run: pushes write their state into it."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def push(run: Path, hub: FakeHub, repo_id: str, **options) -> str:
    return push_run(run, repo_id, token=options.pop("token", TOKEN), endpoint=hub.url, **options)


def one_sentence(raised: pytest.ExceptionInfo) -> str:
    message = str(raised.value)
    assert "\n" not in message and message.count("; ") <= 1, message
    assert TOKEN not in message and WRONG_TOKEN not in message
    return message


def test_a_private_push_arrives_whole_with_a_card_and_no_run_internals(run, hub):
    events = []
    url = push(run, hub, "tester/square-lora", private=True, progress=events.append)
    assert url == f"{hub.url}/tester/square-lora"
    repo = hub.repo("tester/square-lora")
    assert repo.private
    assert len(repo.commits) == 2  # the Hub's first one, then the push: one commit
    pushed = {name for name in repo.files if name not in ("README.md", ".gitattributes")}
    videos = {p.relative_to(run).as_posix() for p in run.glob("validation/*/*.mp4")}
    assert videos
    assert pushed == {"pytorch_lora_weights.safetensors", *videos}  # no local paths leave
    for name in pushed:
        assert repo.files[name] == (run / name).read_bytes(), name
    assert not any(name.startswith(RUN_INTERNALS) for name in repo.files)
    card = repo.files["README.md"].decode()
    assert card == build_model_card(run, "tester/square-lora")
    base = json.loads((run / "train_config.json").read_text())["pretrained_model_name_or_path"]
    assert f'    "{base}", torch_dtype=torch.bfloat16\n' in card
    assert 'pipe.load_lora_weights("tester/square-lora", adapter_name="cogvideox-lora")' in card
    assert 'video = pipe("SQR a square").frames[0]' in card
    assert all(f"]({video})" in card for video in videos)
    assert [e.phase for e in events] == ["creating repo", "uploading", "uploading", "done"]
    assert events[-1].url == url

    push(run, hub, "tester/public-lora")
    assert not hub.repo("tester/public-lora").private


def test_a_rejected_token_is_one_sentence_and_a_retry_with_a_good_one_completes(run, hub):
    with pytest.raises(UserError) as raised:
        push(run, hub, "tester/x", token=WRONG_TOKEN)
    message = one_sentence(raised)
    assert message.startswith("the Hub rejected the token while creating the repo (401);")
    assert "https://huggingface.co/settings/tokens" in message
    assert push(run, hub, "tester/x") == f"{hub.url}/tester/x"


def test_an_existing_repo_is_one_sentence_and_update_adds_to_it(trained_run, hub, tmp_path):
    push(Path(shutil.copytree(trained_run, tmp_path / "other")), hub, "tester/taken")
    mine = Path(shutil.copytree(trained_run, tmp_path / "mine"))
    failed = []
    with pytest.raises(UserError) as raised:
        push(mine, hub, "tester/taken", progress=failed.append)
    assert one_sentence(raised) == (
        "the repo tester/taken already exists; choose another name or push with --update to "
        "add a commit to it"
    )
    assert failed[-1].phase == "failed" and failed[-1].message == str(raised.value)
    push(mine, hub, "tester/taken", update=True)
    assert len(hub.repo("tester/taken").commits) == 3


def test_a_dropped_commit_is_one_sentence_and_the_same_push_again_completes(
    run, hub, tmp_path, capsys, monkeypatch
):
    """Through the command line, token from HF_TOKEN; afterwards the token is nowhere."""
    events = tmp_path / "push" / "events.jsonl"
    argv = ["push", str(run), "tester/flaky", "--private", "--endpoint", hub.url]
    argv += ["--events", str(events)]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.drop_next("commit")
    assert hub_main(argv) == 2
    first = capsys.readouterr()
    assert first.out == ""
    assert first.err == (
        f"error: lost the connection to {hub.url} while uploading the files; run the push again "
        "to retry\n"
    )
    assert hub_main(argv) == 0  # the run remembers it created the repo
    second = capsys.readouterr()
    assert second.out == f"{hub.url}/tester/flaky\n"
    repo = hub.repo("tester/flaky")
    assert repo.private and len(repo.commits) == 2
    assert (
        repo.files["pytorch_lora_weights.safetensors"]
        == (run / "pytorch_lora_weights.safetensors").read_bytes()
    )
    pushes = [e for e in read_events(events) if e.kind == "push"]
    assert [e.phase for e in pushes] == [
        *("creating repo", "uploading", "failed"),
        *("creating repo", "uploading", "uploading", "done"),
    ]
    assert pushes[-1].url == f"{hub.url}/tester/flaky"
    # The token is nowhere: the run folder, the events, what was printed, what was uploaded.
    written = [path for path in run.rglob("*") if path.is_file()]
    assert run / STATE_FILE in written
    for path in [*written, events]:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in first.out + first.err + second.out + second.err
    assert not any(TOKEN.encode() in data for data in repo.files.values())


def test_a_lost_answer_to_create_is_retried_into_the_repo_it_made(run, hub):
    hub.drop_next("create")  # the repo is made, but its answer never arrives
    with pytest.raises(UserError) as raised:
        push(run, hub, "tester/lost")
    assert one_sentence(raised).startswith(
        f"lost the connection to {hub.url} while creating the repo;"
    )
    assert "tester/lost" in hub.repos
    push(run, hub, "tester/lost")
    assert "pytorch_lora_weights.safetensors" in hub.repo("tester/lost").files


def test_an_unreachable_hub_no_token_a_bad_name_and_no_weights_are_one_sentence(
    run, hub, monkeypatch
):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(UserError) as raised:
        push_run(run, "tester/nowhere", token=TOKEN, endpoint=closed)
    assert one_sentence(raised).startswith(f"could not reach {closed} while creating the repo;")

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(run / "no-token"))
    with pytest.raises(UserError, match=r"^no Hub token: set HF_TOKEN") as raised:
        push_run(run, "tester/anon", endpoint=hub.url)
    one_sentence(raised)

    with pytest.raises(UserError, match="is not a repo id; write owner/name") as raised:
        push(run, hub, "square-lora")  # no owner: the card's snippet could not load it
    one_sentence(raised)

    (run / "pytorch_lora_weights.safetensors").unlink()
    with pytest.raises(UserError, match="has no trained weights to push") as raised:
        push(run, hub, "tester/empty")
    one_sentence(raised)
    assert not hub.repos


def test_the_card_follows_the_run_and_its_base_models_license(trained_run, tmp_path, capsys):
    card = build_model_card(trained_run, "someone/thing")
    config = json.loads((trained_run / "train_config.json").read_text())
    assert card.startswith("---\n") and "\n---\n\n# thing\n" in card
    for tag in ("text-to-video", "lora", "cogvideox"):
        assert f"\n- {tag}\n" in card
    assert "\nlicense: other\n" in card and "license_name" not in card  # a local base
    assert "base_model" not in card and "base model's license" in card
    assert "Trigger word: `SQR`" in card
    for row in (
        "| training type | lora |",
        f"| steps | {config['train_steps']} |",
        f"| rank | {config['rank']} |",
        f"| alpha | {config['lora_alpha']} |",
        f"| learning rate | {config['lr']} |",
        f"| optimizer | {config['optimizer']} |",
        "| buckets | 9x32x32 |",
        f"| seed | {config['seed']} |",
    ):
        assert row in card

    def card_for(base: str, training_type: str = "lora") -> str:
        folder = tmp_path / base.replace("/", "_") / training_type
        folder.mkdir(parents=True)
        config.update(pretrained_model_name_or_path=base, training_type=training_type)
        (folder / "train_config.json").write_text(json.dumps(config))
        return build_model_card(folder, "someone/thing")

    assert "\nlicense: apache-2.0\n" in card_for("THUDM/CogVideoX-2b")
    for base in ("THUDM/CogVideoX-5b", "THUDM/CogVideoX1.5-5B"):
        card = card_for(base)
        assert f"\nbase_model: {base}\n" in card and f'    "{base}", torch_dtype' in card
        assert "\nlicense: other\nlicense_name: cogvideox-license\nlicense_link: " in card
    other = card_for("someone/cogvideox-remix")
    assert "\nlicense: other\n" in other and "license_name" not in other
    full = card_for("THUDM/CogVideoX-5b", "full-finetune")
    assert "load_lora_weights" not in full and "\n- lora\n" not in full
    assert 'from_pretrained(\n    "someone/thing", subfolder="transformer"' in full
    assert "torch_dtype=torch.bfloat16, transformer=transformer" in full

    assert hub_main(["card", str(trained_run), "someone/thing"]) == 0
    assert capsys.readouterr().out == build_model_card(trained_run, "someone/thing") + "\n"


def test_the_pushed_lora_loads_back_with_the_guide_snippet(
    run, tiny_models, hub, tmp_path, monkeypatch
):
    import diffusers.loaders.lora_base
    import huggingface_hub.constants
    import huggingface_hub.hf_api
    import torch
    from diffusers import CogVideoXPipeline

    push(run, hub, "tester/snippet", private=True)
    # Point the download side at the test server, for this test only (monkeypatch undoes it):
    # huggingface_hub and diffusers read these once, at import.
    constants = huggingface_hub.constants
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # huggingface_hub's module-level helpers (model_info, ...) share one HfApi made at import.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
    monkeypatch.setattr(diffusers.loaders.lora_base, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the repo is private

    pipe = CogVideoXPipeline.from_pretrained(tiny_models["5b"], torch_dtype=torch.bfloat16).to(
        "cpu"
    )
    pipe.load_lora_weights("tester/snippet", adapter_name="cogvideox-lora")
    pipe.set_adapters(["cogvideox-lora"], [0.75])
    video = pipe("SQR a square", num_frames=9, height=32, width=32, num_inference_steps=2).frames[0]

    assert len(video) == 9
    assert any("/resolve/" in request for request in hub.requests)
    downloaded = list((tmp_path / "hf-cache").rglob("pytorch_lora_weights.safetensors"))
    assert (
        downloaded
        and downloaded[0].read_bytes() == (run / "pytorch_lora_weights.safetensors").read_bytes()
    )


def test_a_hub_base_model_downloads_with_byte_progress_then_trains(
    hub, tiny_models, reference_dataset, subprocess_env, tmp_path
):
    """A base model named by Hub id is fetched before anything loads, and the run reports
    the bytes as they arrive (a real first run downloads about 20 GB)."""
    import subprocess
    import sys
    from fnmatch import fnmatch

    from core.events import read_events
    from core.models.source import BASE_MODEL_FILES, DOWNLOAD_PHASE
    from tests.hub_server import FakeRepo

    repo = FakeRepo("tester/tiny-cogvideox", private=False)
    base = tiny_models["5b"]
    for path in sorted(base.rglob("*")):
        if path.is_file():
            repo.files[path.relative_to(base).as_posix()] = path.read_bytes()
    hub.repos[repo.repo_id] = repo
    env = {
        **subprocess_env,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    out = tmp_path / "out"
    # fmt: off
    completed = subprocess.run(
        [
            sys.executable, "-m", "core.train",
            "--pretrained_model_name_or_path", repo.repo_id,
            "--data_root", str(reference_dataset),
            "--video_resolution_buckets", "9x32x32",
            "--train_steps", "1",
            "--output_dir", str(out),
        ],
        env=env, capture_output=True, text=True, timeout=300,
    )
    # fmt: on
    assert completed.returncode == 0, completed.stderr[-2000:]
    wanted = sum(
        len(data)
        for name, data in repo.files.items()
        if any(fnmatch(name, pattern) for pattern in BASE_MODEL_FILES)
    )
    reports = [e for e in read_events(out / "events.jsonl") if e.kind == "progress"]
    downloads = [e for e in reports if e.phase == DOWNLOAD_PHASE]
    # The component configs read earlier (to check the model's family) are already cached.
    configs = sum(len(data) for name, data in repo.files.items() if name.endswith("config.json"))
    assert downloads and downloads[-1].done == downloads[-1].total
    assert wanted - configs <= downloads[-1].total <= wanted
    assert reports.index(downloads[-1]) < next(
        i for i, e in enumerate(reports) if e.phase != DOWNLOAD_PHASE
    ), "the download comes before anything loads"
    assert any(r.startswith("GET /tester/tiny-cogvideox/resolve/") for r in hub.requests)
    assert not any(".gitattributes" in r for r in hub.requests if "/resolve/" in r)
