"""The submit-once guard's lines that hand mutations survived in the other tests, each pinned here.

Each test names the mutant it kills (a hand change of one line of :class:`SubmitGuard`, :class:`EnqueueGuard`
or the glue around them that the earlier tests let live). Races are played out step by step: a fake clock
the guard sleeps on, and an in-process Batch (:class:`Batch`) as AWS documents it (ListJobs without a filter
lists RUNNING jobs only; a JOB_NAME filter ignores case; a job shows in ListJobs a moment after SubmitJob)
whose SubmitJob can be held until the test releases it. The guard items are in the emulator's DynamoDB.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from botocore.exceptions import ClientError

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.local.proxy import FaultProxy, Rule
from pipeline_constructs.ops import operator
from tests.support.glue_world import GlueWorld
from tests.support.resources import create_status_table

PARTITION, GUARD = "trigger#feeds", "sns#m-1"
REQUEST = {"jobName": "feeds-consumer-m-1", "jobQueue": "queue", "jobDefinition": "consumer"}


class Clock:
    """Time for the guard: it moves only when someone sleeps, or when the test moves it."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Batch")


class Batch:
    """SubmitJob and ListJobs, in process. ``hold`` holds the next SubmitJob until released: it runs
    ``hold[0]()`` (which may raise instead of letting the job be made)."""

    def __init__(self, clock: Clock, *, listing_lag: float = 0.0) -> None:
        self.clock, self.listing_lag = clock, listing_lag
        self.jobs: list[dict[str, Any]] = []
        self.hold: list[Callable[[], None]] = []
        self.failing_looks, self.submits, self.refuse = 0, 0, False

    def made(self, name: str, status: str = "RUNNABLE") -> str:
        job = {"jobId": uuid.uuid4().hex, "jobName": name, "status": status, "listed_from": self.clock()}
        self.jobs.append(job)
        return str(job["jobId"])

    def named(self, name: str) -> list[str]:
        return [job["jobId"] for job in self.jobs if job["jobName"] == name]

    def submit_job(self, **request: Any) -> dict[str, str]:
        self.submits += 1
        if self.refuse:
            raise client_error("ClientException", 400)
        if self.hold:
            self.hold.pop(0)()
        job_id = self.made(request["jobName"], "SUBMITTED")
        self.jobs[-1]["listed_from"] += self.listing_lag
        return {"jobId": job_id, "jobName": request["jobName"]}

    def get_paginator(self, operation: str) -> Batch:
        assert operation == "list_jobs"
        return self

    def paginate(self, jobQueue: str, filters: list[dict] | None = None, jobStatus: str = "RUNNING") -> Iterator[dict]:
        if self.failing_looks:
            self.failing_looks -= 1
            raise client_error("ServerException", 500)
        names = [v.lower() for f in filters or [] if f["name"] == "JOB_NAME" for v in f["values"]]
        for job in self.jobs:
            if job["listed_from"] > self.clock():
                continue
            wanted = job["jobName"].lower() in names if filters else job["status"] == jobStatus
            if wanted:  # AWS may answer a filtered page empty, with a next token: one job a page here
                yield {"jobSummaryList": [], "nextToken": "next"}
                yield {"jobSummaryList": [{"jobId": job["jobId"], "jobName": job["jobName"]}], "nextToken": "next"}
        yield {"jobSummaryList": []}


class Held:
    """A SubmitJob held inside the fake Batch until released (with an error: it raises that instead)."""

    every: ClassVar[list[Held]] = []

    def __init__(self, batch: Batch) -> None:
        self.entered, self.released = threading.Event(), threading.Event()
        self.error: Exception | None = None
        batch.hold.append(self)
        Held.every.append(self)

    def __call__(self) -> None:
        self.entered.set()
        assert self.released.wait(10), "never released"
        if self.error is not None:
            raise self.error

    def release(self, error: Exception | None = None) -> None:
        self.error = error
        self.released.set()


class Delivery(threading.Thread):
    """One delivery of the trigger, on its own thread: its result or its error."""

    def __init__(self, guard: glue.SubmitGuard) -> None:
        super().__init__(daemon=True)
        self.guard, self.result, self.error = guard, None, None

    def run(self) -> None:
        try:
            self.result = self.guard.submit_once(PARTITION, GUARD, dict(REQUEST))
        except Exception as error:  # kept for the test to look at
            self.error = error


