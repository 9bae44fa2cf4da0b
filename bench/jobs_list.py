"""How long listing the job store takes with many finished jobs in it.

Fills a fresh store with N finished jobs, then times what the runs page and `python -m jobs
list` do on every refresh: a heartbeat (reconcile + schedule, which touch active and queued
jobs only) and the listing of every job.

    python bench/jobs_list.py [--jobs 500] [--repeats 50]

Last line: `jobs_list_ms: <median milliseconds for heartbeat + list>` (target: under 50).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    from jobs.runner import Runner

    with tempfile.TemporaryDirectory() as workspace:
        runner = Runner(workspace)
        for number in range(args.jobs):
            job = runner.store.add(f"run {number}", "train", [number % 4])
            runner.store.update(
                job.id,
                status=("succeeded", "failed", "stopped")[number % 3],
                last_step=1000,
                total_steps=1000,
                started=time.time(),
                ended=time.time(),
                exit_code=0,
            )
        list_only, with_heartbeat = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            jobs = runner.store.list()
            list_only.append(time.perf_counter() - started)
            started = time.perf_counter()
            runner.poll()
            jobs = runner.store.list()
            with_heartbeat.append(time.perf_counter() - started)
        assert len(jobs) == args.jobs
    print(f"{args.jobs} finished jobs, median of {args.repeats}")
    print(f"list:             {statistics.median(list_only) * 1000:6.2f} ms")
    print(f"heartbeat + list: {statistics.median(with_heartbeat) * 1000:6.2f} ms")
    print(f"jobs_list_ms: {statistics.median(with_heartbeat) * 1000:.2f}")


if __name__ == "__main__":
    main()
