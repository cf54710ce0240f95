"""Lambda functions of the template run locally: their asset code, their (resolved) environment.

Each invocation is a fresh Python process (like a cold start), so a handler's module state, environment and
boto3 clients are exactly what the function would have. Async invocations follow the function's
EventInvokeConfig: retries, then the on-failure destination (an SQS queue) gets Lambda's record shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BOOTSTRAP = r"""
import importlib, json, sys, traceback
module_name, function_name = sys.argv[1].rsplit(".", 1)
event = json.loads(sys.stdin.read())
try:
    result = getattr(importlib.import_module(module_name), function_name)(event, None)
    print("\n__LOCAL_LAMBDA_RESULT__" + json.dumps({"ok": True, "result": result}, default=str))
except Exception as error:
    traceback.print_exc()
    print("\n__LOCAL_LAMBDA_RESULT__" + json.dumps({"ok": False, "errorType": type(error).__name__,
                                                   "errorMessage": str(error)}))
    sys.exit(1)
"""
RESULT_MARKER = "__LOCAL_LAMBDA_RESULT__"


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

    def _run_once(self, event: Any) -> tuple[bool, Any, str]:
        completed = subprocess.run(
            [sys.executable, "-c", _BOOTSTRAP, self.handler],
            input=json.dumps(event),
            capture_output=True,
            text=True,
            cwd=self.code_dir,
            env=self.environment | {"PYTHONPATH": str(self.code_dir), "AWS_LAMBDA_FUNCTION_NAME": self.name},
            timeout=self.timeout + 5,
        )
        with self._lock, self.log_path.open("a") as log:
            log.write(
                f"--- {time.strftime('%H:%M:%S')} event {json.dumps(event)[:300]}\n{completed.stdout}{completed.stderr}"
            )
        marker = completed.stdout.rfind(RESULT_MARKER)
        if marker < 0:
            return False, None, f"exit {completed.returncode}: {completed.stderr.strip()[-300:]}"
        outcome = json.loads(completed.stdout[marker + len(RESULT_MARKER) :])
        if outcome["ok"]:
            return True, outcome["result"], ""
        return False, None, f"{outcome['errorType']}: {outcome['errorMessage']}"

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
