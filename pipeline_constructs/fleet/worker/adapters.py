"""Tasks in any language: a command run per task, or a local HTTP app in the manner of Elastic Beanstalk's
worker tier. Both are task functions like a user's (``PIPELINE_TASK_KIND`` chooses one, :mod:`.config`), run in
the slots' task processes, so every guarantee of the Python path holds: a timeout or a lost lease kills the
task process's whole group (the command and whatever it started), outputs are written once, rows are true,
spot notices and drains release the task.

**command** (``PIPELINE_COMMAND``, a JSON argv, run without a shell from the worker directory):

- its input (the message's ``input`` key, else ``<prefix>input/<task id>``) is downloaded to a file of its own
  name in an empty scratch folder: ``PIPELINE_INPUT_PATH`` (empty when there is no input object; a command whose
  argv holds ``{input}`` then fails, saying so). The message body is in the file ``PIPELINE_MESSAGE_PATH``;
- ``PIPELINE_OUTPUT_DIR`` is an empty folder: after exit code 0 each file in it (subfolders too) becomes the
  output ``output/<task id>/<relative path>``, written once (a top-level ``_SUCCESS`` is the runtime's own
  completion marker's name: left out);
- ``PIPELINE_TASK_ID`` and ``PIPELINE_ATTEMPT`` are in its environment, and the worker's Python first on
  ``PATH``; ``{input}``, ``{output}``,
  ``{task_id}`` and ``{attempt}`` in its argv are replaced by the same;
- a stdout line ``PROGRESS <fraction 0 to 1> [note]`` reports progress (as ``task.progress``); every other
  stdout and stderr line goes to the worker's log, as a JSON line naming the task;
- exit code 0: done; anything else: a failed attempt whose error is the exit code and the last stderr lines;
- processes it leaves running after it exits are killed (they would otherwise run on beside the next task);
- it starts with SIGTERM and SIGINT ignored, as the task processes are, so a worker's stop lets it finish
  within the grace period; it is stopped with SIGKILL.

**http** (``PIPELINE_HTTP_*``): each task's message body is POSTed to ``http://127.0.0.1:<port><path>`` with
sqsd's headers (``X-Aws-Sqsd-Msgid``, ``X-Aws-Sqsd-Receive-Count``, ``X-Aws-Sqsd-Queue``) and
``X-Pipeline-Task-Id``, ``X-Pipeline-Attempt``. A 2xx response: done; if its body is a JSON object, its
``"outputs"`` (``{name: text}``) are written once as outputs and its ``"result"`` is the task's result.
Anything else: a failed attempt with the status and the first line of the body. A refused connection is tried
again for ``PIPELINE_HTTP_START_SECONDS`` (the app may be starting or restarting), then fails the attempt. The
app itself is run by the worker (:mod:`.app`).
"""

from __future__ import annotations

import collections
import functools
import http.client
import json
import mimetypes
import os
import re
import signal
import subprocess  # nosec B404 - runs the fleet's own configured command, never a shell
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .config import HttpSettings, WorkerConfig
from .task import Task

#: A progress line of a command: ``PROGRESS 0.42`` or ``PROGRESS 0.42 resized 42 of 100``.
PROGRESS_LINE = re.compile(r"^PROGRESS\s+(\d+(?:\.\d*)?|\.\d+)(?:\s+(.*))?$")
#: stderr lines kept for a failed command's error.
STDERR_TAIL_LINES = 10
#: The name of the runtime's completion marker under a task's outputs (attempts.COMPLETION_MARKER).
RESERVED_OUTPUT = "_SUCCESS"
#: How long readers wait for a command's pipes to close once it and its leftovers are gone.
PIPE_CLOSE_SECONDS = 2.0
#: Pause between connection attempts while the app is not listening yet.
CONNECT_RETRY_SECONDS = 0.25


class CommandFailed(RuntimeError):
    """The command exited with a code other than 0, could not start, or lacked its input."""


class AppFailed(RuntimeError):
    """The app answered other than 2xx, was not listening, or dropped the connection."""


