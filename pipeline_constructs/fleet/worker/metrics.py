"""Task metrics in CloudWatch's embedded metric format (EMF): log lines CloudWatch turns into metrics.

A metric published with PutMetricData would cost a request per task; an EMF line costs nothing beyond its
bytes of log, which the CloudWatch agent ships anyway. Each finished attempt logs one line whose top level
holds an ``_aws`` member naming the metrics and their dimensions, and their values beside it (the
worker's JSON log lines put a record's ``extra`` fields at the top level, so the line is the EMF document).

Dimensions stay few: the fleet only, never the task id (each distinct dimension value is a metric billed
of its own). Metrics, in the namespace ``PIPELINE_METRICS_NAMESPACE`` (default ``PipelineConstructs``):

| metric | unit | per attempt |
| --- | --- | --- |
| ``TaskDuration`` | Seconds | how long the attempt ran |
| ``TasksSucceeded`` | Count | 1 when the task is done |
| ``TasksFailed`` | Count | 1 when its last attempt failed (it goes to the DLQ) |
| ``AttemptsFailed`` | Count | 1 when the attempt failed (retried or not) |
| ``AttemptsInterrupted`` | Count | 1 when the worker stopped it (spot notice, drain, lost lease) |
| ``TaskAttempts`` | Count | the attempts a finished task took |
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

DEFAULT_NAMESPACE = "PipelineConstructs"
NAMESPACE_VARIABLE = "PIPELINE_METRICS_NAMESPACE"
FLEET_DIMENSION = "Fleet"
#: The attempt's outcome -> the count metrics that are 1 for it (the others are 0, so sums add up).
OUTCOME_COUNTS = {
    "succeeded": ("TasksSucceeded",),
    "retrying": ("AttemptsFailed",),
    "failed": ("AttemptsFailed", "TasksFailed"),
    "interrupted": ("AttemptsInterrupted",),
}
COUNT_METRICS = ("TasksSucceeded", "TasksFailed", "AttemptsFailed", "AttemptsInterrupted")

log = logging.getLogger("pipeline.worker.metrics")


def namespace() -> str:
    return os.environ.get(NAMESPACE_VARIABLE, "").strip() or DEFAULT_NAMESPACE


def emf_fields(
    namespace: str,
    dimensions: dict[str, str],
    values: dict[str, tuple[float, str]],
    *,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """The top-level members of an EMF document: ``_aws`` (one directive, all ``dimensions`` together) and
    each dimension's and metric's value. ``values``: metric name -> (value, unit)."""
    directive = {
        "Namespace": namespace,
        "Dimensions": [list(dimensions)],
        "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
    }
    milliseconds = int((time.time() if timestamp is None else timestamp) * 1000)
    return {
        "_aws": {"Timestamp": milliseconds, "CloudWatchMetrics": [directive]},
        **dimensions,
        **{name: value for name, (value, _) in values.items()},
    }


def attempt_fields(fleet: str, outcome: str, *, duration_s: float, attempts: int | None = None) -> dict[str, Any]:
    """The EMF members of one attempt of the fleet's that ended with ``outcome`` (a key of OUTCOME_COUNTS)."""
    ones = OUTCOME_COUNTS[outcome]
    values: dict[str, tuple[float, str]] = {"TaskDuration": (round(duration_s, 3), "Seconds")}
    values |= {name: (1 if name in ones else 0, "Count") for name in COUNT_METRICS}
    if attempts is not None and outcome in ("succeeded", "failed"):
        values["TaskAttempts"] = (attempts, "Count")
    return emf_fields(namespace(), {FLEET_DIMENSION: fleet}, values)


def attempt_ended(fleet: str, task_id: str, outcome: str, *, duration_s: float, attempts: int | None = None) -> None:
    """Log the attempt's EMF line (the task id travels as a property, not a dimension). Never raises: a
    metric is not worth a task."""
    try:
        fields = attempt_fields(fleet, outcome, duration_s=duration_s, attempts=attempts)
        log.info("task metrics", extra=fields | {"task": task_id, "outcome": outcome})
    except Exception:
        log.exception("task metrics not logged", extra={"task": task_id})
