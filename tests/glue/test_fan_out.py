"""Fan-out / fan-in in the glue, against moto: one array job over the run's list (from the message or a
manifest), the join once when every child ended, partial failure under each policy, duplicate deliveries."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pipeline_constructs.chain import child
from pipeline_constructs.glue import handler as glue
from tests.support.fan_out_world import ITEMS, TWO_FAILED, FanOutWorld
from tests.support.glue_world import deliver_at_once


@pytest.fixture
def world(aws) -> FanOutWorld:
    return FanOutWorld(aws.session, {})


def test_a_list_in_the_message_is_one_array_job_sized_to_it_and_each_child_reads_its_item(world):
    request, job_id = world.fan_out(json.dumps(ITEMS))
    assert request["arrayProperties"] == {"size": 25}
    env = world.env(request)
    assert "DOWNLOAD_MESSAGE" not in env and env["PIPELINE_ITEM_COUNT"] == "25"
    assert env["PIPELINE_ITEMS"] == f"s3://{world.bucket}/maps/_items/maps-m-1/m-1/work.json"
    (job,) = world.batch.describe_jobs(jobs=[job_id])["jobs"]
    assert job["arrayProperties"]["size"] == 25
    for index in (0, 7, 24):
        assert child.item(world.s3, {**env, "AWS_BATCH_JOB_ARRAY_INDEX": str(index)}) == ITEMS[index]


def test_a_field_of_an_object_message_holds_the_list(aws):
    world = FanOutWorld(aws.session, {"field": "tiles"})
    request, _ = world.fan_out(json.dumps({"tiles": ITEMS[:3], "other": 1}))
    assert request["arrayProperties"] == {"size": 3}


@pytest.mark.parametrize("manifest", [json.dumps(ITEMS), "\n".join(ITEMS) + "\n"], ids=["json", "lines"])
def test_a_manifest_the_message_names_is_read_from_s3(aws, manifest):
    world = FanOutWorld(aws.session, {"source": "manifest", "field": "manifest"})
    world.s3.put_object(Bucket=world.bucket, Key="maps/split/list.txt", Body=manifest.encode())
    request, _ = world.fan_out(json.dumps({"manifest": f"s3://{world.bucket}/maps/split/list.txt"}))
    assert request["arrayProperties"] == {"size": 25}
    assert child.item(world.s3, {**world.env(request), "AWS_BATCH_JOB_ARRAY_INDEX": "3"}) == "tile-03"


def manifest_world(aws) -> tuple[FanOutWorld, dict[str, Any]]:
    """A fan-out over a manifest, and the message naming it (the manifest not written yet)."""
    world = FanOutWorld(aws.session, {"source": "manifest", "field": "manifest"})
    return world, world.publish(json.dumps({"manifest": f"s3://{world.bucket}/maps/split/list.txt"}))


def test_a_manifest_that_is_not_there_fails_the_run_at_once_and_counts_it(aws, capsys):
    """No retry makes it appear: the delivery ends (Lambda retries nothing), the run failed naming the manifest,
    and the dashboard's ChainRunsFailed counts it."""
    world, message = manifest_world(aws)
    capsys.readouterr()
    (refused,) = world.glue().handle(message)["submitted"]
    assert "refused" in refused and world.submitted == []
    run = world.runs()["maps-m-1"]
    assert run["status"] == "FAILED" and "list.txt cannot be read" in run["reason"]
    assert _runs_failed_metric(capsys.readouterr().out) == [1]


def test_a_redelivery_after_the_manifest_changed_maps_the_list_the_first_delivery_stored(aws):
    world, message = manifest_world(aws)
    world.s3.put_object(Bucket=world.bucket, Key="maps/split/list.txt", Body="\n".join(ITEMS).encode())
    (first,) = world.glue().handle(message)["submitted"]
    world.s3.delete_object(Bucket=world.bucket, Key="maps/split/list.txt")  # or rewritten past maxItems
    (again,) = world.glue().handle(copy.deepcopy(message))["submitted"]
    assert again["jobId"] == first["jobId"] and len(world.submitted) == 1
    assert world.runs() == {}  # no row says the running array's run failed


def test_a_list_of_one_is_a_plain_job_whose_item_is_index_0(world):
    request, _ = world.fan_out('["only"]')
    assert "arrayProperties" not in request
    assert child.item(world.s3, world.env(request)) == "only"


def test_an_empty_list_skips_to_the_join_with_no_items(world):
    result = world.glue().handle(world.publish("[]"))
    (join,) = world.submitted
    assert world.env(join)["PIPELINE_STEP"] == "join" and result["submitted"][0]["jobName"] == join["jobName"]
    assert json.loads(world.env(join)["DOWNLOAD_MESSAGE"]) == {"items": [], "failed": [], "total": 0}
    (row,) = [r for r in world.rows() if r.get("step") == "work" and r["sk"].startswith("run#")]
    assert (row["status"], row["reason"]) == ("SUCCEEDED", "fan-out over 0 items: skipped")


