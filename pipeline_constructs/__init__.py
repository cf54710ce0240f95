"""pipeline_constructs: AWS CDK constructs for batch data pipelines on spot capacity.

Building blocks (secure, cheap defaults, used by every pattern):
:class:`DataBucket`, :class:`TaskQueue`, :func:`secure_topic`, :class:`StatusStore`, :class:`PipelineNetwork`,
:func:`pipeline_log_group`. Patterns: :class:`SpotWorkerFleet`, :class:`BatchChain` (with :class:`ChainStep`,
:class:`ChainLink`), :class:`ScheduledTrigger`; :class:`PipelineAlarms`.

Names are imported lazily, so the runtime code shipped inside this package (``pipeline_constructs.worker``)
imports without the AWS CDK and its Node.js runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchChain": "pipeline_constructs.batch_chain",
    "ChainLink": "pipeline_constructs.batch_chain",
    "ChainStep": "pipeline_constructs.batch_chain",
    "StepImage": "pipeline_constructs.batch_chain",
    "GlueFunction": "pipeline_constructs.glue_function",
    "PipelineAlarms": "pipeline_constructs.alarms",
    "ScheduledTrigger": "pipeline_constructs.scheduled_trigger",
    "DataBucket": "pipeline_constructs.data_bucket",
    "PipelineNetwork": "pipeline_constructs.network",
    "SpotWorkerFleet": "pipeline_constructs.spot_worker_fleet",
    "StatusStore": "pipeline_constructs.status_store",
    "TaskQueue": "pipeline_constructs.task_queue",
    "WorkerDelivery": "pipeline_constructs.spot_worker_fleet",
    "failure_queue": "pipeline_constructs.task_queue",
    "pipeline_log_group": "pipeline_constructs.logs",
    "secure_topic": "pipeline_constructs.topic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline_constructs' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
