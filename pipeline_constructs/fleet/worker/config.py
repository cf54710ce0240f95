"""Worker configuration, read from ``PIPELINE_*`` environment variables (set by the fleet's user data).

| variable | meaning | default |
| --- | --- | --- |
| ``PIPELINE_QUEUE_URL`` | task queue to consume | required |
| ``PIPELINE_TASK_KIND`` | what runs per task: ``function``, ``command`` or ``http`` (:mod:`.adapters`) | ``function`` |
| ``PIPELINE_TASK`` | the task function, ``module:function`` | required for ``function`` |
| ``PIPELINE_COMMAND`` | the command, a JSON list of strings (``{input}``... substituted) | required for ``command`` |
| ``PIPELINE_HTTP_PORT`` | the local port the app serves on (``127.0.0.1``) | required for ``http`` |
| ``PIPELINE_HTTP_PATH`` | the path each task is POSTed to | ``/`` |
| ``PIPELINE_HTTP_CONTENT_TYPE`` | the ``Content-Type`` of the POSTs | ``application/json`` |
| ``PIPELINE_HTTP_START`` | the command that starts the app, a JSON list; empty: the app is started otherwise | ``""`` |
| ``PIPELINE_HTTP_TIMEOUT`` | seconds one POST may wait for its response; 0: the task timeout | 0 |
| ``PIPELINE_HTTP_START_SECONDS`` | how long a POST retries connecting while the app (re)starts | 60 |
| ``PIPELINE_BUCKET`` | data bucket for inputs and outputs | required |
| ``PIPELINE_PREFIX`` | key prefix of this fleet (``input/``, ``output/``, ``intermediate/`` below it) | ``""`` |
| ``PIPELINE_TABLE`` | status store table; empty: no status records | ``""`` |
| ``PIPELINE_FLEET_NAME`` | name the status records are grouped under | the queue's name |
| ``PIPELINE_DOWNSTREAM_QUEUE_URL`` | where finished tasks are forwarded; empty: nowhere | ``""`` |
| ``PIPELINE_CONCURRENCY`` | tasks run at once (one task process each) | CPU count |
| ``PIPELINE_PREFETCH`` | messages held beyond the running ones, so a batch of 10 fills | 10 |
| ``PIPELINE_WAIT_SECONDS`` | long-poll wait of each receive (0 to 20) | 20 |
| ``PIPELINE_VISIBILITY_TIMEOUT`` | seconds a received message stays hidden | the queue's setting |
| ``PIPELINE_MAX_RECEIVE_COUNT`` | receives before SQS moves a message to the DLQ | the queue's redrive policy |
| ``PIPELINE_MAX_ATTEMPTS`` | attempts a task gets; a later delivery records why it is dead-lettered | receives - 1 |
| ``PIPELINE_TASK_TIMEOUT`` | seconds one attempt may run before its process is killed; 0: no limit | 0 |
| ``PIPELINE_RETRY_DELAY`` | seconds before a failed task is visible again, times the attempt | 10 |
| ``PIPELINE_STOP_GRACE_SECONDS`` | on SIGTERM, how long running tasks may finish before release | 30 |
| ``PIPELINE_ACK_DELAY_SECONDS`` | longest a finished task waits for its batched row write and delete | 1 |
| ``PIPELINE_WORKER_HEARTBEAT_SECONDS`` | how often the worker's own status row is refreshed | 60 |
| ``PIPELINE_STATUS_TTL_DAYS`` | days a status record lives (DynamoDB TTL) | 90 |
| ``PIPELINE_SPOT_WATCH`` | watch spot notices: ``auto`` (if metadata answers), ``on``, ``off`` | ``auto`` |
| ``PIPELINE_METADATA_ENDPOINT`` | instance metadata service | ``http://169.254.169.254`` |
| ``PIPELINE_SPOT_POLL_SECONDS`` | how often the notice is polled | 5 |
| ``PIPELINE_LIFECYCLE_HOOK`` | termination lifecycle hook to complete after draining; empty: none | ``""`` |
| ``PIPELINE_SCALE_IN_PROTECTION`` | protect the instance from scale-in while busy (needs the ASG name tag) | ``auto`` |
| ``PIPELINE_WORKER_ID`` | this worker's name in the status store | ``<hostname>-<pid>`` |
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import overload

#: Deliveries the fleet's created queue allows beyond a task's attempts. On one of them a worker records why
#: the task is dead-lettered (its workers were lost, or it timed out); several, so that a worker lost on that
#: very delivery still leaves a reason. Deliveries lost before their task started (a killed worker held them
#: prefetched) are not attempts and use these up first; the last delivery is always kept for the record.
SPARE_DELIVERIES = 3
#: What a task can be (``PIPELINE_TASK_KIND``); the first is the default.
TASK_KINDS = ("function", "command", "http")
#: The built-in task function of each other kind (:mod:`.adapters`), run in the task processes as a user's is.
ADAPTER_FUNCTIONS = {"command": f"{__package__}.adapters:run_command", "http": f"{__package__}.adapters:post_to_app"}


class ConfigError(ValueError):
    """A missing or malformed ``PIPELINE_*`` variable; the message names it."""


@overload
def _int(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int: ...
@overload
def _int(environ: Mapping[str, str], name: str, default: None, low: int, high: int) -> int | None: ...
def _int(environ: Mapping[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; allowed: {low} to {high}")
    return value


def _http_url(environ: Mapping[str, str], name: str, default: str) -> str:
    """An http(s) URL without its trailing slash: urllib would open file: and custom schemes too."""
    value = environ.get(name, "").strip().rstrip("/") or default
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={value!r} is invalid; allowed: an http:// or https:// URL")
    return value


def _choice(environ: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = environ.get(name, "").strip().lower() or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is invalid; allowed: {', '.join(allowed)}")
    return value


def _argv(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A JSON list of strings, the first not empty (an argv, run without a shell); empty: ``()``."""
    raw = environ.get(name, "").strip()
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value) or not value[0]:
        raise ConfigError(f'{name}={raw!r} is invalid; allowed: a JSON list of strings, such as ["./run", "{{input}}"]')
    return tuple(value)


