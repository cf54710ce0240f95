"""Acknowledgements owned per record: a forward, row or delete that fails is retried or released, never left held;
forwards and rows fit SQS's and DynamoDB's limits (too large, by reference); deliveries of one task id in a batch
are one acknowledgement; a task with a SUCCEEDED row is not run again; a queue that delivers once runs its task."""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from pipeline_constructs.fleet.worker.acknowledger import send_with_retries
from pipeline_constructs.fleet.worker.messages import SQS_PAYLOAD_LIMIT, sqs_payload_batches
from pipeline_constructs.fleet.worker.status import StatusRecorder
from pipeline_constructs.local.proxy import FaultProxy, Rule, server_error
from tests.support.worker_harness import wait_until

SHAPED = "tests.support.fleet_tasks:shaped"


def _downstream(aws, p, **attributes: str) -> str:
    return aws.sqs.create_queue(QueueName=f"{p.fleet}-next", Attributes=attributes)["QueueUrl"]


def _drain(aws, url: str) -> list[dict]:
    """Every message on ``url`` now (deleted as read), as parsed bodies."""
    bodies: list[dict] = []
    while True:
        messages = aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages")
        if not messages:
            return bodies
        bodies += [json.loads(m["Body"]) for m in messages]
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        aws.sqs.delete_message_batch(QueueUrl=url, Entries=entries)


def _log(p) -> str:
    return "".join(path.read_text() for path in p.log_dir.glob("*.log"))


def _states(p) -> dict[str, str]:
    return {task: row["state"] for task, row in p.task_rows().items()}


def _failed_entries(target: str):
    """A 200 answer to an SQS batch call whose every entry (Ids 0 to 9) failed on the service's side."""
    failed = [{"Id": str(i), "SenderFault": False, "Code": "InternalError", "Message": "injected"} for i in range(10)]
    body = json.dumps({"Successful": [], "Failed": failed}).encode()
    return 200, {"Content-Type": "application/x-amz-json-1.0"}, body


# ---------------------------------------------------------------- a flush's calls failing


def test_a_delete_that_fails_past_the_sdk_retries_is_tried_again_not_left_held(pipeline, aws_env, proxy):
    p = pipeline(visibility=4)  # held forever would mean extended forever: the queue would never empty
    task_ids = [f"d-{i}" for i in range(5)]
    p.submit([{"key": task_id} for task_id in task_ids])
    target = "AmazonSQS.DeleteMessageBatch"
    rule = proxy.add(Rule(target=target, answer=server_error(target), times=3))  # one call, every SDK attempt
    p.start_worker(aws_env, AWS_ENDPOINT_URL=proxy.endpoint)
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="every message deleted")
    assert p.stop_all() == [0]
    assert rule.fired == 3
    assert _states(p) == dict.fromkeys(task_ids, "SUCCEEDED")
    assert all(p.runs(task_id) == 1 for task_id in task_ids), "deleted on the retry: no task ran again"
    assert '"delete failed"' in _log(p)


def test_a_forward_failing_past_every_retry_releases_its_tasks_and_a_later_delivery_completes_them(
    pipeline, aws, aws_env, proxy
):
    p = pipeline(visibility=30)  # longer than the test waits: only a release brings a task back in time
    downstream = _downstream(aws, p)
    task_ids = [f"f-{i}" for i in range(3)]
    p.submit([{"key": task_id} for task_id in task_ids])
    target = "AmazonSQS.SendMessageBatch"
    proxy.add(Rule(target=target, answer=server_error(target), times=9))  # 3 tries of 3 SDK attempts
    p.start_worker(
        aws_env, AWS_ENDPOINT_URL=proxy.endpoint, PIPELINE_DOWNSTREAM_QUEUE_URL=downstream, PIPELINE_RETRY_DELAY="1"
    )
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=40, message="every task acknowledged")
    assert p.stop_all() == [0]
    forwards = _drain(aws, downstream)
    assert sorted(f["key"] for f in forwards) == task_ids, "each forwarded once it could be"
    assert all(f["outputs"] == [f"output/{f['key']}/result.json"] for f in forwards)
    assert _states(p) == dict.fromkeys(task_ids, "SUCCEEDED")
    assert p.outputs() == dict.fromkeys(task_ids, 1)
    assert '"tasks not acknowledged: released"' in _log(p)


