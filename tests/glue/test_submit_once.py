"""Submit once, attacked: identical deliveries of every trigger kind at the same moment, dead and slow holders.

AWS delivers SNS messages, EventBridge events and Scheduler invocations at least once, and Lambda retries
failed async invocations, so the same trigger reaching the glue function several times at once is normal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.local.proxy import Rule, server_error
from tests.support import ROOT
from tests.support.glue_world import KINDS, LIST_JOBS, SUBMIT_JOB, GlueWorld, answer_lost, deliver_at_once

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


# ---------------------------------------------------------------- a SubmitJob whose answer is lost
# SubmitJob takes no idempotency token: the same call again is a second job. Each test below made two
# before the guard retried SubmitJob itself and looked first (botocore resent the call whose answer it lost;
# a takeover looked once, and on the first page of ListJobs only).


def listed(jobs: list[dict], next_token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A ListJobs answer in Batch's place (REST-JSON)."""
    body = {"jobSummaryList": jobs} | ({"nextToken": next_token} if next_token else {})
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


@pytest.fixture
def production_glue(world, aws, proxy, monkeypatch):
    """The glue with the clients a Lambda execution environment makes, its Batch calls through the proxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_BATCH", proxy.endpoint)
    glue._clients.cache_clear()
    yield glue._glue_with_clients(world.config)
    glue._clients.cache_clear()


def guard_row(world, sk: str) -> dict:
    return world.table.get_item(Key={"pk": "trigger#feeds", "sk": sk}, ConsistentRead=True)["Item"]


def the_one_job(world, name: str, result: dict) -> dict:
    """The only job of that name, which the glue reports."""
    (job,) = world.jobs_named(name)
    assert result["submitted"][0]["jobId"] == job["jobId"]
    return job


def takeover_of_a_made_job(world, aws, proxy, first_listing: Rule, **guard) -> tuple[dict, str]:
    """A previous holder's job is in Batch, its guard expired as ``guard`` says, and ListJobs answers as
    ``first_listing`` says first: what a redelivery takes over (its result), and the holder's job id."""
    event, name = world.events()["sns message link"]
    made = world.batch.submit_job(jobName=name, jobQueue=world.queue, jobDefinition=world.definitions["consumer"])
    guard_item(world, "sns#m-dup-1", **guard)
    proxy.add(first_listing)
    batch = aws.session.client("batch", endpoint_url=proxy.endpoint, config=glue.BATCH_CLIENT_CONFIG)
    result = glue.Glue(world.config, batch=batch, dynamodb=aws.dynamodb).handle(event)
    the_one_job(world, name, result)
    return result, made["jobId"]


def test_a_submit_whose_answer_was_lost_makes_one_job(world, proxy, production_glue):
    lost = proxy.add(Rule(**SUBMIT_JOB, when="after", action=answer_lost))
    event, name = world.events()["sns message link"]
    result = production_glue.handle(event)
    assert lost.fired == 1, "the call landed and its answer was lost"
    job = the_one_job(world, name, result)
    assert guard_row(world, "sns#m-dup-1")["jobId"] == job["jobId"]


def test_a_lost_answer_is_not_taken_for_no_job_while_list_jobs_lags(world, proxy, production_glue):
    proxy.add(Rule(**SUBMIT_JOB, when="after", action=answer_lost))
    lagging = proxy.add(Rule(**LIST_JOBS, answer=listed([]), times=2))  # not listed yet, twice
    event, name = world.events()["sns message link"]
    result = production_glue.handle(event)
    assert lagging.fired == 2
    the_one_job(world, name, result)


def test_a_takeover_soon_after_a_lost_answer_keeps_looking_while_list_jobs_lags(world, aws, proxy):
    # The holder's submit landed, its answer was lost, and it gave up: lease expired, the job maybe not listed yet.
    lagging = Rule(**LIST_JOBS, answer=listed([]), times=2)
    unsure = Decimal(str(time.time() + 8))
    result, made = takeover_of_a_made_job(world, aws, proxy, lagging, lease_until=0, unsure_until=unsure)
    assert lagging.fired == 2 and result["submitted"][0]["jobId"] == made


