"""Following events.jsonl: only new bytes are read, half lines wait, long curves are thinned."""

from __future__ import annotations

from core.events import StepEvent
from jobs.events import MAX_POINTS, EventTail, RunSummary, Series


def step_line(step: int) -> bytes:
    return (
        StepEvent(
            step=step,
            total_steps=10_000,
            epoch=1,
            loss=1.0 / step,
            lr=1e-4,
            step_seconds=0.1,
            samples_per_second=10.0,
            eta_seconds=5.0,
        ).model_dump_json()
        + "\n"
    ).encode()


def test_a_half_written_line_waits_for_the_rest(tmp_path):
    path = tmp_path / "events.jsonl"
    whole, half = step_line(1), step_line(2)
    path.write_bytes(whole + half[:20])
    tail = EventTail(path)
    assert [e.step for e in tail.read_new()] == [1]
    assert tail.complete_offset == len(whole)
    with open(path, "ab") as handle:
        handle.write(half[20:] + step_line(3))
    assert [e.step for e in tail.read_new()] == [2, 3]
    assert tail.read_new() == []  # nothing new, nothing read again


def test_the_loss_curve_keeps_its_shape_under_the_point_limit(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(step_line(step) for step in range(1, 9001)))
    summary = RunSummary()
    summary.fold(EventTail(path).read_new())
    assert len(summary.loss.steps) <= MAX_POINTS
    assert summary.loss.steps[0] <= 8 and summary.loss.steps[-1] >= 8990
    assert summary.step == 9000 and summary.eta_seconds == 5.0


def test_a_resumed_attempt_replaces_the_steps_it_logs_again():
    series = Series()
    for step in (1, 2, 3, 4):
        series.add(step, float(step))
    for step in (3, 4, 5):  # resumed from the checkpoint of step 2
        series.add(step, step * 10.0)
    assert series.steps == [1, 2, 3, 4, 5]
    assert series.values == [1.0, 2.0, 30.0, 40.0, 50.0]