def test_forward_entries_the_batch_call_failed_are_sent_again_at_once(pipeline, aws, aws_env, proxy):
    p = pipeline(visibility=60)
    downstream = _downstream(aws, p)
    task_ids = [f"e-{i}" for i in range(4)]
    p.submit([{"key": task_id} for task_id in task_ids])
    target = "AmazonSQS.SendMessageBatch"
    proxy.add(Rule(target=target, answer=_failed_entries(target), times=1))
    p.start_worker(aws_env, AWS_ENDPOINT_URL=proxy.endpoint, PIPELINE_DOWNSTREAM_QUEUE_URL=downstream)
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=25, message="every task acknowledged, not after 60 s")
    assert p.stop_all() == [0]
    assert sorted(f["key"] for f in _drain(aws, downstream)) == task_ids
    assert all(p.runs(task_id) == 1 for task_id in task_ids)


def test_forwards_fit_sqs_limits_and_a_result_too_large_travels_by_reference(pipeline, aws, aws_env):
    p = pipeline(visibility=30)
    downstream = _downstream(aws, p, MaximumMessageSize=str(SQS_PAYLOAD_LIMIT))  # a queue made before 2025
    bodies = [{"key": f"s-{i}", "result_bytes": 130_000} for i in range(9)] + [{"key": "huge", "result_bytes": 300_000}]
    p.submit(bodies)
    p.start_worker(aws_env, PIPELINE_TASK=SHAPED, PIPELINE_DOWNSTREAM_QUEUE_URL=downstream)
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="every task acknowledged")
    assert p.stop_all() == [0]
    forwards = {f["key"]: f for f in _drain(aws, downstream)}
    assert sorted(forwards) == sorted(b["key"] for b in bodies)
    assert len(forwards["s-0"]["result"]["blob"]) == 130_000
    huge = forwards["huge"]
    assert "result" not in huge and huge["outputs_count"] == 1
    assert huge["outcome"] == f"s3://{p.bucket}/output/huge/_SUCCESS"
    marker = json.loads(aws.s3.get_object(Bucket=p.bucket, Key="output/huge/_SUCCESS")["Body"].read())
    assert len(marker["result"]["blob"]) == 300_000 and marker["outputs"] == ["output/huge/result.json"]
    row = p.task_rows()["huge"]
    assert row["state"] == "SUCCEEDED" and row["outcome"] == huge["outcome"] and "result" not in row
    assert json.loads(p.task_rows()["s-0"]["result"])["run"] == forwards["s-0"]["result"]["run"]


# ---------------------------------------------------------------- one bad record in a batch


def refuse_duplicate_keys(method, path, headers, body):
    """DynamoDB's answer to a BatchWriteItem that names a key twice (moto refuses only identical items)."""
    if headers.get("X-Amz-Target") != "DynamoDB_20120810.BatchWriteItem":
        return None
    for requests in json.loads(body)["RequestItems"].values():
        keys = [json.dumps([r["PutRequest"]["Item"][k] for k in ("pk", "sk")]) for r in requests if "PutRequest" in r]
        if len(keys) != len(set(keys)):
            error = {"__type": "com.amazon.coral.validate#ValidationException"}
            error["message"] = "Provided list of item keys contains duplicates"
            return 400, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(error).encode()
    return None