def test_a_message_that_is_no_list_fails_the_run_with_the_reason(world):
    world.glue().handle(world.publish('{"not": "a list"}'))
    assert world.submitted == []
    assert world.runs()["maps-m-1"]["status"] == "FAILED"
    assert "fan-out refused: the message is not a JSON list" in world.runs()["maps-m-1"]["reason"]


def test_the_join_starts_with_every_item_when_all_children_succeeded(world):
    request, job_id = world.fan_out(json.dumps(ITEMS))
    world.children.update({index: ("SUCCEEDED", "") for index in range(25)})
    result = world.glue().handle(world.ended(request, job_id, "SUCCEEDED"))
    join = world.submitted[-1]
    assert result["submitted"][0]["jobName"] == join["jobName"] and world.env(join)["PREVIOUS_JOB_ID"] == job_id
    message = json.loads(world.env(join)["DOWNLOAD_MESSAGE"])
    assert (message["items"], message["failed"], message["total"]) == (ITEMS, [], 25)
    (row,) = [r for r in world.rows() if r.get("step") == "work" and r["sk"].startswith("run#")]
    assert (row["children_total"], row["children_succeeded"], row["children_failed"]) == (25, 25, 0)
    assert world.runs()["maps-m-1"]["steps"]["work"] == "SUCCEEDED: all 25 children succeeded"


def fail_two(world: FanOutWorld) -> None:
    world.end_children(TWO_FAILED)


def test_a_failed_child_fails_the_run_naming_it_and_the_join_never_starts(world, capsys):
    request, job_id = world.fan_out(json.dumps(ITEMS))
    fail_two(world)
    capsys.readouterr()
    result = world.glue().handle(world.ended(request, job_id, "FAILED"))
    assert _runs_failed_metric(capsys.readouterr().out) == [1]
    assert result["submitted"] == [] and len(world.submitted) == 1
    run = world.runs()["maps-m-1"]
    assert run["status"] == "FAILED"
    assert run["reason"] == (
        "2 of 25 children failed: #3 (Essential container in task exited (exit code 2)), #17 (Host EC2 terminated)"
    )
    assert run["steps"]["work"] == "FAILED: 2 of 25 children failed"


def _runs_failed_metric(printed: str) -> list[int]:
    """``ChainRunsFailed`` of each EMF line the glue printed."""
    return [json.loads(line)["ChainRunsFailed"] for line in printed.splitlines() if '"_aws"' in line]


def test_a_child_not_listed_yet_is_not_taken_for_a_failed_one(world):
    """ListJobs is eventually consistent. A SUCCEEDED parent is Batch's word that every child succeeded: the
    join starts with every item; under a FAILED parent the delivery fails, so that Lambda lists them again."""
    request, job_id = world.fan_out(json.dumps(ITEMS))
    world.end_children()
    del world.children[5]
    with pytest.raises(RuntimeError, match=r"1 of 25 children .* not listed yet"):
        world.glue().handle(world.ended(request, job_id, "FAILED"))
    assert len(world.submitted) == 1  # no join
    assert len(world.glue().handle(world.ended(request, job_id, "SUCCEEDED"))["submitted"]) == 1
    assert json.loads(world.env(world.submitted[-1])["DOWNLOAD_MESSAGE"])["items"] == ITEMS


