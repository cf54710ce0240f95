"""Submit once, attacked: identical deliveries of every trigger kind at the same moment, dead and slow holders.

AWS delivers SNS messages, EventBridge events and Scheduler invocations at least once, and Lambda retries
failed async invocations, so the same trigger reaching the glue function several times at once is normal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import boto3
import pytest
from conftest import ROOT, create_batch_queue, create_status_table
from test_glue_handler import batch_event, sns_event

from pipeline_constructs import operator
from pipeline_constructs.glue import handler as glue

DELIVERIES = 20


@pytest.fixture
def world(aws):
    """A job queue with three job definitions, a status table and the glue config of one chain, in moto."""
    name = uuid.uuid4().hex[:8]
    queue, definitions = create_batch_queue(aws.session, name, ["watcher", "consumer", "report"])
    table = create_status_table(aws.dynamodb, f"guard{name}")
    topic = f"arn:aws:sns:us-east-1:123456789012:feeds{name}"
    config = {
        "table": table.name,
        "chains": {
            "feeds": {
                "jobQueue": queue,
                "topicArn": topic,
                "table": table.name,
                "steps": [
                    {"name": "watcher", "jobDefinition": definitions["watcher"], "link": {"kind": "message"}},
                    {"name": "consumer", "jobDefinition": definitions["consumer"], "link": {"kind": "success"}},
                    {"name": "report", "jobDefinition": definitions["report"]},
                ],
            }
        },
    }
    w = type("World", (), {})()
    w.queue, w.definitions, w.table, w.topic, w.config = queue, definitions, table, topic, config
    w.batch = aws.session.client("batch")
    return w


def jobs_named(world, name: str) -> list[dict]:
    listed = world.batch.list_jobs(jobQueue=world.queue, filters=[{"name": "JOB_NAME", "values": [name]}])
    return [job for job in listed["jobSummaryList"] if job["jobName"] == name]


def deliver_at_once(count: int, deliver) -> list:
    """Run ``deliver()`` on ``count`` threads released by one barrier; each gets its own boto3 session."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(index: int) -> None:
        session = boto3.session.Session()
        barrier.wait()
        try:
            results[index] = deliver(session)
        except Exception as error:  # kept, so the test shows it
            results[index] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def glue_delivery(world, event):
    def deliver(session):
        return glue.Glue(world.config, batch=session.client("batch"), dynamodb=session.resource("dynamodb")).handle(
            json.loads(json.dumps(event))
        )

    return deliver


def trigger_events(world) -> dict[str, tuple[dict, str]]:
    """Each trigger kind the glue takes: (event, the job name it submits)."""
    constant = {
        "jobName": "nightly-check",
        "jobQueue": world.queue,
        "jobDefinition": world.definitions["watcher"],
        "containerOverrides": {"environment": [{"name": "LIMIT", "value": 5}]},
        "parameters": {"dry": True},
        "scheduledTime": "2026-11-24T03:00:00Z",
    }
    return {
        "sns message link": (sns_event(world.topic, message_id="m-dup-1"), "feeds-consumer-m-dup-1"),
        "success link": (
            batch_event(world.definitions["consumer"], "SUCCEEDED", job_id="job-dup-1"),
            "feeds-report-job-dup-1",
        ),
        "schedule starting a chain": (
            {"chain": "feeds", "scheduledTime": "2026-11-24T03:00:00Z"},
            "feeds-watcher-2026-11-24T03-00-00Z",
        ),
        "schedule with constant input": (constant, "nightly-check-2026-11-24T03-00-00Z"),
    }


@pytest.mark.parametrize(
    "kind", ["sns message link", "success link", "schedule starting a chain", "schedule with constant input"]
)
def test_20_identical_deliveries_at_the_same_moment_submit_one_job(world, kind):
    event, name = trigger_events(world)[kind]
    results = deliver_at_once(DELIVERIES, glue_delivery(world, event))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    (job,) = jobs_named(world, name)
    reported = {r["submitted"][0]["jobId"] for r in results}
    assert reported == {job["jobId"]}, "every delivery reports the one job"
    assert sum(1 for r in results if r["submitted"][0].get("duplicate") != "true") == 1


def test_20_identical_pipeline_starts_at_the_same_moment_submit_one_job(world, aws_env):
    manifest = {
        "chains": {
            "feeds": {
                "jobQueue": world.queue,
                "steps": ["watcher"],
                "jobDefinitions": {"watcher": world.definitions["watcher"]},
                "table": world.table.name,
            }
        }
    }

    def deliver(session):
        target = operator.Target(stack="s", region="us-east-1", manifest=manifest, session=session)
        return operator.start(target, "feeds", {"LIMIT": "3"}, run="feeds-rerun-42")

    results = deliver_at_once(DELIVERIES, deliver)
    assert not [r for r in results if isinstance(r, Exception)]
    (job,) = jobs_named(world, "feeds-rerun-42-watcher")
    assert {r["jobId"] for r in results} == {job["jobId"]}


