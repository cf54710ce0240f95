"""WorkerTask: what a SpotWorkerFleet's workers run per task: a Python function, a command, or a local HTTP app."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_cdk import Duration

from pipeline_constructs.building_blocks.validation import (
    argument_error,
    check_duration,
    check_is_duration,
    check_range,
    check_task_function,
    seconds,
)

if TYPE_CHECKING:
    from pipeline_constructs.fleet.construct import SpotWorkerFleet

#: How long a POST waits for the app to accept connections, unless ``start_timeout`` says otherwise.
DEFAULT_START_TIMEOUT = Duration.minutes(1)


class WorkerTask:
    """What a :class:`SpotWorkerFleet`'s workers run per task, each in a task process of its own, with every
    guarantee of the worker runtime (timeouts kill the whole process tree, leases kept, outputs written once,
    status rows, spot notices and drains): make one with :meth:`function`, :meth:`command` or :meth:`http`.
    A plain ``"module:function"`` string given as the fleet's ``task`` is :meth:`function` of it.
    """

    def __init__(self, kind: str, settings: dict[str, Any]) -> None:
        self.kind, self.settings = kind, settings

    @staticmethod
    def function(spec: str) -> WorkerTask:
        """A Python function, ``module:function`` in the worker directory, called with a ``Task``
        (``pipeline_constructs/fleet/worker/task.py``): the default kind."""
        return WorkerTask("function", {"spec": spec})

    @staticmethod
    def command(argv: Sequence[str]) -> WorkerTask:
        """An executable run per task from the worker directory, without a shell: ``argv`` with ``{input}``
        (the path of the task's input, downloaded), ``{output}`` (an empty folder whose files become the task's
        outputs), ``{task_id}`` and ``{attempt}`` replaced; the same are in its environment as
        ``PIPELINE_INPUT_PATH``, ``PIPELINE_OUTPUT_DIR``, ``PIPELINE_TASK_ID``, ``PIPELINE_ATTEMPT``, and the
        message body is the file ``PIPELINE_MESSAGE_PATH``. A stdout line ``PROGRESS 0.42 note`` is progress;
        exit code 0 means done, anything else a failed attempt (its error the code and the last stderr lines).
        A relative executable (``./resize``) must be an executable file of the worker directory (checked at
        synth); any other is looked up on the instance's ``PATH`` (bring it with the container delivery).
        See ``worker_images/command_worker``."""
        return WorkerTask("command", {"argv": argv})

    @staticmethod
    def http(
        *,
        port: int,
        path: str = "/",
        start: Sequence[str] | None = None,
        content_type: str = "application/json",
        request_timeout: Duration | None = None,
        start_timeout: Duration | None = None,
    ) -> WorkerTask:
        """A local HTTP app in the manner of Elastic Beanstalk's worker tier: each task's message body POSTed to
        ``http://127.0.0.1:<port><path>`` with sqsd's headers (``X-Aws-Sqsd-Msgid``,
        ``X-Aws-Sqsd-Receive-Count``, ``X-Aws-Sqsd-Queue``) and ``X-Pipeline-Task-Id``, ``X-Pipeline-Attempt``;
        a 2xx answer means done (a JSON object answer's ``"outputs"``, ``{name: text}``, are written once as
        outputs, its ``"result"`` recorded), anything else or a connection error a failed attempt. With
        ``concurrency=1`` the app is restarted after a task that timed out, so its abandoned work stops; with
        more it is left running, and must tolerate a task running again elsewhere. See
        ``worker_images/http_worker``.

        :param port: the port the app listens on, at 127.0.0.1. Range: 1 to 65535.
        :param path: the path each task is POSTed to. Default: ``/``. Must start with ``/``.
        :param start: the command that starts the app, from the worker directory (``PORT`` in its
            environment): run once per worker, restarted when it dies, stopped with the worker; a relative
            executable must be in the worker directory. Default: None (the app is started otherwise, e.g. by
            the container image).
        :param content_type: the POSTs' ``Content-Type``. Default: ``application/json``.
        :param request_timeout: how long one POST waits for its answer. Default: the fleet's ``task_timeout``.
            Range: 1 s to the ``task_timeout``.
        :param start_timeout: how long a POST keeps trying to connect while the app starts or restarts.
            Default: 1 minute. Range: 1 s to 1 hour.
        """
        settings = {"port": port, "path": path, "start": start, "content_type": content_type}
        return WorkerTask("http", settings | {"request_timeout": request_timeout, "start_timeout": start_timeout})

    def bind(self, fleet: SpotWorkerFleet) -> dict[str, str]:
        """Check the task for ``fleet`` (one error naming the fleet, the argument and its allowed values), and
        return the worker environment that selects it (``PIPELINE_TASK_KIND`` and its variables)."""
        if self.kind == "function":
            check_task_function(fleet, fleet.worker_directory, self.settings["spec"])
            return {"PIPELINE_TASK": self.settings["spec"]}
        if self.kind == "command":
            argv = _argv(fleet, "task.command", self.settings["argv"])
            return {"PIPELINE_TASK_KIND": "command", "PIPELINE_COMMAND": json.dumps(argv)}
        return {"PIPELINE_TASK_KIND": "http", **self._http_environment(fleet)}

    def _http_environment(self, fleet: SpotWorkerFleet) -> dict[str, str]:
        port, path, content_type = self.settings["port"], self.settings["path"], self.settings["content_type"]
        if isinstance(port, bool) or not isinstance(port, int):
            raise argument_error(fleet, "task.port", port, "a whole number from 1 to 65535")
        check_range(fleet, "task.port", port, minimum=1, maximum=65535)
        if not isinstance(path, str) or not path.startswith("/") or _unwritable(path):
            raise argument_error(fleet, "task.path", path, "a path starting with /, such as /tasks")
        if not isinstance(content_type, str) or not content_type.strip() or _unwritable(content_type):
            raise argument_error(fleet, "task.content_type", content_type, "a media type, such as application/json")
        variables = {"PIPELINE_HTTP_PORT": str(port), "PIPELINE_HTTP_PATH": path}
        variables["PIPELINE_HTTP_CONTENT_TYPE"] = content_type
        if self.settings["start"] is not None:
            variables["PIPELINE_HTTP_START"] = json.dumps(_argv(fleet, "task.start", self.settings["start"]))
        request_timeout = self.settings["request_timeout"]
        check_is_duration(fleet, "task.request_timeout", request_timeout)
        if request_timeout is not None:
            check_duration(
                fleet, "task.request_timeout", request_timeout, minimum=Duration.seconds(1), maximum=fleet.task_timeout
            )
            _set_seconds(variables, "PIPELINE_HTTP_TIMEOUT", request_timeout)
        start_timeout = self.settings["start_timeout"] or DEFAULT_START_TIMEOUT
        check_is_duration(fleet, "task.start_timeout", start_timeout)
        check_duration(
            fleet, "task.start_timeout", start_timeout, minimum=Duration.seconds(1), maximum=Duration.hours(1)
        )
        _set_seconds(variables, "PIPELINE_HTTP_START_SECONDS", start_timeout)
        return variables


def worker_task_of(task: str | WorkerTask) -> WorkerTask:
    """The fleet's ``task`` as a WorkerTask: a string is a function's ``module:function``."""
    return task if isinstance(task, WorkerTask) else WorkerTask.function(task)


def _argv(fleet: SpotWorkerFleet, argument: str, argv: object) -> list[str]:
    """A non-empty list of strings, its first a program: a relative path (``./resize``) must be an executable
    file of the worker directory, which is where workers run it from."""
    allowed = 'a non-empty list of strings without control characters, such as ["./resize", "{input}"]'
    if isinstance(argv, str) or not isinstance(argv, Sequence) or not argv:
        raise argument_error(fleet, argument, argv, allowed)
    if not all(isinstance(arg, str) and not _unwritable(arg) for arg in argv) or not argv[0]:
        raise argument_error(fleet, argument, list(argv), allowed)
    program = argv[0]
    if "/" in program and not os.path.isabs(program):
        executable = (Path(fleet.worker_directory) / program).resolve()
        if not executable.is_file() or not os.access(executable, os.X_OK):
            where = f"an executable file in worker_directory {fleet.worker_directory} (chmod +x, committed so)"
            found = "is not executable" if executable.is_file() else "does not exist there"
            raise argument_error(fleet, argument, list(argv), f"{where}; {program} {found}")
    return list(argv)


def _unwritable(value: str) -> bool:
    """A control character (a newline...) would break the worker's environment file."""
    return any(ord(character) < 32 or ord(character) == 127 for character in value)


def _set_seconds(variables: dict[str, str], name: str, duration: Duration) -> None:
    """Whole seconds; a duration known only at deploy time is left to the worker's default."""
    value = seconds(duration)
    if value is not None:
        variables[name] = str(int(value))
