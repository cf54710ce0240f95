"""Fan-out and fan-in under API faults: each trigger delivered twice at once, each delivery retried as Lambda
retries it, while a fault proxy in front of the emulator strikes one call past the SDK's own retries. Still one
array job, one join (none under ``fail_run`` with failed children), and every child's row right.

``bench/fan_out_faults.py`` runs every call kind under every fault; these are the cheap ones."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.local.proxy import FaultProxy, Rule, server_error, throttled
from tests.support.fan_out_world import ITEMS, TWO_FAILED, FanOutWorld, lambda_retried
from tests.support.glue_world import (
    BATCH_SERVER_ERROR,
    LIST_JOBS,
    SUBMIT_JOB,
    answer_lost,
    deliver_at_once,
    sdk_attempts,
)

BATCH_WRITE_ITEM = "DynamoDB_20120810.BatchWriteItem"
MANIFEST_KEY = "maps/split/list.txt"


def burst(client: Any) -> int:
    """Answers that fail two whole calls of ``client``: every SDK attempt of each."""
    return 2 * sdk_attempts(client)


def ended_fan_out(aws, fan_out: dict[str, Any], failed: dict[int, str]) -> tuple[FanOutWorld, dict[str, Any], str]:
    """A world whose array job over :data:`ITEMS` ran and ended (``failed`` children failed): (the world, the
    array parent's terminal event, its job id)."""
    world = FanOutWorld(aws.session, fan_out)
    request, job_id = world.fan_out(json.dumps(ITEMS))
    world.end_children(failed)
    return world, world.ended(request, job_id, "FAILED" if failed else "SUCCEEDED"), job_id


def delivered_twice(world: FanOutWorld, event: dict[str, Any], proxy: FaultProxy) -> list[Any]:
    """``event`` to two glues at once, their calls through the proxy, each retried as Lambda retries it."""

    def deliver(session: Any) -> Any:
        return world.glue(session, endpoint=proxy.endpoint).handle(copy.deepcopy(event))

    results = deliver_at_once(2, lambda_retried(deliver, pause=0.0))
    assert not [r for r in results if isinstance(r, Exception)], results
    return results


def assert_fan_in_right(world: FanOutWorld, job_id: str) -> None:
    assert len(world.jobs_named(glue.job_name("maps", "join", job_id))) == world.expected_joins()
    assert world.child_rows_wrong(job_id) == 0
    assert world.summary_wrong(job_id) == []


def test_a_join_whose_submit_answer_was_lost_is_submitted_once(aws, proxy):
    world, event, job_id = ended_fan_out(aws, {"onChildFailure": "continue"}, TWO_FAILED)
    lost = proxy.add(Rule(**SUBMIT_JOB, when="after", action=answer_lost))  # type: ignore[arg-type]
    delivered_twice(world, event, proxy)
    assert lost.fired == 1
    assert_fan_in_right(world, job_id)


def test_child_rows_throttled_past_the_sdks_retries_are_written_by_the_retried_delivery(aws, proxy):
    world, event, job_id = ended_fan_out(aws, {}, TWO_FAILED)  # fail_run: no join, the run failed
    answers = burst(aws.session.client("dynamodb"))
    throttle = proxy.add(Rule(target=BATCH_WRITE_ITEM, answer=throttled(BATCH_WRITE_ITEM), times=answers))
    delivered_twice(world, event, proxy)
    assert throttle.fired == answers
    assert_fan_in_right(world, job_id)


def test_unprocessed_child_rows_are_sent_again_by_the_delivery_itself(aws):
    world, event, job_id = ended_fan_out(aws, {}, {})
    handler = world.glue()
    half = HalfUnprocessed(handler.dynamodb)
    handler.dynamodb = half
    handler.handle(event)  # no retry needed: DynamoDB took the rest when sent again
    assert half.left_unprocessed == 13
    assert_fan_in_right(world, job_id)


class HalfUnprocessed:
    """A DynamoDB resource whose first BatchWriteItem writes the first half of its items and answers the
    rest as unprocessed, as DynamoDB does when a partition is over its throughput."""

    def __init__(self, resource: Any) -> None:
        self.resource, self.left_unprocessed = resource, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resource, name)

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        if self.left_unprocessed:
            return self.resource.batch_write_item(RequestItems=RequestItems)
        ((table, requests),) = RequestItems.items()
        half = len(requests) // 2
        self.resource.batch_write_item(RequestItems={table: requests[:half]})
        self.left_unprocessed = len(requests) - half
        return {"UnprocessedItems": {table: requests[half:]}}