@dataclass(frozen=True)
class HttpSettings:
    """The ``http`` kind's app and how each task is POSTed to it (the ``PIPELINE_HTTP_*`` variables)."""

    port: int
    path: str = "/"
    content_type: str = "application/json"
    start: tuple[str, ...] = ()
    request_timeout: int = 0
    start_seconds: int = 60
    queue_name: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HttpSettings:
        port = _int(environ, "PIPELINE_HTTP_PORT", None, 1, 65535)
        if port is None:
            raise ConfigError("PIPELINE_HTTP_PORT is required with PIPELINE_TASK_KIND=http")
        path = environ.get("PIPELINE_HTTP_PATH", "").strip() or "/"
        if not path.startswith("/"):
            raise ConfigError(f"PIPELINE_HTTP_PATH={path!r} is invalid; allowed: a path starting with /")
        return cls(
            port=port,
            path=path,
            content_type=environ.get("PIPELINE_HTTP_CONTENT_TYPE", "").strip() or "application/json",
            start=_argv(environ, "PIPELINE_HTTP_START"),
            # 0: none of its own, the task timeout stops the request (and counts it as one).
            request_timeout=_int(environ, "PIPELINE_HTTP_TIMEOUT", 0, 0, 43200),
            start_seconds=_int(environ, "PIPELINE_HTTP_START_SECONDS", 60, 1, 3600),
            queue_name=environ.get("PIPELINE_QUEUE_URL", "").strip().rstrip("/").rsplit("/", 1)[-1],
        )