def test_deliveries_of_one_task_id_in_a_batch_are_one_row_and_all_deleted(pipeline, aws, aws_env, moto_endpoint):
    p = pipeline(visibility=30)
    downstream = _downstream(aws, p)
    # One receive: the task "twice" twice. A batch naming a key twice is refused by DynamoDB whole.
    p.submit([{"key": "twice"}, {"key": "twice"}] + [{"key": f"other-{i}"} for i in range(3)])
    dynamodb = FaultProxy(moto_endpoint, authorize=refuse_duplicate_keys)
    p.start_worker(
        aws_env,
        AWS_ENDPOINT_URL=dynamodb.endpoint,
        PIPELINE_TASK=SHAPED,
        PIPELINE_DOWNSTREAM_QUEUE_URL=downstream,
        PIPELINE_ACK_DELAY_SECONDS="10",  # one batch: acknowledged when the last task finishes
        PIPELINE_RETRY_DELAY="60",  # a released task would not come back while the test waits
    )
    try:
        wait_until(lambda: p.queue_counts() == (0, 0), timeout=25, message="every message deleted")
        assert p.stop_all() == [0]
    finally:
        dynamodb.close()
    assert _states(p) == dict.fromkeys(["twice", "other-0", "other-1", "other-2"], "SUCCEEDED")
    assert all(p.runs(f"other-{i}") == 1 for i in range(3)), "the good ones were not released to run again"
    forwards = [f for f in _drain(aws, downstream) if f["key"] == "twice"]
    marker = json.loads(aws.s3.get_object(Bucket=p.bucket, Key="output/twice/_SUCCESS")["Body"].read())
    row = p.task_rows()["twice"]
    # Both deliveries may have run: the stored outcome (the first marker) is what is rowed and forwarded.
    assert {f["result"]["run"] for f in forwards} == {json.loads(row["result"])["run"]} == {marker["result"]["run"]}
    worker = p.status_rows()["worker#w0"]
    assert int(worker["tasks_released"]) == 0 and int(worker["tasks_failed"]) == 0


def test_a_task_whose_outputs_list_is_too_large_for_a_row_is_rowed_by_reference_and_fails_no_other(
    pipeline, aws, aws_env
):
    p = pipeline(visibility=30)
    p.submit([{"key": "wide", "outputs": 410}] + [{"key": f"narrow-{i}"} for i in range(3)])  # 416 kB of names
    p.start_worker(aws_env, PIPELINE_TASK=SHAPED, PIPELINE_ACK_DELAY_SECONDS="30", PIPELINE_RETRY_DELAY="90")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=45, message="every message deleted")
    assert p.stop_all() == [0]
    rows = p.task_rows()
    assert {task: row["state"] for task, row in rows.items()} == {
        "wide": "SUCCEEDED",
        "narrow-0": "SUCCEEDED",
        "narrow-1": "SUCCEEDED",
        "narrow-2": "SUCCEEDED",
    }
    assert all(p.runs(f"narrow-{i}") == 1 for i in range(3)) and p.runs("wide") == 1
    wide = rows["wide"]
    assert "outputs" not in wide and int(wide["outputs_count"]) == 411
    assert wide["outcome"] == f"s3://{p.bucket}/output/wide/_SUCCESS"
    marker = json.loads(aws.s3.get_object(Bucket=p.bucket, Key="output/wide/_SUCCESS")["Body"].read())
    assert len(marker["outputs"]) == 411
    assert rows["narrow-0"]["outputs"] == ["output/narrow-0/result.json"]


class RefusingTable:
    """A status table that refuses (ValidationException) any write holding an item with ``bad`` in its key
    and more than its essential fields, as DynamoDB refuses a whole batch for one item over 400 KB."""

    name = "status"

    def __init__(self) -> None:
        self.stored: dict[str, dict] = {}
        table = self

        class Client:
            def batch_write_item(self, RequestItems):
                items = [request["PutRequest"]["Item"] for request in RequestItems["status"]]
                if any(table.refused(item) for item in items):
                    raise table.validation_error()
                table.stored.update({item["sk"]: item for item in items})
                return {}

        self.meta = type("Meta", (), {"client": Client()})()

    @staticmethod
    def refused(item: dict) -> bool:
        return "bad" in item["sk"] and "note" not in item

    @staticmethod
    def validation_error() -> ClientError:
        return ClientError({"Error": {"Code": "ValidationException", "Message": "refused"}}, "BatchWriteItem")

    def put_item(self, Item):
        if self.refused(Item):
            raise self.validation_error()
        self.stored[Item["sk"]] = Item