def test_a_failed_listing_of_the_children_is_retried_not_taken_for_failed_children(aws, proxy):
    world, event, job_id = ended_fan_out(aws, {}, {})
    answers = burst(aws.session.client("batch", config=glue.BATCH_CLIENT_CONFIG))
    failing = proxy.add(Rule(**LIST_JOBS, answer=BATCH_SERVER_ERROR, times=answers))  # type: ignore[arg-type]
    delivered_twice(world, event, proxy)
    assert failing.fired == answers
    assert_fan_in_right(world, job_id)


def test_an_items_object_that_cannot_be_read_at_the_fan_in_is_read_by_the_retried_delivery(aws, proxy):
    world, event, job_id = ended_fan_out(aws, {"onChildFailure": "continue"}, TWO_FAILED)
    answers = burst(aws.session.client("s3"))
    failing = proxy.add(Rule(method="GET", path_contains="/maps/_items/", answer=server_error(), times=answers))
    delivered_twice(world, event, proxy)
    assert failing.fired == answers
    assert_fan_in_right(world, job_id)


def test_a_manifest_that_cannot_be_read_for_a_moment_is_read_again_not_refused(aws, proxy):
    """A 5xx or a throttle passes: the run must not fail for it, as for a manifest that is not there."""
    world = FanOutWorld(aws.session, {"source": "manifest", "field": "manifest"})
    world.s3.put_object(Bucket=world.bucket, Key=MANIFEST_KEY, Body="\n".join(ITEMS).encode())
    answers = burst(aws.session.client("s3"))
    failing = proxy.add(Rule(method="GET", path_contains=MANIFEST_KEY, answer=throttled(), times=answers))
    delivered_twice(world, world.publish(json.dumps({"manifest": f"s3://{world.bucket}/{MANIFEST_KEY}"})), proxy)
    assert failing.fired == answers
    (array,) = world.jobs_named(glue.job_name("maps", "work", "m-1"))
    assert world.fan_out_wrong() == []
    assert world.batch.describe_jobs(jobs=[array["jobId"]])["jobs"][0]["arrayProperties"]["size"] == len(ITEMS)


@pytest.mark.parametrize("code", ["RequestTimeout", "ExpiredToken"])  # the SDK retries the first, not the second
def test_a_manifest_read_that_a_retry_can_mend_is_retried_not_refused(aws, proxy, code):
    """Only what no retry changes (missing, denied) fails the run at once; S3's timed-out request (400, past the
    SDK's own retries) or an expired token passes, and the delivery Lambda retries maps the list."""
    world = FanOutWorld(aws.session, {"source": "manifest", "field": "manifest"})
    world.s3.put_object(Bucket=world.bucket, Key=MANIFEST_KEY, Body="\n".join(ITEMS).encode())
    xml = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
    answers = burst(aws.session.client("s3")) if code == "RequestTimeout" else 2  # each delivery's first call
    failing = proxy.add(Rule(method="GET", path_contains=MANIFEST_KEY, answer=(400, {}, xml), times=answers))
    delivered_twice(world, world.publish(json.dumps({"manifest": f"s3://{world.bucket}/{MANIFEST_KEY}"})), proxy)
    assert failing.fired == answers
    assert world.fan_out_wrong() == []


def test_a_state_whose_write_answer_was_lost_and_sent_again_by_the_sdk_is_counted_once(aws, proxy, capsys):
    """The SDK sends the status row's UpdateItem again when its answer is lost: the old row that comes back is
    that write's own, and the run's failure still counts in the metrics (once)."""
    world, event, _ = ended_fan_out(aws, {}, TWO_FAILED)  # fail_run: the run fails here
    update = "DynamoDB_20120810.UpdateItem"
    lost = proxy.add(Rule(target=update, when="after", action=answer_lost))
    capsys.readouterr()
    world.glue(endpoint=proxy.endpoint).handle(copy.deepcopy(event))
    assert lost.fired == 1
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [line["ChainRunsFailed"] for line in printed] == [1]
