"""Fan-out / fan-in in the glue, against moto: one array job over the run's list (from the message or a
manifest), the join once when every child ended, partial failure under each policy, duplicate deliveries."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline_constructs.chain import child
from pipeline_constructs.glue import handler as glue
from pipeline_constructs.ops import operator
from tests.support.glue_world import deliver_at_once
from tests.support.resources import create_batch_queue, create_status_table


class ArrayChildren:
    """A Batch client whose ListJobs of an array's children answers ``children`` (moto runs no children
    here: no Docker); everything else goes to moto."""

    def __init__(self, client: Any, children: dict[int, tuple[str, str]]) -> None:
        self.client, self.children = client, children

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_paginator(self, operation: str) -> Any:
        paginator = self.client.get_paginator(operation)
        children = self.children

        class Paginator:
            def paginate(self, **params: Any) -> list[dict[str, Any]]:
                if "arrayJobId" not in params:
                    return list(paginator.paginate(**params))
                listed = [
                    {
                        "jobId": f"{params['arrayJobId']}:{index}",
                        "status": status,
                        "statusReason": reason,
                        "arrayProperties": {"index": index},
                    }
                    for index, (status, reason) in children.items()
                    if status == params["jobStatus"]
                ]
                return [{"jobSummaryList": listed[:10]}, {"jobSummaryList": listed[10:]}]  # two pages

        return Paginator()


class FanOutWorld:
    """A chain ``maps``: ``split`` (message link) -> ``work`` (the fan-out) -> ``join``, in the emulator."""

    def __init__(self, aws: Any, fan_out: dict[str, Any]) -> None:
        name = uuid.uuid4().hex[:8]
        self.queue, self.definitions = create_batch_queue(aws.session, name, ["split", "work", "join"])
        self.table = create_status_table(aws.dynamodb, f"status{name}")
        self.bucket = f"data{name}"
        aws.s3.create_bucket(Bucket=self.bucket)
        self.s3, self.batch = aws.s3, aws.session.client("batch")
        self.topic = f"arn:aws:sns:us-east-1:123456789012:maps{name}"
        work = {"name": "work", "jobDefinition": self.definitions["work"], "link": {"kind": "success"}}
        self.config = {
            "table": self.table.name,
            "chains": {
                "maps": {
                    "jobQueue": self.queue,
                    "topicArn": self.topic,
                    "table": self.table.name,
                    "claims": {"bucket": self.bucket, "prefix": "maps/_messages/"},
                    "items": {"bucket": self.bucket, "prefix": "maps/_items/"},
                    "steps": [
                        {"name": "split", "jobDefinition": self.definitions["split"], "link": {"kind": "message"}},
                        work | {"fanOut": {"source": "message", "field": None, "maxItems": 10000} | fan_out},
                        {"name": "join", "jobDefinition": self.definitions["join"]},
                    ],
                }
            },
        }
        self.children: dict[int, tuple[str, str]] = {}
        self.submitted: list[dict[str, Any]] = []

    def glue(self, session: Any = None) -> glue.Glue:
        session = session or boto3.session.Session()
        session.events.register(
            "before-parameter-build.batch.SubmitJob", lambda params, **_: self.submitted.append(copy.deepcopy(params))
        )
        batch = ArrayChildren(session.client("batch"), self.children)
        return glue.Glue(self.config, batch=batch, dynamodb=session.resource("dynamodb"), s3=session.client("s3"))

    def publish(self, message: str, message_id: str = "m-1") -> dict[str, Any]:
        sns = {"MessageId": message_id, "TopicArn": self.topic, "Message": message, "MessageAttributes": {}}
        return {"Records": [{"EventSource": "aws:sns", "Sns": sns}]}

    def ended(self, request: dict[str, Any], job_id: str, status: str) -> dict[str, Any]:
        """The terminal state change of the job ``request`` submitted, as Batch sends it."""
        detail = {
            "jobId": job_id,
            "jobName": request["jobName"],
            "status": status,
            "jobDefinition": request["jobDefinition"],
            "container": {"environment": request["containerOverrides"]["environment"]},
        }
        if "arrayProperties" in request:
            detail["arrayProperties"] = {"size": request["arrayProperties"]["size"]}
        return {"source": "aws.batch", "detail-type": "Batch Job State Change", "detail": detail}

    def env(self, request: dict[str, Any]) -> dict[str, str]:
        return {e["name"]: e["value"] for e in request["containerOverrides"]["environment"]}

    def rows(self) -> list[dict[str, Any]]:
        return self.table.scan(ConsistentRead=True)["Items"]

    def runs(self) -> dict[str, Any]:
        rows = [row for row in self.rows() if row["sk"].startswith("run#")]
        return operator.chain_runs(rows, ["split", "work", "join"])


ITEMS = [f"tile-{n:02d}" for n in range(25)]


@pytest.fixture
def world(aws) -> FanOutWorld:
    return FanOutWorld(aws, {})


def fan_out_of(world: FanOutWorld, message: str) -> tuple[dict[str, Any], str]:
    """(the array request, its job id) submitted for ``message``."""
    result = world.glue().handle(world.publish(message))
    (submitted,) = result["submitted"]
    return world.submitted[-1], submitted["jobId"]


def test_a_list_in_the_message_is_one_array_job_sized_to_it_and_each_child_reads_its_item(world):
    request, job_id = fan_out_of(world, json.dumps(ITEMS))
    assert request["arrayProperties"] == {"size": 25}
    env = world.env(request)
    assert "DOWNLOAD_MESSAGE" not in env and env["PIPELINE_ITEM_COUNT"] == "25"
    assert env["PIPELINE_ITEMS"] == f"s3://{world.bucket}/maps/_items/maps-m-1/m-1/work.json"
    (job,) = world.batch.describe_jobs(jobs=[job_id])["jobs"]
    assert job["arrayProperties"]["size"] == 25
    for index in (0, 7, 24):
        assert child.item(world.s3, {**env, "AWS_BATCH_JOB_ARRAY_INDEX": str(index)}) == ITEMS[index]


def test_a_field_of_an_object_message_holds_the_list(aws):
    world = FanOutWorld(aws, {"field": "tiles"})
    request, _ = fan_out_of(world, json.dumps({"tiles": ITEMS[:3], "other": 1}))
    assert request["arrayProperties"] == {"size": 3}


@pytest.mark.parametrize("manifest", [json.dumps(ITEMS), "\n".join(ITEMS) + "\n"], ids=["json", "lines"])
def test_a_manifest_the_message_names_is_read_from_s3(aws, manifest):
    world = FanOutWorld(aws, {"source": "manifest", "field": "manifest"})
    world.s3.put_object(Bucket=world.bucket, Key="maps/split/list.txt", Body=manifest.encode())
    request, _ = fan_out_of(world, json.dumps({"manifest": f"s3://{world.bucket}/maps/split/list.txt"}))
    assert request["arrayProperties"] == {"size": 25}
    assert child.item(world.s3, {**world.env(request), "AWS_BATCH_JOB_ARRAY_INDEX": "3"}) == "tile-03"


def test_a_list_of_one_is_a_plain_job_whose_item_is_index_0(world):
    request, _ = fan_out_of(world, '["only"]')
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
    request, job_id = fan_out_of(world, json.dumps(ITEMS))
    world.children.update({index: ("SUCCEEDED", "") for index in range(25)})
    result = world.glue().handle(world.ended(request, job_id, "SUCCEEDED"))
    join = world.submitted[-1]
    assert result["submitted"][0]["jobName"] == join["jobName"] and world.env(join)["PREVIOUS_JOB_ID"] == job_id
    message = json.loads(world.env(join)["DOWNLOAD_MESSAGE"])
    assert (message["items"], message["failed"], message["total"]) == (ITEMS, [], 25)
    (row,) = [r for r in world.rows() if r.get("step") == "work" and r["sk"].startswith("run#")]
    assert (row["children_total"], row["children_succeeded"], row["children_failed"]) == (25, 25, 0)
    assert world.runs()["maps-m-1"]["steps"]["work"] == "SUCCEEDED 25/25 children"


def fail_two(world: FanOutWorld) -> None:
    world.children.update({index: ("SUCCEEDED", "") for index in range(25)})
    world.children[3] = ("FAILED", "Essential container in task exited (exit code 2)")
    world.children[17] = ("FAILED", "Host EC2 terminated")


def test_a_failed_child_fails_the_run_naming_it_and_the_join_never_starts(world, capsys):
    request, job_id = fan_out_of(world, json.dumps(ITEMS))
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
    assert run["steps"]["work"] == "FAILED 23/25 children"


def _runs_failed_metric(printed: str) -> list[int]:
    """``ChainRunsFailed`` of each EMF line the glue printed."""
    return [json.loads(line)["ChainRunsFailed"] for line in printed.splitlines() if '"_aws"' in line]


def test_continue_starts_the_join_with_the_succeeded_items_and_lists_the_failed(aws, capsys):
    world = FanOutWorld(aws, {"onChildFailure": "continue"})
    request, job_id = fan_out_of(world, json.dumps(ITEMS))
    fail_two(world)
    capsys.readouterr()
    world.glue().handle(world.ended(request, job_id, "FAILED"))
    assert _runs_failed_metric(capsys.readouterr().out) == [0]  # the run goes on: no failed run on the dashboard
    message = json.loads(world.env(world.submitted[-1])["DOWNLOAD_MESSAGE"])
    assert message["items"] == [item for n, item in enumerate(ITEMS) if n not in (3, 17)]
    assert [(f["index"], f["item"]) for f in message["failed"]] == [(3, "tile-03"), (17, "tile-17")]
    run = world.runs()["maps-m-1"]
    assert run["status"] == "RUNNING" and run["steps"]["work"] == "FAILED 23/25 children, continued"


def test_a_list_over_max_items_fails_the_run_before_anything_is_submitted(aws):
    world = FanOutWorld(aws, {"maxItems": 10})
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


def child_rows(world: FanOutWorld) -> list[dict[str, Any]]:
    return sorted((r for r in world.rows() if r["sk"].startswith("child#")), key=lambda r: r["sk"])


def test_the_fan_in_writes_one_row_per_child_and_a_second_delivery_rewrites_them(world):
    request, job_id = fan_out_of(world, json.dumps(ITEMS))
    fail_two(world)
    ended = world.ended(request, job_id, "FAILED")
    world.glue().handle(copy.deepcopy(ended))
    first = child_rows(world)
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
    second = child_rows(world)
    assert len(second) == 25 and [r["sk"] for r in second] == [r["sk"] for r in first]
    assert second[3]["status"] == "SUCCEEDED"
    # The job rows' readers never meet a child: the run's steps are the three jobs' states.
    assert set(world.runs()["maps-m-1"]["steps"]) == {"work"}


def test_child_rows_that_cannot_be_written_leave_the_join_submitted_once(aws, monkeypatch, caplog):
    world = FanOutWorld(aws, {"onChildFailure": "continue"})
    request, job_id = fan_out_of(world, json.dumps(ITEMS))
    fail_two(world)
    monkeypatch.setattr(glue, "BATCH_WRITE_ATTEMPTS", 2)
    ended = world.ended(request, job_id, "FAILED")
    for refusal in ("unprocessed", "error"):
        handler = world.glue()
        handler.dynamodb = RefusingBatchWrites(handler.dynamodb, world.table.name, refusal)
        result = handler.handle(copy.deepcopy(ended))
        assert result["submitted"][0]["jobName"] == world.submitted[-1]["jobName"]
    assert len(world.submitted) == 2  # the array, then the join: once for both deliveries
    assert child_rows(world) == [] and "child rows not written" in caplog.text
    (row,) = [r for r in world.rows() if r.get("step") == "work" and r["sk"].startswith("run#")]
    assert (row["children_total"], row["children_failed"]) == (25, 2)


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
