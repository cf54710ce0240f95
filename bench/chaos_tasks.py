"""The task the chaos benchmark's workers run (PIPELINE_TASK=bench.chaos_tasks:work)."""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

#: An output name near S3's longest key (1024 bytes with ``output/<task id>/``): a few hundred of them make
#: a list of outputs over DynamoDB's 400 KB item and SQS's 256 KiB message.
LONG_NAME = 960


def work(task) -> dict:
    """A little I/O-like work and one output, ``result.json``, naming this run; the result names it too, so
    that a forward can be checked against what was stored.

    The body's modes: ``poison`` always fails, ``hang`` never returns, ``fail_first`` fails its first
    attempt, ``input`` reads the task's input first, ``outputs: N`` writes N more outputs with long names,
    ``result_bytes: N`` returns a result of about N bytes. Each run that gets as far as its output is
    appended to the file ``CHAOS_RUNS`` names (one line: task id, attempt, run), if it names one.
    """
    body = task.body if isinstance(task.body, dict) else {}
    if body.get("poison"):
        raise ValueError(f"poison task {task.id}")
    if body.get("hang"):
        while True:
            time.sleep(60)
    if body.get("fail_first") and task.attempt == 1:
        raise RuntimeError(f"task {task.id} fails its first attempt")
    if body.get("input"):
        task.read_input()
    time.sleep(float(body.get("work", 0)))
    run = uuid.uuid4().hex
    names = [f"{number:04d}-".ljust(LONG_NAME, "o") for number in range(int(body.get("outputs", 0)))]
    with ThreadPoolExecutor(max_workers=8) as pool:  # hundreds of puts: several at a time
        list(pool.map(lambda name: task.write_output(name, b""), names))
    task.write_output("result.json", json.dumps({"task": task.id, "attempt": task.attempt, "run": run}))
    runs = os.environ.get("CHAOS_RUNS")
    if runs:
        with open(runs, "a") as log:  # one short write in append mode: whole lines from every process
            log.write(f"{task.id} {task.attempt} {run}\n")
    result: dict = {"ok": True, "run": run}
    if body.get("result_bytes"):
        result["padding"] = "x" * int(body["result_bytes"])
    return result
