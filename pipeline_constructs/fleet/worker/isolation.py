"""Task code in child processes, one per slot, so that a task past its timeout can be stopped.

A thread cannot be killed, so a hung task on a thread would hold its slot (and the instance's scale-in
protection) forever. Each slot is a long-lived child process instead: it imports the task function once,
keeps its own S3 client, and runs one task at a time for the worker, which waits on a pipe. A task past
``timeout`` gets its process killed (SIGKILL) and a new one takes the slot; so does a task whose process
died (a segfault, ``os._exit``, the out-of-memory killer). The children ignore SIGTERM and SIGINT (the
worker decides when they stop) and exit by themselves when the worker dies, even by ``kill -9``.

Each child leads a session (and process group) of its own, and is killed with its whole group: tools a task
started (a ``subprocess``, a shell pipeline) die with it, on a timeout, a stop, a lost lease, or the death of
the worker, rather than run on beside the next attempt.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from .task import Task, load_task_function


@dataclass(frozen=True)
class TaskCall:
    """What a child needs to build the :class:`~.task.Task` it runs."""

    id: str
    body: Any
    message_id: str
    attempt: int
    receive_count: int = 0  # SQS's, for an HTTP app's X-Aws-Sqsd-Receive-Count; 0 when not known


@dataclass
class TaskOutcome:
    """How one run ended: ``ok`` (with ``result`` and ``outputs``), ``error``, ``timeout`` or ``crashed``
    (``error`` says why). ``abandoned``: the task's error says it gave up on work still going on elsewhere (an
    HTTP app's request past its timeout)."""

    kind: str
    result: Any = None
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    traceback: str = ""
    abandoned: bool = False

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def left_work_behind(self) -> bool:
        """The run ended before what it asked for did: killed (timeout, lost lease, death) or abandoned."""
        return self.kind in ("timeout", "crashed") or self.abandoned


ProgressCallback = Callable[[str, float, str], None]


class TaskProcess:
    """One child process running task code; see the module docstring."""

    def __init__(self, spec: str, bucket: str, prefix: str, boto_settings: dict[str, Any]) -> None:
        # A fork server: forking the threaded worker itself is unsafe, and spawning a fresh interpreter per
        # slot would import boto3 and the task code every time. The server imports them once, and parses the
        # S3 models every slot's client needs (task_preload).
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["boto3", f"{__package__}.task_preload", __name__, spec.partition(":")[0]])
        self._conn, child_conn = context.Pipe()
        # Never written: when the worker dies (even by kill -9) the child reads end-of-file on it and exits.
        lifeline, self._lifeline = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_child_main,
            args=(child_conn, lifeline, spec, bucket, prefix, boto_settings),
            name="pipeline-task",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        lifeline.close()
        # Only the thread running a task closes its pipe: closed under a thread still reading it, the
        # descriptor could be reused by one of the worker's HTTP connections and read (or closed) as the pipe.
        self._kill_lock = threading.Lock()
        self._killed = False
        self._busy = False
        self.message_id: str | None = None  # the message whose task runs now

    def run(self, call: TaskCall, timeout: float | None, on_progress: ProgressCallback) -> TaskOutcome:
        with self._kill_lock:
            if self._killed:
                return TaskOutcome("crashed", error="task process stopped before the task")
            self._busy, self.message_id = True, call.message_id
        try:
            return self._run(call, timeout, on_progress)
        finally:
            with self._kill_lock:
                self._busy, self.message_id = False, None

    def _run(self, call: TaskCall, timeout: float | None, on_progress: ProgressCallback) -> TaskOutcome:
        try:
            self._conn.send(call)
        except OSError:  # the process died while idle (out of memory, killed by hand)
            return self._crashed()
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                self.kill()
                return TaskOutcome("timeout", error=f"timed out after {timeout:g} s")
            try:
                ready = self._conn.poll(wait)
                message = self._conn.recv() if ready else None
            except (EOFError, OSError):
                return self._crashed()
            if message is None:
                if not self.process.is_alive():
                    return self._crashed()
                continue
            kind = message[0]
            if kind == "progress":
                on_progress(call.id, message[1], message[2])
            elif kind == "done":
                return TaskOutcome("ok", result=message[1], outputs=message[2])
            else:
                abandoned = len(message) > 3 and bool(message[3])
                return TaskOutcome("error", error=message[1], traceback=message[2], abandoned=abandoned)

    def _crashed(self) -> TaskOutcome:
        self.process.join(timeout=2)
        code = self.process.exitcode
        self.kill()
        return TaskOutcome("crashed", error=f"task process exited with code {code} during the task")

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def _kill_group(self) -> None:
        """SIGKILL the process's group: the process and whatever it started (under ``_kill_lock``)."""
        if self.process.pid:  # never 0: that would be the worker's own group
            # No group (not yet, or not any more): the process alone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.is_alive():
            self.process.kill()

    def kill(self) -> None:
        """Kill the process (with its group) and close its pipes (once). From the thread that runs its task,
        or when idle."""
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
            self._kill_group()
            self.process.join(timeout=5)
            self._conn.close()
            self._lifeline.close()

    def stop(self) -> None:
        """Kill the process (with its group) from any thread: a busy one's own thread sees it end and closes
        the pipes."""
        with self._kill_lock:
            busy = self._busy and not self._killed
            if busy:
                self._kill_group()
        if not busy:
            self.kill()


