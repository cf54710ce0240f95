"""Leases and task processes when AWS calls fail, stall or refuse: the lease keeper on its own thread, lost
leases noticed and not published, SQS's 12 h cap, no extension after a release, nothing held for ever, and
task processes killed with what they started, at once when their messages are released."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from pipeline_constructs.fleet.worker import leases
from pipeline_constructs.fleet.worker.config import WorkerConfig
from pipeline_constructs.fleet.worker.intake import Intake
from pipeline_constructs.fleet.worker.isolation import TaskCall, TaskProcesses
from pipeline_constructs.fleet.worker.leases import LeaseKeeper
from pipeline_constructs.fleet.worker.messages import Held, Tally
from pipeline_constructs.local.imds import FakeInstanceMetadata
from pipeline_constructs.local.proxy import Rule, server_error
from tests.support.worker_harness import wait_until

REQUIRED = {"PIPELINE_QUEUE_URL": "https://sqs/q/tasks", "PIPELINE_TASK": "task:run", "PIPELINE_BUCKET": "data"}
EXTEND = "AmazonSQS.ChangeMessageVisibilityBatch"
TWELVE_HOURS = 43200


# ---------------------------------------------------------------- the lease keeper alone


class Clock:
    """The lease keeper's time (``time.monotonic``), moved on by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(leases, "time", clock)
    return clock


