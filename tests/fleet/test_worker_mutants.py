"""The worker's acknowledgement, row and attempt paths with fake clients: tests that kill the mutants of their
guarantee lines the other tests let live (forward, then row, then delete; a failed row or forward released, not
deleted; duplicate ids one forward; a lost lease not published; a task not looked up released unspent)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pipeline_constructs.fleet.worker import acknowledger, attempts, leases, status
from pipeline_constructs.fleet.worker.acknowledger import Acknowledger
from pipeline_constructs.fleet.worker.attempts import AttemptRunner
from pipeline_constructs.fleet.worker.config import WorkerConfig
from pipeline_constructs.fleet.worker.isolation import TaskOutcome
from pipeline_constructs.fleet.worker.leases import LeaseKeeper
from pipeline_constructs.fleet.worker.limits import DeliveryLimits
from pipeline_constructs.fleet.worker.messages import Held, Tally
from pipeline_constructs.fleet.worker.status import StatusRecorder

CONFIG = WorkerConfig(
    queue_url="q", task="t:f", bucket="data", fleet_name="fleet", downstream_queue_url="next", worker_id="w"
)


@pytest.fixture(autouse=True)
def no_back_off(monkeypatch):
    monkeypatch.setattr(acknowledger, "BACKOFF_SECONDS", 0)
    monkeypatch.setattr(attempts, "HOLDING_RETRY_WAITS", (0.0, 0.0, 0.0, 0.0))
    monkeypatch.setattr(status.time, "sleep", lambda seconds: None)


class Queue:
    """SQS as the acknowledger sees it: every call in ``log`` (kind, receipts or task keys); forward entries of
    the keys in ``failing_forwards`` and deletes of the receipts in ``failing_deletes`` fail (not the sender's
    fault), as does every call while ``down`` names its kind."""

    def __init__(self) -> None:
        self.log: list[tuple[str, list[Any]]] = []
        self.bodies: list[dict] = []  # forwarded
        self.failing_forwards: set[str] = set()
        self.failing_deletes: set[str] = set()
        self.down: set[str] = set()

    def _answer(self, entries: list[dict], failing: set[str], key: str) -> dict:
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in entries if e[key] in failing]
        return {"Failed": failed} if failed else {}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        self.bodies += [json.loads(e["MessageBody"]) for e in Entries]
        keys = [json.loads(e["MessageBody"])["key"] for e in Entries]
        self.log.append(("forward", keys))
        if "forward" in self.down:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "SendMessageBatch")
        tagged = [e | {"key": k} for e, k in zip(Entries, keys, strict=True)]
        return self._answer(tagged, self.failing_forwards, "key")

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        self.log.append(("delete", [e["ReceiptHandle"] for e in Entries]))
        return self._answer(Entries, self.failing_deletes, "ReceiptHandle")

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        self.log.append(("release", [(e["ReceiptHandle"], e["VisibilityTimeout"]) for e in Entries]))
        return {}

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log]

    def of(self, kind: str) -> list[Any]:
        return [item for k, items in self.log if k == kind for item in items]


class Table:
    """A status table whose batch writes go to ``queue.log`` too; ``failing`` keys are never stored (left
    unprocessed, or the whole call fails while ``down``)."""

    name = "status"

    def __init__(self, queue: Queue) -> None:
        self.stored: dict[str, dict] = {}
        self.failing: set[str] = set()
        self.down = False
        table = self

        class Client:
            def batch_write_item(self, RequestItems):
                items = [r["PutRequest"]["Item"] for r in RequestItems["status"]]
                queue.log.append(("row", [i["sk"].removeprefix("task#") for i in items]))
                if table.down:
                    raise ClientError({"Error": {"Code": "InternalServerError", "Message": "x"}}, "BatchWriteItem")
                table.stored |= {i["sk"]: i for i in items if i["sk"] not in table.failing}
                unprocessed = [{"PutRequest": {"Item": i}} for i in items if i["sk"] in table.failing]
                return {"UnprocessedItems": {"status": unprocessed}} if unprocessed else {}

        self.meta = type("Meta", (), {"client": Client()})()

    put_failures = 0  # the next puts that fail past the SDK's retries

    def put_item(self, Item):
        if self.put_failures:
            self.put_failures -= 1
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "x"}}, "PutItem")
        self.stored[Item["sk"]] = Item

    def get_item(self, Key, ConsistentRead=True):
        return {"Item": self.stored[Key["sk"]]} if Key["sk"] in self.stored else {}

    def update_item(self, Key, UpdateExpression, ExpressionAttributeValues, **kwargs):
        """Counts a start (``ADD started :one``, a finished row left alone) or gives one back, as DynamoDB."""
        row = self.stored.get(Key["sk"])
        if UpdateExpression.startswith("ADD started :less"):
            if not row or not row.get("started"):
                raise ClientError({"Error": {"Code": "ConditionalCheckFailedException", "Message": "x"}}, "U")
            row["started"] -= 1
            return {}
        if row and row.get("state") == "SUCCEEDED":
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException", "Message": "x"}}, "U")
        before = dict(row or {})
        self.stored[Key["sk"]] = {"state": "RUNNING", **before, "started": before.get("started", 0) + 1}
        return {"Attributes": before} if before else {}

    def started(self, task: str = "t1") -> int:
        return self.stored.get(f"task#{task}", {}).get("started", 0)

    def starts_made(self, count: int, task: str = "t1") -> None:
        """``count`` attempts of ``task`` started before (their workers lost)."""
        self.stored[f"task#{task}"] = {"state": "RUNNING", "started": count}


def held(number: int, task: str | None = None, **outcome: Any) -> Held:
    message = {"MessageId": f"m{number}", "ReceiptHandle": f"r{number}", "Body": "{}"}
    return Held(message, f"r{number}", 1, task or f"t{number}", 1, outcome=outcome or {"outputs": [f"o/{number}"]})


class Worker:
    """A lease keeper and an acknowledger on fake clients."""

    def __init__(self, config: WorkerConfig = CONFIG) -> None:
        self.queue = Queue()
        self.table = Table(self.queue)
        self.tally = Tally()
        self.leases = LeaseKeeper(self.queue, "q", self.tally)
        self.leases.start(30)
        self.status = StatusRecorder(self.table, "fleet", ttl_days=1)
        self.acks = Acknowledger(config, sqs=self.queue, leases=self.leases, status=self.status, tally=self.tally)
        self.acked: list[Held] = []  # by an attempt runner

    def hold(self, *helds: Held) -> None:
        for h in helds:
            # Received now, on the keeper's own clock (a test's fake one, or the machine's monotonic clock, which
            # counts from its boot: received at 0, every release on a machine up 12 h was capped to no delay).
            self.leases.hold(h, received_at=leases.time.monotonic())

    def acknowledge(self, *helds: Held) -> None:
        for h in helds:
            assert self.leases.finish(h)
        self.acks.flush(force=True)


def test_forward_then_row_then_delete():
    worker = Worker()
    a, b = held(1), held(2)
    worker.hold(a, b)
    worker.acknowledge(a, b)
    calls = [(kind, sorted(items)) for kind, items in worker.queue.log]  # a batch's order is not kept
    assert calls == [("forward", ["t1", "t2"]), ("row", ["t1", "t2"]), ("delete", ["r1", "r2"])]
    assert not worker.leases.holds(a) and worker.tally.counts["succeeded"] == 2


@pytest.mark.parametrize("how", ["refused", "unprocessed"])
def test_a_row_not_stored_is_released_after_the_retry_delay_not_deleted(how):
    worker = Worker()
    a, b = held(1), held(2)
    worker.hold(a, b)
    if how == "refused":  # every try of the batch fails
        worker.table.down = True
    else:  # its item left unprocessed on every try
        worker.table.failing.add("task#t1")
    worker.acknowledge(a, b)
    assert worker.queue.of("forward") == ["t1", "t2"]
    assert "r1" not in worker.queue.of("delete"), "deleted without its row"
    assert ("r1", CONFIG.retry_delay) in worker.queue.of("release") and not worker.leases.holds(a)
    if how == "unprocessed":
        assert worker.queue.of("delete") == ["r2"] and "task#t2" in worker.table.stored


@pytest.mark.parametrize("step", ["forward", "delete"])
def test_a_forward_or_delete_that_keeps_failing_releases_its_task_alone_after_the_retry_delay(step):
    worker = Worker()
    a, b = held(1), held(2)
    worker.hold(a, b)
    if step == "forward":
        worker.queue.failing_forwards.add("t1")
    else:
        worker.queue.failing_deletes.add("r1")
    worker.acknowledge(a, b)
    tried = {"forward": ["t1", "t1", "t1", "t2"], "delete": ["r1", "r1", "r1", "r2"]}[step]
    assert sorted(worker.queue.of(step)) == tried, "its entry alone tried again"
    if step == "forward":
        assert worker.queue.of("row") == ["t2"] and worker.queue.of("delete") == ["r2"], "neither rowed nor deleted"
    assert worker.queue.of("release") == [("r1", CONFIG.retry_delay)]
    assert not worker.leases.holds(a) and not worker.leases.holds(b)


def test_deliveries_of_one_task_id_are_one_forward_and_keep_the_row_they_were_found_by():
    worker = Worker()
    first = held(1, "x", outputs=["o/new"], result=None)
    found = held(2, "x", outputs=["o/stored"], result=None, duplicate=True, row_stored=True)
    worker.hold(first, found)
    worker.acknowledge(first, found)
    assert worker.queue.bodies == [{"key": "x", "source": "fleet", "outputs": ["o/stored"]}], "the stored outcome"
    assert worker.queue.of("row") == [], "the SUCCEEDED row found stands"
    assert sorted(worker.queue.of("delete")) == ["r1", "r2"]


def test_an_acknowledgement_that_raises_releases_its_batch():
    worker = Worker()
    a = held(1)
    worker.hold(a)

    def broken(rows):
        raise RuntimeError("the runtime's own trouble")

    worker.status.store_finished = broken  # type: ignore[method-assign]
    worker.acknowledge(a)
    assert worker.queue.of("release") == [("r1", CONFIG.retry_delay)] and not worker.leases.holds(a)
    assert worker.queue.of("delete") == []


def test_a_message_lost_after_its_batch_was_taken_is_not_published():
    worker = Worker()
    lost, kept = held(1), held(2)
    worker.hold(lost, kept)
    for h in (lost, kept):
        worker.leases.finish(h)
    batch = worker.leases.take_finished(10)
    worker.leases._extender.lose(lost, "extension refused")  # the lease thread, between take and acknowledge
    worker.acks._acknowledge(batch)
    assert worker.queue.of("forward") == ["t2"] and worker.queue.of("row") == ["t2"]
    assert worker.queue.of("delete") == ["r2"]


# ---------------------------------------------------------------- looking a task up before it runs


class Stub:
    def __init__(self, **methods: Any) -> None:
        self.__dict__.update(methods)


class Markers:
    """S3 for completion markers: none found, or every get failing while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.gets = 0

    fail_once = False  # with ``down``: only the first get fails

    def get_object(self, Bucket: str, Key: str):
        self.gets += 1
        code = "InternalError" if self.down else "NoSuchKey"
        if self.fail_once:
            self.down = self.fail_once = False
        raise ClientError({"Error": {"Code": code, "Message": "x"}}, "GetObject")


