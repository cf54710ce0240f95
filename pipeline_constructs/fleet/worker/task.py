"""The interface a task function sees.

A task function is named ``module:function`` (``PIPELINE_TASK``) and takes one :class:`Task`::

    def handle(task: Task) -> dict | None:
        rows = task.read_input().decode()          # input/<key> under the fleet's prefix
        task.progress(0.5, "parsed")               # optional, shown in the worker's status row
        task.write_output("stats.json", b"...")    # output/<task id>/stats.json, written once
        return {"rows": 42}                        # optional: recorded and forwarded downstream

Raising marks the attempt failed: SQS delivers the task again later, and after the queue's
``max_receive_count`` it moves to the dead-letter queue; the error is in the status store. A task id runs
to success once: a delivery of an id with a SUCCEEDED row (a key sent again) is acknowledged without
running, and the stored outputs and result are forwarded again.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

BINARY = "application/octet-stream"
TaskFunction = Callable[["Task"], "dict[str, Any] | None"]


def load_task_function(spec: str) -> TaskFunction:
    """Import ``module:function``; the error names what could not be found."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"PIPELINE_TASK={spec!r}: cannot import module {module_name!r}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ImportError(f"PIPELINE_TASK={spec!r}: module {module_name!r} has no function {function_name!r}")
    return function


def task_id_of(body: Any, message_id: str) -> str:
    """The task's id: the message's ``key`` (the users' ``{"key": "<id>"}``), else ``id``, else the message id."""
    if isinstance(body, dict):
        for field_name in ("key", "id"):
            value = body.get(field_name)
            if isinstance(value, str | int) and str(value).strip():
                return str(value).strip().strip("/")
    return message_id


def parse_body(raw: str) -> Any:
    """A JSON body is parsed; anything else travels as the string it is."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@dataclass
class Task:
    """One task message, and the helpers to read its input and write its outputs."""

    id: str
    body: Any
    message_id: str
    attempt: int
    bucket: str
    prefix: str
    _s3: Any = field(repr=False)
    _on_progress: Callable[[str, float, str], None] | None = field(default=None, repr=False)
    outputs: list[str] = field(default_factory=list)
    receive_count: int = 0  # SQS's receive count of this delivery; 0 when not known

    @property
    def input_key(self) -> str:
        """``input`` from the message if it names one, else ``<prefix>input/<task id>``."""
        if isinstance(self.body, dict) and isinstance(self.body.get("input"), str):
            return self.body["input"]
        return f"{self.prefix}input/{self.id}"

    def output_key(self, name: str) -> str:
        return f"{self.prefix}output/{self.id}/{name}"

    def intermediate_key(self, name: str) -> str:
        return f"{self.prefix}intermediate/{self.id}/{name}"

    def read_input(self) -> bytes:
        return self.read_object(self.input_key)

    def read_object(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def download_input(self, path: Path) -> bool:
        """The input streamed to the file ``path`` (any size, in constant memory); False if there is none."""
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=self.input_key)["Body"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise
        with path.open("wb") as file:
            shutil.copyfileobj(body, file, 1024 * 1024)
        return True

    def write_output(self, name: str, data: bytes | str | BinaryIO, *, content_type: str = BINARY) -> str:
        """Write ``output/<task id>/<name>`` once: if an earlier attempt already wrote it, that copy stays.

        The key comes from the task id and the put is conditional (``If-None-Match: *``), so a task that
        runs twice (a worker died after writing, before acknowledging) never duplicates its output.
        """
        key = self.output_key(name)
        put_once(self._s3, self.bucket, key, data, content_type=content_type)
        if key not in self.outputs:
            self.outputs.append(key)
        return key

    def write_intermediate(self, name: str, data: bytes | str) -> str:
        """Scratch data under ``intermediate/`` (expired by the bucket's lifecycle rule); overwritten freely."""
        key = self.intermediate_key(name)
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    def progress(self, fraction: float, note: str = "") -> None:
        """Report progress (0 to 1); kept in memory and written with the worker's next heartbeat row."""
        if self._on_progress is not None:
            self._on_progress(self.id, max(0.0, min(1.0, float(fraction))), note)


def put_once(
    s3: Any, bucket: str, key: str, data: bytes | str | BinaryIO, *, content_type: str = "application/octet-stream"
) -> bool:
    """Conditional put; True if this call created the object, False if it existed already."""
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", ContentType=content_type)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise
    return True
