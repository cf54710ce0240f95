"""A chain's world in the emulator and identical deliveries of its triggers at the same moment: what the
submit-once tests and ``bench.duplicates`` race against the glue.

AWS delivers SNS messages, EventBridge events and Scheduler invocations at least once, and Lambda retries
failed async invocations. Each kind is delivered on as many threads as asked, released by one barrier, each
with its own boto3 session (as separate Lambda execution environments would be).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import botocore.session

from pipeline_constructs.fleet.worker.status import TABLE_KEYS
from pipeline_constructs.glue import handler as glue
from pipeline_constructs.ops import operator
from tests.support.botocore_models import MODELS
from tests.support.resources import create_batch_queue

#: The job a start by hand submits.
START_JOB_NAME = "feeds-rerun-42-watcher"
KINDS = ("sns message link", "success link", "schedule starting a chain", "schedule with constant input", "start")


#: Batch calls, as a fault proxy's rule matches them (REST-JSON: by method and path).
SUBMIT_JOB = {"method": "POST", "path_contains": "/v1/submitjob"}
LIST_JOBS = {"method": "POST", "path_contains": "/v1/listjobs"}
BATCH_SERVER_ERROR = (
    500,
    {"Content-Type": "application/json", "x-amzn-ErrorType": "ServerException"},
    b'{"message": "injected: server error"}',
)


def answer_lost() -> None:
    """A proxy action after forwarding: the call landed, and the caller's connection is cut before the answer."""
    raise ConnectionResetError("injected: the answer is lost")


class GlueWorld:
    """A job queue, three job definitions, a status table and the glue config of one chain, in the emulator."""

    def __init__(self, session: Any) -> None:
        name = uuid.uuid4().hex[:8]
        self.queue, self.definitions = create_batch_queue(session, name, ["watcher", "consumer", "report"])
        self.table = session.resource("dynamodb").create_table(
            TableName=f"guard{name}", BillingMode="PAY_PER_REQUEST", **TABLE_KEYS
        )
        self.topic = f"arn:aws:sns:us-east-1:123456789012:feeds{name}"
        self.config = {
            "table": self.table.name,
            "chains": {
                "feeds": {
                    "jobQueue": self.queue,
                    "topicArn": self.topic,
                    "table": self.table.name,
                    "steps": [
                        {"name": "watcher", "jobDefinition": self.definitions["watcher"], "link": {"kind": "message"}},
                        {
                            "name": "consumer",
                            "jobDefinition": self.definitions["consumer"],
                            "link": {"kind": "success"},
                        },
                        {"name": "report", "jobDefinition": self.definitions["report"]},
                    ],
                }
            },
        }
        self.batch = session.client("batch")

    def jobs_named(self, name: str) -> list[dict[str, Any]]:
        listed = self.batch.list_jobs(jobQueue=self.queue, filters=[{"name": "JOB_NAME", "values": [name]}])
        return [job for job in listed["jobSummaryList"] if job["jobName"] == name]

    def trigger(self, kind: str) -> tuple[Callable[[Any], dict[str, Any]], str]:
        """(deliver(session) -> what it submitted, the job name it submits) for one trigger kind."""
        if kind == "start":
            return self.start_by_hand(), START_JOB_NAME
        event, name = self.events()[kind]

        def deliver(session: Any) -> dict[str, Any]:
            handled = glue.Glue(self.config, batch=session.client("batch"), dynamodb=session.resource("dynamodb"))
            return handled.handle(json.loads(json.dumps(event)))["submitted"][0]

        return deliver, name

    def start_by_hand(self, endpoint: str | None = None) -> Callable[[Any], dict[str, Any]]:
        """start(session): the operator's `pipeline start` of the chain (its calls to ``endpoint`` if given)."""
        chain = {
            "jobQueue": self.queue,
            "steps": ["watcher"],
            "jobDefinitions": {"watcher": self.definitions["watcher"]},
            "table": self.table.name,
        }

        def start(session: Any) -> dict[str, Any]:
            manifest = {"chains": {"feeds": chain}}
            target = operator.Target(
                stack="bench", region="us-east-1", manifest=manifest, session=session, endpoint=endpoint
            )
            return operator.start(target, "feeds", {"LIMIT": "3"}, run="feeds-rerun-42")

        return start

    def events(self) -> dict[str, tuple[dict[str, Any], str]]:
        sns = {
            "Records": [
                {
                    "EventSource": "aws:sns",
                    "Sns": {"MessageId": "m-dup-1", "TopicArn": self.topic, "Message": "{}", "MessageAttributes": {}},
                }
            ]
        }
        success = {
            "detail-type": "Batch Job State Change",
            "source": "aws.batch",
            "detail": {
                "jobName": "feeds-consumer-x",
                "jobId": "job-dup-1",
                "status": "SUCCEEDED",
                "jobDefinition": self.definitions["consumer"],
                "container": {"environment": [{"name": "PIPELINE_CHAIN_RUN", "value": "feeds-run-1"}]},
            },
        }
        constant = {
            "jobName": "nightly-check",
            "jobQueue": self.queue,
            "jobDefinition": self.definitions["watcher"],
            "containerOverrides": {"environment": [{"name": "LIMIT", "value": 5}]},
            "parameters": {"dry": True},
            "scheduledTime": "2026-11-24T03:00:00Z",
        }
        return {
            "sns message link": (sns, "feeds-consumer-m-dup-1"),
            "success link": (success, "feeds-report-job-dup-1"),
            "schedule starting a chain": (
                {"chain": "feeds", "scheduledTime": "2026-11-24T03:00:00Z"},
                "feeds-watcher-2026-11-24T03-00-00Z",
            ),
            "schedule with constant input": (constant, "nightly-check-2026-11-24T03-00-00Z"),
        }


def deliver_at_once(count: int, deliver: Callable[[Any], Any]) -> list[Any]:
    """Run ``deliver(session)`` on ``count`` threads released by one barrier; exceptions are returned.

    Each thread has its own session, clients and connections; they share only botocore's loader of the
    service models, which every new session would otherwise parse again (90 ms of CPU a session, which on
    two cores slowed the emulator serving the race more than the race itself)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def one(index: int) -> None:
        core = botocore.session.get_session()
        core.register_component("data_loader", MODELS)
        session = boto3.session.Session(botocore_session=core)
        barrier.wait()
        try:
            results[index] = deliver(session)
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def sdk_attempts(client: Any) -> int:
    """How many times ``client`` sends one call (its retry mode's attempts; the glue's Batch client: once)."""
    retries = client.meta.config.retries or {}
    if retries.get("total_max_attempts"):
        return int(retries["total_max_attempts"])
    dynamodb = client.meta.service_model.service_name == "dynamodb"
    if retries.get("mode", "legacy") == "legacy":  # botocore's legacy table: DynamoDB retries 10 times
        return 11 if dynamodb else 5
    return 4 if dynamodb else 3  # standard mode gives DynamoDB one attempt more (botocore.retries.standard)
