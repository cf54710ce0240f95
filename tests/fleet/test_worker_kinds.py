"""Any-language fleet workers: a command per task, and a local HTTP app in the manner of Beanstalk's worker tier.

Real worker processes against the emulator, one per kind doing everything at once (a kill -9 mid-task, then
successes, failures to the DLQ, a timeout, a dying app), so the suite stays fast; then the units, and the
construct (``test_fleet_*``: the tests that build constructs, sharing one small app)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from pipeline_constructs.fleet.worker import adapters
from pipeline_constructs.fleet.worker.config import ConfigError, WorkerConfig
from pipeline_constructs.local import free_port
from tests.fleet.test_worker_leases import alive
from tests.support import ROOT
from tests.support.worker_harness import wait_until

COMMAND_SAMPLE = ROOT / "worker_images" / "command_worker"
HTTP_SAMPLE = ROOT / "worker_images" / "http_worker"
SQS_WORKER = ROOT / "worker_images" / "sqs_worker"

#: A command that does what the message says, else the sample's count_words: "fail" exits 3 with stderr,
#: "hang" (every attempt) and "slow" (the first attempt) start a grandchild, record its pid and wait for it;
#: "leave" starts one and leaves it running when it exits.
BEHAVING_COMMAND = """#!/bin/sh
message=$(cat "$PIPELINE_MESSAGE_PATH")
case "$message" in
  *'"fail"'*) echo "starting" >&2; echo "cannot parse $PIPELINE_TASK_ID" >&2; exit 3 ;;
esac
case "$message:$PIPELINE_ATTEMPT" in
  *'"hang"'*|*'"slow"'*:1) sleep 600 & echo $! > "$TEST_RECORDS/$PIPELINE_TASK_ID-$PIPELINE_ATTEMPT.pid"; wait ;;
  *'"leave"'*) sleep 600 & echo $! > "$TEST_RECORDS/$PIPELINE_TASK_ID-left.pid" ;;
esac
exec {sample}/count_words "$@"
"""

#: The sample app, with what the message's task id asks on top: "die-*" exits on its first attempt, "slow-*"
#: hangs on its first, "hang-*" works 1.5 s (past the task timeout) and then records that it finished.
BEHAVING_APP = """import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {sample!r})
from app import TaskHandler, ThreadingHTTPServer

RECORDS = Path(os.environ["TEST_RECORDS"])
(RECORDS / f"app-{{os.getpid()}}.start").write_text(str(time.time()))


