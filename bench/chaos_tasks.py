"""The task the chaos benchmark's workers run, one behaviour in each task kind: the Python function
(``PIPELINE_TASK=bench.chaos_tasks:work``), the command ``bench/chaos_command.py`` and the worker-tier app
``bench/chaos_app.py``. All three do what :func:`perform` says and differ only in how they hand the outputs
and the result over."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: An output name near S3's longest key (1024 bytes with ``output/<task id>/``): a few hundred of them make
#: a list of outputs over DynamoDB's 400 KB item and SQS's 256 KiB message.
LONG_NAME = 960
#: The output every run writes last, naming the run.
RESULT_OUTPUT = "result.json"


def perform(task_id: str, attempt: int, body: Any, read_input: Callable[[], bytes]) -> tuple[dict[str, bytes], dict]:
    """A little I/O-like work, then the outputs (name -> content; ``result.json`` last, naming this run) and the
    result, which names the run too, so that a forward can be checked against what was stored.

    The body's modes: ``poison`` always fails, ``hang`` never returns, ``fail_first`` fails its first
    attempt, ``input`` reads the task's input first, ``work: s`` sleeps that long, ``outputs: N`` adds N
    outputs with long names, ``result_bytes: N`` makes a result of about N bytes.
    """
    body = body if isinstance(body, dict) else {}
    if body.get("poison"):
        raise ValueError(f"poison task {task_id}")
    if body.get("hang"):
        while True:
            time.sleep(60)
    if body.get("fail_first") and attempt == 1:
        raise RuntimeError(f"task {task_id} fails its first attempt")
    if body.get("input"):
        read_input()
    time.sleep(float(body.get("work", 0)))
    run = uuid.uuid4().hex
    outputs = {f"{number:04d}-".ljust(LONG_NAME, "o"): b"" for number in range(int(body.get("outputs", 0)))}
    outputs[RESULT_OUTPUT] = json.dumps({"task": task_id, "attempt": attempt, "run": run}).encode()
    result: dict = {"ok": True, "run": run}
    if body.get("result_bytes"):
        result["padding"] = "x" * int(body["result_bytes"])
    return outputs, result


def record_run(task_id: str, attempt: int, result: dict) -> None:
    """Append a run that got as far as its output to the file ``CHAOS_RUNS`` names, if it names one (one line:
    task id, attempt, run)."""
    runs = os.environ.get("CHAOS_RUNS")
    if runs:
        with open(runs, "a") as log:  # one short write in append mode: whole lines from every process
            log.write(f"{task_id} {attempt} {result['run']}\n")


def work(task) -> dict:
    """The ``function`` kind: :func:`perform`, its outputs written by the task (the long-named ones several
    at a time, ``result.json`` last)."""
    outputs, result = perform(task.id, task.attempt, task.body, task.read_input)
    final = outputs.pop(RESULT_OUTPUT)
    with ThreadPoolExecutor(max_workers=8) as pool:  # hundreds of puts: several at a time
        list(pool.map(lambda name: task.write_output(name, outputs[name]), outputs))
    task.write_output(RESULT_OUTPUT, final)
    record_run(task.id, task.attempt, result)
    return result