def test_a_row_the_store_refuses_fails_alone_and_is_stored_with_its_essential_fields():
    table = RefusingTable()
    rows = [(f"good-{i}", {"state": "SUCCEEDED", "outputs": [f"o/{i}"]}) for i in range(3)]
    rows.insert(1, ("bad", {"state": "SUCCEEDED", "attempts": 1, "outputs": ["o/bad"], "result": "{}"}))
    assert StatusRecorder(table, "fleet", ttl_days=1).store_finished(rows) == set()
    assert table.stored["task#good-2"]["outputs"] == ["o/2"]
    bad = table.stored["task#bad"]
    assert bad["state"] == "SUCCEEDED" and bad["attempts"] == 1 and bad["outputs_count"] == 1
    assert "outputs" not in bad and "result" not in bad and "left out" in bad["note"]


def test_rows_of_one_task_id_are_merged_and_a_row_too_large_keeps_its_essential_fields():
    table = RefusingTable()
    wide = {"state": "SUCCEEDED", "outputs": [f"output/x/{i:04d}-" + "n" * 900 for i in range(460)]}
    rows = [("x", {"state": "SUCCEEDED", "attempts": 1}), ("x", wide), ("y", {"state": "SUCCEEDED"})]
    assert StatusRecorder(table, "fleet", ttl_days=1).store_finished(rows) == set()
    assert sorted(table.stored) == ["task#x", "task#y"]
    assert table.stored["task#x"]["outputs_count"] == 460 and "outputs" not in table.stored["task#x"]


def test_batches_of_forwards_fit_sqs_limits():
    entries = [{"Id": str(i), "MessageBody": "x" * 100_000} for i in range(5)] + [
        {"Id": str(5 + i), "MessageBody": "y"} for i in range(12)
    ]
    batches = list(sqs_payload_batches(entries))
    assert [len(b) for b in batches] == [2, 2, 10, 3]
    assert all(sum(len(e["MessageBody"]) for e in b) <= SQS_PAYLOAD_LIMIT for b in batches)


def test_a_batch_call_retries_only_the_entries_that_failed_and_reports_the_rest():
    calls: list[list[str]] = []

    def call(Entries):
        calls.append([e["Id"] for e in Entries])
        if len(calls) == 1:
            raise ClientError({"Error": {"Code": "InternalFailure", "Message": "x"}}, "SendMessageBatch")
        failed = [{"Id": "1", "SenderFault": False, "Code": "InternalError"}]
        failed += [{"Id": "2", "SenderFault": True, "Code": "InvalidParameterValue"}]
        return {"Failed": [f for f in failed if f["Id"] in calls[-1]]}

    left = send_with_retries(call, [{"Id": str(i)} for i in range(3)], what="test")
    assert calls == [["0", "1", "2"], ["0", "1", "2"], ["1"]]
    assert {i: f["Code"] for i, f in left.items()} == {"1": "InternalError", "2": "InvalidParameterValue"}


# ---------------------------------------------------------------- the re-sent key contract


def test_a_key_sent_again_is_not_run_again_and_its_stored_result_is_forwarded(pipeline, aws, aws_env):
    p = pipeline(visibility=30)
    downstream = _downstream(aws, p)
    bodies = [{"key": "again"}, {"key": "quiet", "message_only": True}]
    p.submit(bodies)
    p.start_worker(aws_env, PIPELINE_TASK=SHAPED, PIPELINE_DOWNSTREAM_QUEUE_URL=downstream)
    wait_until(lambda: p.queue_counts() == (0, 0) and len(p.task_rows()) == 2, timeout=30, message="first run")
    first = {f["key"]: f for f in _drain(aws, downstream)}
    rows = p.task_rows()
    p.submit(bodies)  # new messages, the same keys
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="the keys sent again acknowledged")
    assert p.stop_all() == [0]
    second = {f["key"]: f for f in _drain(aws, downstream)}
    assert p.runs("again") == 1 and p.runs("quiet") == 1, "a task with a SUCCEEDED row is not run again"
    assert second == first, "what is forwarded again is the stored result"
    assert p.task_rows() == rows, "its row stands"
    assert json.loads(rows["quiet"]["result"]) == first["quiet"]["result"]
    assert p.outputs() == {"again": 1}


