"""Worker runtime pieces without processes: configuration, task ids, status batching, metadata, protection."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading
import time

import pytest

from pipeline_constructs.fleet.worker import instance, runtime
from pipeline_constructs.fleet.worker.config import ConfigError, WorkerConfig
from pipeline_constructs.fleet.worker.isolation import TaskCall, TaskOutcome, TaskProcess, TaskProcesses
from pipeline_constructs.fleet.worker.limits import attempt_budget
from pipeline_constructs.fleet.worker.metadata import InstanceMetadata
from pipeline_constructs.fleet.worker.status import StatusRecorder
from pipeline_constructs.fleet.worker.task import load_task_function, parse_body, task_id_of
from pipeline_constructs.local.imds import FakeInstanceMetadata
from tests.support import ROOT

REQUIRED = {"PIPELINE_QUEUE_URL": "https://sqs/q/tasks", "PIPELINE_TASK": "task:run", "PIPELINE_BUCKET": "data"}


def test_config_defaults_from_the_queue_url():
    config = WorkerConfig.from_env(REQUIRED | {"PIPELINE_PREFIX": "stage1"})
    assert config.fleet_name == "tasks"
    assert config.prefix == "stage1/"
    assert config.wait_seconds == 20
    assert config.spot_poll_seconds == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"PIPELINE_QUEUE_URL": ""}, "PIPELINE_QUEUE_URL is required"),
        ({"PIPELINE_TASK": "no_function"}, "PIPELINE_TASK='no_function' is invalid; expected 'module:function'"),
        ({"PIPELINE_CONCURRENCY": "many"}, "PIPELINE_CONCURRENCY='many' is not a whole number"),
        ({"PIPELINE_WAIT_SECONDS": "30"}, "PIPELINE_WAIT_SECONDS=30 is out of range; allowed: 0 to 20"),
        ({"PIPELINE_SPOT_WATCH": "maybe"}, "PIPELINE_SPOT_WATCH='maybe' is invalid; allowed: auto, on, off"),
    ],
)
def test_config_errors_name_the_variable(change, message):
    with pytest.raises(ConfigError) as error:
        WorkerConfig.from_env(REQUIRED | change)
    assert str(error.value) == message


def test_task_function_loading_errors_name_the_spec():
    with pytest.raises(ImportError, match="cannot import module 'no_such_module'"):
        load_task_function("no_such_module:run")
    with pytest.raises(ImportError, match="module 'json' has no function 'nope'"):
        load_task_function("json:nope")
    assert load_task_function("json:dumps")([1]) == "[1]"


def test_task_ids_and_opaque_bodies():
    assert task_id_of({"key": "raw/2024/a.csv"}, "m-1") == "raw/2024/a.csv"
    assert task_id_of({"id": 7}, "m-1") == "7"
    assert task_id_of("not json", "m-1") == "m-1"
    assert parse_body('{"a": 1}') == {"a": 1}
    assert parse_body('{"a": 1}}') == '{"a": 1}}'  # invalid JSON travels unchanged


class RecordingTable:
    name = "status"

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.puts: list[dict] = []
        table = self

        class Client:
            def batch_write_item(self, RequestItems):
                table.batches.append(len(RequestItems["status"]))
                return {}

        self.meta = type("Meta", (), {"client": Client()})()

    def put_item(self, Item):
        self.puts.append(Item)


def test_finished_rows_go_25_a_request_and_failures_at_once():
    table = RecordingTable()
    recorder = StatusRecorder(table, "fleet", ttl_days=1)
    assert recorder.tasks_finished([(f"t{i}", {"state": "SUCCEEDED", "duration_s": 0.25}) for i in range(60)])
    recorder.task_failed("bad", state="RETRYING", attempts=1, error="boom")
    assert table.batches == [25, 25, 10]
    assert [p["sk"] for p in table.puts] == ["task#bad"]
    assert table.puts[0]["pk"] == "fleet#fleet" and table.puts[0]["expires_at"] > 0


def test_finished_rows_that_cannot_be_stored_say_so():
    table = RecordingTable()

    def refuse(RequestItems):
        raise RuntimeError("throttled")

    table.meta.client.batch_write_item = refuse
    assert not StatusRecorder(table, "fleet", ttl_days=1).tasks_finished([("t1", {"state": "SUCCEEDED"})])


@pytest.mark.parametrize(("max_receive_count", "attempts"), [(None, None), (1, 1), (2, 1), (4, 3)])
def test_one_delivery_is_kept_spare_to_record_why_a_task_is_dead_lettered(max_receive_count, attempts):
    assert attempt_budget(max_receive_count) == attempts


def test_metadata_client_uses_a_token_and_reads_notices():
    imds = FakeInstanceMetadata()
    try:
        client = InstanceMetadata(imds.endpoint)
        assert client.available()
        assert client.spot_interruption() is None
        imds.interrupt("2026-11-23T12:00:00Z")
        assert client.spot_interruption() == {"action": "terminate", "time": "2026-11-23T12:00:00Z"}
    finally:
        imds.close()
    assert not InstanceMetadata("http://127.0.0.1:9", timeout=0.5).available()


class RecordingAutoscaling:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def set_instance_protection(self, InstanceIds, AutoScalingGroupName, ProtectedFromScaleIn):
        assert InstanceIds == ["i-123"] and AutoScalingGroupName == "workers"
        self.calls.append(ProtectedFromScaleIn)


class StubMetadata:
    def instance_id(self):
        return "i-123"

    def auto_scaling_group(self):
        return "workers"


def test_scale_in_protection_while_busy_and_cleared_when_idle(monkeypatch):
    monkeypatch.setattr(instance, "IDLE_UNPROTECT_SECONDS", 0.0)
    autoscaling = RecordingAutoscaling()
    duties = instance.InstanceDuties(WorkerConfig.from_env(REQUIRED), metadata=StubMetadata(), autoscaling=autoscaling)
    duties.protection_enabled = True
    duties.set_protection(True)
    duties.set_protection(True)  # already protected: no second call
    duties.update_protection(busy=True)  # still busy: kept
    assert autoscaling.calls == [True]
    duties.update_protection(busy=False)  # idle now: cleared
    assert autoscaling.calls == [True, False]


class FlakyLifecycle:
    """CompleteLifecycleAction failing with ``errors`` (botocore ClientErrors, by code) before it succeeds."""

    def __init__(self, *errors: tuple[str, str]) -> None:
        self.errors, self.calls = list(errors), 0

    def complete_lifecycle_action(self, **request):
        from botocore.exceptions import ClientError

        self.calls += 1
        assert request["LifecycleActionResult"] == "CONTINUE" and request["InstanceId"] == "i-123"
        if self.errors:
            code, message = self.errors.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": message}}, "CompleteLifecycleAction")


@pytest.mark.parametrize(
    ("errors", "calls"),
    [
        # A throttle burst and a 5xx past the SDK's retries: tried again, the drained instance goes at once
        # (found by bench/chaos.py: the instance otherwise waits out the hook's timeout, billed).
        ([("Throttling", "Rate exceeded"), ("InternalFailure", "oops")], 3),
        # No action waiting (completed already, or timed out): nothing to try again.
        ([("ValidationError", "No active Lifecycle Action found with instance ID i-123")], 1),
        # Failing on every try: given up after the waits, the hook's timeout lets the instance go.
        ([("Throttling", "Rate exceeded")] * 9, 1 + len(instance.LIFECYCLE_RETRY_WAITS)),
    ],
    ids=["retried", "no action", "given up"],
)
def test_a_failed_lifecycle_completion_is_tried_again(monkeypatch, errors, calls):
    monkeypatch.setattr(instance.time, "sleep", lambda seconds: None)
    autoscaling = FlakyLifecycle(*errors)
    config = WorkerConfig.from_env(REQUIRED | {"PIPELINE_LIFECYCLE_HOOK": "drain"})
    instance.InstanceDuties(config, metadata=StubMetadata(), autoscaling=autoscaling).complete_lifecycle_action()
    assert autoscaling.calls == calls


def test_stopping_the_task_processes_mid_task_ends_the_task_and_closes_each_pipe_once():
    # The slot's own thread closes a busy process's pipe; the stopping thread only kills the process. Closed
    # from both at once, a descriptor could be closed after the worker reused it (the lifecycle test's hang).
    tasks = TaskProcesses("tests.support.fleet_tasks:nap", size=2, bucket="b", prefix="", timeout=None)
    tasks.start()
    outcomes = []
    slot = threading.Thread(target=lambda: outcomes.append(tasks.run(TaskCall("t", {"sleep": 60}, "m", 1), print)))
    slot.start()
    deadline = time.monotonic() + 10
    while not any(p._busy for p in tasks._all) and time.monotonic() < deadline:
        time.sleep(0.05)
    processes = list(tasks._all)
    busy = next(p for p in processes if p._busy)
    closes = []
    for process in processes:
        original = process._conn.close
        process._conn.close = lambda original=original, process=process: (closes.append(process), original())
    tasks.close()
    slot.join(timeout=10)
    assert not slot.is_alive(), "the running task ended with the stop"
    assert outcomes[0].kind == "crashed"
    assert sorted(map(id, closes)) == sorted(map(id, processes)), "every pipe closed exactly once"
    assert not any(p.alive for p in processes) and busy._killed


class SlowReleaseQueue:
    """SQS with two messages to hand out, whose ChangeMessageVisibilityBatch takes a second."""

    def __init__(self) -> None:
        self.messages = [
            {"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": f'{{"key": "t{i}"}}'} for i in range(2)
        ]
        self.released: list[str] = []

    def receive_message(self, **_: object) -> dict:
        handed, self.messages = self.messages, []
        if not handed:
            time.sleep(0.05)
        return {"Messages": handed}

    def change_message_visibility_batch(self, Entries: list[dict], **_: object) -> dict:
        time.sleep(1.0)
        self.released += [entry["ReceiptHandle"] for entry in Entries]
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries]}


class BlockingTasks:
    """Task processes whose tasks run until the worker closes them."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.running = 0

    def start(self) -> None:
        pass

    def run(self, call, on_progress):
        self.running += 1
        self.closed.wait(30)
        return TaskOutcome("crashed", error="stopped")

    def close(self) -> None:
        self.closed.set()


