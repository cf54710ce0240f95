"""Running each delivery of a task: skip it if done before, run an attempt, or record why it is dead-lettered."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .acknowledger import Acknowledger
from .config import WorkerConfig
from .heartbeat import TaskProgress
from .instance import InstanceDuties
from .isolation import TaskCall, TaskOutcome, TaskProcesses
from .leases import LeaseKeeper
from .limits import DeliveryLimits
from .messages import Held, Tally
from .status import StatusRecorder
from .task import put_once

log = logging.getLogger("pipeline.worker")

COMPLETION_MARKER = "_SUCCESS"
JSON = "application/json"


class CompletionMarkers:
    """``output/<task id>/_SUCCESS``, left by an attempt that wrote outputs (naming them, with its result): a
    redelivery of a task whose worker died after finishing, before deleting, finds it done."""

    def __init__(self, s3: Any, *, bucket: str, prefix: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}output/{task_id}/{COMPLETION_MARKER}"

    def find(self, task_id: str) -> dict[str, Any] | None:
        """The marker a finished attempt left (its outputs and result), or None."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(task_id))["Body"].read()
        except Exception as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return json.loads(body)

    def leave(self, task_id: str, outcome: TaskOutcome, *, worker: str) -> None:
        """Mark the task done, once: a marker left by an earlier attempt stays."""
        body = {"task": task_id, "outputs": outcome.outputs, "result": outcome.result, "worker": worker}
        put_once(self.s3, self.bucket, self._key(task_id), json.dumps(body, default=str), content_type=JSON)


class AttemptRunner:
    """Runs each delivery on a thread and settles it: acknowledged when done, released after a back-off when
    its attempt failed, dead-lettered with a FAILED row saying why when it is out of attempts.

    An attempt runs on a task slot's thread; a delivery past its attempts (most likely one that only records
    a reason) is handled at once on a spare thread, never queued behind running tasks, where a lost worker
    would take it along.
    """

    def __init__(
        self,
        config: WorkerConfig,
        tasks: TaskProcesses,
        limits: DeliveryLimits,
        *,
        s3: Any,
        leases: LeaseKeeper,
        acks: Acknowledger,
        status: StatusRecorder,
        instance: InstanceDuties,
        progress: TaskProgress,
        tally: Tally,
    ) -> None:
        self.config = config
        self.tasks = tasks
        self.limits = limits
        self.markers = CompletionMarkers(s3, bucket=config.bucket, prefix=config.prefix)
        self.leases = leases
        self.acks = acks
        self.status = status
        self.instance = instance
        self.progress = progress
        self.tally = tally
        self._slots = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="task")
        # Spare deliveries only record a reason and release: a few requests, never behind a task slot.
        self._spare = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spare")

    def start(self, held: Held, body: Any) -> None:
        """Run a delivery just received on the thread it needs."""
        spare = self.limits.past_attempts(held)  # by deliveries: most likely only a reason to record
        held.future = (self._spare if spare else self._slots).submit(self._process, held, body, spare)

    def shutdown(self) -> None:
        """Drop deliveries still waiting for a thread (the worker released them)."""
        self._slots.shutdown(wait=False, cancel_futures=True)
        self._spare.shutdown(wait=False, cancel_futures=True)

    def _process(self, held: Held, body: Any, on_spare_thread: bool = False, checked: bool = False) -> None:
        """Run one delivery; ``checked``: its marker was looked for and its attempt counted already."""
        held.started = time.monotonic()
        self.instance.set_protection(True)
        try:
            # Only a redelivery can find its work done (a worker died after finishing, before deleting):
            # first deliveries skip the check, so message-only tasks cost no S3 request at all.
            marker = self.markers.find(held.task_id) if held.delivery > 1 and not checked else None
            if marker is not None:
                self._done_before(held, marker)
            else:
                if held.delivery > 1 and not checked:
                    held.attempt = self._redelivered_attempt(held)
                if self.limits.past_attempts(held):
                    self._past_last_attempt(held)
                    return
                if on_spare_thread:  # attempts left after all (deliveries were lost unstarted): a task slot
                    held.future = self._slots.submit(self._process, held, body, checked=True)
                    return
                call = TaskCall(held.task_id, body, held.message_id, held.attempt)
                outcome = self.tasks.run(call, self.progress.record)
                if not outcome.ok:
                    self._task_failed(held, outcome)
                    return
                held.outcome = {"result": outcome.result, "outputs": outcome.outputs}
                if outcome.outputs:  # a marker only where there is output to protect from a redo
                    self.markers.leave(held.task_id, outcome, worker=self.config.worker_id)
        except Exception as error:  # the runtime's own trouble (S3 unreachable...): a failed attempt too
            log.exception("task attempt failed in the runtime", extra={"task": held.task_id})
            self._task_failed(held, TaskOutcome("error", error=f"{type(error).__name__}: {error}"[:1000]))
            return
        finally:
            self.progress.forget(held.task_id)
        self._acknowledge(held)

    def _acknowledge(self, held: Held) -> None:
        self.acks.queue(held, last_chance=self.limits.last_attempt(held))

    def _redelivered_attempt(self, held: Held) -> int:
        """The attempt a redelivery starts. Deliveries a killed worker held prefetched, never started, are
        not attempts: the started ones are counted in the task's row (one write, on redeliveries only), the
        first delivery always. Without a status store (or if the write fails), every delivery counts."""
        started = self.status.attempt_started(held.task_id)
        return held.delivery if started is None else min(held.delivery, started + 1)

    def _done_before(self, held: Held, marker: dict[str, Any]) -> None:
        """Done by an earlier attempt whose worker died before deleting: acknowledge, record and forward it
        again (the first forward may never have happened; the next stage dedupes on the task id)."""
        held.outcome = {"duplicate": True, "outputs": marker.get("outputs"), "result": marker.get("result")}
        self.tally.add("duplicates")

    def _past_last_attempt(self, held: Held) -> None:
        """A spare delivery: every attempt's worker was lost (or the last failure was recorded already).
        Record why, then release it; SQS moves it to the DLQ once the spare deliveries are used up."""
        marker = self.markers.find(held.task_id)
        row = self.status.read(held.task_id) or {}
        if marker is not None or row.get("state") == "SUCCEEDED":
            self._done_before(held, marker or {"outputs": row.get("outputs")})
            self._acknowledge(held)
            return
        if row.get("state") != "FAILED":
            reason = self.limits.dead_letter_reason(held, row)
            log.warning("task dead-lettered", extra={"task": held.task_id, "reason": reason})
            self.status.task_failed(
                held.task_id, state="FAILED", attempts=held.attempt - 1, worker=self.config.worker_id, error=reason
            )
        self.leases.release([held])

    def _task_failed(self, held: Held, outcome: TaskOutcome) -> None:
        if not self.leases.holds(held):  # released meanwhile (a stop): not ours to judge
            return
        final = self.limits.last_attempt(held)
        log.warning(
            "task failed",
            extra={"task": held.task_id, "attempt": held.attempt, "final": final, "error": outcome.error},
        )
        self.status.task_failed(
            held.task_id,
            state="FAILED" if final else "RETRYING",
            attempts=held.attempt,
            started=held.attempt - 1,  # the row is replaced: keep the count of started redeliveries
            worker=self.config.worker_id,
            duration_s=time.monotonic() - (held.started or time.monotonic()),
            error=outcome.error,
            traceback=outcome.traceback or None,
        )
        self.tally.add("failed")
        # After the last attempt no back-off: the next delivery only dead-letters it.
        self.leases.release([held], delay=0 if final else min(self.config.retry_delay * held.attempt, 43200))