class Handler(TaskHandler):
    def do_POST(self):
        task, attempt = self.headers["X-Pipeline-Task-Id"], self.headers["X-Pipeline-Attempt"]
        (RECORDS / f"{{task}}-{{attempt}}.request").write_text(json.dumps(dict(self.headers)))
        if task.startswith("die") and attempt == "1":
            os._exit(1)
        if task.startswith("slow") and attempt == "1":
            time.sleep(600)
        if task.startswith("hang"):
            time.sleep(1.5)
            (RECORDS / f"{{task}}-{{attempt}}.finished").write_text("")
        super().do_POST()


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _pid(path: Path) -> int:
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), timeout=20, interval=0.05))


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _json_lines(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_command_tasks_survive_a_kill_9_write_outputs_once_fail_with_stderr_and_time_out_with_their_tree(
    pipeline, aws_env, tmp_path
):
    records = tmp_path / "records"
    records.mkdir()
    command = tmp_path / "behave"
    command.write_text(BEHAVING_COMMAND.format(sample=COMMAND_SAMPLE))
    command.chmod(0o755)
    p = pipeline(visibility=2, max_receive_count=3)  # two attempts, one spare delivery
    texts = {"slow-0": "to be or not to be\n", **{f"doc-{i}": "word " * (i + 1) + "\n" for i in range(3)}}
    texts |= {"bad": "x\n", "stuck": "y\n"}
    for key, text in texts.items():
        p.aws.s3.put_object(Bucket=p.bucket, Key=f"input/{key}", Body=text.encode())
    settings = {
        "PIPELINE_TASK_KIND": "command",
        "PIPELINE_COMMAND": json.dumps([str(command), "{input}"]),
        "PIPELINE_RETRY_DELAY": "0",
        "TEST_RECORDS": str(records),
    }
    # The victim: killed while its command (and the command's own child) runs; both die with it.
    p.submit([{"key": "slow-0", "slow": True}])
    victim = p.start_worker(aws_env, PIPELINE_CONCURRENCY="1", PIPELINE_PREFETCH="0", **settings)
    grandchild = _pid(records / "slow-0-1.pid")
    victim.kill()
    victim.wait()
    wait_until(lambda: not alive(grandchild), timeout=5, interval=0.1, message="the command's child to die")

    docs = [{"key": "doc-0", "leave": True}, {"key": "doc-1"}, {"key": "doc-2"}]
    p.submit([*docs, {"key": "bad", "fail": True}, {"key": "stuck", "hang": True}])
    p.start_worker(aws_env, PIPELINE_CONCURRENCY="3", PIPELINE_TASK_TIMEOUT="1", **settings)
    wait_until(
        lambda: p.queue_counts(p.dlq_url)[0] == 2, timeout=30, interval=0.2, message="the two failures in the DLQ"
    )
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, interval=0.2, message="an empty queue")
    assert p.stop_all()[-1] == 0
    rows = p.task_rows()
    done = ["doc-0", "doc-1", "doc-2", "slow-0"]
    assert {task: rows[task]["state"] for task in done} == dict.fromkeys(done, "SUCCEEDED")
    for task in done:
        text = texts[task]
        (key,) = p.keys(f"output/{task}/counts.json")  # one version: written once
        counts = json.loads(p.aws.s3.get_object(Bucket=p.bucket, Key=key)["Body"].read())
        assert counts == {"lines": 1, "words": len(text.split()), "bytes": len(text)}
        assert rows[task]["outputs"] == [key]
    assert rows["bad"]["state"] == "FAILED" and int(rows["bad"]["attempts"]) == 2
    assert rows["bad"]["error"] == f"CommandFailed: {command} exited with code 3; stderr: starting | cannot parse bad"
    assert rows["stuck"]["state"] == "FAILED" and rows["stuck"]["error"] == "timed out after 1 s"
    stuck_children = [_pid(records / f"stuck-{attempt}.pid") for attempt in (1, 2)]
    left = _pid(records / "doc-0-left.pid")
    try:
        assert not any(alive(pid) for pid in stuck_children), "a timed-out command's child outlived it"
        assert not alive(left), "a finished command's child outlived it"
    finally:
        _kill([*stuck_children, left])
    logged = _json_lines("".join(path.read_text() for path in p.log_paths.values()))
    said = [line for line in logged if line.get("stream") == "stdout" and line.get("task") == "doc-2"]
    assert [line["message"] for line in said] == ["task doc-2 (attempt 1): 3 words"], "PROGRESS lines are not logged"
    assert not p.keys("output/bad/") and not p.keys("output/stuck/")


