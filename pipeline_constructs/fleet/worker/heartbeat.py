"""The worker's periodic duties, on a thread of their own, and the task progress its status row shows."""

from __future__ import annotations

import logging
import threading
import time

from .acknowledger import Acknowledger
from .config import WorkerConfig
from .instance import InstanceDuties
from .leases import LeaseKeeper
from .messages import Tally
from .status import StatusRecorder

log = logging.getLogger("pipeline.worker")

INTERVAL_SECONDS = 0.5


class TaskProgress:
    """What running tasks reported of their progress (``Task.progress``), kept for the next worker row."""

    def __init__(self) -> None:
        self._reported: dict[str, tuple[float, str]] = {}  # task id -> (fraction, note)
        self._lock = threading.Lock()

    def record(self, task_id: str, fraction: float, note: str) -> None:
        with self._lock:
            self._reported[task_id] = (fraction, note)

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._reported.pop(task_id, None)

    def fraction(self, task_id: str) -> float:
        with self._lock:
            return self._reported.get(task_id, (0.0, ""))[0]


class WorkerRow:
    """The worker's own row in the status store: its state, its counts and its running tasks' progress."""

    def __init__(
        self, worker_id: str, *, status: StatusRecorder, leases: LeaseKeeper, progress: TaskProgress, tally: Tally
    ) -> None:
        self.worker_id = worker_id
        self.status = status
        self.leases = leases
        self.progress = progress
        self.tally = tally

    def running(self) -> None:
        working_on = {h.task_id: {"progress": self.progress.fraction(h.task_id)} for h in self.leases.running()}
        self.status.worker_heartbeat(
            self.worker_id, state="RUNNING", working_on=working_on or None, **self.tally.fields()
        )

    def stopped(self, reason: str) -> None:
        self.status.worker_heartbeat(self.worker_id, state="STOPPED", reason=reason, **self.tally.fields())


class Heartbeat:
    """Every half second: acknowledge the finished tasks whose batch is due, refresh the worker's status row
    (every ``worker_heartbeat_seconds``), and lift the instance's scale-in protection once it has been idle a
    while. Not the leases: their extensions have a thread of their own (:meth:`.LeaseKeeper.keep_hidden`),
    which none of these calls, their stalls or their retry sleeps can hold up."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        leases: LeaseKeeper,
        acks: Acknowledger,
        row: WorkerRow,
        instance: InstanceDuties,
        stopping: threading.Event,
    ) -> None:
        self.config = config
        self.leases = leases
        self.acks = acks
        self.row = row
        self.instance = instance
        self.stopping = stopping

    def start(self) -> None:
        """Beat on a daemon thread until the process ends (a stopping worker still holds messages)."""
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def _beat(self) -> None:
        next_worker_row = 0.0
        while True:
            try:
                self.acks.flush()
                now = time.monotonic()
                if now >= next_worker_row and not self.stopping.is_set():
                    next_worker_row = now + self.config.worker_heartbeat_seconds
                    self.row.running()
                self.instance.update_protection(bool(self.leases.running()))
            except Exception:
                log.exception("heartbeat failed")
            time.sleep(INTERVAL_SECONDS)