def test_each_childs_end_is_counted_in_the_metrics(world, capsys):
    """An array child has no row of its own to tell a redelivery by: its metrics are printed at least once."""
    request, job_id = world.fan_out(json.dumps(ITEMS))
    capsys.readouterr()
    world.glue().handle(world.ended(request, f"{job_id}:3", "SUCCEEDED"))
    (line,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert line["ChainJobs"] == 1 and line["State"] == "SUCCEEDED" and line["ChainRunsSucceeded"] == 0


def test_continue_starts_the_join_with_the_succeeded_items_and_lists_the_failed(aws, capsys):
    world = FanOutWorld(aws.session, {"onChildFailure": "continue"})
    request, job_id = world.fan_out(json.dumps(ITEMS))
    fail_two(world)
    capsys.readouterr()
    world.glue().handle(world.ended(request, job_id, "FAILED"))
    assert _runs_failed_metric(capsys.readouterr().out) == [0]  # the run goes on: no failed run on the dashboard
    message = json.loads(world.env(world.submitted[-1])["DOWNLOAD_MESSAGE"])
    assert message["items"] == [item for n, item in enumerate(ITEMS) if n not in (3, 17)]
    assert [(f["index"], f["item"]) for f in message["failed"]] == [(3, "tile-03"), (17, "tile-17")]
    run = world.runs()["maps-m-1"]
    assert run["status"] == "RUNNING" and run["steps"]["work"] == "FAILED: 2 of 25 children failed, continued"


def test_a_list_over_max_items_fails_the_run_before_anything_is_submitted(aws):
    world = FanOutWorld(aws.session, {"maxItems": 10})
    world.glue().handle(world.publish(json.dumps(ITEMS)))
    assert world.submitted == []
    assert world.runs()["maps-m-1"]["reason"] == "fan-out refused: 25 items, over the step's limit of 10 children"


def test_the_same_trigger_delivered_at_once_makes_one_array_and_one_join(world):
    event = world.publish(json.dumps(ITEMS))
    results = deliver_at_once(8, lambda session: world.glue(session).handle(copy.deepcopy(event))["submitted"][0])
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len({r["jobId"] for r in results}) == 1 and len(world.submitted) == 1
    request, job_id = world.submitted[0], results[0]["jobId"]
    assert request["arrayProperties"] == {"size": 25}
    world.children.update({index: ("SUCCEEDED", "") for index in range(25)})
    ended = world.ended(request, job_id, "SUCCEEDED")
    joins = deliver_at_once(8, lambda session: world.glue(session).handle(copy.deepcopy(ended))["submitted"][0])
    assert not [r for r in joins if isinstance(r, Exception)], joins
    assert len({r["jobId"] for r in joins}) == 1 and len(world.submitted) == 2
    assert json.loads(world.env(world.submitted[1])["DOWNLOAD_MESSAGE"])["items"] == ITEMS


# ---------------------------------------------------------------- one row per child


def test_the_fan_in_writes_one_row_per_child_and_a_second_delivery_rewrites_them(world):
    request, job_id = world.fan_out(json.dumps(ITEMS))
    fail_two(world)
    ended = world.ended(request, job_id, "FAILED")
    world.glue().handle(copy.deepcopy(ended))
    first = world.child_rows()
    assert [row["child_index"] for row in first] == list(range(25))
    assert {row["sk"] for row in first} == {f"child#maps-m-1#01#{job_id}#{n:05d}" for n in range(25)}
    assert [(row["item"], row["jobId"]) for row in first[:2]] == [
        ("tile-00", f"{job_id}:0"),
        ("tile-01", f"{job_id}:1"),
    ]
    failed = {row["child_index"]: row["reason"] for row in first if row["status"] == "FAILED"}
    assert failed == {3: "Essential container in task exited (exit code 2)", 17: "Host EC2 terminated"}
    assert {row["status"] for row in first if row["child_index"] not in failed} == {"SUCCEEDED"}
    assert all(row["step"] == "work" and row["chain_run"] == "maps-m-1" and row["expires_at"] for row in first)
    world.children[3] = ("SUCCEEDED", "")  # what a second look finds, written over the first
    world.glue().handle(copy.deepcopy(ended))
    second = world.child_rows()
    assert len(second) == 25 and [r["sk"] for r in second] == [r["sk"] for r in first]
    assert second[3]["status"] == "SUCCEEDED"
    # The job rows' readers never meet a child: the run's steps are the three jobs' states.
    assert set(world.runs()["maps-m-1"]["steps"]) == {"work"}


def test_child_rows_that_cannot_be_written_fail_the_delivery_after_the_join_and_a_retry_writes_them(aws, monkeypatch):
    """The join is never held back by its children's rows; the delivery then fails, so that Lambda retries
    it: the retry writes the rows and submits nothing more."""
    world = FanOutWorld(aws.session, {"onChildFailure": "continue"})
    request, job_id = world.fan_out(json.dumps(ITEMS))
    fail_two(world)
    monkeypatch.setattr(glue, "BATCH_WRITE_ATTEMPTS", 2)
    ended = world.ended(request, job_id, "FAILED")
    for refusal in ("unprocessed", "error"):
        handler = world.glue()
        handler.dynamodb = RefusingBatchWrites(handler.dynamodb, world.table.name, refusal)
        with pytest.raises((RuntimeError, ClientError)):
            handler.handle(copy.deepcopy(ended))
        assert len(world.submitted) == 2  # the array, then the join: submitted before the rows failed
    assert world.child_rows() == []
    result = world.glue().handle(copy.deepcopy(ended))  # Lambda's retry
    assert result["submitted"][0]["jobName"] == world.submitted[-1]["jobName"] and len(world.submitted) == 2
    assert world.child_rows_wrong(job_id) == 0 and world.summary_wrong(job_id) == []


class RefusingBatchWrites:
    """A DynamoDB resource whose BatchWriteItem leaves every item unprocessed, or fails."""

    def __init__(self, resource: Any, table: str, refusal: str) -> None:
        self.resource, self.table, self.refusal = resource, table, refusal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resource, name)

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        if self.refusal == "error":
            error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}
            raise ClientError(error, "BatchWriteItem")
        return {"UnprocessedItems": RequestItems}


def test_the_glue_may_write_child_rows_in_batches_and_delete_nothing(dev_template):
    statements = [
        statement
        for policy in dev_template.find_resources("AWS::IAM::ManagedPolicy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "dynamodb:UpdateItem" in json.dumps(statement.get("Action"))
    ]
    assert statements
    for statement in statements:
        assert "dynamodb:BatchWriteItem" in statement["Action"]
        assert not {"dynamodb:DeleteItem", "dynamodb:Scan"} & set(statement["Action"])
