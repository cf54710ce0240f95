"""Running each delivery of a task: skip it if done before, run an attempt, or record why it is dead-lettered."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, TypeVar

from .acknowledger import Acknowledger
from .config import WorkerConfig
from .heartbeat import TaskProgress
from .instance import InstanceDuties
from .isolation import TaskCall, TaskOutcome, TaskProcesses
from .leases import LeaseKeeper
from .limits import DeliveryLimits
from .messages import Held, Tally
from .metrics import attempt_ended
from .status import StatusRecorder
from .task import put_once

log = logging.getLogger("pipeline.worker")
Result = TypeVar("Result")

COMPLETION_MARKER = "_SUCCESS"
JSON = "application/json"
#: Seconds between tries of a look-up or a dead-letter row that failed past the SDK's retries. The message
#: stays held meanwhile (its lease kept): released, it would spend one of the task's few deliveries.
HOLDING_RETRY_WAITS = (1.0, 2.0, 4.0, 8.0)
#: How long a stopping worker waits for the threads of its stopped tasks to settle (give their attempts back).
SETTLE_SECONDS = 5.0
#: Outputs and result travel in the forward and the status row up to this size (JSON bytes), well under
#: SQS's 256 KiB message and DynamoDB's 400 KB item; larger, both name the completion marker holding them.
INLINE_OUTCOME_LIMIT = 200 * 1024


def outcome_size(outputs: Any, result: Any) -> int:
    return len(json.dumps({"outputs": outputs, "result": result}, default=str).encode())


def stored_outcome(row: dict[str, Any]) -> dict[str, Any]:
    """What a SUCCEEDED row says the task produced: ``outputs`` and ``result`` (a JSON text in the row), or the
    completion marker holding them (``outcome``, with ``outputs_count``)."""
    if row.get("outcome"):
        return {"outputs_count": int(row.get("outputs_count") or 0), "outcome": row["outcome"]}
    result = row.get("result")
    return {"outputs": list(row.get("outputs") or []), "result": json.loads(result) if result else None}


class CompletionMarkers:
    """``output/<task id>/_SUCCESS``, left by an attempt that wrote outputs (naming them, with its result): a
    redelivery of a task whose worker died after finishing, before deleting, finds it done.

    The first marker stays: an attempt that finds one left by another (two deliveries of a task ran at once)
    adopts its outputs and result, so that what is stored, rowed and forwarded agrees. A marker is also left
    for an outcome too large to travel inline: the forward and the row then name it (``outcome``)."""

    def __init__(self, s3: Any, *, bucket: str, prefix: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}output/{task_id}/{COMPLETION_MARKER}"

    def uri(self, task_id: str) -> str:
        return f"s3://{self.bucket}/{self._key(task_id)}"

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

    def leave(self, task_id: str, outcome: TaskOutcome, *, worker: str) -> dict[str, Any]:
        """Mark the task done, once: a marker left by an earlier attempt stays, and is returned instead."""
        body = {"task": task_id, "outputs": outcome.outputs, "result": outcome.result, "worker": worker}
        if put_once(self.s3, self.bucket, self._key(task_id), json.dumps(body, default=str), content_type=JSON):
            return body
        return self.find(task_id) or body

    def settle(self, task_id: str, outcome: TaskOutcome, *, worker: str) -> dict[str, Any]:
        """What a successful attempt acknowledges: its outputs and result, or the marker's if another attempt
        left one first; by reference to the marker when too large."""
        outputs, result = outcome.outputs, outcome.result
        large = outcome_size(outputs, result) > INLINE_OUTCOME_LIMIT
        if outputs or large:  # a marker only where there is output to protect from a redo, or no room
            stored = self.leave(task_id, outcome, worker=worker)
            outputs, result = stored.get("outputs") or [], stored.get("result")
        return self.travelling(task_id, {"outputs": outputs, "result": result})

    def travelling(self, task_id: str, stored: dict[str, Any]) -> dict[str, Any]:
        """``stored`` (outputs and result) as the forward and the row carry it: inline, or by reference to the
        task's marker when too large (a marker holding them exists then)."""
        if stored.get("outcome"):
            return {"outputs_count": stored.get("outputs_count", 0), "outcome": stored["outcome"]}
        outputs, result = list(stored.get("outputs") or []), stored.get("result")
        if outcome_size(outputs, result) > INLINE_OUTCOME_LIMIT:
            return {"outputs_count": len(outputs), "outcome": self.uri(task_id)}
        return {"outputs": outputs, "result": result}


