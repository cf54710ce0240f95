"""Identical deliveries of every trigger kind at the same moment: how many Batch jobs do they submit?

AWS delivers SNS messages, EventBridge events and Scheduler invocations at least once, and Lambda retries
failed async invocations. Each kind is delivered ``deliveries`` times on as many threads released by one
barrier, each with its own boto3 session (as separate Lambda execution environments would be).

    python -m bench.duplicates [--deliveries 20]
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import botocore.loaders
import botocore.session

from pipeline_constructs import operator
from pipeline_constructs.glue import handler as glue
from pipeline_constructs.worker.status import TABLE_KEYS

KINDS = ("sns message link", "success link", "schedule starting a chain", "schedule with constant input", "start")


def create_batch_queue(session: Any, name: str, steps: list[str]) -> tuple[str, dict[str, str]]:
    """A Batch job queue and one job definition per step in the emulator: (queue ARN, step -> definition ARN)."""
    batch = session.client("batch")
    role = session.client("iam").create_role(RoleName=f"r{name}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName=f"ce{name}", type="UNMANAGED", serviceRole=role
    )["computeEnvironmentArn"]
    queue = batch.create_job_queue(
        jobQueueName=f"q{name}",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
    )["jobQueueArn"]
    definitions = {
        step: batch.register_job_definition(
            jobDefinitionName=f"{step}{name}",
            type="container",
            containerProperties={"image": "busybox", "vcpus": 1, "memory": 128},
        )["jobDefinitionArn"]
        for step in steps
    }
    return queue, definitions


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
            manifest = {
                "chains": {
                    "feeds": {
                        "jobQueue": self.queue,
                        "steps": ["watcher"],
                        "jobDefinitions": {"watcher": self.definitions["watcher"]},
                        "table": self.table.name,
                    }
                }
            }

            def start(session: Any) -> dict[str, Any]:
                target = operator.Target(stack="bench", region="us-east-1", manifest=manifest, session=session)
                return operator.start(target, "feeds", {"LIMIT": "3"}, run="feeds-rerun-42")

            return start, "feeds-rerun-42-watcher"
        event, name = self.events()[kind]

        def deliver(session: Any) -> dict[str, Any]:
            handled = glue.Glue(self.config, batch=session.client("batch"), dynamodb=session.resource("dynamodb"))
            return handled.handle(json.loads(json.dumps(event)))["submitted"][0]

        return deliver, name

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


class ModelsLoader(botocore.loaders.Loader):
    """botocore's loader of the service models, for many sessions of one process: it loads one file at a time,
    so sessions starting together on several threads parse each model once, not once each; boto3 appends its
    data directory to the loader of every session it makes, to this one only once."""

    _loading = threading.RLock()

    def __init__(self) -> None:
        super().__init__()
        self._search_paths = _PathsOnce(self._search_paths)

    def load_data_with_path(self, name: str) -> Any:
        with self._loading:
            return super().load_data_with_path(name)

    def load_service_model(self, *args: Any, **kwargs: Any) -> Any:
        with self._loading:
            return super().load_service_model(*args, **kwargs)


class _PathsOnce(list):
    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


#: The loader of every session :func:`deliver_at_once` makes (and, in the tests, of every session).
MODELS = ModelsLoader()


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


def measure(deliveries: int = 20) -> dict[str, dict[str, int]]:
    """Per trigger kind: deliveries, jobs submitted, deliveries that failed (all in a fresh world)."""
    figures = {}
    for kind in KINDS:
        world = GlueWorld(boto3.session.Session())
        deliver, name = world.trigger(kind)
        results = deliver_at_once(deliveries, deliver)
        figures[kind] = {
            "deliveries": deliveries,
            "jobs": len(world.jobs_named(name)),
            "errors": sum(1 for r in results if isinstance(r, Exception)),
        }
    return figures


def main() -> None:
    from bench.emulator import moto_endpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20)
    args = parser.parse_args()
    with moto_endpoint():
        print(json.dumps(measure(args.deliveries), indent=2))


if __name__ == "__main__":
    main()
