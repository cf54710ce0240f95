"""Task functions the worker-runtime tests run in real worker processes.

``PIPELINE_TASK=tests.support.fleet_tasks:work``, with the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path


def work(task) -> dict:
    """Message-only work driven by the body: count the run, optionally write early, sleep, fail or finish."""
    body = task.body if isinstance(task.body, dict) else {}
    task.write_intermediate(f"run-{uuid.uuid4().hex}", b"")  # one object per run: tests count the runs
    for tick in range(int(body.get("ticks", 0))):  # visible signs of life: one object every 0.3 s
        task.write_intermediate(f"tick-{tick:04d}", b"")
        time.sleep(0.3)
    if "exit" in body:  # the process itself dies (a segfault, the out-of-memory killer, os._exit in a library)
        os._exit(int(body["exit"]))
    if task.attempt <= int(body.get("fail_attempts", 0)):
        raise ValueError(f"failing attempt {task.attempt} of {task.id}")
    if body.get("poison"):
        raise ValueError(f"poison task {task.id}")
    if body.get("crash_window") and task.attempt == 1:
        # Output first, then a pause on the first attempt only: a crash here must not duplicate the output.
        task.write_output("result.json", json.dumps({"task": task.id}))
        time.sleep(float(body["crash_window"]))
    time.sleep(float(body.get("sleep", 0)))
    task.progress(1.0, "done")
    task.write_output("result.json", json.dumps({"task": task.id}))
    return {"ok": True}


def nap(task) -> None:
    """Sleeps for ``body["sleep"]`` seconds and touches nothing: for tests of the task processes alone."""
    time.sleep(float(task.body["sleep"]))


def brief(task) -> dict:
    """Counts its run (one ``run-<uuid>`` object, as :func:`work`) and sleeps ``body["sleep"]`` seconds: no
    outputs, so no completion marker; its acknowledgement is the worker's only call after the run."""
    task.write_intermediate(f"run-{uuid.uuid4().hex}", b"")
    time.sleep(float(task.body.get("sleep", 0)))
    return {"ok": True}


def spawn(task) -> None:
    """Starts a tool (``sleep``) as a child process, writes its pid to ``body["pid_file"]``, then hangs: for
    tests that the tools a task started die with its process."""
    tool = subprocess.Popen(["sleep", "600"])
    Path(task.body["pid_file"]).write_text(str(tool.pid))
    time.sleep(float(task.body.get("sleep", 3600)))


def shaped(task) -> dict:
    """Counts its run (one ``run-<uuid>`` object, as :func:`work`) and returns ``{"run": <that uuid>}``, so that a
    forwarded or stored result tells which run made it; writes ``output/<id>/result.json`` unless the body says
    ``message_only``, then ``outputs`` more outputs with names of about 1000 bytes, and adds ``result_bytes``
    bytes to its result. Sleeps ``sleep`` seconds first."""
    body = task.body if isinstance(task.body, dict) else {}
    run = uuid.uuid4().hex
    task.write_intermediate(f"run-{run}", b"")
    time.sleep(float(body.get("sleep", 0)))
    if not body.get("message_only"):
        task.write_output("result.json", json.dumps({"task": task.id, "run": run}))
    for part in range(int(body.get("outputs", 0))):
        task.write_output(f"part-{part:04d}-" + "n" * 990, b"")
    result: dict = {"run": run}
    if body.get("result_bytes"):
        result["blob"] = "x" * int(body["result_bytes"])
    return result