@pytest.fixture(autouse=True)
def release_held() -> Iterator[None]:
    yield
    while Held.every:
        Held.every.pop().released.set()


@pytest.fixture
def table(aws) -> Any:
    return create_status_table(aws.dynamodb, f"mutants{uuid.uuid4().hex[:8]}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def guard(table: Any, batch: Batch, clock: Clock) -> glue.SubmitGuard:
    return glue.SubmitGuard(table, batch, clock=clock, sleep=clock.sleep)


def row(table: Any) -> dict[str, Any]:
    return table.get_item(Key={"pk": PARTITION, "sk": GUARD}, ConsistentRead=True)["Item"]


def dead_holder(table: Any, **fields: Any) -> None:
    item = {"pk": PARTITION, "sk": GUARD, "state": "SUBMITTING", "owner": "dead", "jobName": REQUEST["jobName"]}
    table.put_item(Item=item | {"lease_until": 1} | fields)


# ---------------------------------------------------------------- the look for a previous holder's job


def test_the_look_lists_a_job_that_is_not_running_yet(table, clock):
    """Mutant: ListJobs without its JOB_NAME filter. Unfiltered, ListJobs lists RUNNING jobs only, so the
    holder's job, still RUNNABLE, was not found and the takeover submitted a second one."""
    batch = Batch(clock)
    made = batch.made(REQUEST["jobName"], "RUNNABLE")  # the holder submitted, then died before recording
    dead_holder(table)
    assert guard(table, batch, clock).submit_once(PARTITION, GUARD, dict(REQUEST))["jobId"] == made
    assert batch.named(REQUEST["jobName"]) == [made]


def test_the_look_takes_no_job_whose_name_differs_only_in_case(aws):
    """Mutant: the look without its exact-name check. The JOB_NAME filter ignores case (in Batch and in the
    emulator): another trigger's ``Nightly-check`` was taken for this trigger's ``nightly-check``, and this
    trigger's job was never submitted."""
    world = GlueWorld(aws.session)
    target = {"jobQueue": world.queue, "jobDefinition": world.definitions["watcher"]}
    event = target | {"jobName": "nightly-check", "scheduledTime": "2026-11-24T03:00:00Z"}
    name = "nightly-check-2026-11-24T03-00-00Z"
    world.batch.submit_job(jobName="Nightly-check-2026-11-24T03-00-00Z", **target)  # another schedule's
    world.table.put_item(  # this trigger's holder died before submitting
        Item={"pk": "trigger#schedule", "sk": f"schedule#{name}", "state": "SUBMITTING", "owner": "dead"}
        | {"lease_until": 1, "jobName": name}
    )
    result = glue.Glue(world.config, batch=world.batch, dynamodb=aws.dynamodb).handle(event)
    (job,) = world.jobs_named(name)
    assert result["submitted"][0]["jobId"] == job["jobId"]


def test_a_takeover_whose_looks_all_fail_submits_nothing(table, clock):
    """Mutant: a last look that failed taken for "no job". Whether the holder's job exists is then unknown:
    the takeover must raise (and hand over at once), not submit a second job."""
    batch = Batch(clock)
    made = batch.made(REQUEST["jobName"])
    batch.failing_looks = 100
    dead_holder(table, unsure_until=Decimal(str(clock() + 5)))
    with pytest.raises(ClientError, match="ServerException"):
        guard(table, batch, clock).submit_once(PARTITION, GUARD, dict(REQUEST))
    assert batch.named(REQUEST["jobName"]) == [made]
    assert row(table)["lease_until"] == 0


def test_a_refused_submit_is_not_tried_again(table, clock):
    """Mutant: a refused SubmitJob retried like a throttled one. Batch said no and made no job; trying for
    20 s more changes nothing and keeps the guard from a retry."""
    batch = Batch(clock)
    batch.refuse = True
    with pytest.raises(ClientError, match="ClientException"):
        guard(table, batch, clock).submit_once(PARTITION, GUARD, dict(REQUEST))
    assert batch.submits == 1 and clock() == Clock().now
    assert row(table)["lease_until"] == 0


def test_a_manual_start_whose_answer_is_lost_makes_one_job(aws, moto_endpoint):
    """Mutant: the operator's Batch client without BATCH_CLIENT_CONFIG. botocore sent the SubmitJob whose
    answer it lost again, and Batch made a second job (the guard looks for it instead)."""
    world = GlueWorld(aws.session)
    chain = {"jobQueue": world.queue, "steps": ["watcher"], "table": world.table.name}
    manifest = {"chains": {"feeds": chain | {"jobDefinitions": {"watcher": world.definitions["watcher"]}}}}
    proxy = FaultProxy(moto_endpoint)
    try:
        lost = proxy.add(Rule(method="POST", path_contains="/v1/submitjob", when="after", action=lose_the_answer))
        target = operator.Target("bench", "us-east-1", manifest, aws.session, batch_endpoint=proxy.endpoint)
        started = operator.start(target, "feeds", {}, run="feeds-lost-1")
    finally:
        proxy.close()
    assert lost.fired == 1
    (job,) = world.jobs_named("feeds-lost-1-watcher")
    assert started["jobId"] == job["jobId"]


def lose_the_answer() -> None:
    raise ConnectionResetError("injected: the answer is lost")


# ---------------------------------------------------------------- leases of live holders and takers


def test_a_delivery_waits_for_a_live_taker_rather_than_take_over_from_it(table, clock):
    """Mutant: a takeover whose own lease ends at once. A later delivery took over from the taker while the
    taker's SubmitJob was in flight, found no job yet, and submitted a second."""
    batch = Batch(clock)
    dead_holder(table)
    held = Held(batch)
    taker = Delivery(guard(table, batch, clock))
    taker.start()
    assert held.entered.wait(10)
    with pytest.raises(glue.InFlight):
        guard(table, batch, clock).submit_once(PARTITION, GUARD, dict(REQUEST))
    held.release()
    taker.join(10)
    assert taker.error is None and len(batch.named(REQUEST["jobName"])) == 1


def test_a_holder_that_fails_after_losing_its_lease_leaves_the_takers_lease_alone(table, clock):
    """Mutant: the guard's updates without ``#owner = :me``. A holder slower than its lease, failing after
    another delivery took over, reset the taker's lease to 0: a third delivery took over from the live taker,
    found no job yet, and submitted a second."""
    batch = Batch(clock)
    slow, taken = Held(batch), Held(batch)
    holder = Delivery(guard(table, batch, clock))
    holder.start()
    assert slow.entered.wait(10)
    clock.now += glue.LEASE_SECONDS + 1  # the holder outlived its lease
    taker = Delivery(guard(table, batch, clock))
    taker.start()
    assert taken.entered.wait(10)
    slow.release(client_error("ClientException", 400))  # the slow holder's SubmitJob is refused
    holder.join(10)
    assert isinstance(holder.error, ClientError) and row(table)["lease_until"] > clock()
    with pytest.raises(glue.InFlight):
        guard(table, batch, clock).submit_once(PARTITION, GUARD, dict(REQUEST))
    taken.release()
    taker.join(10)
    assert taker.error is None and len(batch.named(REQUEST["jobName"])) == 1
    assert row(table)["state"] == "SUBMITTED"


class ActsAfterRead:
    """The guard table, with ``act`` done right after the guard's first read of its item: between what a
    delivery saw and its takeover."""

    def __init__(self, table: Any, act: Callable[[], None]) -> None:
        self.table, self.act = table, act

    def get_item(self, **read: Any) -> dict[str, Any]:
        item = self.table.get_item(**read)
        act, self.act = self.act, lambda: None
        act()
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


def test_a_takeover_of_a_holder_that_recorded_its_job_meanwhile_returns_that_job(table, clock):
    """Mutant: a takeover whose condition no longer asks that the guard be SUBMITTING still. A holder past
    its lease (a clock ahead in the taker's environment, a stalled operator CLI) recorded its job between the
    taker's read and its takeover; the taker took over anyway, looked once while ListJobs did not list the
    job yet, and submitted a second."""
    batch = Batch(clock, listing_lag=5.0)
    slow = Held(batch)
    holder = Delivery(guard(table, batch, clock))
    holder.start()
    assert slow.entered.wait(10)
    clock.now += glue.LEASE_SECONDS + 1

    def holder_records_its_job() -> None:
        slow.release()
        holder.join(10)

    taker = glue.SubmitGuard(ActsAfterRead(table, holder_records_its_job), batch, clock=clock, sleep=clock.sleep)
    result = taker.submit_once(PARTITION, GUARD, dict(REQUEST))
    (made,) = batch.named(REQUEST["jobName"])
    assert holder.result == {"jobName": REQUEST["jobName"], "jobId": made}
    assert result == holder.result | {"duplicate": "true"}


def test_the_guards_lease_outlives_the_glue_function_and_its_holder_gives_up_inside_it(dev_template):
    """Mutants: LEASE_SECONDS under the function's timeout (a holder still running is taken over: two jobs);
    SUBMIT_SECONDS past it (the holder is killed mid-retry instead of handing the trigger over with its lease
    reset, and the retry waits for the lease to run out)."""
    (timeout,) = [
        f["Properties"]["Timeout"]
        for f in dev_template.find_resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Handler") == "handler.handler"
    ]
    assert timeout < glue.LEASE_SECONDS, "a holder is gone before its lease ends"
    last_call = glue.BATCH_CLIENT_CONFIG.connect_timeout + glue.BATCH_CLIENT_CONFIG.read_timeout
    assert glue.SUBMIT_SECONDS + last_call + glue.SETTLE_SECONDS < timeout, "a holder gives up in time"


# ---------------------------------------------------------------- what the guard is keyed on


@pytest.mark.parametrize("length", [20, 90, 140])
def test_every_day_of_a_scheduled_job_is_its_own_trigger_whatever_its_names_length(aws, length):
    """Mutant: the guard keyed on the job name cut short. A job name of 97 to 128 characters is not
    shortened around a digest, and cut, it lost its date: day 2 found day 1's guard and submitted nothing."""
    world = GlueWorld(aws.session)
    gluer = glue.Glue(world.config, batch=world.batch, dynamodb=aws.dynamodb)
    base = {"jobName": "n" * length, "jobQueue": world.queue, "jobDefinition": world.definitions["watcher"]}
    for day in ("2026-11-23T02:00:00Z", "2026-11-24T02:00:00Z"):
        (submitted,) = gluer.handle(base | {"scheduledTime": day})["submitted"]
        assert "duplicate" not in submitted, (length, day)
        assert len(world.jobs_named(submitted["jobName"])) == 1


def test_a_chains_own_table_guards_it_when_the_function_has_none(aws):
    """Mutant: Glue.submit_once ignoring the chain's table for the function's. A chain whose parameter names
    its table is guarded there."""
    world = GlueWorld(aws.session)
    config = world.config | {"table": None}
    event, name = world.events()["sns message link"]
    gluer = glue.Glue(config, batch=world.batch, dynamodb=aws.dynamodb)
    first, again = gluer.handle(event), gluer.handle(event)
    (job,) = world.jobs_named(name)
    assert first["submitted"][0]["jobId"] == again["submitted"][0]["jobId"] == job["jobId"]
    assert world.table.get_item(Key={"pk": "trigger#feeds", "sk": "sns#m-dup-1"})["Item"]["jobId"] == job["jobId"]


@pytest.fixture
def fleet(aws) -> Any:
    queues = [aws.sqs.create_queue(QueueName=f"tasks{uuid.uuid4().hex[:8]}")["QueueUrl"] for _ in range(2)]
    table = create_status_table(aws.dynamodb, f"fleet{uuid.uuid4().hex[:8]}")
    gluer = glue.Glue(
        {"chains": {}, "table": table.name},
        batch=None,
        dynamodb=aws.dynamodb,
        sqs=aws.sqs,
        autoscaling=aws.session.client("autoscaling"),  # no such group: the wake fails, reported
    )
    return type("Fleet", (), {"glue": gluer, "queues": queues})


def firing(queue: str, body: str) -> dict:
    return {"enqueue": {"queue": queue, "body": body, "group": "workers"}, "scheduledTime": "2026-11-24T03:00:00Z"}


def messages(aws, queue: str) -> list[str]:
    got = aws.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
    return sorted(m["Body"] for m in got.get("Messages", []))


def test_two_scheduled_tasks_of_one_firing_are_two_triggers(aws, fleet):
    """Mutants: the firing's guard hash without the task's body, or without its queue. Two ScheduledTriggers
    firing at the same minute, for two tasks on one queue or one task on two queues, sent one message."""
    queue, other = fleet.queues
    for event in (firing(queue, '{"key": "a"}'), firing(queue, '{"key": "b"}'), firing(other, '{"key": "a"}')):
        assert "duplicate" not in fleet.glue.handle(event)
    assert fleet.glue.handle(firing(queue, '{"key": "a"}'))["duplicate"] == "true"
    assert messages(aws, queue) == ['{"key": "a"}', '{"key": "b"}']
    assert messages(aws, other) == ['{"key": "a"}']
