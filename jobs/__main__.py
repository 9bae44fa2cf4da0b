"""`python -m jobs`: everything the app does with jobs, headless, on the same store.

python -m jobs [--workspace DIR] list [--json]
python -m jobs show ID [--json]
python -m jobs start SPEC.json [--again]  prints the new job's id
python -m jobs stop ID [--wait SECONDS]
python -m jobs resume ID
python -m jobs logs ID [--lines N]
python -m jobs delete ID --yes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from core.errors import EXIT_USER_ERROR, UserError

STATUS_WIDTH = 11


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", default="./workspace", help="default: ./workspace")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every job, newest first")
    listing.add_argument("--json", action="store_true")
    show = commands.add_parser("show", help="one job's record")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    start = commands.add_parser("start", help="queue a job from a spec file")
    start.add_argument("spec")
    start.add_argument("--name", help="override the spec's name")
    start.add_argument(
        "--again",
        action="store_true",
        help="start it even if the same run (name and settings) is already queued or running",
    )
    stop = commands.add_parser("stop", help="checkpoint and stop a job (or cancel a queued one)")
    stop.add_argument("id")
    stop.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for it to finish stopping"
    )
    resume = commands.add_parser("resume", help="continue a job from its newest checkpoint")
    resume.add_argument("id")
    logs = commands.add_parser("logs", help="the end of a job's train.log")
    logs.add_argument("id")
    logs.add_argument("--lines", type=int, default=50)
    delete = commands.add_parser("delete", help="remove a finished job and its folder")
    delete.add_argument("id")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")
    commands.add_parser("tick", help="reconcile and start queued jobs (run by finished jobs)")
    return parser


def _line(job) -> str:
    progress = f"{job.last_step}/{job.total_steps}" if job.total_steps else f"{job.last_step}"
    reason = f"  {job.reason}" if job.reason else ""
    return f"{job.id}  {job.status:<{STATUS_WIDTH}} step {progress:<11} {job.name}{reason}"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from jobs.checks import check_before_queue
    from jobs.runner import JobError, Runner, log_tail
    from jobs.spec import JobSpec, describe_spec_error

    try:
        runner = Runner(args.workspace, on_warning=_warn)
    except OSError as error:
        print(f"error: --workspace: {args.workspace} cannot be used ({error})", file=sys.stderr)
        return EXIT_USER_ERROR
    runner.poll()
    try:
        if args.command == "list":
            jobs = runner.store.list()
            if args.json:
                print(json.dumps([job.public() for job in jobs], indent=2))
            else:
                for job in jobs:
                    print(_line(job))
        elif args.command == "show":
            job = runner._require(args.id)
            if args.json:
                print(json.dumps(job.public(), indent=2))
            else:
                print(_line(job))
                if job.suggestion:
                    print(f"  suggestion: {job.suggestion}")
                print(f"  folder: {job.job_dir}")
                print(f"  command: {runner.spec(job).show_command()}")
        elif args.command == "start":
            path = Path(args.spec)
            try:
                spec = JobSpec.model_validate_json(path.read_bytes())
            except FileNotFoundError:
                raise JobError(f"{path} does not exist") from None
            except IsADirectoryError:
                raise JobError(f"{path} is a folder; give the spec's JSON file") from None
            except OSError as error:
                raise JobError(f"{path} cannot be read ({error.strerror})") from None
            except ValidationError as error:
                raise JobError(f"{path}: {describe_spec_error(error)}") from None
            if args.name:
                spec = spec.model_copy(update={"name": args.name})
            earlier = None if args.again else runner.find_duplicate(spec)
            if earlier is not None:
                raise JobError(
                    f"the same run is already {earlier.status} as {earlier.id}; it is not "
                    "started twice (pass --again to start another)"
                )
            check_before_queue(spec, runner)  # refused before a job exists if it cannot run
            print(runner.submit(spec).id)
        elif args.command == "stop":
            job = runner.stop(args.id)
            if args.wait:
                job = runner.wait(job.id, args.wait)
            print(_line(job))
        elif args.command == "resume":
            print(_line(runner.resume(args.id)))
        elif args.command == "logs":
            job = runner._require(args.id)
            text = log_tail(Path(job.job_dir) / "train.log", 1 << 20)
            print("\n".join(text.splitlines()[-args.lines :]))
        elif args.command == "delete":
            runner.delete(args.id, confirm=args.yes)
            print(f"deleted {args.id}")
        elif args.command == "tick":
            time.sleep(0.2)  # let the finished job's wrapper exit first
            runner.poll()
    except (JobError, UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        runner.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
