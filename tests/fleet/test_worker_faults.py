"""The worker's guarantees attacked with real processes: kill -9 at chosen points, hung tasks, lost workers,
lifecycle terminations. Each test fails if a task is lost, an output written twice or a status row missing."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from pipeline_constructs.local.autoscaling import LocalAutoScaling
from pipeline_constructs.local.imds import FakeInstanceMetadata
from pipeline_constructs.local.proxy import Rule
from tests.support.worker_harness import wait_until

KILL_POINTS = {
    # point: how the proxy recognizes the call, and whether the kill comes before it lands or after
    "before the task (right after a receive)": {"target": "AmazonSQS.ReceiveMessage", "when": "after"},
    "mid-task (after its first write)": {"method": "PUT", "path_contains": "/intermediate/", "when": "after"},
    "after the output, before the delete": {"method": "PUT", "path_contains": "/_SUCCESS", "when": "after"},
    "during a status flush": {"target": "DynamoDB_20120810.BatchWriteItem", "when": "before"},
    "right after a delete": {"target": "AmazonSQS.DeleteMessageBatch", "when": "after"},
}


def test_the_proxy_forwards_nothing_of_a_request_its_caller_died_sending(aws, proxy):
    # A worker killed by one of its calls may be mid-way through sending another: S3 would store nothing of
    # it, so neither may the proxy (a torn, empty completion marker once failed a kill test here).
    bucket = f"torn-{uuid.uuid4().hex[:8]}"
    aws.s3.create_bucket(Bucket=bucket)
    host, port = proxy.endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as caller:
        caller.sendall(f"PUT /{bucket}/marker HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n".encode())
        caller.sendall(b"0123456789")
    time.sleep(0.5)
    assert aws.s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_at_any_point_loses_nothing_duplicates_nothing_and_every_task_has_its_row(
    pipeline, aws_env, proxy, point
):
    p = pipeline(visibility=3)
    task_ids = [f"k-{i:02d}" for i in range(12)]
    p.submit([{"key": task_id} for task_id in task_ids])
    workers = {}
    rule = proxy.add(Rule(action=lambda: workers["victim"].kill(), **KILL_POINTS[point]))
    workers["victim"] = p.start_worker(aws_env, AWS_ENDPOINT_URL=proxy.endpoint)
    wait_until(lambda: rule.fired and workers["victim"].poll() is not None, timeout=30, message=f"kill {point}")
    assert workers["victim"].returncode == -9

    p.start_worker(aws_env)  # the rescuer talks to moto directly; nothing is resubmitted
    wait_until(lambda: len(p.outputs()) == 12 and p.queue_counts() == (0, 0), timeout=60, message="every task")
    wait_until(lambda: len(p.task_rows()) == 12, timeout=10, message="every row")
    assert p.stop_all()[-1] == 0
    assert p.outputs() == dict.fromkeys(task_ids, 1), "an output was lost or written twice"
    assert {task: row["state"] for task, row in p.task_rows().items()} == dict.fromkeys(task_ids, "SUCCEEDED")
    assert p.queue_counts(p.dlq_url) == (0, 0)


def test_a_hung_task_is_stopped_at_task_timeout_and_dead_lettered_with_the_reason(pipeline, aws_env):
    p = pipeline(visibility=30, max_receive_count=3)  # two attempts, one spare delivery
    p.submit([{"key": "hung", "sleep": 3600}] + [{"key": f"fine-{i}"} for i in range(3)])
    p.start_worker(aws_env, PIPELINE_TASK_TIMEOUT="2", PIPELINE_RETRY_DELAY="0", PIPELINE_CONCURRENCY="2")

    wait_until(lambda: p.queue_counts(p.dlq_url)[0] == 1, timeout=60, message="the hung task in the DLQ")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="an empty queue")
    started = time.monotonic()
    assert p.stop_all() == [0]
    assert time.monotonic() - started < 10, "a stop must not wait for the hung task"
    row = p.task_rows()["hung"]
    assert row["state"] == "FAILED" and row["error"] == "timed out after 2 s"
    assert int(row["attempts"]) == 2
    assert p.runs("hung") == 2
    assert sorted(p.outputs()) == ["fine-0", "fine-1", "fine-2"]


def test_a_task_whose_workers_die_on_every_attempt_is_dead_lettered_as_worker_lost(pipeline, aws_env):
    p = pipeline(visibility=2, max_receive_count=3)
    p.submit([{"key": "doomed", "sleep": 3600}])
    for attempt in (1, 2):
        victim = p.start_worker(aws_env)
        wait_until(lambda a=attempt: p.runs("doomed") == a, timeout=30, message=f"attempt {attempt}")
        victim.kill()
        victim.wait()
    p.start_worker(aws_env)
    wait_until(lambda: p.queue_counts(p.dlq_url)[0] == 1, timeout=30, message="the task in the DLQ")
    assert p.stop_all()[-1] == 0
    row = p.task_rows()["doomed"]
    assert row["state"] == "FAILED" and row["error"] == "worker lost during 2 attempts"
    assert p.runs("doomed") == 2, "the spare delivery records the loss; it does not run the task again"


def test_a_lost_last_attempt_after_failed_ones_keeps_the_earlier_error_in_the_reason(pipeline, aws_env):
    p = pipeline(visibility=2, max_receive_count=3)
    p.submit([{"key": "flaky", "fail_attempts": 1, "sleep": 3600}])
    victim = p.start_worker(aws_env, PIPELINE_RETRY_DELAY="0")
    wait_until(lambda: p.runs("flaky") == 2, timeout=30, message="the second attempt")
    victim.kill()
    victim.wait()
    p.start_worker(aws_env)
    wait_until(lambda: p.queue_counts(p.dlq_url)[0] == 1, timeout=30, message="the task in the DLQ")
    row = p.task_rows()["flaky"]
    assert row["state"] == "FAILED"
    assert row["error"] == "worker lost during the last of 2 attempts; before: ValueError: failing attempt 1 of flaky"


def _lose_deliveries_unstarted(p, count: int) -> None:
    """``count`` deliveries that no task started: what a worker killed with them prefetched leaves."""
    for _ in range(count):
        received = p.aws.sqs.receive_message(QueueUrl=p.queue_url, VisibilityTimeout=0, WaitTimeSeconds=1)
        assert len(received.get("Messages", [])) == 1


def test_deliveries_lost_before_their_task_started_are_not_attempts(pipeline, aws_env):
    p = pipeline(visibility=30, max_receive_count=6)  # 3 attempts and 3 spare deliveries, as the fleet's queue
    p.submit([{"key": "late"}])
    _lose_deliveries_unstarted(p, 3)
    p.start_worker(aws_env, PIPELINE_MAX_ATTEMPTS="3")
    wait_until(lambda: p.task_rows().get("late", {}).get("state") == "SUCCEEDED", timeout=30, message="the task")
    assert p.stop_all() == [0]
    row = p.task_rows()["late"]
    # Its 4th delivery, its first attempt: an attempt is counted as it starts, in the task's row.
    assert row["attempts"] == 1 and p.runs("late") == 1 and p.outputs() == {"late": 1}
    assert p.queue_counts(p.dlq_url) == (0, 0)


def test_a_task_out_of_deliveries_before_its_attempts_is_dead_lettered_saying_so(pipeline, aws_env):
    p = pipeline(visibility=30, max_receive_count=6)
    p.submit([{"key": "unlucky"}])
    _lose_deliveries_unstarted(p, 5)
    p.start_worker(aws_env, PIPELINE_MAX_ATTEMPTS="3")
    wait_until(lambda: p.task_rows().get("unlucky", {}).get("state") == "FAILED", timeout=30, message="the reason")
    wait_until(lambda: p.queue_counts(p.dlq_url)[0] == 1, timeout=30, message="the task in the DLQ")
    assert p.stop_all() == [0]
    row = p.task_rows()["unlucky"]
    assert row["state"] == "FAILED" and p.runs("unlucky") == 0
    assert row["error"] == (
        "dead-lettered after 0 attempts of 3: 5 deliveries were lost before their task started "
        "(workers killed while holding them)"
    )


def test_a_spare_delivery_records_its_reason_at_once_while_every_task_slot_is_busy(pipeline, aws_env):
    p = pipeline(visibility=6, max_receive_count=3)
    p.submit([{"key": "doomed", "sleep": 3600}])
    settings = {"PIPELINE_MAX_ATTEMPTS": "1", "PIPELINE_CONCURRENCY": "1", "PIPELINE_STOP_GRACE_SECONDS": "1"}
    victim = p.start_worker(aws_env, **settings)
    wait_until(lambda: p.runs("doomed") == 1, timeout=30, message="the only attempt")
    victim.kill()
    victim.wait()
    time.sleep(1.5)  # the victim's long poll (1 s) outlives it on the server, and would take the next message
    p.submit([{"key": "busy", "sleep": 3600}])  # visible at once, "doomed" only 6 s after the kill
    p.start_worker(aws_env, **settings)
    wait_until(lambda: p.runs("busy") == 1, timeout=30, message="the only slot busy")
    wait_until(
        lambda: p.task_rows().get("doomed", {}).get("state") == "FAILED",
        timeout=15,
        message="the reason, not queued behind the slot",
    )
    assert p.task_rows()["doomed"]["error"] == "worker lost during 1 attempt"
    assert p.runs("doomed") == 1 and p.outputs() == {}, "recorded, not run again; the busy task still running"
    assert p.stop_all() == [-9, 0]


def test_a_task_whose_process_dies_is_a_failed_attempt_and_the_worker_carries_on(pipeline, aws_env):
    p = pipeline(visibility=30, max_receive_count=2)  # one attempt
    p.submit([{"key": "crasher", "exit": 3}, {"key": "after"}])
    p.start_worker(aws_env, PIPELINE_CONCURRENCY="1")
    wait_until(lambda: p.queue_counts(p.dlq_url)[0] == 1, timeout=30, message="the crashed task in the DLQ")
    wait_until(lambda: p.outputs() == {"after": 1}, timeout=30, message="the next task done")
    assert p.stop_all() == [0]
    assert p.task_rows()["crasher"]["error"] == "task process exited with code 3 during the task"


def test_task_processes_die_with_their_worker_on_kill_9(pipeline, aws_env):
    p = pipeline(visibility=60)
    p.submit([{"key": "ticker", "ticks": 200}])
    worker = p.start_worker(aws_env)
    wait_until(lambda: p.ticks("ticker") >= 3, timeout=30, message="the task ticking")
    worker.kill()
    worker.wait()
    time.sleep(1.5)  # the orphan check runs every 0.5 s
    ticks = p.ticks("ticker")
    time.sleep(1.5)
    assert p.ticks("ticker") == ticks, "the task process outlived its worker"


def test_a_lifecycle_termination_releases_tasks_and_completes_the_action_within_10_s(pipeline, aws_env):
    imds = FakeInstanceMetadata(instance_id="i-0abc", group="statistics-workers")
    autoscaling = LocalAutoScaling()
    p = pipeline(visibility=600)
    p.submit([{"key": f"long-{i}", "sleep": 120} for i in range(3)])
    worker = p.start_instance_worker(
        aws_env,
        imds,
        PIPELINE_SCALE_IN_PROTECTION="on",
        PIPELINE_LIFECYCLE_HOOK="drain-workers",
        AWS_ENDPOINT_URL_AUTO_SCALING=autoscaling.endpoint,
    )
    try:
        wait_until(lambda: sum(p.runs(f"long-{i}") for i in range(3)) == 3, timeout=30, message="3 running tasks")
        imds.terminate_lifecycle()
        started = time.monotonic()
        wait_until(autoscaling.completed_lifecycle_actions, timeout=10, interval=0.2, message="the completion")
        completed_after = time.monotonic() - started
        assert worker.wait(timeout=30) == 0
    finally:
        imds.close()
        autoscaling.close()
    assert completed_after < 10
    assert p.queue_counts() == (3, 0), "every task released before the instance goes"
    (completion,) = autoscaling.completed_lifecycle_actions()
    assert completion | {"at": 0} == {
        "action": "CompleteLifecycleAction",
        "at": 0,
        "LifecycleHookName": "drain-workers",
        "AutoScalingGroupName": "statistics-workers",
        "InstanceId": "i-0abc",
        "LifecycleActionResult": "CONTINUE",
    }
    protection = [c["ProtectedFromScaleIn"] for c in autoscaling.calls if c["action"] == "SetInstanceProtection"]
    assert protection[0] == "true", "protected from scale-in while busy"
    rows = p.task_rows()
    assert {row["state"] for row in rows.values()} == {"RUNNING"}, "a released task is no failed attempt"
    assert [int(row["started"]) for row in rows.values()] == [0, 0, 0], "its start given back: no attempt spent"
