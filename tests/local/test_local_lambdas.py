"""The local run's Lambda execution environments: warm reuse, init retried, timeouts and deaths discarded,
retries and the on-failure destination of an async invocation."""

from __future__ import annotations

import os
import textwrap

import pytest

from pipeline_constructs.local.lambdas import LocalFunction

HANDLER = """
import os, sys, time

COLD_STARTS = []
COLD_STARTS.append(os.getpid())
calls = 0


def handler(event, context):
    global calls
    calls += 1
    print(f"calls={calls}")
    if event.get("raise"):
        raise ValueError(event["raise"])
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if "exit" in event:
        os._exit(event["exit"])
    return {"pid": os.getpid(), "calls": calls, "region": os.environ["AWS_REGION"]}
"""


@pytest.fixture
def function(tmp_path):
    made = []

    def make(handler: str = HANDLER, **settings) -> LocalFunction:
        code = tmp_path / f"code{len(made)}"
        code.mkdir()
        (code / "index.py").write_text(textwrap.dedent(handler))
        values = {
            "name": "fn",
            "arn": "arn:aws:lambda:us-east-1:123456789012:function:fn",
            "code_dir": code,
            "handler": "index.handler",
            "environment": dict(os.environ) | {"AWS_REGION": "us-east-1"},
            "timeout": 5,
            "retry_attempts": 0,
            "on_failure": None,
            "log_dir": tmp_path,
            "retry_delay": 0.0,
        }
        made.append(LocalFunction(**values | settings))
        return made[-1]

    yield make
    for each in made:
        each.shutdown()


def test_an_environment_serves_invocations_one_after_another_keeping_its_module_state(function):
    fn = function()
    results = [fn.invoke_async({}).result(timeout=30).result for _ in range(3)]
    assert [r["calls"] for r in results] == [1, 2, 3], "one warm environment, module state kept"
    assert len({r["pid"] for r in results}) == 1 and fn.environments_started == 1
    assert results[0]["region"] == "us-east-1"
    assert "calls=3" in fn.log_path.read_text(), "the handler's prints go to the function's log"


def test_a_handler_error_keeps_the_environment_and_retries_then_the_on_failure_destination(function):
    records = []
    fn = function(retry_attempts=2, on_failure=records.append)
    invocation = fn.invoke_async({"raise": "bad input"}).result(timeout=30)
    assert (invocation.ok, invocation.attempts, invocation.error) == (False, 3, "ValueError: bad input")
    assert fn.environments_started == 1, "an exception does not cost the environment"
    (record,) = records
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"] == {"errorMessage": "ValueError: bad input"}
    assert "ValueError: bad input" in fn.log_path.read_text(), "the traceback is in the log"
    assert fn.counts() == {"invocations": 1, "succeeded": 0, "failed": 1}


def test_a_timed_out_or_dead_environment_is_replaced(function):
    fn = function(timeout=1)
    timed_out = fn.invoke_async({"sleep": 30}).result(timeout=30)
    assert timed_out.ok is False and timed_out.error == "Task timed out after 1 seconds"
    died = fn.invoke_async({"exit": 7}).result(timeout=30)
    assert died.ok is False and died.error.startswith("exit 7")
    fine = fn.invoke_async({}).result(timeout=30)
    assert fine.ok and fine.result["calls"] == 1, "a fresh environment after each loss"
    assert fn.environments_started == 3


def test_a_failed_init_is_retried_on_the_next_invocation(function, tmp_path):
    fn = function("import missing_module\n\ndef handler(event, context):\n    return 1\n")
    first = fn.invoke_async({}).result(timeout=30)
    assert first.ok is False and first.error == "ModuleNotFoundError: No module named 'missing_module'"
    (fn.code_dir / "missing_module.py").write_text("")
    assert fn.invoke_async({}).result(timeout=30).result == 1
    assert fn.environments_started == 1
