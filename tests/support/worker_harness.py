"""Worker processes against the emulator, for the runtime's process and fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.support import ROOT
from tests.support.resources import create_status_table


def wait_until(condition, *, timeout: float, interval: float = 0.5, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


class Pipeline:
    """A queue with its DLQ, a versioned bucket and a status table, unique to one test."""

    def __init__(self, aws, *, visibility: int = 30, max_receive_count: int = 3) -> None:
        self.aws = aws
        name = f"t{uuid.uuid4().hex[:10]}"
        self.dlq_url = aws.sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = aws.sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.queue_url = aws.sqs.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": str(visibility),
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}),
            },
        )["QueueUrl"]
        self.bucket = f"{name}-data"
        aws.s3.create_bucket(Bucket=self.bucket)
        aws.s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.table = create_status_table(aws.dynamodb, f"{name}-status")
        self.fleet = name
        self.processes: list[subprocess.Popen] = []
        self.log_paths: dict[int, Path] = {}  # by process id
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"{name}-workers-"))

    def submit(self, bodies: list[dict]) -> None:
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(bodies[start : start + 10])]
            assert not self.aws.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries).get("Failed")

    def start_worker(self, aws_env: dict[str, str], **overrides: str) -> subprocess.Popen:
        env = (
            os.environ
            | aws_env
            | {
                "PYTHONPATH": str(ROOT),
                "PIPELINE_QUEUE_URL": self.queue_url,
                "PIPELINE_BUCKET": self.bucket,
                "PIPELINE_TABLE": self.table.name,
                "PIPELINE_FLEET_NAME": self.fleet,
                "PIPELINE_TASK": "tests.support.fleet_tasks:work",
                "PIPELINE_CONCURRENCY": "4",
                "PIPELINE_WAIT_SECONDS": "1",  # short polls: a stopped worker exits within 1 s
                "PIPELINE_ACK_DELAY_SECONDS": "1",
                "PIPELINE_SPOT_WATCH": "off",
                "PIPELINE_WORKER_ID": f"w{len(self.processes)}",
            }
            | overrides
        )
        # To a file, not a pipe: nobody reads a pipe while the worker runs, and a full one would block it.
        log_path = self.log_dir / f"{env['PIPELINE_WORKER_ID']}.log"
        log = log_path.open("a")
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline_constructs.fleet.worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.processes.append(process)
        self.log_paths[process.pid] = log_path
        return process

    def start_instance_worker(self, aws_env: dict[str, str], imds, **overrides: str) -> subprocess.Popen:
        """A worker that watches an instance metadata service for notices, running three tasks at once."""
        return self.start_worker(
            aws_env,
            PIPELINE_SPOT_WATCH="on",
            PIPELINE_METADATA_ENDPOINT=imds.endpoint,
            PIPELINE_SPOT_POLL_SECONDS="1",
            PIPELINE_PREFETCH="0",
            PIPELINE_CONCURRENCY="3",
            **overrides,
        )

    def queue_counts(self, url: str | None = None) -> tuple[int, int]:
        attributes = self.aws.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def keys(self, prefix: str) -> list[str]:
        paginator = self.aws.s3.get_paginator("list_object_versions")
        return [
            version["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for version in page.get("Versions", [])
        ]

    def outputs(self) -> Counter[str]:
        """Task id -> number of result.json versions written (1 means written exactly once)."""
        return Counter(key.split("/")[1] for key in self.keys("output/") if key.endswith("/result.json"))

    def runs(self, task_id: str) -> int:
        """How many times the task started (fleet_tasks.work writes one run-<uuid> object per run)."""
        return len(self.keys(f"intermediate/{task_id}/run-"))

    def ticks(self, task_id: str) -> int:
        return len(self.keys(f"intermediate/{task_id}/tick-"))

    def task_rows(self) -> dict[str, dict]:
        return {sk.removeprefix("task#"): row for sk, row in self.status_rows().items() if sk.startswith("task#")}

    def status_rows(self) -> dict[str, dict]:
        items = self.table.query(
            KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": f"fleet#{self.fleet}"}
        )["Items"]
        return {item["sk"]: item for item in items}

    def stop_all(self, timeout: float = 60) -> list[int]:
        """SIGTERM every live worker once it has started (a SIGTERM while Python is still importing ends it
        by the signal, not by its drain: a test that found its work done early would see -15), then their
        exit codes."""
        for process in self.processes:
            if process.poll() is None:
                wait_until(
                    lambda p=process: p.poll() is not None or '"worker started"' in self.log_paths[p.pid].read_text(),
                    timeout=30,
                    interval=0.1,
                    message=f"worker {process.pid} to start before it is stopped",
                )
                process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=timeout) for process in self.processes]

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of each worker's log, for a failed test's report."""
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