@dataclass(frozen=True)
class WorkerConfig:
    queue_url: str
    task: str
    bucket: str
    prefix: str = ""
    table: str = ""
    fleet_name: str = ""
    downstream_queue_url: str = ""
    concurrency: int = 1
    prefetch: int = 10
    wait_seconds: int = 20
    visibility_timeout: int | None = None
    max_receive_count: int | None = None
    max_attempts: int | None = None
    task_timeout: int = 0
    retry_delay: int = 10
    stop_grace_seconds: int = 30
    ack_delay_seconds: float = 1.0
    worker_heartbeat_seconds: int = 60
    status_ttl_days: int = 90
    spot_watch: str = "auto"
    metadata_endpoint: str = "http://169.254.169.254"
    spot_poll_seconds: int = 5
    scale_in_protection: str = "auto"
    lifecycle_hook: str = ""
    worker_id: str = ""
    task_kind: str = "function"
    command: tuple[str, ...] = ()
    http: HttpSettings | None = field(default=None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        env = os.environ if environ is None else environ
        required = {}
        for name in ("PIPELINE_QUEUE_URL", "PIPELINE_BUCKET"):
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is required")
            required[name] = value
        task_kind = _choice(env, "PIPELINE_TASK_KIND", TASK_KINDS[0], TASK_KINDS)
        task, command, http = _task_of_kind(env, task_kind)
        prefix = env.get("PIPELINE_PREFIX", "").strip()
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        queue_url = required["PIPELINE_QUEUE_URL"]
        return cls(
            queue_url=queue_url,
            task=task,
            bucket=required["PIPELINE_BUCKET"],
            prefix=prefix,
            table=env.get("PIPELINE_TABLE", "").strip(),
            fleet_name=env.get("PIPELINE_FLEET_NAME", "").strip() or queue_url.rstrip("/").rsplit("/", 1)[-1],
            downstream_queue_url=env.get("PIPELINE_DOWNSTREAM_QUEUE_URL", "").strip(),
            concurrency=_int(env, "PIPELINE_CONCURRENCY", os.cpu_count() or 1, 1, 1024),
            prefetch=_int(env, "PIPELINE_PREFETCH", 10, 0, 1000),
            wait_seconds=_int(env, "PIPELINE_WAIT_SECONDS", 20, 0, 20),
            visibility_timeout=_int(env, "PIPELINE_VISIBILITY_TIMEOUT", None, 1, 43200),
            max_receive_count=_int(env, "PIPELINE_MAX_RECEIVE_COUNT", None, 1, 1000),
            max_attempts=_int(env, "PIPELINE_MAX_ATTEMPTS", None, 1, 1000),
            task_timeout=_int(env, "PIPELINE_TASK_TIMEOUT", 0, 0, 43200),
            retry_delay=_int(env, "PIPELINE_RETRY_DELAY", 10, 0, 43200),
            stop_grace_seconds=_int(env, "PIPELINE_STOP_GRACE_SECONDS", 30, 0, 3600),
            ack_delay_seconds=_int(env, "PIPELINE_ACK_DELAY_SECONDS", 1, 0, 60),
            worker_heartbeat_seconds=_int(env, "PIPELINE_WORKER_HEARTBEAT_SECONDS", 60, 1, 86400),
            status_ttl_days=_int(env, "PIPELINE_STATUS_TTL_DAYS", 90, 1, 3650),
            spot_watch=_choice(env, "PIPELINE_SPOT_WATCH", "auto", ("auto", "on", "off")),
            metadata_endpoint=_http_url(env, "PIPELINE_METADATA_ENDPOINT", "http://169.254.169.254"),
            spot_poll_seconds=_int(env, "PIPELINE_SPOT_POLL_SECONDS", 5, 1, 120),
            scale_in_protection=_choice(env, "PIPELINE_SCALE_IN_PROTECTION", "auto", ("auto", "on", "off")),
            lifecycle_hook=env.get("PIPELINE_LIFECYCLE_HOOK", "").strip(),
            worker_id=env.get("PIPELINE_WORKER_ID", "").strip() or f"{socket.gethostname()}-{os.getpid()}",
            task_kind=task_kind,
            command=command,
            http=http,
        )


def _task_of_kind(env: Mapping[str, str], kind: str) -> tuple[str, tuple[str, ...], HttpSettings | None]:
    """The task function the task processes run (a user's, or the kind's built-in one), the command and the
    app's settings."""
    if kind == "command":
        command = _argv(env, "PIPELINE_COMMAND")
        if not command:
            raise ConfigError("PIPELINE_COMMAND is required with PIPELINE_TASK_KIND=command")
        return ADAPTER_FUNCTIONS[kind], command, None
    if kind == "http":
        return ADAPTER_FUNCTIONS[kind], (), HttpSettings.from_env(env)
    task = env.get("PIPELINE_TASK", "").strip()
    if not task:
        raise ConfigError("PIPELINE_TASK is required")
    module, _, function = task.partition(":")
    if not module or not function:
        raise ConfigError(f"PIPELINE_TASK={task!r} is invalid; expected 'module:function'")
    return task, (), None
