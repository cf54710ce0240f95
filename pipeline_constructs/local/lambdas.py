"""Lambda functions of the template run locally: their asset code, their (resolved) environment.

Like Lambda, each function runs in execution environments: a Python process that imports the handler's
module once (init) and then serves one invocation at a time, as many at once as there are concurrent
invocations. Module state and boto3 clients carry over between invocations of one environment, as on
Lambda, so a handler that wrongly relies on a cold start shows it here too. An environment whose handler
timed out or whose process died is discarded; a handler's exception keeps it, as Lambda's Python runtime
does. Async invocations follow the function's EventInvokeConfig: retries, then the on-failure destination
(an SQS queue) gets Lambda's record shape.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

#: The environment's runtime loop: one event per line on stdin, one outcome per line on the runner's channel
#: (the original stdout); the handler's own prints and tracebacks go to the function's log (stderr).
_RUNTIME = r"""
import importlib, json, os, sys, traceback
channel = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
module_name, function_name = sys.argv[1].rsplit(".", 1)
handler = None
for line in sys.stdin:
    event = json.loads(line)
    try:
        if handler is None:  # init, retried on the next invocation if it failed (as Lambda does)
            handler = getattr(importlib.import_module(module_name), function_name)
        outcome = {"ok": True, "result": handler(event, None)}
    except Exception as error:
        traceback.print_exc()
        outcome = {"ok": False, "errorType": type(error).__name__, "errorMessage": str(error)}
    sys.stdout.flush()
    sys.stderr.flush()
    channel.write(json.dumps(outcome, default=str) + "\n")
    channel.flush()
"""


class _Environment:
    """One execution environment: a process running ``_RUNTIME`` for one function."""

    def __init__(self, function: LocalFunction, number: int, log: TextIO) -> None:
        self.number = number
        self.process = subprocess.Popen(
            [sys.executable, "-c", _RUNTIME, function.handler],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=function.code_dir,
            env=function.environment
            | {"PYTHONPATH": str(function.code_dir), "AWS_LAMBDA_FUNCTION_NAME": function.name},
        )
        assert self.process.stdin is not None and self.process.stdout is not None  # both pipes (PIPE above)
        #: Events go in one per line; outcomes come out one per line.
        self.events, self.outcomes = self.process.stdin, self.process.stdout

    def invoke(self, event: Any, timeout: float) -> tuple[bool, Any, str, bool]:
        """(ok, result, error, reusable): one invocation, waiting at most ``timeout`` seconds."""
        try:
            self.events.write(json.dumps(event) + "\n")
            self.events.flush()
        except OSError:
            return False, None, f"exit {self.process.poll()}: the environment died", False
        ready, _, _ = select.select([self.outcomes], [], [], timeout)
        if not ready:
            self.close()
            return False, None, f"Task timed out after {timeout:g} seconds", False
        line = self.outcomes.readline()
        if not line:  # the process ended mid-invocation: sys.exit, a crash, the out-of-memory killer
            return False, None, f"exit {self.process.wait()}: the environment died during the invocation", False
        outcome = json.loads(line)
        if outcome["ok"]:
            return True, outcome["result"], "", True
        return False, None, f"{outcome['errorType']}: {outcome['errorMessage']}", True

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.events, self.outcomes):
            with contextlib.suppress(OSError):
                stream.close()


@dataclass
class Invocation:
    function: str
    event: Any
    attempts: int = 0
    ok: bool | None = None
    result: Any = None
    error: str = ""
    started: float = field(default_factory=time.time)


class LocalFunction:
    def __init__(
        self,
        *,
        name: str,
        arn: str,
        code_dir: Path,
        handler: str,
        environment: dict[str, str],
        timeout: int,
        retry_attempts: int,
        on_failure: Any | None,
        log_dir: Path,
        retry_delay: float = 1.0,
    ) -> None:
        self.name, self.arn, self.code_dir, self.handler = name, arn, code_dir, handler
        self.environment, self.timeout = environment, timeout
        self.retry_attempts, self.on_failure, self.retry_delay = retry_attempts, on_failure, retry_delay
        self.log_path = log_dir / f"lambda-{name}.log"
        self.invocations: list[Invocation] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"lambda-{name[:20]}")
        self._pending: list[Future] = []
        self._log = self.log_path.open("a")
        self._idle: list[_Environment] = []
        self._closed = False
        self.environments_started = 0

    def _run_once(self, event: Any) -> tuple[bool, Any, str]:
        with self._lock:
            if self._idle:
                environment = self._idle.pop()
            else:
                self.environments_started += 1
                environment = _Environment(self, self.environments_started, self._log)
            header = f"--- {time.strftime('%H:%M:%S')} env {environment.number} event {json.dumps(event)[:300]}"
            self._log.write(header + "\n")
            self._log.flush()
        ok, result, error, reusable = environment.invoke(event, self.timeout)
        with self._lock:
            if error:
                self._log.write(f"--- env {environment.number}: {error}\n")
                self._log.flush()
            if reusable and not self._closed:
                self._idle.append(environment)
            else:
                environment.close()
        return ok, result, error

    def invoke_async(self, event: Any) -> Future:
        """Event invocation: retried ``retry_attempts`` times, then sent to the on-failure destination."""
        future = self._pool.submit(self._async, event)
        with self._lock:
            self._pending.append(future)
        return future

    def _async(self, event: Any) -> Invocation:
        invocation = Invocation(self.name, event)
        with self._lock:
            self.invocations.append(invocation)
        for attempt in range(1 + self.retry_attempts):
            invocation.attempts = attempt + 1
            ok, result, error = self._run_once(event)
            if ok:
                invocation.ok, invocation.result, invocation.error = True, result, ""
                return invocation
            invocation.error = error
            if attempt < self.retry_attempts:
                time.sleep(self.retry_delay * (attempt + 1))
        invocation.ok = False
        if self.on_failure is not None:
            self.on_failure(self._failure_record(invocation))
        return invocation

    def _failure_record(self, invocation: Invocation) -> dict[str, Any]:
        """What Lambda sends an on-failure destination."""
        return {
            "version": "1.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": f"{self.arn}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": invocation.attempts,
            },
            "requestPayload": invocation.event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": {"errorMessage": invocation.error},
        }

    def busy(self) -> bool:
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            return bool(self._pending)

    def counts(self) -> dict[str, int]:
        with self._lock:
            done = [i for i in self.invocations if i.ok is not None]
            return {
                "invocations": len(self.invocations),
                "succeeded": sum(1 for i in done if i.ok),
                "failed": sum(1 for i in done if not i.ok),
            }

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for environment in idle:
            environment.close()
        self._log.close()
