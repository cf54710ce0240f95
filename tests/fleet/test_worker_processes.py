"""The worker runtime as real processes against a moto server: nothing lost, nothing done twice."""

from __future__ import annotations

import json
import time
from collections import Counter

from pipeline_constructs.local.imds import FakeInstanceMetadata
from tests.support.worker_harness import wait_until


def test_two_workers_do_200_tasks_exactly_once_and_drain_the_queue(pipeline, aws_env):
    p = pipeline()
    task_ids = [f"task-{i:03d}" for i in range(200)]
    p.submit([{"key": task_id} for task_id in task_ids])
    p.start_worker(aws_env)
    p.start_worker(aws_env)

    wait_until(lambda: len(p.outputs()) == 200, timeout=180, interval=2, message="200 outputs")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="an empty queue")
    assert p.stop_all() == [0, 0]

    outputs = p.outputs()
    assert sorted(outputs) == task_ids
    assert set(outputs.values()) == {1}, "an output was written more than once"
    assert p.queue_counts(p.dlq_url) == (0, 0)
    rows = p.status_rows()
    states = Counter(row["state"] for sk, row in rows.items() if sk.startswith("task#"))
    assert states == {"SUCCEEDED": 200}
    workers = {sk: row for sk, row in rows.items() if sk.startswith("worker#")}
    assert {row["state"] for row in workers.values()} == {"STOPPED"}
    # A standard queue may hand a message to two receivers (SQS delivers at least once; moto's receive is not
    # atomic across its threads either): the output and the row stay single, and every delivery is accounted
    # for as done, found done before, failed or released.
    counts = {
        name: sum(int(row[f"tasks_{name}"]) for row in workers.values())
        for name in ("received", "succeeded", "duplicates", "failed", "released")
    }
    assert counts["received"] == counts["succeeded"] + counts["duplicates"] + counts["failed"] + counts["released"]
    assert counts["failed"] == 0 and counts["succeeded"] >= 200


def test_kill_9_mid_task_redelivers_and_completes_without_duplicate_output(pipeline, aws_env):
    p = pipeline(visibility=4)
    p.submit([{"key": "crashy", "crash_window": 60}])
    victim = p.start_worker(aws_env)
    wait_until(lambda: p.outputs().get("crashy") == 1, timeout=30, message="the early output")
    victim.kill()  # SIGKILL: no clean-up at all
    victim.wait()

    rescuer = p.start_worker(aws_env)  # nothing resubmitted: the same message must come back by itself
    wait_until(
        lambda: p.status_rows().get("task#crashy", {}).get("state") == "SUCCEEDED",
        timeout=60,
        message="the redelivered task to finish",
    )
    assert p.stop_all()[-1] == 0
    assert rescuer.returncode == 0
    assert p.outputs() == {"crashy": 1}
    row = p.status_rows()["task#crashy"]
    assert row["state"] == "SUCCEEDED"
    assert int(row["attempts"]) == 2
    assert p.runs("crashy") == 2


def test_poison_task_lands_in_the_dlq_and_the_status_store_says_why(pipeline, aws_env):
    p = pipeline(visibility=30, max_receive_count=3)  # two attempts, and the spare delivery that dead-letters
    p.submit([{"key": "bad", "poison": True}, {"key": "good"}])
    p.start_worker(aws_env, PIPELINE_RETRY_DELAY="0")

    wait_until(lambda: p.queue_counts(p.dlq_url)[0] == 1, timeout=60, message="the poison task in the DLQ")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="an empty queue")
    assert p.stop_all() == [0]
    (dead,) = p.aws.sqs.receive_message(QueueUrl=p.dlq_url, WaitTimeSeconds=1)["Messages"]
    assert json.loads(dead["Body"])["key"] == "bad"
    row = p.status_rows()["task#bad"]
    assert row["state"] == "FAILED"
    assert int(row["attempts"]) == 2
    assert row["error"] == "ValueError: poison task bad"
    assert p.runs("bad") == 2
    assert p.outputs() == {"good": 1}


def test_spot_notice_releases_in_flight_tasks_within_5_seconds_and_exits_0(pipeline, aws_env):
    imds = FakeInstanceMetadata()
    p = pipeline(visibility=600)
    p.submit([{"key": f"long-{i}", "sleep": 120} for i in range(3)])
    worker = p.start_instance_worker(aws_env, imds)
    wait_until(lambda: p.queue_counts() == (0, 3), timeout=30, message="3 tasks in flight")
    wait_until(lambda: sum(p.runs(f"long-{i}") for i in range(3)) == 3, timeout=30, message="3 running tasks")

    imds.interrupt()
    noticed = time.monotonic()
    # Released means another worker can take them: a second consumer receives all three within 5 s.
    taken: set[str] = set()
    while len(taken) < 3 and time.monotonic() - noticed < 5:
        response = p.aws.sqs.receive_message(
            QueueUrl=p.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=600
        )
        taken |= {message["MessageId"] for message in response.get("Messages", [])}
    released_after = time.monotonic() - noticed
    assert len(taken) == 3, f"{len(taken)} of 3 tasks taken by another consumer; queue now {p.queue_counts()}"
    assert worker.wait(timeout=60) == 0
    imds.close()
    assert released_after < 5
    assert imds.tokens_issued >= 1
    assert p.outputs() == {}


def test_task_longer_than_the_visibility_timeout_runs_once_thanks_to_the_heartbeat(pipeline, aws_env):
    p = pipeline(visibility=3)
    p.submit([{"key": "marathon", "sleep": 10}])
    p.start_worker(aws_env)
    p.start_worker(aws_env)
    wait_until(lambda: p.outputs().get("marathon") == 1, timeout=60, message="the long task's output")
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=15, message="an empty queue")
    assert p.stop_all() == [0, 0]
    assert p.runs("marathon") == 1
    row = p.status_rows()["task#marathon"]
    assert int(row["attempts"]) == 1


def test_a_redelivered_finished_task_is_acknowledged_and_forwarded_not_redone(pipeline, aws, aws_env):
    p = pipeline(visibility=30)
    downstream = aws.sqs.create_queue(QueueName=f"{p.fleet}-next")["QueueUrl"]
    marker = {"task": "done-1", "outputs": ["output/done-1/result.json"], "result": {"ok": True}}
    aws.s3.put_object(Bucket=p.bucket, Key="output/done-1/_SUCCESS", Body=json.dumps(marker))
    p.submit([{"key": "done-1"}])
    # A first delivery that never got deleted (its worker died after finishing): visible again at once.
    (first,) = aws.sqs.receive_message(QueueUrl=p.queue_url, VisibilityTimeout=0)["Messages"]
    assert first["Body"]
    p.start_worker(aws_env, PIPELINE_DOWNSTREAM_QUEUE_URL=downstream)
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, message="the duplicate acknowledged")
    assert p.stop_all() == [0]
    assert p.runs("done-1") == 0  # not redone
    (forwarded,) = aws.sqs.receive_message(QueueUrl=downstream, WaitTimeSeconds=1)["Messages"]
    assert json.loads(forwarded["Body"]) == {
        "key": "done-1",
        "source": p.fleet,
        "outputs": ["output/done-1/result.json"],
        "result": {"ok": True},
    }
