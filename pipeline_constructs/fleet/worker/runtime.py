"""The worker loop: receive in batches, run tasks in child processes, keep them hidden, acknowledge in batches.

Guarantees (each has a test that attacks it, listed in the README):
- a message is deleted only after its outputs are written, its SUCCEEDED row is stored and (with a
  downstream queue) it was forwarded, so a ``kill -9`` at any point loses neither the task nor its row;
- a task already done (its SUCCEEDED row, read before every run; on a redelivery also its completion marker)
  is acknowledged without running again and its stored outcome forwarded, so a re-sent key and a redelivery
  agree with what was stored; outputs are written with conditional puts, so a task never duplicates them;
- acknowledgements are owned per record: a forward, row or delete that fails is retried for that record,
  then the record is released (never left held); one bad record (a duplicate id, a row or forward too large)
  fails no other;
- a message held longer than the visibility timeout is extended, so no other worker gets it: by a thread
  of its own that makes no other call, with an SQS client of its own (short timeouts, few retries), so no
  stalled or retried status write, delete or Auto Scaling call delays it; visibility is never asked beyond
  SQS's 12 h from the receive, and no extension is sent after (or while) a message is released;
- a lease that is lost (an extension refused for the message, or its visibility run out before an extension
  landed: failed or stalled extensions, the 12 h cap) is noticed: the message is dropped, its task stopped,
  and its result not published (no forward, no SUCCEEDED row, no delete); the new holder runs it;
- a finished message still unacknowledged after three visibility timeouts (at least a minute) is released,
  so a stuck acknowledgement holds nothing for ever; its redelivery finds the task done;
- a receive that fails past the SDK's retries is tried again after a pause (1 s, doubling up to 20 s): the
  worker keeps its running tasks and what it holds rather than stop;
- a task past ``task_timeout`` is stopped (its process group killed: tools it started die with it) and
  counted as a failed attempt; a failed attempt is released after a back-off; after ``max_attempts`` the
  task is dead-lettered with a FAILED row giving the reason: its own error, ``timed out after N s``, or
  ``worker lost during N attempts``
  (written on a spare delivery the queue's redrive policy allows beyond the attempts, handled at once on a
  thread of its own, never queued behind running tasks where a lost worker would take it along);
- on SIGTERM running tasks may finish for a grace period; on a spot interruption notice or a termination
  lifecycle action every unfinished message is made visible again at once, the lifecycle action is
  completed, and the worker exits 0. Whenever unfinished messages are released that way, their task
  processes (and the processes they started) are killed first, so an old run never writes beside the new
  owner's;
- an ``http`` worker's app (:mod:`.app`) starts before the first receive, is restarted when it dies (and,
  with ``concurrency`` 1, after a task that left work in it behind), and stops after the drain.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .acknowledger import (
    ACK_BATCH,
    Acknowledger,
)
from .app import WorkerApp
from .attempts import COMPLETION_MARKER, JSON, AttemptRunner
from .config import WorkerConfig
from .drain import Drain
from .heartbeat import Heartbeat, TaskProgress, WorkerRow
from .instance import LIFECYCLE_TERMINATION, InstanceDuties
from .intake import Intake
from .isolation import TaskProcesses
from .leases import LeaseKeeper, lease_client
from .limits import (
    DeliveryLimits,
    attempt_budget,
)
from .messages import SQS_BATCH, Held, Tally
from .metadata import InstanceMetadata
from .status import StatusRecorder

# Worker, and what this module held before the runtime was split (code that imported them from here).
__all__ = ["ACK_BATCH", "COMPLETION_MARKER", "JSON", "SQS_BATCH", "Held", "Worker", "attempt_budget"]

log = logging.getLogger("pipeline.worker")


class Worker:
    """The worker loop: receive while there is room until asked to stop, then drain and stop.

    The parts: :class:`.Intake` receives, :class:`.AttemptRunner` runs and settles each delivery,
    :class:`.LeaseKeeper` keeps the messages held hidden, :class:`.Acknowledger` deletes finished ones in
    batches, :class:`.Heartbeat` does the periodic duties, :class:`.Drain` hands everything back at the end.
    """

    def __init__(
        self,
        config: WorkerConfig,
        tasks: TaskProcesses,
        *,
        sqs: Any,
        s3: Any,
        table: Any | None = None,
        autoscaling: Any | None = None,
        metadata: InstanceMetadata | None = None,
    ) -> None:
        self.config = config
        self.tasks = tasks
        self.sqs, self.s3 = sqs, s3
        self.status = StatusRecorder(table, config.fleet_name, ttl_days=config.status_ttl_days)
        self.instance = InstanceDuties(config, metadata=metadata, autoscaling=autoscaling)
        self.tally = Tally()
        self.progress = TaskProgress()
        self.leases = LeaseKeeper(
            lease_client(sqs), config.queue_url, self.tally, on_lost=lambda held: tasks.stop_task(held.message_id)
        )
        self.acks = Acknowledger(config, sqs=sqs, leases=self.leases, status=self.status, tally=self.tally)
        self.row = WorkerRow(
            config.worker_id, status=self.status, leases=self.leases, progress=self.progress, tally=self.tally
        )
        self._stopping = threading.Event()
        self.heartbeat = Heartbeat(
            config, leases=self.leases, acks=self.acks, row=self.row, instance=self.instance, stopping=self._stopping
        )
        self.app = WorkerApp.of(config)
        self.drain = Drain(self.leases, self.acks, grace_seconds=config.stop_grace_seconds, stop_tasks=self._stop_tasks)
        if self.app is not None and config.concurrency == 1:  # more: the other tasks' requests would die too
            tasks.on_abandoned = self.app.restart
        self.stop_reason = ""

    @property
    def counts(self) -> dict[str, int]:
        """Tasks received, succeeded, failed, found done before (duplicates) and released so far."""
        return self.tally.counts

    def request_stop(self, reason: str, *, release_now: bool) -> None:
        """Stop receiving; with ``release_now`` make every unfinished message visible again immediately."""
        if not self._stopping.is_set():
            self.stop_reason = reason
            log.info("stopping", extra={"reason": reason, "release_now": release_now})
        self._stopping.set()
        if release_now:  # their task processes killed first: no old run writes beside the new owner's
            self.leases.release_unfinished(before_sending=self._stop_tasks)
        self.leases.wake()

    def _stop_tasks(self) -> None:
        """Kill the task processes (with what they started) and, if tasks were running, the app at once too:
        a released task's request must not go on in it beside the next owner's run."""
        if self.tasks.close() and self.app is not None:
            self.app.stop(grace_seconds=0)

    def run(self) -> int:
        """Work until asked to stop (:meth:`request_stop`), then drain; the exit code, 0."""
        limits = DeliveryLimits.of_queue(self.sqs, self.config)
        self.leases.start(limits.visibility_timeout)
        self.leases.keep_hidden()
        attempts = AttemptRunner(
            self.config,
            self.tasks,
            limits,
            s3=self.s3,
            leases=self.leases,
            acks=self.acks,
            status=self.status,
            instance=self.instance,
            progress=self.progress,
            tally=self.tally,
        )
        intake = Intake(
            self.config,
            sqs=self.sqs,
            leases=self.leases,
            tally=self.tally,
            stopping=self._stopping,
            start=attempts.start,
        )
        self.tasks.start()
        if self.app is not None:  # after the task processes: their fork server starts with its preloads
            self.app.start()
            self.app.wait_until_ready(self.config.http.start_seconds if self.config.http else 60, unless=self._stopping)
        self.instance.start(lambda reason: self.request_stop(reason, release_now=True), self._stopping)
        self.heartbeat.start()
        log.info(
            "worker started",
            extra={
                "worker": self.config.worker_id,
                "queue": self.config.queue_url,
                "max_attempts": limits.max_attempts,
            },
        )
        try:
            while not self._stopping.is_set():
                wanted = intake.wait_for_capacity()
                if wanted:
                    intake.receive(wanted)
        finally:
            self._shutdown(attempts)
        return 0

    def _shutdown(self, attempts: AttemptRunner) -> None:
        self.drain.run()
        self.tasks.close()
        if self.app is not None:
            self.app.stop()
        attempts.shutdown()  # before the instance may go: stopped attempts are given back
        self.instance.set_protection(False)
        self.row.stopped(self.stop_reason)
        if self.stop_reason == LIFECYCLE_TERMINATION:
            self.instance.complete_lifecycle_action()
        self.leases.stop()
        log.info("worker stopped", extra={"reason": self.stop_reason, **self.counts})