def test_http_tasks_survive_a_kill_9_and_a_dying_app_and_a_timeout_restarts_the_app(pipeline, aws_env, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    app = tmp_path / "app.py"
    app.write_text(BEHAVING_APP.format(sample=str(HTTP_SAMPLE)))
    p = pipeline(visibility=2, max_receive_count=3)
    settings = {
        "PIPELINE_TASK_KIND": "http",
        "PIPELINE_HTTP_PORT": str(free_port()),
        "PIPELINE_HTTP_START": json.dumps(["python3", str(app)]),  # the worker's Python: first on PATH
        "PIPELINE_HTTP_START_SECONDS": "20",
        "PIPELINE_RETRY_DELAY": "0",
        "PIPELINE_CONCURRENCY": "1",  # one request at a time: a timed-out one is stopped by restarting the app
        "TEST_RECORDS": str(records),
    }
    p.submit([{"key": "slow-0", "text": "to be or not to be"}])
    victim = p.start_worker(aws_env, PIPELINE_PREFETCH="0", **settings)
    wait_until(lambda: (records / "slow-0-1.request").exists(), timeout=20, interval=0.05, message="the request")
    (first_app,) = [int(path.stem.removeprefix("app-")) for path in records.glob("app-*.start")]
    victim.kill()
    victim.wait()
    wait_until(lambda: not alive(first_app), timeout=5, interval=0.1, message="the app to die with its worker")

    docs = [{"key": f"doc-{i}", "text": "a rose is a rose " * (i + 1)} for i in range(3)]
    p.submit([*docs, {"key": "bad"}, {"key": "die-0", "text": "still here"}, {"key": "hang-0", "text": "zzz"}])
    p.start_worker(aws_env, PIPELINE_TASK_TIMEOUT="1", **settings)
    wait_until(
        lambda: p.queue_counts(p.dlq_url)[0] == 2, timeout=40, interval=0.2, message="the two failures in the DLQ"
    )
    wait_until(lambda: p.queue_counts() == (0, 0), timeout=30, interval=0.2, message="an empty queue")
    assert p.stop_all()[-1] == 0
    rows = p.task_rows()
    for task in ["doc-0", "doc-1", "doc-2", "slow-0", "die-0"]:
        assert rows[task]["state"] == "SUCCEEDED", task
        (key,) = p.keys(f"output/{task}/words.json")
        assert rows[task]["outputs"] == [key]
    assert json.loads(p.aws.s3.get_object(Bucket=p.bucket, Key="output/doc-1/words.json")["Body"].read()) == {
        "a": 4,
        "rose": 4,
        "is": 2,
    }
    assert json.loads(rows["doc-1"]["result"]) == {"words": 10, "distinct": 3}
    assert int(rows["die-0"]["attempts"]) == 2 and int(rows["slow-0"]["attempts"]) == 2
    assert rows["bad"]["state"] == "FAILED"
    assert rows["bad"]["error"] == "AppFailed: HTTP 404 Not Found: no input object for key 'bad'"
    assert rows["hang-0"]["state"] == "FAILED" and rows["hang-0"]["error"] == "timed out after 1 s"
    headers = json.loads((records / "doc-0-1.request").read_text())
    assert headers["X-Aws-Sqsd-Queue"] == p.queue_url.rsplit("/", 1)[-1] and headers["X-Aws-Sqsd-Msgid"]
    assert headers["X-Pipeline-Attempt"] == "1" and headers["Content-Type"] == "application/json"
    assert int(headers["X-Aws-Sqsd-Receive-Count"]) >= 1
    said = [line["message"] for line in _json_lines(p.log_paths[p.processes[-1].pid].read_text())]
    assert said.count("app stopped by itself: restarting") == 1, "the app that died is started again"
    assert said.count("app restarted: a task left work in it behind") == 2, "after each timed-out request"
    time.sleep(max(0.0, (records / "hang-0-2.request").stat().st_mtime + 2 - time.time()))
    assert not list(records.glob("hang-0-*.finished")), "a timed-out request's work went on in the app"
    apps = [int(path.stem.removeprefix("app-")) for path in records.glob("app-*.start")]
    assert not any(alive(pid) for pid in apps), "an app outlived its worker"


# ---------------------------------------------------------------- units


class _RecordingTask:
    id = "t-1"

    def __init__(self) -> None:
        self.reports: list[tuple[float, str]] = []

    def progress(self, fraction: float, note: str = "") -> None:
        self.reports.append((fraction, note))


def test_progress_lines_are_the_tasks_progress_and_other_lines_go_to_the_log(capsys):
    task = _RecordingTask()
    lines = "PROGRESS 0.25\nPROGRESS .5 half way there\nPROGRESS 1.5 clamped by the task\nconverting\nPROGRESS x\n"
    adapters._read_stdout(task, io.StringIO(lines))  # type: ignore[arg-type]
    assert task.reports == [(0.25, ""), (0.5, "half way there"), (1.5, "clamped by the task")]
    logged = _json_lines(capsys.readouterr().out)
    assert [(line["message"], line["task"], line["stream"]) for line in logged] == [
        ("converting", "t-1", "stdout"),
        ("PROGRESS x", "t-1", "stdout"),
    ]


def test_a_command_that_cannot_start_fails_its_attempt_saying_why(tmp_path):
    with pytest.raises(adapters.CommandFailed, match=r"cannot run ./missing: No such file or directory"):
        adapters._run(_RecordingTask(), ["./missing"], dict(os.environ))  # type: ignore[arg-type]


BASE = {"PIPELINE_QUEUE_URL": "http://sqs/1/q", "PIPELINE_BUCKET": "b"}


def test_the_worker_reads_each_kind_from_its_environment():
    command = WorkerConfig.from_env(
        BASE | {"PIPELINE_TASK_KIND": "command", "PIPELINE_COMMAND": '["./resize", "{input}"]'}
    )
    assert command.command == ("./resize", "{input}") and command.task.endswith(".adapters:run_command")
    http = WorkerConfig.from_env(
        BASE | {"PIPELINE_TASK_KIND": "http", "PIPELINE_HTTP_PORT": "8080", "PIPELINE_TASK_TIMEOUT": "90"}
    )
    assert http.task.endswith(".adapters:post_to_app")
    assert (http.http.port, http.http.path, http.http.content_type, http.http.request_timeout) == (
        8080,
        "/",
        "application/json",
        0,
    )
    assert http.http.queue_name == "q" and http.http.start == () and http.http.start_seconds == 60
    assert WorkerConfig.from_env(BASE | {"PIPELINE_TASK": "task:run"}).task_kind == "function"


@pytest.mark.parametrize(
    ("variables", "error"),
    [
        ({"PIPELINE_TASK_KIND": "shell"}, "PIPELINE_TASK_KIND='shell' is invalid; allowed: function, command, http"),
        ({"PIPELINE_TASK_KIND": "command"}, "PIPELINE_COMMAND is required with PIPELINE_TASK_KIND=command"),
        ({"PIPELINE_TASK_KIND": "command", "PIPELINE_COMMAND": "./resize"}, "PIPELINE_COMMAND='./resize' is invalid"),
        ({"PIPELINE_TASK_KIND": "http"}, "PIPELINE_HTTP_PORT is required with PIPELINE_TASK_KIND=http"),
        ({"PIPELINE_TASK_KIND": "http", "PIPELINE_HTTP_PORT": "0"}, "PIPELINE_HTTP_PORT=0 is out of range"),
        (
            {"PIPELINE_TASK_KIND": "http", "PIPELINE_HTTP_PORT": "80", "PIPELINE_HTTP_PATH": "tasks"},
            "PIPELINE_HTTP_PATH='tasks' is invalid; allowed: a path starting with /",
        ),
        ({}, "PIPELINE_TASK is required"),
    ],
)
def test_a_wrong_kind_setting_stops_the_worker_at_start_naming_it(variables, error):
    with pytest.raises(ConfigError) as raised:
        WorkerConfig.from_env(BASE | variables)
    assert str(raised.value).startswith(error)


def test_the_sample_app_counts_words_case_blind():
    # By its file: the name `app` is the example app's, imported first by the example's tests in this process.
    spec = importlib.util.spec_from_file_location("http_sample_app", HTTP_SAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    assert sample.count_words("A rose is a rose") == {"a": 2, "rose": 2, "is": 1}


def test_the_samples_ship_the_worker_runtimes_lock():
    lock = (ROOT / "worker_images" / "sqs_worker" / "requirements.lock").read_text()
    for sample in (COMMAND_SAMPLE, HTTP_SAMPLE):
        assert (sample / "requirements.lock").read_text().split("boto3==", 1)[1] == lock.split("boto3==", 1)[1]
        assert (sample / "Dockerfile").is_file() and (sample / "README.md").is_file()
    assert os.access(COMMAND_SAMPLE / "count_words", os.X_OK), "git keeps the mode: chmod +x, then commit"


# ---------------------------------------------------------------- the construct


def _worker_directory(root: Path, sample: Path) -> Path:
    """A copy of a sample with the wheels of sqs_worker (the same lock), as ``make setup`` leaves them."""
    directory = root / sample.name
    shutil.copytree(sample, directory, ignore=shutil.ignore_patterns("__pycache__", "wheels"))
    (directory / "wheels").symlink_to(SQS_WORKER / "wheels")
    return directory


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """One small app: a fleet of each new kind, synthesized once; and a stack for the mistakes."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from pipeline_constructs import SpotWorkerFleet, WorkerTask

    root = tmp_path_factory.mktemp("kinds")
    app = cdk.App()
    stack = cdk.Stack(app, "Kinds", env=cdk.Environment(region="us-east-1"))
    command_directory = _worker_directory(root, COMMAND_SAMPLE)
    http_directory = _worker_directory(root, HTTP_SAMPLE)
    SpotWorkerFleet(
        stack,
        "Counts",
        worker_directory=command_directory,
        task=WorkerTask.command(["./count_words", "{input}"]),
    )
    SpotWorkerFleet(
        stack,
        "Frequencies",
        worker_directory=http_directory,
        concurrency=1,
        task=WorkerTask.http(
            port=8080,
            path="/tasks",
            start=["python3", "app.py"],
            content_type="text/plain",
            request_timeout=cdk.Duration.minutes(2),
        ),
    )
    template = Template.from_stack(stack)
    mistakes = cdk.Stack(app, "Mistakes", env=cdk.Environment(region="us-east-1"))
    return {"template": template, "mistakes": mistakes, "command_directory": command_directory}


def _fleet_environment(template, fleet: str) -> dict[str, str]:
    from tests.fleet.test_spot_worker_fleet import _environment_lines, _of_construct

    lines = _environment_lines(_of_construct(template, "AWS::EC2::LaunchTemplate", fleet))
    return dict(line.split("=", 1) for line in lines if line.startswith("PIPELINE_"))


def test_fleet_launch_templates_carry_each_kind_in_the_worker_environment(kinds):
    counts = _fleet_environment(kinds["template"], "Counts")
    assert counts["PIPELINE_TASK_KIND"] == "command" and "PIPELINE_TASK" not in counts
    assert json.loads(counts["PIPELINE_COMMAND"]) == ["./count_words", "{input}"]
    frequencies = _fleet_environment(kinds["template"], "Frequencies")
    assert {name: value for name, value in frequencies.items() if "HTTP" in name or "KIND" in name} == {
        "PIPELINE_TASK_KIND": "http",
        "PIPELINE_HTTP_PORT": "8080",
        "PIPELINE_HTTP_PATH": "/tasks",
        "PIPELINE_HTTP_CONTENT_TYPE": "text/plain",
        "PIPELINE_HTTP_START": '["python3", "app.py"]',
        "PIPELINE_HTTP_TIMEOUT": "120",
        "PIPELINE_HTTP_START_SECONDS": "60",
    }
    # What the worker reads back is what the fleet meant.
    config = WorkerConfig.from_env(frequencies | {"PIPELINE_QUEUE_URL": "http://q/1/x", "PIPELINE_BUCKET": "b"})
    assert config.http is not None and (config.http.start, config.http.request_timeout) == (("python3", "app.py"), 120)


def _http(**kwargs):
    from pipeline_constructs import WorkerTask

    return WorkerTask.http(**({"port": 8080} | kwargs))


def _command(argv):
    from pipeline_constructs import WorkerTask

    return WorkerTask.command(argv)


MISTAKES = {
    "empty argv": (lambda: _command([]), "task.command=[] is invalid; allowed: a non-empty list of strings"),
    "a string for argv": (lambda: _command("./x {input}"), "task.command='./x {input}' is invalid; allowed: a non"),
    "a newline in argv": (lambda: _command(["./x", "a\nb"]), "task.command=['./x', 'a\\nb'] is invalid"),
    "a missing ./program": (lambda: _command(["./resize"]), "task.command=['./resize'] is invalid; allowed: an exec"),
    "a ./program that is not executable": (
        lambda: _command(["./README.md"]),
        "task.command=['./README.md'] is invalid; allowed: an executable file in worker_directory",
    ),
    "a port of 0": (lambda: _http(port=0), "task.port=0 is invalid; allowed: 1 to 65535"),
    "a port of 70000": (lambda: _http(port=70000), "task.port=70000 is invalid; allowed: 1 to 65535"),
    "a port as text": (lambda: _http(port="8080"), "task.port='8080' is invalid; allowed: a whole number from 1"),
    "a relative path": (lambda: _http(path="tasks"), "task.path='tasks' is invalid; allowed: a path starting with /"),
    "an empty start": (lambda: _http(start=[]), "task.start=[] is invalid; allowed: a non-empty list of strings"),
    "a missing ./app": (lambda: _http(start=["./serve"]), "task.start=['./serve'] is invalid; allowed: an executable"),
    "a request timeout past the task's": (
        lambda: _http(request_timeout=__import__("aws_cdk").Duration.minutes(20)),
        "task.request_timeout='1200 seconds' is invalid; allowed: 1 to 900 seconds",
    ),
}


@pytest.mark.user_mistake
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_fleet_refuses_a_bad_task_with_one_error_naming_it(kinds, mistake):
    from pipeline_constructs import SpotWorkerFleet

    make_task, message = MISTAKES[mistake]
    construct_id = "Bad" + "".join(character for character in mistake.title() if character.isalnum())
    with pytest.raises(ValueError) as raised:
        SpotWorkerFleet(kinds["mistakes"], construct_id, worker_directory=kinds["command_directory"], task=make_task())
    assert str(raised.value).startswith(f"Mistakes/{construct_id}: {message}")
    why = {
        "a missing ./program": "./resize does not exist there",
        "a ./program that is not executable": "./README.md is not executable",
    }
    assert mistake not in why or why[mistake] in str(raised.value)