def runner(worker: Worker, limits: DeliveryLimits, s3: Markers, runs: list[Any]) -> AttemptRunner:
    def run(call, record):
        runs.append((call.id, call.attempt))
        return TaskOutcome("ok")

    return AttemptRunner(
        CONFIG,
        Stub(run=run),  # type: ignore[arg-type]
        limits,
        s3=s3,
        leases=worker.leases,
        acks=Stub(queue=lambda h, last_chance: worker.acked.append(h)),  # type: ignore[arg-type]
        status=worker.status,
        instance=Stub(set_protection=lambda protect: None),  # type: ignore[arg-type]
        progress=Stub(record=None, forget=lambda task_id: None),  # type: ignore[arg-type]
        tally=worker.tally,
    )


def test_a_delivery_that_cannot_look_its_task_up_is_released_after_the_retry_delay_and_is_no_attempt():
    worker, s3, runs = Worker(), Markers(), list[Any]()
    s3.down = True
    tasks = runner(worker, DeliveryLimits(30, 4, 3), s3, runs)
    redelivery = delivery(1, 2)
    worker.hold(redelivery)
    tasks._process(redelivery, {})
    assert s3.gets == 5 and runs == [], "looked up again while held, 4 times, before it is let go"
    assert worker.queue.of("release") == [("r1", CONFIG.retry_delay)] and not worker.leases.holds(redelivery)
    assert worker.table.stored == {} and worker.tally.counts["failed"] == 0, "no failed attempt recorded"