def test_a_takeover_reads_every_page_of_list_jobs(world, aws, proxy):
    """A JOB_NAME filter may answer a page without jobs and with a next token; the job is on a later page."""
    empty_page = Rule(**LIST_JOBS, answer=listed([], next_token="page-2"))
    result, made = takeover_of_a_made_job(world, aws, proxy, empty_page, lease_until=1)  # died after submitting
    assert empty_page.fired == 1 and result["submitted"][0]["jobId"] == made


def test_a_throttled_submit_is_retried_by_the_guard_and_makes_one_job(world, proxy, production_glue):
    """The glue's Batch client retries nothing itself now: the guard retries what surely made no job."""
    too_many = (429, {"Content-Type": "application/json", "x-amzn-ErrorType": "TooManyRequestsException"}, b"{}")
    throttled = proxy.add(Rule(**SUBMIT_JOB, answer=too_many, times=2))
    event, name = world.events()["sns message link"]
    result = production_glue.handle(event)
    assert throttled.fired == 2
    the_one_job(world, name, result)


UPDATE_ITEM = "DynamoDB_20120810.UpdateItem"


def glue_with_table_through(world, aws, proxy) -> glue.Glue:
    """The glue whose guard's DynamoDB calls go through the proxy (its Batch calls straight to the emulator)."""
    dynamodb = aws.session.resource("dynamodb", endpoint_url=proxy.endpoint)
    return glue.Glue(world.config, batch=world.batch, dynamodb=dynamodb)


def test_a_job_never_recorded_is_still_reported_and_found_by_the_next_delivery(world, aws, proxy, caplog, monkeypatch):
    """The guard's record after SubmitJob failing past the SDK's retries: raised, the delivery failed (Lambda
    retries it and dead-letters it, for a job that exists) and its duplicates waited out the lease and failed
    too (make bench's glue faults saw 8 of 10 deliveries fail so)."""
    monkeypatch.setattr(glue, "RECORD_RETRY_SECONDS", (0.0, 0.0))
    proxy.add(Rule(target=UPDATE_ITEM, answer=server_error(UPDATE_ITEM), times=1000))
    event, name = world.events()["sns message link"]
    result = glue_with_table_through(world, aws, proxy).handle(event)
    job = the_one_job(world, name, result)
    assert "job submitted, not recorded" in caplog.text
    world.table.update_item(  # its lease runs out
        Key={"pk": "trigger#feeds", "sk": "sns#m-dup-1"},
        UpdateExpression="SET lease_until = :zero",
        ExpressionAttributeValues={":zero": 0},
    )
    again = glue_for(world, aws).handle(event)
    assert again["submitted"][0]["jobId"] == job["jobId"] and len(world.jobs_named(name)) == 1


def test_a_lost_answer_with_no_job_behind_it_is_submitted_again_once_list_jobs_had_time(world, aws, proxy):
    """The call was cut before it reached Batch, though the caller cannot tell: after the settle time, one job."""
    cut = proxy.add(Rule(**SUBMIT_JOB, when="before", action=lambda: None))
    guard = glue.SubmitGuard(
        world.table,
        aws.session.client("batch", endpoint_url=proxy.endpoint, config=glue.BATCH_CLIENT_CONFIG),
        settle_seconds=1.0,
    )
    _, name = world.events()["sns message link"]
    request = {"jobName": name, "jobQueue": world.queue, "jobDefinition": world.definitions["consumer"]}
    result = guard.submit_once("trigger#feeds", "sns#m-dup-1", request)
    assert cut.fired == 1
    (job,) = world.jobs_named(name)
    assert result["jobId"] == job["jobId"]


def test_failed_submits_are_told_apart_by_whether_a_job_may_exist():
    for answer, expected in (
        ({"Error": {"Code": "ClientException"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "refused"),
        ({"Error": {"Code": "TooManyRequestsException"}, "ResponseMetadata": {"HTTPStatusCode": 429}}, "not sent"),
        ({"Error": {"Code": "ServerException"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "unknown"),
    ):
        assert glue.submit_failure(ClientError(answer, "SubmitJob")) == expected
    assert glue.submit_failure(EndpointConnectionError(endpoint_url="http://x")) == "not sent"
    assert glue.submit_failure(ReadTimeoutError(endpoint_url="http://x")) == "unknown"
