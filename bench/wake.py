"""Time to the first finished task of a fleet at zero workers, in the local run of the example's dev stack.

With the wake-up, the submission raises the group to one worker (SetDesiredCapacity, as ``pipeline submit``
does) and the time is the worker's start plus one task. Without it nothing local starts the fleet: on AWS,
target tracking on CloudWatch's per-minute SQS metrics would, minutes later (and a queue idle for six hours
publishes no metrics until it is active again), which the local run does not emulate.

python -m bench.wake
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.synth_cost import example_dev_app
from pipeline_constructs.local.cli import embedded_emulator
from pipeline_constructs.local.runner import LocalPipeline
from pipeline_constructs.ops.assembly import find_stack, load_assembly


def _first_task_seconds(outdir: Path, *, wake: bool, give_up_after: float) -> float | None:
    stack = find_stack(load_assembly(outdir), "pipeline-dev")
    with embedded_emulator(None) as endpoint, tempfile.TemporaryDirectory() as logs:
        pipeline = LocalPipeline(
            stack, outdir, endpoint=endpoint, region="us-east-1", log_dir=Path(logs), from_zero=True, wake=wake
        )
        try:
            pipeline.start()
            (fleet,) = pipeline.first_stage_fleets()
            started = time.monotonic()
            pipeline.submit_sample_tasks(1)
            while time.monotonic() - started < give_up_after:
                if pipeline.fleet_progress(fleet)["done"] >= 1:
                    return time.monotonic() - started
                time.sleep(0.1)
            return None
        finally:
            pipeline.stop()


def measure(rounds: int = 3, give_up_after: float = 30.0) -> dict:
    with tempfile.TemporaryDirectory() as outdir:
        app, _ = example_dev_app(Path(outdir))
        app.synth()
        woken = [_first_task_seconds(Path(outdir), wake=True, give_up_after=give_up_after) for _ in range(rounds)]
        unwoken = _first_task_seconds(Path(outdir), wake=False, give_up_after=give_up_after)
    finished = sorted(s for s in woken if s is not None)
    return {
        "rounds": rounds,
        "first_task_seconds_with_wake": [round(s, 2) for s in woken if s is not None],
        "first_task_seconds_with_wake_worst": round(finished[-1], 2) if len(finished) == rounds else None,
        "first_task_seconds_without_wake": round(unwoken, 2) if unwoken is not None else None,
        "gave_up_after_seconds": give_up_after,
    }


def main() -> None:
    print(json.dumps(measure(), indent=2))


if __name__ == "__main__":
    main()