def test_a_look_up_failing_once_is_tried_again_on_the_same_delivery():
    worker, s3, runs = Worker(), Markers(), list[Any]()
    s3.down = True
    tasks = runner(worker, DeliveryLimits(30, 6, 3), s3, runs)
    redelivery = delivery(1, 2)
    worker.hold(redelivery)
    s3.fail_once = True
    tasks._process(redelivery, {})
    assert s3.gets == 2 and runs == [("t1", 1)] and worker.acked == [redelivery], "run on this delivery"
    assert worker.queue.of("release") == [], "not released: a release spends one of the task's deliveries"
    tasks.shutdown()


def test_a_dead_letter_row_that_fails_to_write_is_written_again_before_the_release():
    worker, runs = Worker(), list[Any]()
    worker.table.starts_made(2)
    worker.table.put_failures = 2
    tasks = runner(worker, DeliveryLimits(30, 3, 2), Markers(), runs)
    spare = delivery(1, 3)
    worker.hold(spare)
    tasks._process(spare, {})
    assert worker.table.stored["task#t1"]["state"] == "FAILED", "the only trace beside the DLQ is kept"
    assert worker.queue.of("release") == [("r1", 0)]
    tasks.shutdown()


def test_a_redelivery_finds_a_marker_before_it_runs():
    worker, s3, runs = Worker(), Markers(), list[Any]()
    tasks = runner(worker, DeliveryLimits(30, 4, 3), s3, runs)
    first = Held({"MessageId": "m1", "ReceiptHandle": "r1", "Body": "{}"}, "r1", 1, "t1", 1)
    again = Held({"MessageId": "m2", "ReceiptHandle": "r2", "Body": "{}"}, "r2", 2, "t2", 1)
    worker.hold(first, again)
    tasks._process(first, {})
    assert s3.gets == 0, "a first delivery costs no S3 request"
    tasks._process(again, {})
    assert s3.gets == 1, "a redelivery looks for its marker"
    assert runs == [("t1", 1), ("t2", 1)] and worker.acked == [first, again]  # no start counted before
    tasks.shutdown()


