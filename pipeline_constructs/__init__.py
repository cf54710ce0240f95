"""pipeline_constructs: AWS CDK constructs for batch data pipelines on spot capacity.

Building blocks (secure, cheap defaults, used by every pattern):
:class:`DataBucket`, :class:`TaskQueue`, :func:`secure_topic`, :class:`StatusStore`, :class:`PipelineNetwork`,
:func:`pipeline_log_group`. Patterns: :class:`SpotWorkerFleet` (its task a :class:`WorkerTask`: a Python
function, a command or a local HTTP app), :class:`BatchChain` (with :class:`ChainStep`, :class:`ChainLink`, and
:class:`FanOut` for a step that maps over a list), :class:`ScheduledTrigger`; :class:`PipelineAlarms`,
:class:`PipelineDashboard`. An app's last line:
:func:`synth_or_exit` (``app.synth()`` that fails on findings, as ``cdk synth`` does).

One folder per component, each a construct with its own runtime: ``fleet/`` (with the worker runtime,
``fleet/worker``), ``chain/``, ``glue/`` (with the glue handler), ``trigger/``, ``building_blocks/``,
``monitoring/``, ``ops/`` (the operator CLI and reports) and ``local/`` (the local run); see
docs/architecture.md. Names are imported lazily, so the runtime code shipped inside this package
(``pipeline_constructs.fleet.worker``, ``pipeline_constructs.glue.handler``) imports without the AWS CDK and its
Node.js runtime. The flat module paths of earlier releases still import (:mod:`._moved`).
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline_constructs import _moved

_moved.install()

_EXPORTS = {
    "BatchChain": "pipeline_constructs.chain.construct",
    "ChainLink": "pipeline_constructs.chain.links",
    "ChildFailure": "pipeline_constructs.chain.fan_out",
    "FanOut": "pipeline_constructs.chain.fan_out",
    "ChainStep": "pipeline_constructs.chain.steps",
    "StepImage": "pipeline_constructs.chain.steps",
    "GlueFunction": "pipeline_constructs.glue.construct",
    "PipelineAlarms": "pipeline_constructs.monitoring.alarms",
    "PipelineDashboard": "pipeline_constructs.monitoring.dashboard",
    "ScheduledTrigger": "pipeline_constructs.trigger.construct",
    "DataBucket": "pipeline_constructs.building_blocks.data_bucket",
    "PipelineNetwork": "pipeline_constructs.building_blocks.network",
    "SpotWorkerFleet": "pipeline_constructs.fleet.construct",
    "StatusStore": "pipeline_constructs.building_blocks.status_store",
    "TaskQueue": "pipeline_constructs.building_blocks.task_queue",
    "WorkerDelivery": "pipeline_constructs.fleet.construct",
    "WorkerTask": "pipeline_constructs.fleet.tasks",
    "failure_queue": "pipeline_constructs.building_blocks.task_queue",
    "pipeline_log_group": "pipeline_constructs.building_blocks.logs",
    "secure_topic": "pipeline_constructs.building_blocks.topic",
    "synth_or_exit": "pipeline_constructs.building_blocks.validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline_constructs' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