CHILD = """
import json, sys
from pipeline_constructs.glue import handler
sys.stdin.readline()  # released together
print(json.dumps(handler.handler(json.loads(sys.argv[1]))))
"""


def test_identical_deliveries_in_cold_processes_submit_one_job(world, aws_env):
    """Separate processes, as separate Lambda execution environments would be: nothing shared but the table."""
    event, name = trigger_events(world)["sns message link"]
    env = {**aws_env, "GLUE_CONFIG": json.dumps(world.config), "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(event)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    time.sleep(1.5)  # let every interpreter import boto3 first, so they really race
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    outputs = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    (job,) = jobs_named(world, name)
    assert {o["submitted"][0]["jobId"] for o in outputs} == {job["jobId"]}


def guard_item(world, sk: str, **fields) -> dict:
    item = {"pk": "trigger#feeds", "sk": sk, "state": "SUBMITTING", "owner": "dead-holder", "jobName": "x"} | fields
    world.table.put_item(Item=item)
    return item


def test_a_holder_that_died_after_submitting_is_taken_over_without_a_second_job(world, aws):
    event, name = trigger_events(world)["sns message link"]
    holder_job = world.batch.submit_job(jobName=name, jobQueue=world.queue, jobDefinition=world.definitions["consumer"])
    guard_item(world, "sns#m-dup-1", lease_until=1)  # lease long expired, job id never recorded
    result = glue.Glue(world.config, batch=world.batch, dynamodb=aws.dynamodb).handle(event)
    assert result["submitted"][0]["jobId"] == holder_job["jobId"]
    assert len(jobs_named(world, name)) == 1
    row = world.table.get_item(Key={"pk": "trigger#feeds", "sk": "sns#m-dup-1"})["Item"]
    assert row["state"] == "SUBMITTED" and row["jobId"] == holder_job["jobId"]


def test_a_holder_that_died_before_submitting_is_taken_over_and_the_job_submitted(world, aws):
    event, name = trigger_events(world)["sns message link"]
    guard_item(world, "sns#m-dup-1", lease_until=1)
    result = glue.Glue(world.config, batch=world.batch, dynamodb=aws.dynamodb).handle(event)
    (job,) = jobs_named(world, name)
    assert result["submitted"][0]["jobId"] == job["jobId"]


def test_a_live_holder_is_waited_for_and_then_handed_back_to_a_retry(world, aws):
    guard_item(world, "sns#m-dup-1", lease_until=int(time.time()) + 600)
    guard = glue.SubmitGuard(world.table, world.batch, wait_seconds=0.6)
    _, name = trigger_events(world)["sns message link"]
    request = {"jobName": name, "jobQueue": world.queue, "jobDefinition": world.definitions["consumer"]}
    started = time.monotonic()
    with pytest.raises(glue.InFlight, match="being submitted by another delivery"):
        guard.submit_once("trigger#feeds", "sns#m-dup-1", request)
    assert time.monotonic() - started >= 0.6
    assert jobs_named(world, name) == []


def test_a_failed_submit_lets_the_retry_take_over_at_once_and_submit_one_job(world, aws):
    guard = glue.SubmitGuard(world.table, world.batch)
    _, name = trigger_events(world)["sns message link"]
    bad = {"jobName": name, "jobQueue": world.queue, "jobDefinition": "arn:aws:batch:us-east-1:1:job-definition/no:1"}
    with pytest.raises(Exception):  # noqa: B017 - whatever Batch answers, it must surface
        guard.submit_once("trigger#feeds", "sns#m-dup-1", bad)
    row = world.table.get_item(Key={"pk": "trigger#feeds", "sk": "sns#m-dup-1"}, ConsistentRead=True)["Item"]
    assert row["state"] == "SUBMITTING" and row["lease_until"] == 0
    good = bad | {"jobDefinition": world.definitions["consumer"]}
    started = time.monotonic()
    result = guard.submit_once("trigger#feeds", "sns#m-dup-1", good)
    assert time.monotonic() - started < 5
    (job,) = jobs_named(world, name)
    assert result["jobId"] == job["jobId"]


def test_glue_without_a_guard_table_refuses_rather_than_submit_unguarded(world, aws):
    config = dict(world.config)
    config.pop("table")
    event, _ = trigger_events(world)["schedule with constant input"]
    with pytest.raises(RuntimeError, match="names no status table"):
        glue.Glue(config, batch=world.batch, dynamodb=aws.dynamodb).handle(event)