class NotLookedUp(RuntimeError):
    """The runtime could not tell whether a task is done (S3 or DynamoDB failing past the SDK's retries): the
    delivery started no attempt."""


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
        self._pending: set[Future[None]] = set()  # deliveries on a thread or waiting for one
        self._lock = threading.Lock()

    def start(self, held: Held, body: Any) -> None:
        """Run a delivery just received on the thread it needs."""
        spare = self.limits.past_attempts(held)  # by deliveries: most likely only a reason to record
        self._run_on(self._spare if spare else self._slots, held, body, spare)

    def _run_on(self, pool: ThreadPoolExecutor, held: Held, body: Any, spare: bool, checked: bool = False) -> None:
        held.future = future = pool.submit(self._process, held, body, spare, checked)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def shutdown(self, *, settle_seconds: float = SETTLE_SECONDS) -> None:
        """Drop deliveries still waiting for a thread (the worker released them), and give those whose task
        was stopped ``settle_seconds`` to settle (their attempts given back) before the worker exits."""
        self._slots.shutdown(wait=False, cancel_futures=True)
        self._spare.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout=settle_seconds)

    def _process(self, held: Held, body: Any, on_spare_thread: bool = False, checked: bool = False) -> None:
        """Run one delivery; ``checked``: its task was looked up and its attempt counted already."""
        held.started = time.monotonic()
        self.instance.set_protection(True)
        try:
            done = self._settle(held, body, on_spare_thread=on_spare_thread, checked=checked)
        except NotLookedUp as error:
            # Nothing ran: the message goes back for a later delivery, which does not count as an attempt (no
            # start was recorded); only the spare deliveries are used up if the trouble lasts.
            log.warning(
                "task not looked up: released, not an attempt", extra={"task": held.task_id, "error": str(error)}
            )
            if self.leases.holds(held):
                self.leases.release([held], delay=self.config.retry_delay)
            return
        except Exception as error:  # the runtime's own trouble (S3 unreachable...): a failed attempt too
            log.exception("task attempt failed in the runtime", extra={"task": held.task_id})
            self._task_failed(held, TaskOutcome("error", error=f"{type(error).__name__}: {error}"[:1000]))
            return
        finally:
            self.progress.forget(held.task_id)
        if done:
            self._acknowledge(held)

    def _settle(self, held: Held, body: Any, *, on_spare_thread: bool, checked: bool) -> bool:
        """Look the task up, then run its attempt, record why it runs none, or pass it to a task slot; True if
        it is done (by this attempt or an earlier one) and is to be acknowledged."""
        row: dict[str, Any] = {}
        if checked:  # looked up on a spare thread: only the start is counted
            held.attempt = self._attempt_starting(held)[1]
        else:
            try:
                row = self._holding(held, partial(self._look_up, held, starting=not on_spare_thread), "look-up")
            except Exception as error:
                raise NotLookedUp(f"{type(error).__name__}: {error}"[:1000]) from error
        if held.outcome:  # done before: not run again
            return True
        if self.limits.past_attempts(held):
            self._past_last_attempt(held, row)
            return False
        if on_spare_thread:  # attempts left after all (deliveries were lost unstarted): a task slot
            self._run_on(self._slots, held, body, False, checked=True)
            return False
        call = TaskCall(held.task_id, body, held.message_id, held.attempt, receive_count=held.delivery)
        outcome = self.tasks.run(call, self.progress.record)
        if not outcome.ok:
            self._task_failed(held, outcome)
            return False
        settle = partial(self.markers.settle, held.task_id, outcome, worker=self.config.worker_id)
        held.outcome = self._holding(held, settle, "completion marker")
        self._metrics(held, "succeeded")
        return True

    def _holding(self, held: Held, action: Callable[[], Result], what: str) -> Result:
        """``action()``, tried again while the message is held when it fails past the SDK's retries (see
        :data:`HOLDING_RETRY_WAITS`); its last error once the tries are spent or the message was let go."""
        waits = iter(HOLDING_RETRY_WAITS)
        while True:
            try:
                return action()
            except Exception as error:
                wait = next(waits, None)
                if wait is None or not self.leases.holds(held):
                    raise
                log.warning(
                    f"{what} failed: trying again",
                    extra={"task": held.task_id, "error": f"{type(error).__name__}: {error}"[:1000]},
                )
                time.sleep(wait)

    def _look_up(self, held: Held, *, starting: bool) -> dict[str, Any]:
        """Whether the task is done already, before it runs, and the attempt this delivery is; its row as it
        stood (empty if none). ``starting``: a task slot's delivery, whose start is counted in the same write;
        a spare delivery only reads.

        Done is a SUCCEEDED row (looked at on every delivery: a key sent again arrives as a new message) or,
        on a redelivery, a completion marker (its worker died after finishing, before its row). Either way
        the delivery is acknowledged and the stored outcome forwarded, never a new one."""
        # Only a redelivery can find its work done without a row (its worker died after finishing, before
        # the row): first deliveries skip the look, so message-only tasks cost no S3 request at all. Looked at
        # before the start is counted: a look that fails counts nothing.
        marker = self.markers.find(held.task_id) if held.delivery > 1 else None
        if marker is not None:
            self._done_before(held, marker)
            return {}
        if starting:
            row, held.attempt = self._attempt_starting(held)
        else:
            row = self.status.read(held.task_id) or {}
            if self.status.stores:
                held.attempt = min(held.delivery, int(row.get("started") or 0) + 1)
        if row.get("state") == "SUCCEEDED":
            self._done_before(held, stored_outcome(row), row_stored=True)
        return row

    def _attempt_starting(self, held: Held) -> tuple[dict[str, Any], int]:
        """Count the attempt this delivery starts: the task's row as it stood and the attempt's number. Only
        started attempts count, so deliveries a killed worker held prefetched, never started, are not attempts
        (nor are attempts given back, see :meth:`_task_failed`). Without a status store, or when its write
        fails, every delivery counts: not knowing costs at most a run (outputs are written once)."""
        try:
            row, started = self.status.attempt_starting(held.task_id)
        except Exception:
            log.exception("status write failed: the task runs unchecked", extra={"task": held.task_id})
            return {}, held.delivery
        # A task sent again after it was dead-lettered starts afresh: no more attempts than deliveries.
        return row, held.delivery if started is None else min(held.delivery, started)

    def _acknowledge(self, held: Held) -> None:
        self.acks.queue(held, last_chance=self.limits.last_attempt(held))

    def _done_before(self, held: Held, stored: dict[str, Any], *, row_stored: bool = False) -> None:
        """Done by an earlier attempt (or delivery): acknowledge it and forward its stored outcome again (the
        first forward may never have happened; the next stage dedupes on the task id); its row is written
        again unless it is the SUCCEEDED row it was found by (``row_stored``)."""
        held.outcome = {"duplicate": True, **self.markers.travelling(held.task_id, stored)}
        if row_stored:
            held.outcome["row_stored"] = True
        self.tally.add("duplicates")

    def _past_last_attempt(self, held: Held, row: dict[str, Any]) -> None:
        """A spare delivery: every attempt's worker was lost (or the last failure was recorded already).
        Record why (``row``: the task's row as looked up), then release it; SQS moves it to the DLQ once the
        spare deliveries are used up."""
        if row.get("state") != "FAILED":
            reason = self.limits.dead_letter_reason(held, row)
            log.warning("task dead-lettered", extra={"task": held.task_id, "reason": reason})
            fields = {"state": "FAILED", "attempts": held.attempt - 1, "worker": self.config.worker_id, "error": reason}
            waits = iter(HOLDING_RETRY_WAITS)  # the row is the only trace the task leaves beside the DLQ
            while not self.status.task_failed(held.task_id, **fields) and self.leases.holds(held):
                wait = next(waits, None)
                if wait is None:
                    break
                time.sleep(wait)
        self.leases.release([held])

    def _task_failed(self, held: Held, outcome: TaskOutcome) -> None:
        if not self.leases.holds(held):  # released meanwhile (a stop, a lost lease): not ours to judge
            self.status.attempt_given_back(held.task_id)
            self._metrics(held, "interrupted")
            return
        final = self.limits.last_attempt(held)
        self._metrics(held, "failed" if final else "retrying")
        log.warning(
            "task failed",
            extra={"task": held.task_id, "attempt": held.attempt, "final": final, "error": outcome.error},
        )
        self.status.task_failed(
            held.task_id,
            state="FAILED" if final else "RETRYING",
            attempts=held.attempt,
            started=held.attempt,  # the row is replaced: keep the count of attempts started
            worker=self.config.worker_id,
            duration_s=time.monotonic() - (held.started or time.monotonic()),
            error=outcome.error,
            traceback=outcome.traceback or None,
        )
        self.tally.add("failed")
        # After the last attempt no back-off: the next delivery only dead-letters it.
        self.leases.release([held], delay=0 if final else min(self.config.retry_delay * held.attempt, 43200))

    def _metrics(self, held: Held, outcome: str) -> None:
        """The attempt's metrics as a log line (:mod:`.metrics`): no request of its own."""
        duration = time.monotonic() - (held.started or time.monotonic())
        attempt_ended(self.config.fleet_name, held.task_id, outcome, duration_s=duration, attempts=held.attempt)
