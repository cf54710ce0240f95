"""Entry point: ``python -m pipeline_constructs.fleet.worker`` (``python -m pipeline_worker`` on an instance)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

import boto3
from botocore.config import Config

from .config import ConfigError, WorkerConfig
from .isolation import TaskProcesses
from .metadata import InstanceMetadata
from .runtime import Worker
from .task import load_task_function

_STANDARD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonLines(logging.Formatter):
    """One JSON object per line, so journald / CloudWatch Logs Insights can query the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD_FIELDS})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def main() -> int:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        config = WorkerConfig.from_env()
        load_task_function(config.task)  # fail here, once, not in every task process
    except (ConfigError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Enough connections for every task thread plus the heartbeat; standard retries with back-off.
    boto_settings = {"max_pool_connections": config.concurrency + 10, "retries": {"mode": "standard"}}
    boto_config = Config(**boto_settings)
    dynamodb = boto3.resource("dynamodb", config=boto_config) if config.table else None
    tasks = TaskProcesses(
        config.task,
        size=config.concurrency,
        bucket=config.bucket,
        prefix=config.prefix,
        timeout=config.task_timeout or None,
        boto_settings=boto_settings,
    )
    worker = Worker(
        config,
        tasks,
        sqs=boto3.client("sqs", config=boto_config),
        s3=boto3.client("s3", config=boto_config),
        table=dynamodb.Table(config.table) if dynamodb else None,
        autoscaling=boto3.client("autoscaling", config=boto_config),
        metadata=InstanceMetadata(config.metadata_endpoint) if config.spot_watch != "off" else None,
    )

    def on_signal(signum: int, _frame: Any) -> None:
        worker.request_stop(signal.Signals(signum).name, release_now=False)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = worker.run()
    # Slot threads still waiting on killed task processes hold nothing any more: end them with the process
    # instead of letting the interpreter wait for them at exit.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
