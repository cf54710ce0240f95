"""Submit once, attacked: identical deliveries of every trigger kind at the same moment, dead and slow holders.

AWS delivers SNS messages, EventBridge events and Scheduler invocations at least once, and Lambda retries
failed async invocations, so the same trigger reaching the glue function several times at once is normal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipeline_constructs.glue import handler as glue
from tests.support import ROOT
from tests.support.glue_world import KINDS, GlueWorld, deliver_at_once

DELIVERIES = 20


@pytest.fixture
def world(aws) -> GlueWorld:
    return GlueWorld(aws.session)


def glue_for(world: GlueWorld, aws) -> glue.Glue:
    return glue.Glue(world.config, batch=world.batch, dynamodb=aws.dynamodb)


@pytest.mark.parametrize("kind", KINDS)
def test_20_identical_deliveries_at_the_same_moment_submit_one_job(world, kind):
    deliver, name = world.trigger(kind)
    results = deliver_at_once(DELIVERIES, deliver)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    (job,) = world.jobs_named(name)
    assert {r["jobId"] for r in results} == {job["jobId"]}, "every delivery reports the one job"
    assert sum(1 for r in results if r.get("duplicate") != "true") == 1


CHILD = """
import json, sys
from pipeline_constructs.glue import handler
sys.stdin.readline()  # released together
print(json.dumps(handler.handler(json.loads(sys.argv[1]))))
"""


def test_identical_deliveries_in_cold_processes_submit_one_job(world, aws_env):
    """Separate processes, as separate Lambda execution environments would be: nothing shared but the table."""
    event, name = world.events()["sns message link"]
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
    (job,) = world.jobs_named(name)
    assert {o["submitted"][0]["jobId"] for o in outputs} == {job["jobId"]}


def guard_item(world, sk: str, **fields) -> dict:
    item = {"pk": "trigger#feeds", "sk": sk, "state": "SUBMITTING", "owner": "dead-holder", "jobName": "x"} | fields
    world.table.put_item(Item=item)
    return item


def test_a_holder_that_died_after_submitting_is_taken_over_without_a_second_job(world, aws):
    event, name = world.events()["sns message link"]
    holder_job = world.batch.submit_job(jobName=name, jobQueue=world.queue, jobDefinition=world.definitions["consumer"])
    guard_item(world, "sns#m-dup-1", lease_until=1)  # lease long expired, job id never recorded
    result = glue_for(world, aws).handle(event)
    assert result["submitted"][0]["jobId"] == holder_job["jobId"]
    assert len(world.jobs_named(name)) == 1
    row = world.table.get_item(Key={"pk": "trigger#feeds", "sk": "sns#m-dup-1"})["Item"]
    assert row["state"] == "SUBMITTED" and row["jobId"] == holder_job["jobId"]


def test_a_holder_that_died_before_submitting_is_taken_over_and_the_job_submitted(world, aws):
    event, name = world.events()["sns message link"]
    guard_item(world, "sns#m-dup-1", lease_until=1)
    result = glue_for(world, aws).handle(event)
    (job,) = world.jobs_named(name)
    assert result["submitted"][0]["jobId"] == job["jobId"]


def test_a_live_holder_is_waited_for_and_then_handed_back_to_a_retry(world, aws):
    guard_item(world, "sns#m-dup-1", lease_until=int(time.time()) + 600)
    guard = glue.SubmitGuard(world.table, world.batch, wait_seconds=0.6)
    _, name = world.events()["sns message link"]
    request = {"jobName": name, "jobQueue": world.queue, "jobDefinition": world.definitions["consumer"]}
    started = time.monotonic()
    with pytest.raises(glue.InFlight, match="being submitted by another delivery"):
        guard.submit_once("trigger#feeds", "sns#m-dup-1", request)
    assert time.monotonic() - started >= 0.6
    assert world.jobs_named(name) == []


def test_a_failed_submit_lets_the_retry_take_over_at_once_and_submit_one_job(world, aws):
    guard = glue.SubmitGuard(world.table, world.batch)
    _, name = world.events()["sns message link"]
    bad = {"jobName": name, "jobQueue": world.queue, "jobDefinition": "arn:aws:batch:us-east-1:1:job-definition/no:1"}
    with pytest.raises(Exception):  # noqa: B017 - whatever Batch answers, it must surface
        guard.submit_once("trigger#feeds", "sns#m-dup-1", bad)
    row = world.table.get_item(Key={"pk": "trigger#feeds", "sk": "sns#m-dup-1"}, ConsistentRead=True)["Item"]
    assert row["state"] == "SUBMITTING" and row["lease_until"] == 0
    good = bad | {"jobDefinition": world.definitions["consumer"]}
    started = time.monotonic()
    result = guard.submit_once("trigger#feeds", "sns#m-dup-1", good)
    assert time.monotonic() - started < 5
    (job,) = world.jobs_named(name)
    assert result["jobId"] == job["jobId"]


def test_glue_without_a_guard_table_refuses_rather_than_submit_unguarded(world, aws):
    config = dict(world.config)
    config.pop("table")
    event, _ = world.events()["schedule with constant input"]
    with pytest.raises(RuntimeError, match="names no status table"):
        glue.Glue(config, batch=world.batch, dynamodb=aws.dynamodb).handle(event)
