"""The task the chaos benchmark's workers run (PIPELINE_TASK=bench.chaos_tasks:work)."""

from __future__ import annotations

import json
import time


def work(task) -> dict:
    """A little I/O-like work and one output; ``poison`` always fails, ``hang`` never returns."""
    body = task.body if isinstance(task.body, dict) else {}
    if body.get("poison"):
        raise ValueError(f"poison task {task.id}")
    if body.get("hang"):
        while True:
            time.sleep(60)
    time.sleep(float(body.get("work", 0)))
    task.write_output("result.json", json.dumps({"task": task.id, "attempt": task.attempt}))
    return {"ok": True}
