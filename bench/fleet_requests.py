"""SpotWorkerFleet worker: SQS requests and status-store writes per task, SQS requests per idle worker-hour.

Counted from the requests the worker's boto3 clients send (botocore ``before-send`` hooks), against an
embedded moto server. Tasks are message-only (the payload is the message itself), so S3 traffic of the
task's own data does not hide the pipeline's overhead.

    python -m bench.fleet_requests [--tasks 500] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

from botocore.config import Config

from bench.emulator import RequestCounter, moto_endpoint
from pipeline_constructs.fleet.worker.config import WorkerConfig
from pipeline_constructs.fleet.worker.isolation import TaskProcesses
from pipeline_constructs.fleet.worker.runtime import Worker
from pipeline_constructs.fleet.worker.status import TABLE_KEYS

#: The finished rows' writes, batched; besides them each task costs one UpdateItem as it starts (its look-up
#: and its attempt count in one request).
DYNAMODB_ROW_WRITES = ("PutItem", "BatchWriteItem", "DeleteItem")


def message_only_task(task) -> dict[str, Any]:
    return {"length": len(json.dumps(task.body))}


def _status_table(dynamodb: Any, name: str) -> Any:
    return dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **TABLE_KEYS)


def _resources(counter: RequestCounter) -> dict[str, Any]:
    session = counter.session
    sqs, s3, dynamodb = session.client("sqs"), session.client("s3"), session.resource("dynamodb")
    name = f"bench{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": "120",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}),
        },
    )["QueueUrl"]
    s3.create_bucket(Bucket=f"{name}-data")
    table = _status_table(dynamodb, f"{name}-status")
    return {"queue": queue, "bucket": f"{name}-data", "table": table, "sqs": sqs, "s3": s3}


def _worker(counter: RequestCounter, resources: dict[str, Any], *, wait_seconds: int, concurrency: int) -> Worker:
    config = WorkerConfig.from_env(
        {
            "PIPELINE_QUEUE_URL": resources["queue"],
            "PIPELINE_TASK": "bench.fleet_requests:message_only_task",
            "PIPELINE_BUCKET": resources["bucket"],
            "PIPELINE_TABLE": resources["table"].name,
            "PIPELINE_CONCURRENCY": str(concurrency),
            "PIPELINE_WAIT_SECONDS": str(wait_seconds),
            "PIPELINE_SPOT_WATCH": "off",
            "PIPELINE_WORKER_ID": "bench",
        }
    )
    session = counter.session
    boto_config = Config(max_pool_connections=concurrency + 10)
    tasks = TaskProcesses(config.task, size=concurrency, bucket=config.bucket, prefix="", timeout=None)
    return Worker(
        config,
        tasks,
        sqs=session.client("sqs", config=boto_config),
        s3=session.client("s3", config=boto_config),
        table=session.resource("dynamodb", config=boto_config).Table(resources["table"].name),
    )


def enqueue_tasks(sqs: Any, queue: str, count: int, *, first: int = 0) -> None:
    """Send ``count`` message-only tasks, numbered from ``first``, in batches of ten."""
    for start in range(first, first + count, 10):
        sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"key": f"task-{start + i:05d}", "payload": "x" * 64})}
                for i in range(min(10, first + count - start))
            ],
        )


def measure(tasks: int = 500, idle_seconds: float = 60.0, concurrency: int = 8) -> dict[str, float]:
    with moto_endpoint():
        setup = RequestCounter()
        resources = _resources(setup)
        enqueue_tasks(resources["sqs"], resources["queue"], tasks)

        counter = RequestCounter()
        worker = _worker(counter, resources, wait_seconds=20, concurrency=concurrency)
        thread = threading.Thread(target=worker.run, daemon=True)
        started = time.monotonic()
        thread.start()
        while worker.counts["succeeded"] < tasks:
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        # Joined at the end: its last long poll ends during the idle minute instead of adding 20 s here.
        worker.request_stop("benchmark done", release_now=False)

        idle_counter = RequestCounter()
        idle = _worker(idle_counter, resources, wait_seconds=20, concurrency=concurrency)
        idle_thread = threading.Thread(target=idle.run, daemon=True)
        idle_thread.start()
        time.sleep(idle_seconds)
        idle_sqs = idle_counter.total("sqs", ("ReceiveMessage",))
        idle.request_stop("benchmark done", release_now=False)
        for stopping in (thread, idle_thread):
            stopping.join(timeout=60)
        # Counted once the busy worker has stopped, so its shutdown requests count too.
        by_operation = dict(sorted(counter.counts.items()))
        sqs_requests = counter.total("sqs")
        dynamodb_requests = counter.total("dynamodb")
        row_writes = counter.total("dynamodb", DYNAMODB_ROW_WRITES)

    return {
        "tasks": tasks,
        "seconds": round(elapsed, 2),
        "sqs_requests_per_task": round(sqs_requests / tasks, 3),
        "status_requests_per_task": round(dynamodb_requests / tasks, 3),
        "sqs_requests_per_idle_worker_hour": round(idle_sqs * 3600 / idle_seconds),
        "sqs_requests": sqs_requests,
        "status_requests": dynamodb_requests,
        "status_row_writes": row_writes,
        "idle_seconds": idle_seconds,
        "idle_receives": idle_sqs,
        "requests_by_operation": by_operation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.tasks, args.idle_seconds), indent=2))


if __name__ == "__main__":
    main()