class RequestAbandoned(RuntimeError):
    """No response within the request timeout: the app may still be working on the task."""

    abandons_work = True  # read by the task process (isolation): the worker may restart the app


def tool_environment() -> dict[str, str]:
    """The worker's environment with its Python's folder first on ``PATH``: ``python3`` in a command (or a
    ``#!/usr/bin/env python3`` script) is the one with the worker directory's locked packages."""
    path = os.environ.get("PATH", os.defpath)
    return dict(os.environ) | {"PATH": os.pathsep.join([os.path.dirname(sys.executable), path])}


@functools.cache
def _config() -> WorkerConfig:
    """The worker's configuration, read once per task process (from the environment it inherited)."""
    return WorkerConfig.from_env()


# ---------------------------------------------------------------- command


def run_command(task: Task) -> None:
    """The ``command`` kind's task function (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="pipeline-task-") as scratch:
        folder = Path(scratch)
        input_dir, output_dir = folder / "input", folder / "output"
        input_dir.mkdir()
        output_dir.mkdir()
        input_path = input_dir / (task.input_key.rstrip("/").rsplit("/", 1)[-1] or "input")
        has_input = task.download_input(input_path)
        message_path = folder / "message.json"
        message_path.write_text(task.body if isinstance(task.body, str) else json.dumps(task.body))
        places = {
            "{input}": str(input_path) if has_input else "",
            "{output}": str(output_dir),
            "{task_id}": task.id,
            "{attempt}": str(task.attempt),
        }
        argv = list(_config().command)
        if not has_input and any("{input}" in arg for arg in argv):
            raise CommandFailed(f"no input s3://{task.bucket}/{task.input_key} for {{input}} in the command")
        argv = [_substituted(arg, places) for arg in argv]
        environment = tool_environment() | {
            "PIPELINE_INPUT_PATH": places["{input}"],
            "PIPELINE_OUTPUT_DIR": str(output_dir),
            "PIPELINE_MESSAGE_PATH": str(message_path),
            "PIPELINE_TASK_ID": task.id,
            "PIPELINE_ATTEMPT": str(task.attempt),
        }
        _run(task, argv, environment)
        for name, path in _output_files(output_dir):
            with path.open("rb") as data:
                task.write_output(name, data, content_type=_content_type(name))


def _substituted(arg: str, places: dict[str, str]) -> str:
    for placeholder, value in places.items():
        arg = arg.replace(placeholder, value)
    return arg


def _run(task: Task, argv: list[str], environment: dict[str, str]) -> None:
    """Run the command to its end, its stdout read for progress, both streams logged; raise unless exit 0."""
    try:
        process = subprocess.Popen(  # nosec B603 - argv from the fleet's configuration, no shell
            argv,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except OSError as error:  # not found, not executable
        raise CommandFailed(f"cannot run {argv[0]}: {error.strerror or error}") from None
    if process.stdout is None or process.stderr is None:  # not an assert: kept under python -O
        raise CommandFailed(f"cannot read the output of {argv[0]}")
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    readers = [
        threading.Thread(target=_read_stdout, args=(task, process.stdout), daemon=True),
        threading.Thread(target=_read_stderr, args=(task, process.stderr, stderr_tail), daemon=True),
    ]
    for reader in readers:
        reader.start()
    code = process.wait()
    _kill_leftovers()  # a background process still holding the pipes would keep the readers waiting
    for reader in readers:
        reader.join(timeout=PIPE_CLOSE_SECONDS)
    if code != 0:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        tail = "; stderr: " + " | ".join(stderr_tail) if stderr_tail else ""
        raise CommandFailed(f"{argv[0]} {how}{tail}")


def _read_stdout(task: Task, stream: IO[str]) -> None:
    for line in _lines(stream):
        progress = PROGRESS_LINE.match(line)
        if progress:
            task.progress(float(progress.group(1)), (progress.group(2) or "").strip())
        else:
            _log(task, "stdout", line)


def _read_stderr(task: Task, stream: IO[str], tail: collections.deque[str]) -> None:
    for line in _lines(stream):
        tail.append(line[:300])
        _log(task, "stderr", line)


def _lines(stream: IO[str]) -> Iterator[str]:
    with stream:
        for line in stream:
            line = line.rstrip("\r\n")
            if line:
                yield line


_log_lock = threading.Lock()


def _log(task: Task, stream: str, line: str) -> None:
    """One JSON line in the worker's log (the task process's stdout is the worker's)."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": "INFO" if stream == "stdout" else "WARNING",
        "message": line,
        "task": task.id,
        "stream": stream,
    }
    with _log_lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def _kill_leftovers() -> None:
    """SIGKILL every other process of this task process's group: what the finished command left running. The
    group is the task process's own (it leads a session), so nothing else is in it. Linux (``/proc``) only."""
    group, me = os.getpgrp(), os.getpid()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return
    for pid in pids:
        try:
            if pid != me and os.getpgid(pid) == group:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def _output_files(folder: Path) -> Iterable[tuple[str, Path]]:
    """``(name, path)`` of every file under ``folder``, by name; a top-level ``_SUCCESS`` left out."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name != RESERVED_OUTPUT:
            yield name, path


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


# ---------------------------------------------------------------- http


def post_to_app(task: Task) -> Any:
    """The ``http`` kind's task function (see the module docstring); returns the response's ``"result"``."""
    settings = _config().http
    if settings is None:
        raise RuntimeError("PIPELINE_TASK_KIND is not http: no HTTP settings")
    body = task.body if isinstance(task.body, str) else json.dumps(task.body)
    headers = {
        "Content-Type": settings.content_type,
        "User-Agent": "aws-sqsd (pipeline-worker)",
        "X-Aws-Sqsd-Msgid": task.message_id,
        "X-Aws-Sqsd-Receive-Count": str(task.receive_count or task.attempt),
        "X-Aws-Sqsd-Queue": settings.queue_name,
        "X-Pipeline-Task-Id": task.id,
        "X-Pipeline-Attempt": str(task.attempt),
    }
    status, reason, data = _post(settings, body.encode(), headers)
    if not 200 <= status < 300:
        first_line = data.decode(errors="replace").strip().split("\n", 1)[0][:300]
        raise AppFailed(f"HTTP {status} {reason}" + (f": {first_line}" if first_line else ""))
    return _adopt_response(task, data)


def _post(settings: HttpSettings, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    connection = _connect(settings)
    try:
        connection.request("POST", settings.path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.reason, response.read()
    except TimeoutError:
        raise RequestAbandoned(f"no response from the app within {settings.request_timeout} s") from None
    except (OSError, http.client.HTTPException) as error:  # the app died or closed the connection mid-request
        raise AppFailed(f"the app dropped the request: {type(error).__name__}: {error}") from None
    finally:
        connection.close()


def _connect(settings: HttpSettings) -> http.client.HTTPConnection:
    """A connection to the app, tried again while it is not listening (starting, or restarting)."""
    deadline = time.monotonic() + settings.start_seconds
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", settings.port, timeout=settings.request_timeout or None)
        try:
            connection.connect()
            return connection
        except OSError as error:
            connection.close()
            if time.monotonic() >= deadline:
                raise AppFailed(
                    f"no app listening on 127.0.0.1:{settings.port} after {settings.start_seconds} s: {error}"
                ) from None
            time.sleep(CONNECT_RETRY_SECONDS)


def _adopt_response(task: Task, data: bytes) -> Any:
    """A JSON object's ``"outputs"`` written once as outputs; its ``"result"`` returned."""
    try:
        reply = json.loads(data) if data.strip() else None
    except ValueError:
        return None
    if not isinstance(reply, dict):
        return None
    outputs = reply.get("outputs")
    if isinstance(outputs, dict):
        for name, text in outputs.items():
            if not isinstance(name, str) or not name.strip("/") or name == RESERVED_OUTPUT:
                raise AppFailed(f"the app returned an output named {name!r}: allowed: a file name, not _SUCCESS")
            content = text if isinstance(text, str) else json.dumps(text)
            task.write_output(name, content.encode(), content_type=_content_type(name))
    return reply.get("result")