# ---------------------------------------------------------------- a queue that delivers once


def test_a_queue_with_max_receive_count_1_runs_each_task_on_its_only_delivery(pipeline, aws_env):
    p = pipeline(visibility=30, max_receive_count=1)
    p.submit([{"key": "once"}, {"key": "bad", "poison": True}])
    p.start_worker(aws_env)
    wait_until(lambda: p.queue_counts(p.dlq_url)[0] == 1, timeout=30, message="the failed task dead-lettered")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=15, message="an empty queue")
    assert p.stop_all() == [0]
    rows = p.task_rows()
    assert rows["once"]["state"] == "SUCCEEDED" and p.runs("once") == 1 and p.outputs() == {"once": 1}
    assert rows["bad"]["state"] == "FAILED" and int(rows["bad"]["attempts"]) == 1 and p.runs("bad") == 1
    assert rows["bad"]["error"] == "ValueError: poison task bad", "written on the only delivery, before the DLQ"
    assert "maxReceiveCount 1" in _log(p)


def test_a_delivery_that_cannot_look_its_task_up_looks_again_while_held_spending_no_attempt(pipeline, aws_env, proxy):
    """S3 failing past the SDK's retries on a redelivery's completion-marker look: nothing ran, so it is no
    attempt (counted as one, a task that never ran was dead-lettered with the injected error), and the message
    is held while the look is tried again (released, each failed look spent one of its deliveries: make chaos
    lost a task so)."""
    p = pipeline(visibility=30, max_receive_count=5)  # with PIPELINE_MAX_ATTEMPTS=2: 3 spare deliveries, as a fleet has
    p.submit([{"key": "looked-up", "fail_attempts": 1}])  # attempt 1 fails: delivery 2 looks for a marker
    rule = proxy.add(Rule(method="GET", path_contains="/_SUCCESS", answer=server_error(), times=2))
    p.start_worker(
        aws_env,
        AWS_ENDPOINT_URL=proxy.endpoint,
        AWS_RETRY_MODE="standard",
        AWS_MAX_ATTEMPTS="2",  # one look: both of its SDK attempts answered 500
        PIPELINE_RETRY_DELAY="1",
        PIPELINE_MAX_ATTEMPTS="2",
    )
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=40, message="the task done")
    assert p.stop_all() == [0]
    assert rule.fired == 2
    assert _states(p) == {"looked-up": "SUCCEEDED"}
    assert p.runs("looked-up") == 2, "attempt 1 failed, attempt 2 ran on the delivery after the failed look"
    assert '"look-up failed: trying again"' in _log(p), "looked up again while held: no delivery spent"


def test_a_spare_delivery_that_cannot_read_the_row_keeps_the_failed_row_s_own_reason(pipeline, aws_env, proxy):
    """The row read failing on the delivery that records why a task is dead-lettered: it knows no reason, so
    it must not replace the last attempt's FAILED row ("worker lost" over "poison task"; make chaos saw it)."""
    p = pipeline(visibility=30, max_receive_count=5)
    p.submit([{"key": "poisoned", "poison": True}])
    target = "DynamoDB_20120810.GetItem"
    # One read a delivery: the third (the first spare delivery's) fails past the SDK's retries.
    rule = proxy.add(Rule(target=target, answer=server_error(target), skip=2, times=2))
    p.start_worker(
        aws_env,
        AWS_ENDPOINT_URL=proxy.endpoint,
        AWS_RETRY_MODE="standard",
        AWS_MAX_ATTEMPTS="2",
        PIPELINE_RETRY_DELAY="1",
        PIPELINE_MAX_ATTEMPTS="2",
    )
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=60, message="the task dead-lettered")
    assert p.stop_all() == [0]
    assert rule.fired == 2
    row = p.task_rows()["poisoned"]
    assert (row["state"], row["error"]) == ("FAILED", "ValueError: poison task poisoned")
    assert "worker lost" not in _log(p), "no reason it could not know was recorded"
    assert p.runs("poisoned") == 2, "the overwritten row lost its attempt count: the poison ran a third time"
