"""bench/gpu_check.sh: its CPU dry run (every command checked, nothing run) and its report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402


def test_the_dry_run_plans_at_most_eight_minutes_and_checks_every_command(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, WHEELS=str(tmp_path / "no-wheels"))
    completed = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = (out / "gpu_check.md").read_text()
    minutes = {
        row[0]: float(row[-1])
        for row in (line.strip("| ").split(" | ") for line in report.splitlines())
        if len(row) == 3 and re.fullmatch(r"[0-9.]+", row[-1])
    }
    assert list(minutes) == ["0", "1", "2", "3", "report", "total"]
    assert minutes["total"] <= 8.0
    assert sum(value for key, value in minutes.items() if key != "total") == minutes["total"]
    planned = sum(len(phase.runs) for phase in gpu_check.plan(out))
    assert report.count(": would run `") == planned
    for phase in ("Phase 0", "Phase 1", "Phase 2", "Phase 3", "Predicted beside measured"):
        assert phase in report


def test_the_report_sets_each_measured_stage_beside_its_prediction(tmp_path):
    records = [
        {
            "family": "5b",
            "scale": "full",
            "training": "lora",
            "options": "baseline",
            "bucket": "49x480x720",
            "device": "NVIDIA H100 80GB HBM3",
            "exit": 0,
            "message": "",
            "stages": {"after epoch 1": {"memory_allocated": 11.3, "max_memory_reserved": 19.9}},
            "step_seconds": 3.2,
            "tflops": 350.0,
        },
        {"family": "5b", "scale": "tiny", "training": "lora", "options": "fp8"}
        | {"bucket": "9x32x32", "device": "x", "exit": 1, "message": "out of memory"}
        | {"stages": {}, "step_seconds": None, "tflops": None},
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    checks = {
        "5b/lora/reference": {
            "stages": {"after epoch 1": {"allocated": 11.2, "max_reserved": 19.6}}
        },
        "5b/full/reference": {"stages": {"after epoch 1": {"allocated": 21.0, "max_reserved": 36}}},
    }
    lines = gpu_check.comparison(records, checks)
    text = "\n".join(lines)
    assert "### 5b/lora/reference (measured on NVIDIA H100 80GB HBM3)" in text
    assert "| after epoch 1 | 11.20 | 11.30 | 19.60 | 19.90 |" in text
    assert "3.20 s/step, 350 TFLOP/s" in text
    assert "### 5b/full/reference (not measured)" in text
    assert "| after epoch 1 | 21.00 | - | 36.00 | - |" in text
    gpu_check.write_report(tmp_path)
    assert "- 5b lora fp8: failed: out of memory" in (tmp_path / "gpu_check.md").read_text()
