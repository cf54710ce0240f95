"""The worker runtime as real processes against a moto server: nothing lost, nothing done twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, create_status_table

from pipeline_constructs.local.imds import FakeInstanceMetadata

TESTS = Path(__file__).resolve().parent


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

    def submit(self, bodies: list[dict]) -> None:
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(bodies[start : start + 10])]
            assert not self.aws.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries).get("Failed")

    def start_worker(self, aws_env: dict[str, str], **overrides: str) -> subprocess.Popen:
        env = (
            os.environ
            | aws_env
            | {
                "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
                "PIPELINE_QUEUE_URL": self.queue_url,
                "PIPELINE_BUCKET": self.bucket,
                "PIPELINE_TABLE": self.table.name,
                "PIPELINE_FLEET_NAME": self.fleet,
                "PIPELINE_TASK": "fleet_tasks:work",
                "PIPELINE_CONCURRENCY": "4",
                "PIPELINE_WAIT_SECONDS": "2",
                "PIPELINE_STATUS_FLUSH_SECONDS": "1",
                "PIPELINE_SPOT_WATCH": "off",
                "PIPELINE_WORKER_ID": f"w{len(self.processes)}",
            }
            | overrides
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline_constructs.worker"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

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
        return len(self.keys(f"intermediate/{task_id}/"))

    def status_rows(self) -> dict[str, dict]:
        items = self.table.query(
            KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": f"fleet#{self.fleet}"}
        )["Items"]
        return {item["sk"]: item for item in items}

    def stop_all(self, timeout: float = 60) -> list[int]:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=timeout) for process in self.processes]

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def pipeline(aws):
    created = []

    def make(**kwargs) -> Pipeline:
        created.append(Pipeline(aws, **kwargs))
        return created[-1]

    yield make
    for made in created:
        made.kill_all()


def test_two_workers_do_200_tasks_exactly_once_and_drain_the_queue(pipeline, aws_env):
    p = pipeline()
    task_ids = [f"task-{i:03d}" for i in range(200)]
    p.submit([{"key": task_id} for task_id in task_ids])
    p.start_worker(aws_env)
    p.start_worker(aws_env)

    wait_until(lambda: len(p.outputs()) == 200, timeout=180, interval=2, message="200 outputs")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="an empty queue")
    assert p.stop_all() == [0, 0]

    outputs = p.outputs()
    assert sorted(outputs) == task_ids
    assert set(outputs.values()) == {1}, "an output was written more than once"
    assert p.queue_counts(p.dlq_url) == (0, 0)
    rows = p.status_rows()
    states = Counter(row["state"] for sk, row in rows.items() if sk.startswith("task#"))
    assert states == {"SUCCEEDED": 200}
    workers = {sk: row for sk, row in rows.items() if sk.startswith("worker#")}
    assert {row["state"] for row in workers.values()} == {"STOPPED"}
    assert (
        sum(int(row["tasks_succeeded"]) for row in workers.values())
        + sum(int(row["tasks_duplicates"]) for row in workers.values())
        == 200
    )


def test_kill_9_mid_task_redelivers_and_completes_without_duplicate_output(pipeline, aws_env):
    p = pipeline(visibility=4)
    p.submit([{"key": "crashy", "crash_window": 60}])
    victim = p.start_worker(aws_env)
    wait_until(lambda: p.outputs().get("crashy") == 1, timeout=30, message="the early output")
    victim.kill()  # SIGKILL: no clean-up at all
    victim.wait()

    rescuer = p.start_worker(aws_env)  # nothing resubmitted: the same message must come back by itself
    wait_until(lambda: "task#crashy" in p.status_rows(), timeout=60, message="the redelivered task to finish")
    assert p.stop_all()[-1] == 0
    assert rescuer.returncode == 0
    assert p.outputs() == {"crashy": 1}
    row = p.status_rows()["task#crashy"]
    assert row["state"] == "SUCCEEDED"
    assert int(row["attempts"]) == 2
    assert p.runs("crashy") == 2


def test_poison_task_lands_in_the_dlq_and_the_status_store_says_why(pipeline, aws_env):
    p = pipeline(visibility=30, max_receive_count=2)
    p.submit([{"key": "bad", "poison": True}, {"key": "good"}])
    p.start_worker(aws_env, PIPELINE_RETRY_DELAY="0")

    wait_until(lambda: p.queue_counts(p.dlq_url)[0] == 1, timeout=60, message="the poison task in the DLQ")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="an empty queue")
    assert p.stop_all() == [0]
    (dead,) = p.aws.sqs.receive_message(QueueUrl=p.dlq_url, WaitTimeSeconds=1)["Messages"]
    assert json.loads(dead["Body"])["key"] == "bad"
    row = p.status_rows()["task#bad"]
    assert row["state"] == "FAILED"
    assert int(row["attempts"]) == 2
    assert row["error"] == "ValueError: poison task bad"
    assert p.runs("bad") == 2
    assert p.outputs() == {"good": 1}


def test_spot_notice_releases_in_flight_tasks_within_5_seconds_and_exits_0(pipeline, aws_env):
    imds = FakeInstanceMetadata()
    p = pipeline(visibility=600)
    p.submit([{"key": f"long-{i}", "sleep": 120} for i in range(3)])
    worker = p.start_worker(
        aws_env,
        PIPELINE_SPOT_WATCH="on",
        PIPELINE_METADATA_ENDPOINT=imds.endpoint,
        PIPELINE_SPOT_POLL_SECONDS="1",
        PIPELINE_PREFETCH="0",
        PIPELINE_CONCURRENCY="3",
    )
    wait_until(lambda: p.queue_counts() == (0, 3), timeout=30, message="3 tasks in flight")
    wait_until(lambda: sum(p.runs(f"long-{i}") for i in range(3)) == 3, timeout=30, message="3 running tasks")

    imds.interrupt()
    noticed = time.monotonic()
    wait_until(lambda: p.queue_counts()[0] == 3, timeout=5, interval=0.2, message="released tasks")
    released_after = time.monotonic() - noticed
    assert worker.wait(timeout=60) == 0
    imds.close()
    assert released_after < 5
    assert imds.tokens_issued >= 1
    assert p.outputs() == {}


def test_task_longer_than_the_visibility_timeout_runs_once_thanks_to_the_heartbeat(pipeline, aws_env):
    p = pipeline(visibility=3)
    p.submit([{"key": "marathon", "sleep": 10}])
    p.start_worker(aws_env)
    p.start_worker(aws_env)
    wait_until(lambda: p.outputs().get("marathon") == 1, timeout=60, message="the long task's output")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=15, message="an empty queue")
    assert p.stop_all() == [0, 0]
    assert p.runs("marathon") == 1
    row = p.status_rows()["task#marathon"]
    assert int(row["attempts"]) == 1


def test_a_redelivered_finished_task_is_acknowledged_and_forwarded_not_redone(pipeline, aws, aws_env):
    p = pipeline(visibility=30)
    downstream = aws.sqs.create_queue(QueueName=f"{p.fleet}-next")["QueueUrl"]
    marker = {"task": "done-1", "outputs": ["output/done-1/result.json"], "result": {"ok": True}}
    aws.s3.put_object(Bucket=p.bucket, Key="output/done-1/_SUCCESS", Body=json.dumps(marker))
    p.submit([{"key": "done-1"}])
    # A first delivery that never got deleted (its worker died after finishing): visible again at once.
    (first,) = aws.sqs.receive_message(QueueUrl=p.queue_url, VisibilityTimeout=0)["Messages"]
    assert first["Body"]
    p.start_worker(aws_env, PIPELINE_DOWNSTREAM_QUEUE_URL=downstream)
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="the duplicate acknowledged")
    assert p.stop_all() == [0]
    assert p.runs("done-1") == 0  # not redone
    (forwarded,) = aws.sqs.receive_message(QueueUrl=downstream, WaitTimeSeconds=1)["Messages"]
    assert json.loads(forwarded["Body"]) == {
        "key": "done-1",
        "source": p.fleet,
        "outputs": ["output/done-1/result.json"],
        "result": {"ok": True},
    }