def test_a_worker_told_to_release_from_another_thread_does_not_exit_before_the_release_lands():
    # A spot notice releases from the notice's thread; the main thread shuts down at the same time and, on an
    # instance, the process ends right after: tasks whose release had not landed stayed hidden for minutes.
    queue, tasks = SlowReleaseQueue(), BlockingTasks()
    config = WorkerConfig.from_env(
        REQUIRED | {"PIPELINE_VISIBILITY_TIMEOUT": "600", "PIPELINE_MAX_RECEIVE_COUNT": "3", "PIPELINE_PREFETCH": "0"}
    )
    worker = runtime.Worker(config, tasks, sqs=queue, s3=None)
    finished = []
    main = threading.Thread(target=lambda: finished.append(worker.run()))
    main.start()
    deadline = time.monotonic() + 10
    while tasks.running < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    threading.Thread(
        target=worker.request_stop, args=("spot interruption notice",), kwargs={"release_now": True}
    ).start()
    main.join(timeout=30)
    assert finished == [0]
    assert sorted(queue.released) == ["r0", "r1"], "the worker returned before its release landed"


def test_the_task_processes_fork_with_the_s3_models_parsed_and_no_credentials_resolved():
    """What the fork server preloads (task_preload) lets a task process make its S3 client without reading a
    botocore data file, and leaves credentials to each process. A fresh interpreter: the suite's own processes
    share one loader (tests/conftest.py)."""
    probe = """
import boto3, botocore.loaders
from pipeline_constructs.fleet.worker import isolation, task_preload
session = boto3._get_default_session()._session
assert session._credentials is None, "credentials resolved before the fork"
def no_reading(self, path):
    raise AssertionError(f"read {path} after the preload")
botocore.loaders.JSONFileLoader.load_file = no_reading
boto3.client("s3", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b")
"""
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # The fork server imports it before any task process forks.
    source = inspect.getsource(TaskProcess.__init__)
    assert 'f"{__package__}.task_preload"' in source