def test_a_forward_too_large_for_any_call_is_not_sent_and_its_task_is_released():
    worker = Worker()
    huge = held(1, "k" * (300 * 1024))  # only a task id that large: no call could take it
    worker.hold(huge)
    worker.acknowledge(huge)
    assert worker.queue.of("forward") == [] and worker.queue.of("row") == []
    assert worker.queue.of("release") == [("r1", CONFIG.retry_delay)]


def test_rows_left_unprocessed_are_written_again_not_given_up_at_once():
    worker = Worker()
    a = held(1)
    worker.hold(a)
    write = worker.table.meta.client.batch_write_item
    tries: list[int] = []

    def once(RequestItems):  # its item unprocessed on the first try, taken on the next
        tries.append(1)
        (worker.table.failing.add if len(tries) == 1 else worker.table.failing.discard)("task#t1")
        return write(RequestItems)

    worker.table.meta.client.batch_write_item = once
    worker.acknowledge(a)
    assert worker.queue.of("row") == ["t1", "t1"] and "task#t1" in worker.table.stored
    assert worker.queue.of("delete") == ["r1"] and worker.queue.of("release") == []


def test_a_row_written_alone_that_fails_is_reported_not_stored():
    table = Table(Queue())

    def refuse(RequestItems):  # one row refused for its content: the batch is written row by row
        raise ClientError({"Error": {"Code": "ValidationException", "Message": "x"}}, "BatchWriteItem")

    def throttled(Item):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "x"}}, "PutItem")

    table.meta.client.batch_write_item = refuse
    table.put_item = throttled  # type: ignore[method-assign]
    rows = [("t1", {"state": "SUCCEEDED"})]
    assert StatusRecorder(table, "fleet", ttl_days=1).store_finished(rows) == {"t1"}


