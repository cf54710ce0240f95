"""worker_images/daily_report as a plain process: drains the finished-task queue, reports distinct tasks, deletes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.support import ROOT

REPORT = ROOT / "worker_images" / "daily_report" / "report.py"


def finished_tasks(aws, count: int = 23) -> tuple[str, str]:
    """A bucket with each task's stats and a queue of their forwards, two of them forwarded twice and one
    message unreadable: (bucket, queue URL)."""
    name = f"rep{uuid.uuid4().hex[:8]}"
    aws.s3.create_bucket(Bucket=name)
    queue = aws.sqs.create_queue(QueueName=name)["QueueUrl"]
    for i in range(count):
        stats_key = f"statistics/output/t{i}/stats.json"
        stats = {"price": {"count": 10 + i}, "quantity": {"count": 10 + i}}
        aws.s3.put_object(Bucket=name, Key=stats_key, Body=json.dumps(stats))
        body = {"key": f"t{i}", "source": "stack/Statistics", "outputs": [stats_key], "result": {"columns": 2}}
        aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
        if i < 2:  # forwarded again: its worker died after forwarding, before deleting (at least once)
            aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    aws.sqs.send_message(QueueUrl=queue, MessageBody="not json")
    return name, queue


def run_report(aws_env, bucket: str, queue: str, run: str = "run-1") -> subprocess.CompletedProcess:
    environment = (
        os.environ
        | aws_env
        | {
            "PIPELINE_QUEUE_URL": queue,
            "PIPELINE_BUCKET": bucket,
            "PIPELINE_PREFIX": "reports/daily_report/",
            "PIPELINE_CHAIN_RUN": run,
        }
    )
    return subprocess.run([sys.executable, str(REPORT)], env=environment, capture_output=True, text=True, timeout=120)


def read_report(aws, bucket: str, run: str = "run-1") -> dict:
    return json.loads(aws.s3.get_object(Bucket=bucket, Key=f"reports/daily_report/{run}/report.json")["Body"].read())


def test_report_counts_every_finished_task_then_empties_the_queue(aws, aws_env):
    name, queue = finished_tasks(aws)
    result = run_report(aws_env, name, queue)
    assert result.returncode == 0, result.stderr
    report = read_report(aws, name)
    assert report["tasks"] == 23, "each task counted once, however often it was forwarded"
    assert report["duplicate_messages"] == 2
    assert report["rows"] == sum(10 + i for i in range(23))
    assert report["columns"] == ["price", "quantity"]
    assert len(report["unreadable_messages"]) == 1
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}


def test_a_retry_of_an_attempt_that_drained_the_queue_keeps_the_report(aws, aws_env):
    """Batch retries an attempt that died after it drained and deleted: the retry finds the queue empty."""
    name, queue = finished_tasks(aws)
    assert run_report(aws_env, name, queue).returncode == 0
    first = read_report(aws, name)
    retry = run_report(aws_env, name, queue)
    assert retry.returncode == 0, retry.stderr
    assert read_report(aws, name) == first
    assert first["tasks"] == 23


def test_a_retry_adds_what_it_drains_and_counts_a_returned_message_once(aws, aws_env):
    name, queue = finished_tasks(aws, count=5)
    assert run_report(aws_env, name, queue).returncode == 0
    # Two more finish before the retry; one of the first five comes back (its delete was lost).
    for key in ("t5", "t6", "t0"):
        body = {"key": key, "source": "stack/Statistics", "outputs": []}
        aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    assert run_report(aws_env, name, queue).returncode == 0
    report = read_report(aws, name)
    assert report["tasks"] == 7
    assert report["duplicate_messages"] == 3


class RefusingDeletes:
    """An SQS client whose DeleteMessageBatch refuses the first entry of the first ``refusals`` calls."""

    def __init__(self, sqs, refusals: int) -> None:
        self.sqs, self.refusals, self.calls = sqs, refusals, 0

    def __getattr__(self, name):
        return getattr(self.sqs, name)

    def delete_message_batch(self, *, QueueUrl, Entries):
        self.calls += 1
        if self.calls > self.refusals:
            return self.sqs.delete_message_batch(QueueUrl=QueueUrl, Entries=Entries)
        refused, rest = Entries[0], Entries[1:]
        done = self.sqs.delete_message_batch(QueueUrl=QueueUrl, Entries=rest) if rest else {}
        failure = {"Id": refused["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
        return done | {"Failed": [failure]}


def load_report_module():
    spec = importlib.util.spec_from_file_location("daily_report_under_test", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("refusals", "fails"), [(2, False), (3, True)])
def test_a_refused_delete_is_tried_again_then_fails_the_job_by_count(aws, refusals, fails):
    report = load_report_module()
    name, queue = finished_tasks(aws, count=3)
    environment = {"PIPELINE_QUEUE_URL": queue, "PIPELINE_BUCKET": name, "PIPELINE_CHAIN_RUN": "r"}
    sqs = RefusingDeletes(aws.sqs, refusals)
    if fails:
        with pytest.raises(report.DeleteError, match="1 messages could not be deleted after 3 tries"):
            report.run(environment, sqs=sqs, s3=aws.s3)
    else:
        assert report.run(environment, sqs=sqs, s3=aws.s3)["tasks"] == 3
    left = aws.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert left["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == ("1" if fails else "0")


def test_report_without_a_queue_names_the_variable(aws_env):
    environment = os.environ | aws_env | {"PIPELINE_QUEUE_URL": "", "PIPELINE_BUCKET": "b"}
    result = subprocess.run([sys.executable, str(REPORT)], env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "PIPELINE_QUEUE_URL is required" in result.stderr
