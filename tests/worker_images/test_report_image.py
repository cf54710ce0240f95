"""worker_images/daily_report as a plain process: drains the finished-task queue, reports distinct tasks, deletes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tests.support import ROOT

REPORT = ROOT / "worker_images" / "daily_report" / "report.py"


def test_report_counts_every_finished_task_then_empties_the_queue(aws, aws_env):
    name = f"rep{uuid.uuid4().hex[:8]}"
    aws.s3.create_bucket(Bucket=name)
    queue = aws.sqs.create_queue(QueueName=name)["QueueUrl"]
    for i in range(23):
        stats_key = f"statistics/output/t{i}/stats.json"
        stats = {"price": {"count": 10 + i}, "quantity": {"count": 10 + i}}
        aws.s3.put_object(Bucket=name, Key=stats_key, Body=json.dumps(stats))
        body = {"key": f"t{i}", "source": "stack/Statistics", "outputs": [stats_key], "result": {"columns": 2}}
        aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
        if i < 2:  # forwarded again: its worker died after forwarding, before deleting (at least once)
            aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    aws.sqs.send_message(QueueUrl=queue, MessageBody="not json")
    environment = (
        os.environ
        | aws_env
        | {
            "PIPELINE_QUEUE_URL": queue,
            "PIPELINE_BUCKET": name,
            "PIPELINE_PREFIX": "reports/daily_report/",
            "PIPELINE_CHAIN_RUN": "run-1",
        }
    )
    result = subprocess.run([sys.executable, str(REPORT)], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(aws.s3.get_object(Bucket=name, Key="reports/daily_report/run-1/report.json")["Body"].read())
    assert report["tasks"] == 23, "each task counted once, however often it was forwarded"
    assert report["duplicate_messages"] == 2
    assert report["rows"] == sum(10 + i for i in range(23))
    assert report["columns"] == ["price", "quantity"]
    assert len(report["unreadable_messages"]) == 1
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}


def test_report_without_a_queue_names_the_variable(aws_env):
    environment = os.environ | aws_env | {"PIPELINE_QUEUE_URL": "", "PIPELINE_BUCKET": "b"}
    result = subprocess.run([sys.executable, str(REPORT)], env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "PIPELINE_QUEUE_URL is required" in result.stderr
