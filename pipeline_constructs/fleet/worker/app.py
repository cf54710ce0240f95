"""The ``http`` kind's app (``PIPELINE_HTTP_START``), run by the worker as Elastic Beanstalk's worker tier runs
it beside sqsd: started once per worker from the worker directory (with ``PORT`` in its environment and the
worker's Python first on ``PATH``), ready when its port accepts connections, restarted when it dies (after 1 s,
doubling up to 30 s while it keeps dying), stopped with the worker (SIGTERM to its process group, SIGKILL 5 s
later; at once when tasks still running in it are released, on a spot notice or after the drain's grace
period) and killed with it even by ``kill -9``: it runs under a guard process that leads a process group of
its own and kills that group when the worker's end of its lifeline closes, as the task processes do.

Work the app was doing for a task that timed out (or whose lease was lost, or whose request timed out) is
not stopped by killing the task process: the app's handler goes on. With ``concurrency`` 1 the worker
restarts the app before the next task, so an abandoned request dies with it; with more, a restart would
kill the other tasks' requests too, so the app is left running and its handlers must tolerate that a task
they are still working on runs again elsewhere (sqsd makes the same at-least-once demand).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess  # nosec B404 - starts the fleet's own configured app, never a shell
import sys
import threading
import time
from typing import Any

from .adapters import tool_environment
from .config import WorkerConfig

log = logging.getLogger("pipeline.worker")

#: Pause before restarting an app that died by itself: doubled after each death up to the longest.
FIRST_RESTART_DELAY, LONGEST_RESTART_DELAY = 1.0, 30.0
#: An app that ran this long before dying is restarted after the first delay again.
HEALTHY_SECONDS = 60.0
#: How long a stopping app may take after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 5.0


class WorkerApp:
    """The app a worker of the ``http`` kind runs (see the module docstring)."""

    def __init__(self, argv: list[str], *, port: int, cwd: str | None = None) -> None:
        self.argv, self.port, self.cwd = list(argv), port, cwd or os.getcwd()
        self._context = multiprocessing.get_context("forkserver")
        self._process: Any = None  # the guard of the running app
        self._lifeline: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._restart_asked = threading.Event()
        self._thread: threading.Thread | None = None
        self.starts = 0

    @classmethod
    def of(cls, config: WorkerConfig) -> WorkerApp | None:
        """The app of an ``http`` worker that starts one; None otherwise."""
        if config.http is None or not config.http.start:
            return None
        return cls(list(config.http.start), port=config.http.port)

    def start(self) -> None:
        """Start the app, and the thread that restarts it when it dies."""
        self._launch()
        self._thread = threading.Thread(target=self._supervise, name="app", daemon=True)
        self._thread.start()

    def _launch(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            lifeline, self._lifeline = self._context.Pipe(duplex=False)
            self._process = self._context.Process(
                target=_guard_main, args=(self.argv, self.cwd, self.port, lifeline), name="pipeline-app", daemon=True
            )
            self._process.start()
            lifeline.close()
            self.starts += 1
        log.info("app started", extra={"command": self.argv, "port": self.port, "pid": self._process.pid})

    def _supervise(self) -> None:
        delay = FIRST_RESTART_DELAY
        while not self._stopping.is_set():
            process, started = self._process, time.monotonic()
            process.join()
            if self._stopping.is_set():
                return
            if self._restart_asked.is_set():
                self._restart_asked.clear()
            else:
                lived = time.monotonic() - started
                delay = FIRST_RESTART_DELAY if lived > HEALTHY_SECONDS else delay
                log.warning("app stopped by itself: restarting", extra={"after_seconds": delay, "ran_seconds": lived})
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, LONGEST_RESTART_DELAY)
            self._launch()

    def ready(self) -> bool:
        """Whether the app's port accepts connections."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def wait_until_ready(self, timeout: float, *, unless: threading.Event) -> bool:
        """Wait for the app's port to accept connections, at most ``timeout`` seconds or until ``unless`` is set
        (the worker stopping); its tasks try to connect for as long again anyway."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= deadline or unless.wait(0.2):
                log.warning("app not ready: tasks wait for it", extra={"port": self.port, "waited_seconds": timeout})
                return False
        log.info("app ready", extra={"port": self.port})
        return True

    def restart(self) -> None:
        """Kill the app (with what it started) and have it started again at once: work a task left behind dies."""
        with self._lock:
            process = self._process
            if self._stopping.is_set() or process is None:
                return
            self._restart_asked.set()
            _kill_group(process.pid, signal.SIGKILL)
        process.join(STOP_GRACE_SECONDS)
        log.info("app restarted: a task left work in it behind", extra={"port": self.port})

    def stop(self, *, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the app's group, SIGKILL it after ``grace_seconds`` (0: at once); no restart after."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is None:
            return
        if grace_seconds > 0:
            _kill_group(process.pid, signal.SIGTERM)
            process.join(grace_seconds)
        _kill_group(process.pid, signal.SIGKILL)
        process.join(STOP_GRACE_SECONDS)
        with contextlib.suppress(OSError):
            self._lifeline.close()


def _kill_group(pid: int | None, signum: int) -> None:
    if pid:  # never 0: that would be the worker's own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)


def _guard_main(argv: list[str], cwd: str, port: int, lifeline: Any) -> None:
    """Lead a process group, run the app in it, and end the group when the app ends or the worker does."""
    os.setsid()
    try:
        app = subprocess.Popen(argv, cwd=cwd, env=tool_environment() | {"PORT": str(port)})  # nosec B603 - configured argv
    except OSError as error:
        _guard_log("app did not start", error=f"{argv[0]}: {error.strerror or error}")
        os._exit(1)
    # The guard outlives SIGTERM (the app's to handle); the worker's SIGKILL or its lifeline ends it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with_the_worker, args=(lifeline,), daemon=True).start()
    code = app.wait()
    _guard_log("app exited", code=code)
    os.killpg(0, signal.SIGKILL)  # what the app left running, and the guard


def _end_with_the_worker(lifeline: Any) -> None:
    lifeline.poll(None)  # end of file: the worker's process ended
    os.killpg(0, signal.SIGKILL)


def _guard_log(message: str, **fields: Any) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": "WARNING", "message": message}
    sys.stdout.write(json.dumps(record | fields) + "\n")
    sys.stdout.flush()