def test_a_finished_message_is_held_at_least_a_minute_for_its_acknowledgement(monkeypatch):
    from pipeline_constructs.fleet.worker import leases

    class Clock:
        now = 0.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(leases, "time", clock)
    worker = Worker()
    worker.leases.start(5)  # 3 timeouts are 15 s: a slow but working acknowledgement takes longer
    a = held(1)
    worker.hold(a)
    assert worker.leases.finish(a) and worker.leases.take_finished(10) == [a]
    for second in range(1, 60):
        clock.now = second
        worker.leases.extend_due()
    assert worker.leases.holds(a), "let go before the floor"
    clock.now = 61
    worker.leases.extend_due()
    assert not worker.leases.holds(a) and worker.queue.of("release")[-1] == ("r1", 0)


def delivery(number: int, receive_count: int, attempt: int = 1) -> Held:
    message = {"MessageId": f"m{number}", "ReceiptHandle": f"r{number}", "Body": "{}"}
    return Held(message, f"r{number}", receive_count, f"t{number}", attempt)


@pytest.mark.parametrize("receive_count", [1, 2])
def test_a_task_with_a_succeeded_row_is_acknowledged_not_run_again(receive_count):
    worker, runs = Worker(), list[Any]()
    worker.table.stored["task#t1"] = {"state": "SUCCEEDED", "outputs": ["o/1"], "result": "7"}
    tasks = runner(worker, DeliveryLimits(30, 4, 3), Markers(), runs)
    again = delivery(1, receive_count)
    worker.hold(again)
    tasks._process(again, {})
    assert runs == [] and worker.acked == [again]
    assert again.outcome == {"duplicate": True, "row_stored": True, "outputs": ["o/1"], "result": 7}
    tasks.shutdown()


def test_a_redelivery_runs_the_attempt_after_those_started_before():
    worker, runs = Worker(), list[Any]()
    worker.table.starts_made(1)  # the first attempt started; the second delivery was lost before its task started
    tasks = runner(worker, DeliveryLimits(30, 5, 4), Markers(), runs)
    third = delivery(1, 3)
    worker.hold(third)
    tasks._process(third, {})
    assert runs == [("t1", 2)] and third.attempt == 2
    tasks.shutdown()


def test_a_spare_delivery_records_its_reason_with_the_attempts_made_and_is_released_at_once():
    worker, runs = Worker(), list[Any]()
    worker.table.starts_made(2)  # both attempts of 2 started; their workers lost
    tasks = runner(worker, DeliveryLimits(30, 3, 2), Markers(), runs)
    spare = delivery(1, 3)
    worker.hold(spare)
    tasks._process(spare, {})
    assert runs == [] and worker.acked == []
    row = worker.table.stored["task#t1"]
    assert row["state"] == "FAILED" and row["attempts"] == 2 and row["error"] == "worker lost during 2 attempts"
    assert worker.queue.of("release") == [("r1", 0)] and not worker.leases.holds(spare)
    tasks.shutdown()


# ---------------------------------------------------------------- how many deliveries and attempts


def test_the_attempts_and_deliveries_a_task_gets_are_counted_to_the_last():
    by_attempts = DeliveryLimits(30, None, 2)
    assert not by_attempts.past_attempts(delivery(1, 2, attempt=2)) and by_attempts.past_attempts(delivery(1, 3, 3))
    assert not by_attempts.last_attempt(delivery(1, 1, attempt=1)) and by_attempts.last_attempt(delivery(1, 2, 2))
    by_receives = DeliveryLimits(30, 4, None)
    assert not by_receives.past_attempts(delivery(1, 3)) and by_receives.past_attempts(delivery(1, 4))
    assert not by_receives.last_attempt(delivery(1, 2)) and by_receives.last_attempt(delivery(1, 3))
    once = DeliveryLimits(30, 1, 1)  # no delivery to spare: the only one runs the task
    assert not once.spare_delivery and not once.past_attempts(delivery(1, 1)) and once.last_attempt(delivery(1, 1))


def test_a_dead_letter_reason_counts_the_deliveries_lost_unstarted():
    limits = DeliveryLimits(30, 4, 3)
    reason = limits.dead_letter_reason(delivery(1, 4, attempt=2), {})
    assert reason == (
        "dead-lettered after 1 attempt of 3: 2 deliveries were lost before their task started "
        "(workers killed while holding them)"
    )
