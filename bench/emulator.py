"""An embedded moto server for benchmarks, and request counting through botocore's event hooks."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager

import boto3

from pipeline_constructs.local import emulator_as_aws_behaves, free_port


@contextmanager
def moto_endpoint():
    """An emulator in this process (a thread): cheap to start, but it shares this interpreter's lock."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # moto tries to run submitted Batch jobs in Docker, which is not here; the jobs are only counted.
    logging.getLogger("moto.batch").setLevel(logging.CRITICAL)
    emulator_as_aws_behaves()  # atomic item operations, as DynamoDB's: the submit-once races rely on them
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with _endpoint_environment(f"http://{host}:{port}") as endpoint:
            yield endpoint
    finally:
        server.stop()


@contextmanager
def moto_process(start_timeout: float = 30.0):
    """An emulator in a process of its own, for throughput runs: a producer in this process then never waits
    for the emulator's interpreter lock (nor slows the emulator by taking it)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on port {port}") from None
                time.sleep(0.1)
        with _endpoint_environment(f"http://127.0.0.1:{port}") as endpoint:
            yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def _endpoint_environment(endpoint: str):
    """Points boto3 (this process and its children) at ``endpoint`` with dummy credentials, then restores."""
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class RequestCounter:
    """Counts every API request a boto3 session sends, by ``service:Operation`` (retries included)."""

    def __init__(self) -> None:
        self.session = boto3.session.Session()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.session.events.register("before-send", self._count)

    def _count(self, request, **_kwargs) -> None:
        # The event name carries the service and operation: before-send.sqs.ReceiveMessage
        service_operation = _kwargs.get("event_name", "").split(".", 1)[-1]
        with self._lock:
            self.counts[service_operation.replace(".", ":")] += 1

    def total(self, service: str, operations: tuple[str, ...] | None = None) -> int:
        with self._lock:
            return sum(
                count
                for key, count in self.counts.items()
                if key.startswith(f"{service}:") and (operations is None or key.split(":", 1)[1] in operations)
            )

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