class TaskProcesses:
    """The worker's slots: at most ``size`` child processes, started when first needed, replaced when killed."""

    def __init__(
        self,
        spec: str,
        *,
        size: int,
        bucket: str,
        prefix: str,
        timeout: float | None,
        boto_settings: dict[str, Any] | None = None,
        on_abandoned: Callable[[], None] | None = None,
    ) -> None:
        self.spec, self.size, self.bucket, self.prefix, self.timeout = spec, size, bucket, prefix, timeout
        self.boto_settings = boto_settings or {}
        #: Called after a run that left work behind (see :attr:`TaskOutcome.left_work_behind`), on its slot's
        #: thread before the slot takes another task: an HTTP app serving one task at a time is restarted.
        self.on_abandoned = on_abandoned
        self._idle: queue.LifoQueue[TaskProcess] = queue.LifoQueue()
        self._all: list[TaskProcess] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start every slot's process now, before the first task, so none waits for one to start."""
        with self._lock:
            while len(self._all) < self.size and not self._closed:
                process = TaskProcess(self.spec, self.bucket, self.prefix, self.boto_settings)
                self._all.append(process)
                self._idle.put(process)

    def run(self, call: TaskCall, on_progress: ProgressCallback) -> TaskOutcome:
        process = self._take()
        outcome = process.run(call, self.timeout, on_progress)
        if outcome.left_work_behind and self.on_abandoned is not None and not self._closed:
            self.on_abandoned()
        if process.alive and not self._closed:
            self._idle.put(process)
        else:
            with self._lock:
                self._all = [p for p in self._all if p is not process]
        return outcome

    def _take(self) -> TaskProcess:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker is stopping: no new task processes")
            process = TaskProcess(self.spec, self.bucket, self.prefix, self.boto_settings)
            self._all.append(process)
            return process

    def stop_task(self, message_id: str) -> None:
        """Kill the process running the task of message ``message_id``, if any (its lease was lost): its slot's
        thread sees it end, and a new process takes the slot."""
        with self._lock:
            processes = list(self._all)
        for process in processes:
            if process.message_id == message_id:
                process.stop()

    def close(self) -> int:
        """Kill every child (running tasks are released to other workers once this returns); how many were
        running a task."""
        with self._lock:
            self._closed = True
            processes, self._all = self._all, []
        running = sum(1 for process in processes if process.message_id is not None)
        for process in processes:
            process.stop()
        return running


# ---------------------------------------------------------------- the child side


def _child_main(conn: Any, lifeline: Any, spec: str, bucket: str, prefix: str, boto_settings: dict[str, Any]) -> None:
    os.setsid()  # a process group of its own: killed with it, what it starts dies too
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_the_worker, args=(lifeline,), name="lifeline", daemon=True).start()

    function = load_task_function(spec)
    s3 = _LazyClient("s3", boto_settings)
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    while True:
        try:
            call: TaskCall = conn.recv()
        except (EOFError, OSError):
            return
        task = Task(
            id=call.id,
            body=call.body,
            message_id=call.message_id,
            attempt=call.attempt,
            receive_count=call.receive_count,
            bucket=bucket,
            prefix=prefix,
            _s3=s3,
            _on_progress=lambda task_id, fraction, note: send(("progress", fraction, note)),
        )
        try:
            result = function(task)
            # Only what JSON can carry travels back: the result is recorded and forwarded downstream.
            send(("done", json.loads(json.dumps(result, default=str)), list(task.outputs)))
        except Exception as error:  # the task's own failure, reported to the worker
            send(
                (
                    "failed",
                    f"{type(error).__name__}: {error}"[:1000],
                    "".join(traceback.format_exception(error))[-3000:],
                    bool(getattr(error, "abandons_work", False)),
                )
            )


class _LazyClient:
    """A boto3 client made on first use: creating one costs tens of milliseconds of CPU, and message-only
    tasks never touch S3."""

    def __init__(self, service: str, settings: dict[str, Any]) -> None:
        self._service, self._settings, self._client = service, settings, None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = boto3.client(self._service, config=Config(**self._settings))
        return getattr(self._client, name)


def _exit_with_the_worker(lifeline: Any) -> None:
    """The fork server outlives a killed worker (its children hold its pipe), so the parent process is no
    sign of life; the worker's end of the lifeline is: it closes when the worker's process ends. The whole
    group goes, with whatever the task started."""
    lifeline.poll(None)
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(1)