class RecordingQueue:
    """ChangeMessageVisibilityBatch as SQS answers it: each call recorded (at the clock's time), receipts in
    ``refused`` failed as the sender's fault, every call raising ``error`` when set."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, str, int]] = []  # (when, receipt, visibility asked)
        self.refused: set[str] = set()
        self.error: Exception | None = None

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        if self.error is not None:
            raise self.error
        self.calls += [(self.clock.now, e["ReceiptHandle"], e["VisibilityTimeout"]) for e in Entries]
        failed = [
            {"Id": e["Id"], "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "gone"}
            for e in Entries
            if e["ReceiptHandle"] in self.refused
        ]
        return {"Successful": [{"Id": e["Id"]} for e in Entries if e["ReceiptHandle"] not in self.refused]} | (
            {"Failed": failed} if failed else {}
        )


def held(number: int = 1) -> Held:
    message = {"MessageId": f"m{number}", "ReceiptHandle": f"r{number}", "Body": "{}"}
    return Held(message=message, receipt=f"r{number}", delivery=1, task_id=f"t{number}", attempt=1)


def keeper_of(queue, visibility: int, lost: list[Held] | None = None) -> LeaseKeeper:
    keeper = LeaseKeeper(queue, "q", Tally())
    keeper.on_lost = None if lost is None else lost.append
    keeper.start(visibility)
    return keeper


def test_a_refused_extension_is_a_lost_lease_whose_result_is_not_published(clock):
    queue, lost = RecordingQueue(clock), []
    keeper = keeper_of(queue, 30, lost)
    kept, taken = held(1), held(2)
    for message in (kept, taken):
        keeper.hold(message, received_at=0)
    queue.refused.add("r2")  # another worker received it meanwhile: the old receipt handle is no longer valid
    clock.now = 25
    keeper.extend_due()
    assert [(r, v) for _, r, v in queue.calls] == [("r1", 30), ("r2", 30)]
    assert keeper.holds(kept) and not keeper.holds(taken)
    assert lost == [taken], "its task is stopped"
    assert not keeper.finish(taken), "its result is not this worker's to forward, row or delete"
    assert keeper.finish(kept) and keeper.take_finished(10) == [kept]


def test_extensions_failing_past_the_visibility_deadline_lose_the_lease(clock, caplog):
    queue, lost = RecordingQueue(clock), []
    keeper = keeper_of(queue, 30, lost)
    message = held()
    keeper.hold(message, received_at=0)
    queue.error = RuntimeError("503 after the SDK's retries")
    clock.now = 25
    keeper.extend_due()
    clock.now = 29.9
    keeper.extend_due()
    assert keeper.holds(message) and lost == [], "kept while its visibility lasts: a failure may be brief"
    clock.now = 30
    with caplog.at_level(logging.WARNING, logger="pipeline.worker"):
        keeper.extend_due()
    assert not keeper.holds(message) and lost == [message]
    (record,) = [r for r in caplog.records if r.getMessage().startswith("lease lost")]
    assert record.reason == "its visibility ran out" and record.task == "t1"


def test_an_extension_that_comes_too_late_is_not_sent_the_lease_is_lost(clock):
    # The lease thread itself was held up (a slow machine): the message may be another worker's by now.
    queue, lost = RecordingQueue(clock), []
    keeper = keeper_of(queue, 30, lost)
    message = held()
    keeper.hold(message, received_at=0)
    clock.now = 31
    keeper.extend_due()
    assert queue.calls == [] and lost == [message] and not keeper.holds(message)


def test_visibility_is_never_asked_beyond_12_hours_from_the_receive_and_the_lease_ends_there(clock, caplog):
    queue, lost = RecordingQueue(clock), []
    keeper = keeper_of(queue, 900, lost)
    message = held()
    keeper.hold(message, received_at=100)  # prefetched time counts: SQS's 12 h run from the receive
    with caplog.at_level(logging.WARNING, logger="pipeline.worker"):
        for second in range(100, 100 + TWELVE_HOURS + 1000, 60):
            clock.now = second
            keeper.extend_due()
    assert queue.calls, "extended while it could be"
    latest = max(when + seconds for when, _, seconds in queue.calls)
    assert latest <= 100 + TWELVE_HOURS, "asked for visibility beyond SQS's cap"
    assert latest >= 100 + TWELVE_HOURS - 120, "extended up to the cap"
    assert lost == [message] and not keeper.holds(message)
    messages = [r.getMessage() for r in caplog.records]
    assert "lease reaches SQS's 12 h visibility cap: it ends then, and the task with it" in messages
    (record,) = [r for r in caplog.records if r.getMessage().startswith("lease lost")]
    assert record.reason == "SQS's 12 h visibility cap reached"


def test_a_release_after_a_back_off_stays_within_the_12_h_cap(clock):
    queue = RecordingQueue(clock)
    keeper = keeper_of(queue, 900)
    early, late = held(1), held(2)
    keeper.hold(early, received_at=TWELVE_HOURS - 1000)
    keeper.hold(late, received_at=0)
    clock.now = TWELVE_HOURS - 200
    keeper.release([early, late], delay=600)  # a failed attempt's back-off
    asked = {receipt: seconds for _, receipt, seconds in queue.calls}
    assert asked["r1"] == 600
    assert 0 < asked["r2"] <= 200, "hidden beyond SQS's 12 h: the release would be refused"


class GatedQueue:
    """Extensions block until ``proceed`` is set; every call is recorded when it lands."""

    def __init__(self) -> None:
        self.landed: list[tuple[str, str]] = []
        self.extending = threading.Event()
        self.proceed = threading.Event()

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        kind = "release" if Entries[0]["VisibilityTimeout"] == 0 else "extend"
        if kind == "extend":
            self.extending.set()
            self.proceed.wait(10)
        self.landed += [(kind, e["ReceiptHandle"]) for e in Entries]
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


def test_no_extension_lands_after_a_release_and_none_is_sent_after_it(clock):
    queue = GatedQueue()
    keeper = keeper_of(queue, 30)
    message = held()
    keeper.hold(message, received_at=0)
    clock.now = 25
    extension = threading.Thread(target=keeper.extend_due)
    extension.start()
    assert queue.extending.wait(10)
    release = threading.Thread(target=keeper.release, args=([message],))
    release.start()
    release.join(timeout=1.0)
    try:
        assert not keeper.holds(message), "out of keeping at once"
        assert release.is_alive(), "the release waits for the extension under way to land"
    finally:
        queue.proceed.set()
        extension.join(timeout=10)
        release.join(timeout=10)
    assert queue.landed == [("extend", "r1"), ("release", "r1")]
    clock.now = 1000
    keeper.extend_due()
    assert queue.landed == [("extend", "r1"), ("release", "r1")], "no extension after the release"


def test_a_finished_message_left_unacknowledged_for_long_is_released_not_extended_for_ever(clock, caplog):
    queue = RecordingQueue(clock)
    tally = Tally()
    keeper = LeaseKeeper(queue, "q", tally)
    keeper.start(30)  # let go after 3 visibility timeouts: 90 s
    stuck, running = held(1), held(2)
    for message in (stuck, running):
        keeper.hold(message, received_at=0)
    clock.now = 5
    assert keeper.finish(stuck)
    assert keeper.take_finished(10) == [stuck]  # its acknowledgement began, and hangs
    with caplog.at_level(logging.WARNING, logger="pipeline.worker"):
        for second in range(5, 200, 5):
            clock.now = second
            keeper.extend_due()
    assert not keeper.holds(stuck), "released"
    assert keeper.holds(running), "an unfinished task is kept as long as it runs"
    stuck_calls = [(when, seconds) for when, receipt, seconds in queue.calls if receipt == "r1"]
    assert stuck_calls[-1] == (100, 0), "made visible again 90 s after it finished (a redelivery finds it done)"
    assert all(seconds == 30 for when, seconds in stuck_calls[:-1]), "extended until then"
    assert tally.counts["released"] == 1
    assert any(r.getMessage().startswith("finished tasks unacknowledged too long") for r in caplog.records)


def test_messages_are_received_for_the_visibility_timeout_the_lease_keeper_counts_on():
    class ReceivingQueue:
        def receive_message(self, **kwargs):
            self.kwargs = kwargs
            return {"Messages": []}

    queue = ReceivingQueue()
    keeper = LeaseKeeper(queue, "q", Tally())
    keeper.start(45)  # the worker's setting; the queue's may differ
    config = WorkerConfig.from_env(REQUIRED)
    Intake(config, sqs=queue, leases=keeper, tally=Tally(), stopping=threading.Event(), start=print).receive(10)
    assert queue.kwargs["VisibilityTimeout"] == 45


def test_the_lease_keeper_has_an_sqs_client_of_its_own_that_gives_up_fast():
    from pipeline_constructs.fleet.worker.leases import lease_client

    sqs = boto3.client(
        "sqs", region_name="eu-west-1", endpoint_url="http://127.0.0.1:9", config=Config(max_pool_connections=7)
    )
    lease = lease_client(sqs)
    assert lease is not sqs
    assert lease.meta.endpoint_url == "http://127.0.0.1:9" and lease.meta.region_name == "eu-west-1"
    assert lease.meta.config.max_pool_connections == 7
    assert (lease.meta.config.connect_timeout, lease.meta.config.read_timeout) == (2, 3)
    assert lease.meta.config.retries == {"total_max_attempts": 2, "mode": "standard"}
    stand_in = RecordingQueue(Clock())
    assert lease_client(stand_in) is stand_in


# ---------------------------------------------------------------- task processes and what they start


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def tool_pid(pid_file: Path) -> int:
    return int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=20, interval=0.05))


def test_a_timed_out_task_is_killed_with_the_tools_it_started(tmp_path):
    pid_file = tmp_path / "tool.pid"
    tasks = TaskProcesses("tests.support.fleet_tasks:spawn", size=1, bucket="b", prefix="", timeout=5)
    tool = None
    try:
        outcome = tasks.run(TaskCall("t", {"pid_file": str(pid_file)}, "m", 1), print)
        assert outcome.kind == "timeout"
        tool = tool_pid(pid_file)
        wait_until(lambda: not alive(tool), timeout=5, interval=0.1, message="the task's tool to die with it")
    finally:
        tasks.close()
        if tool is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(tool, signal.SIGKILL)


@pytest.mark.parametrize("how", ["the worker stops", "its lease is lost", "the worker dies"])
def test_a_stopped_task_is_killed_with_the_tools_it_started(tmp_path, how):
    pid_file = tmp_path / "tool.pid"
    tasks = TaskProcesses("tests.support.fleet_tasks:spawn", size=1, bucket="b", prefix="", timeout=None)
    tasks.start()
    outcomes: list = []
    call = TaskCall("t", {"pid_file": str(pid_file)}, "m-1", 1)
    slot = threading.Thread(target=lambda: outcomes.append(tasks.run(call, print)))
    slot.start()
    tool = tool_pid(pid_file)
    try:
        if how == "the worker stops":
            tasks.close()
        elif how == "its lease is lost":
            tasks.stop_task("m-other")
            time.sleep(0.3)
            assert alive(tool), "only the task of the message lost is stopped"
            tasks.stop_task("m-1")
        else:  # the worker's end of the lifeline closes when its process ends, even by kill -9
            (busy,) = [p for p in tasks._all if p._busy]
            busy._lifeline.close()
        wait_until(lambda: not alive(tool), timeout=10, interval=0.1, message="the task's tool to die with it")
        slot.join(timeout=10)
        assert outcomes and outcomes[0].kind == "crashed"
    finally:
        tasks.close()
        slot.join(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.kill(tool, signal.SIGKILL)


# ---------------------------------------------------------------- real workers against faults


class Outage(Rule):
    """From :meth:`begin` for ``seconds``, every call but the lease keeper's (visibility changes) and
    receives waits until the outage ends: a stall of everything else, whatever thread makes it."""

    SPARED = ("AmazonSQS.ReceiveMessage", "AmazonSQS.ChangeMessageVisibility", EXTEND)

    def __init__(self) -> None:
        super().__init__(times=10**9)
        self.ends = 0.0

    def begin(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds

    def matches(self, method: str, path: str, headers) -> bool:
        left = self.ends - time.monotonic()
        if left <= 0 or headers.get("X-Amz-Target", "") in self.SPARED:
            return False
        self.stall = left
        self.fired += 1
        return True


def test_a_task_holding_its_lease_through_a_15_s_stall_of_every_other_call_runs_once(pipeline, aws_env, proxy):
    p = pipeline(visibility=3)
    outage = proxy.add(Outage())
    settings = {"PIPELINE_TASK": "tests.support.fleet_tasks:brief", "PIPELINE_WORKER_HEARTBEAT_SECONDS": "1"}
    p.start_worker(aws_env, AWS_ENDPOINT_URL=proxy.endpoint, **settings)
    p.submit([{"key": "held", "sleep": 5}])
    wait_until(lambda: p.runs("held") == 1, timeout=30, interval=0.2, message="the task running")
    # The status store, S3, the deletes: all stalled 15 s, longer than the task and five visibility timeouts.
    outage.begin(15)
    p.start_worker(aws_env, **settings)  # on the same queue, straight to the emulator: takes what reappears
    wait_until(
        lambda: p.runs("held") > 1 or (p.queue_counts() == (0, 0) and "held" in p.task_rows()),
        timeout=40,
        message="the task acknowledged, or run again",
    )
    assert outage.fired >= 2, "the worker's row and acknowledgement were stalled"
    assert p.runs("held") == 1, "the lease was lost during the stall: the task ran twice"
    row = p.task_rows()["held"]
    assert row["state"] == "SUCCEEDED" and row["worker"] == "w0" and int(row["attempts"]) == 1


def test_a_lost_lease_is_noticed_and_the_loser_publishes_nothing(pipeline, aws, aws_env, proxy):
    p = pipeline(visibility=2)
    downstream = aws.sqs.create_queue(QueueName=f"{p.fleet}-next")["QueueUrl"]
    p.submit([{"key": "contested", "sleep": 6}])
    # Every extension of the first worker fails: its lease runs out while its task runs. Its receives after
    # the first stall, so that the task comes back to the other worker.
    proxy.add(Rule(target=EXTEND, answer=server_error(EXTEND), times=10**9))
    proxy.add(Rule(target="AmazonSQS.ReceiveMessage", stall=30, skip=1, times=10**9))
    settings = {"PIPELINE_DOWNSTREAM_QUEUE_URL": downstream}
    loser = p.start_worker(aws_env, AWS_ENDPOINT_URL=proxy.endpoint, **settings)
    wait_until(lambda: p.runs("contested") == 1, timeout=30, interval=0.2, message="the first run")
    p.start_worker(aws_env, **settings)
    wait_until(
        lambda: p.queue_counts() == (0, 0) and p.task_rows().get("contested", {}).get("state") == "SUCCEEDED",
        timeout=40,
        message="the task done",
    )
    time.sleep(1)  # the loser's run would have ended by now (6 s): a forward of it would be there
    row = p.task_rows()["contested"]
    assert row["worker"] == "w1", "the SUCCEEDED row is the new holder's"
    forwarded = aws.sqs.receive_message(QueueUrl=downstream, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert len(forwarded.get("Messages", [])) == 1, "forwarded by the new holder only"
    log = p.log_paths[loser.pid].read_text()
    assert '"message": "lease lost' in log and '"reason": "its visibility ran out"' in log


def test_a_spot_notice_during_a_long_poll_kills_the_released_tasks_at_once(pipeline, aws_env):
    imds = FakeInstanceMetadata()
    p = pipeline(visibility=600)
    p.submit([{"key": "ticker", "ticks": 200}])
    # One slot and room for a whole batch more: the main thread waits in a 20 s long poll while the task runs.
    p.start_worker(
        aws_env,
        PIPELINE_SPOT_WATCH="on",
        PIPELINE_METADATA_ENDPOINT=imds.endpoint,
        PIPELINE_SPOT_POLL_SECONDS="1",
        PIPELINE_WAIT_SECONDS="20",
        PIPELINE_CONCURRENCY="1",
    )
    try:
        wait_until(lambda: p.ticks("ticker") >= 3, timeout=30, interval=0.2, message="the task ticking")
        imds.interrupt()
        wait_until(lambda: p.queue_counts()[0] == 1, timeout=10, interval=0.2, message="the task released")
        time.sleep(0.5)  # a write sent just before the kill may still land
        ticks = p.ticks("ticker")
        time.sleep(2)  # the old run ticked every 0.3 s
        assert p.ticks("ticker") == ticks, "the released task's old run kept writing"
    finally:
        imds.close()


def test_receives_failing_past_the_sdk_s_retries_do_not_stop_the_worker_or_its_running_task(pipeline, aws_env, proxy):
    p = pipeline(visibility=30)
    p.submit([{"key": "first", "sleep": 2}])
    receive = "AmazonSQS.ReceiveMessage"
    # The first receive takes the task; the next two fail, each through all three tries of the SDK.
    rule = proxy.add(Rule(target=receive, answer=server_error(receive), skip=1, times=6))
    worker = p.start_worker(aws_env, AWS_ENDPOINT_URL=proxy.endpoint)
    wait_until(lambda: rule.fired == 6 or worker.poll() is not None, timeout=30, message="the receives failing")
    assert worker.poll() is None, "the worker stopped on a failed receive"
    p.submit([{"key": "second"}])
    wait_until(lambda: sorted(p.outputs()) == ["first", "second"], timeout=30, message="both tasks done")
    assert worker.poll() is None, "the worker stopped on a failed receive"
    assert p.stop_all() == [0]
    assert p.outputs() == {"first": 1, "second": 1} and p.runs("first") == 1
