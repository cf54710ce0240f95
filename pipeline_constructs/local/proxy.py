"""Fault injection from outside a process: an HTTP proxy in front of the emulator that acts on chosen calls.

The process needs no test hook: its ``AWS_ENDPOINT_URL`` points at the proxy, which forwards every request
to moto and, on a request matching a rule, runs the rule's action (``kill -9`` of a worker) before
forwarding it (the call never lands) or after (it landed, the caller never hears back). That puts a crash
exactly "right after a delete" or "during a status flush", not wherever a timer happens to fall. The proxy
also remembers the last call it saw, so a crash at a random moment can be told where it struck.

Besides dead processes, a rule makes the faults AWS's APIs make: it answers in the service's place (a 5xx,
a throttle: :func:`server_error`, :func:`throttled`), or stalls the call before forwarding it
(``stall=10``), for its first ``times`` matches (a burst longer than the SDK's retries reaches the code).
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from pipeline_constructs.local import serve_in_background

#: An answer of the proxy's own: (status, headers, body).
Answer = tuple[int, dict[str, str], bytes]
Authorize = Callable[[str, str, Any, bytes], "Answer | None"]

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def server_error(target: str | None = None) -> Answer:
    """A 500 as the service sends it: JSON for a call with an ``X-Amz-Target`` (SQS, DynamoDB), else S3's XML."""
    if target is not None:
        body = {"__type": "InternalFailure", "message": "injected: internal failure"}
        return 500, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(body).encode()
    xml = "<Error><Code>InternalError</Code><Message>injected: internal error</Message></Error>"
    return 500, {"Content-Type": "application/xml"}, xml.encode()


def throttled(target: str | None = None) -> Answer:
    """A throttle as the service sends it (SQS, DynamoDB: 400 ThrottlingException; S3: 503 SlowDown)."""
    if target is not None:
        body = {"__type": "ThrottlingException", "message": "injected: rate exceeded"}
        headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": "ThrottlingException;Sender"}
        return 400, headers, json.dumps(body).encode()
    xml = "<Error><Code>SlowDown</Code><Message>injected: reduce your request rate</Message></Error>"
    return 503, {"Content-Type": "application/xml"}, xml.encode()


@dataclass
class Rule:
    """Matches a call by its ``X-Amz-Target`` (JSON protocols: ``AmazonSQS.DeleteMessageBatch``) or by
    method and a path fragment (S3: ``PUT`` of ``/intermediate/``); fires on its first ``times`` matches
    (after ``skip``).

    Firing runs ``action`` ``before`` the call is forwarded (which it then never is) or ``after`` it; or
    answers with ``answer`` instead of forwarding; or waits ``stall`` seconds, then forwards."""

    action: Callable[[], None] | None = None
    target: str | None = None
    method: str | None = None
    path_contains: str | None = None
    when: str = "after"
    skip: int = 0
    times: int = 1
    answer: Answer | None = None
    stall: float = 0.0
    fired: int = 0

    def matches(self, method: str, path: str, headers: Any) -> bool:
        if self.fired >= self.times:
            return False
        if self.target is not None and headers.get("X-Amz-Target", "") != self.target:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        self.fired += 1
        return True

    def run_action(self) -> None:
        if self.action is not None:
            self.action()


def describe_call(method: str, path: str, headers: Any) -> str:
    """``sqs:DeleteMessageBatch``, ``dynamodb:BatchWriteItem``, ``s3:PUT .../_SUCCESS``: what a request is."""
    target = headers.get("X-Amz-Target", "")
    if target:
        service, _, operation = target.partition(".")
        service = {"AmazonSQS": "sqs"}.get(service, "dynamodb" if service.startswith("DynamoDB") else service)
        return f"{service}:{operation}"
    return f"s3:{method} {path.split('?')[0].rsplit('/', 1)[-1] or path}"


class FaultProxy(ThreadingHTTPServer):
    """The proxy in front of ``upstream`` (the emulator, or a local endpoint), acting on the rules given to
    :meth:`add`."""

    daemon_threads = True

    def __init__(
        self, upstream: str, *, authorize: Authorize | None = None, upstream_headers: dict[str, str] | None = None
    ) -> None:
        """``authorize(method, path, headers, body)`` may answer a request itself (an AccessDenied) instead
        of forwarding it: the local run's IAM check. ``upstream_headers`` are added to every forwarded
        request (the account the emulator serves it in)."""
        self.rules: list[Rule] = []
        self.authorize = authorize
        self.upstream_headers = upstream_headers or {}
        self._upstream = threading.local()
        self.last_call = ""
        self._lock = threading.Lock()
        parts = urlsplit(upstream)
        if parts.hostname is None:
            raise ValueError(f"upstream {upstream!r} names no host")
        self._upstream_address = (parts.hostname, parts.port)
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        serve_in_background(self, "fault-proxy")

    def rule_for(self, method: str, path: str, headers: Any) -> Rule | None:
        """The rule a request fires (each fires once), remembering the request as the last call."""
        with self._lock:
            rule = next((r for r in self.rules if r.matches(method, path, headers)), None)
            self.last_call = describe_call(method, path, headers)
        return rule

    def forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, Any, bytes]:
        """One request upstream on this thread's kept-alive connection (a new one if the old one broke)."""
        for attempt in (1, 2):
            connection = getattr(self._upstream, "connection", None)
            if connection is None:
                connection = self._upstream.connection = http.client.HTTPConnection(*self._upstream_address, timeout=60)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.reason, response.getheaders(), response.read()
            except (ConnectionError, http.client.HTTPException):
                connection.close()
                self._upstream.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller killed mid-request (the point of this proxy) is no error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    """One request through a :class:`FaultProxy`: a rule's action before or after it, the authorization,
    the forwarding upstream."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        proxy = cast(FaultProxy, self.server)
        body = self._body()
        if body is None:
            # Cut off mid-request (a kill of this caller, from another of its calls): like a real connection
            # cut, nothing reaches the service; forwarding a short body would store a torn object that S3
            # itself would refuse.
            self.close_connection = True
            return
        rule = proxy.rule_for(self.command, self.path, self.headers)
        if rule is not None and rule.answer is not None:
            self._reply(*rule.answer)
            return
        if rule is not None and rule.stall:
            time.sleep(rule.stall)
        if rule is not None and rule.when == "before" and rule.action is not None:
            rule.run_action()
            self.close_connection = True
            return
        answer = proxy.authorize(self.command, self.path, self.headers, body) if proxy.authorize else None
        if answer is not None:
            self._reply(*answer)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        headers |= proxy.upstream_headers
        status, reason, response_headers, payload = proxy.forward(self.command, self.path, body, headers)
        if rule is not None and rule.when == "after":
            rule.run_action()
        self._reply(status, dict(response_headers), payload, reason)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _body(self) -> bytes | None:
        """The whole request body, or None when the caller died before sending all of it."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._chunked_body()
        expected = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(expected)
        return body if len(body) == expected else None

    def _chunked_body(self) -> bytes | None:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline()
            if not line.strip():
                return None
            size = int(line.strip().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                return None
            chunks.append(chunk)
            self.rfile.readline()

    def _reply(self, status: int, headers: dict[str, str], payload: bytes, reason: str | None = None) -> None:
        self.send_response(status, reason)
        for key, value in headers.items():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
