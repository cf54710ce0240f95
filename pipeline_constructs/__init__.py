"""pipeline_constructs: AWS CDK constructs for batch data pipelines on spot capacity.

Building blocks (secure, cheap defaults, used by every pattern):
:class:`DataBucket`, :class:`TaskQueue`, :func:`secure_topic`, :class:`StatusStore`, :class:`PipelineNetwork`,
:func:`pipeline_log_group`.
"""

from pipeline_constructs.data_bucket import DataBucket
from pipeline_constructs.logs import pipeline_log_group
from pipeline_constructs.network import PipelineNetwork
from pipeline_constructs.status_store import StatusStore
from pipeline_constructs.task_queue import TaskQueue, failure_queue
from pipeline_constructs.topic import secure_topic

__all__ = [
    "DataBucket",
    "PipelineNetwork",
    "StatusStore",
    "TaskQueue",
    "failure_queue",
    "pipeline_log_group",
    "secure_topic",
]
