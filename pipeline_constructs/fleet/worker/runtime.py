"""The worker loop: receive in batches, run tasks in child processes, keep them hidden, acknowledge in batches.

Guarantees (each has a test that attacks it, listed in the README):
- a message is deleted only after its outputs are written, its SUCCEEDED row is stored and (with a
  downstream queue) it was forwarded, so a ``kill -9`` at any point loses neither the task nor its row;
- a redelivered task already done (its completion marker exists) is acknowledged without running again,
  and outputs are written with conditional puts, so a task never duplicates its output;
- a message held longer than the visibility timeout is extended (heartbeat), so no other worker gets it;
- a task past ``task_timeout`` is stopped (its process killed) and counted as a failed attempt; a failed
  attempt is released after a back-off; after ``max_attempts`` the task is dead-lettered with a FAILED
  row giving the reason: its own error, ``timed out after N s``, or ``worker lost during N attempts``
  (written on a spare delivery the queue's redrive policy allows beyond the attempts, handled at once on a
  thread of its own, never queued behind running tasks where a lost worker would take it along);
- on SIGTERM running tasks may finish for a grace period; on a spot interruption notice or a termination
  lifecycle action every unfinished message is made visible again at once, the lifecycle action is
  completed, and the worker exits 0.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .config import WorkerConfig
from .instance import LIFECYCLE_TERMINATION, InstanceDuties
from .isolation import TaskCall, TaskOutcome, TaskProcesses
from .metadata import InstanceMetadata
from .status import StatusRecorder
from .task import parse_body, put_once, task_id_of

log = logging.getLogger("pipeline.worker")

SQS_BATCH = 10
#: Finished tasks acknowledged together: one status-store write, then one delete (SQS takes 10 a batch).
#: Batches of 10, not DynamoDB's 25: it bills per item either way, and a message left undeleted longer
#: only costs the queue (each one in flight is scanned again on every receive, on SQS's emulator at least).
ACK_BATCH = 10
COMPLETION_MARKER = "_SUCCESS"
JSON = "application/json"


@dataclass(eq=False)  # identity, not field equality: membership tests compare the very message held
class Held:
    """A received message this worker is responsible for until it is deleted or released."""

    message: dict[str, Any]
    receipt: str
    visible_until: float
    delivery: int  # SQS's receive count: deliveries lost before their task started count too
    task_id: str
    attempt: int  # the attempt this delivery runs; a redelivery's is counted in the status store
    started: float | None = None
    future: Future | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # done, waiting for (or in) its batched acknowledgement: takes no capacity

    @property
    def message_id(self) -> str:
        return self.message["MessageId"]


def attempt_budget(max_receive_count: int | None) -> int | None:
    """Attempts a task gets under a redrive policy of ``max_receive_count``: one delivery is kept spare, on
    which a worker records why the task is dead-lettered when the workers of every attempt were lost."""
    if max_receive_count is None:
        return None
    return max_receive_count - 1 if max_receive_count >= 2 else 1


def _handing_back(method: Callable[..., None]) -> Callable[..., None]:
    """Marks a release or acknowledgement under way while ``method`` runs: the worker does not exit before
    it is done (a spot notice releases from its own thread while the main one shuts down)."""

    @functools.wraps(method)
    def counted(worker: Worker, *args: Any, **kwargs: Any) -> None:
        with worker._lock:
            worker._hand_backs += 1
        try:
            method(worker, *args, **kwargs)
        finally:
            with worker._lock:
                worker._hand_backs -= 1
                worker._slot_freed.notify_all()

    return counted


class Worker:
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
        self.visibility_timeout = config.visibility_timeout
        self.max_receive_count = config.max_receive_count
        self.max_attempts = config.max_attempts
        self._held: dict[str, Held] = {}  # by message id
        self._to_ack: list[Held] = []
        self._hand_backs = 0  # releases and acknowledgements under way
        self._oldest_ack: float | None = None
        self._progress: dict[str, tuple[float, str]] = {}
        self._lock = threading.RLock()
        self._slot_freed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="task")
        # Spare deliveries only record a reason and release: a few requests, never behind a task slot.
        self._bookkeeping = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spare")
        self.stop_reason = ""
        self.counts = {"succeeded": 0, "failed": 0, "duplicates": 0, "released": 0, "received": 0}

    # ---------------------------------------------------------------- lifecycle

    def request_stop(self, reason: str, *, release_now: bool) -> None:
        """Stop receiving; with ``release_now`` make every unfinished message visible again immediately."""
        if not self._stopping.is_set():
            self.stop_reason = reason
            log.info("stopping", extra={"reason": reason, "release_now": release_now})
        self._stopping.set()
        if release_now:
            self._release_unfinished()
        with self._lock:
            self._slot_freed.notify_all()

    def run(self) -> int:
        self._resolve_queue_settings()
        self.tasks.start()
        self.instance.start(lambda reason: self.request_stop(reason, release_now=True), self._stopping)
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        log.info(
            "worker started",
            extra={"worker": self.config.worker_id, "queue": self.config.queue_url, "max_attempts": self.max_attempts},
        )
        try:
            while not self._stopping.is_set():
                wanted = self._wait_for_capacity()
                if wanted:
                    self._receive(wanted)
        finally:
            self._shutdown()
        return 0

    def _resolve_queue_settings(self) -> None:
        if self.visibility_timeout is None or self.max_receive_count is None:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=self.config.queue_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
            )["Attributes"]
            if self.visibility_timeout is None:
                self.visibility_timeout = int(attributes.get("VisibilityTimeout", 30))
            if self.max_receive_count is None and "RedrivePolicy" in attributes:
                self.max_receive_count = int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"])
        if self.max_attempts is None:
            self.max_attempts = attempt_budget(self.max_receive_count)

    def _shutdown(self) -> None:
        grace_end = time.monotonic() + self.config.stop_grace_seconds
        with self._lock:
            waiting = [h for h in self._held.values() if h.started is None and h.future is not None]
        for held in waiting:  # queued but not started: give them back now
            if held.future.cancel():
                self._release([held])
        while time.monotonic() < grace_end:
            with self._lock:
                running = [h for h in self._held.values() if not h.finished]
            if not running:
                break
            time.sleep(0.2)
        self._release_unfinished()
        try:
            for _ in range(len(self._to_ack) // ACK_BATCH + 1):
                self._flush_acks(force=True)
        except Exception:  # whatever stays undeleted is delivered again and found done (completion marker)
            log.exception("final acknowledgements failed")
        self._wait_for_hand_backs()  # releases and deletes other threads began (a spot notice's release)
        self.tasks.close()
        self.instance.set_protection(False)
        self.status.worker_heartbeat(
            self.config.worker_id, state="STOPPED", reason=self.stop_reason, **self._count_fields()
        )
        if self.stop_reason == LIFECYCLE_TERMINATION:
            self.instance.complete_lifecycle_action()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._bookkeeping.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra={"reason": self.stop_reason, **self.counts})

    # ---------------------------------------------------------------- receiving

    def _wait_for_capacity(self) -> int:
        """How many messages to ask for: waits until a whole batch fits, so receives stay full (cheap)."""
        limit = self.config.concurrency + self.config.prefetch
        batch = min(SQS_BATCH, limit)
        with self._lock:
            while not self._stopping.is_set():
                # Finished tasks waiting for (or in) their batched delete take no capacity.
                room = limit - sum(1 for h in self._held.values() if not h.finished)
                if room >= batch:
                    return batch
                self._slot_freed.wait(timeout=1.0)
        return 0

    def _receive(self, count: int) -> None:
        response = self.sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=self.config.wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = response.get("Messages", [])
        now = time.monotonic()
        for message in messages:
            body = parse_body(message.get("Body", ""))
            delivery = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            held = Held(
                message=message,
                receipt=message["ReceiptHandle"],
                visible_until=now + self.visibility_timeout,
                delivery=delivery,
                task_id=task_id_of(body, message["MessageId"]),
                attempt=delivery,  # until a redelivery counts the attempt it starts (_process)
            )
            with self._lock:
                self._held[held.message_id] = held
                self.counts["received"] += 1
            if self._stopping.is_set():  # a long poll that returned after a stop: hand it straight back
                self._release([held])
                continue
            spare = self._past_attempts(held)  # by deliveries: most likely only a reason to record
            held.future = (self._bookkeeping if spare else self._pool).submit(self._process, held, body, spare)

    # ---------------------------------------------------------------- processing

    def _marker_key(self, task_id: str) -> str:
        return f"{self.config.prefix}output/{task_id}/{COMPLETION_MARKER}"

    def _completion_marker(self, task_id: str) -> dict[str, Any] | None:
        """The marker a finished attempt left (its outputs and result), or None."""
        try:
            body = self.s3.get_object(Bucket=self.config.bucket, Key=self._marker_key(task_id))["Body"].read()
        except Exception as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return json.loads(body)

    def _process(self, held: Held, body: Any, on_spare_thread: bool = False, checked: bool = False) -> None:
        """Run one delivery; ``checked``: its marker was looked for and its attempt counted already."""
        held.started = time.monotonic()
        self.instance.set_protection(True)
        try:
            # Only a redelivery can find its work done (a worker died after finishing, before deleting):
            # first deliveries skip the check, so message-only tasks cost no S3 request at all.
            marker = self._completion_marker(held.task_id) if held.delivery > 1 and not checked else None
            if marker is not None:
                self._done_before(held, marker)
            else:
                if held.delivery > 1 and not checked:
                    held.attempt = self._redelivered_attempt(held)
                if self._past_attempts(held):
                    self._past_last_attempt(held)
                    return
                if on_spare_thread:  # attempts left after all (deliveries were lost unstarted): a task slot
                    held.future = self._pool.submit(self._process, held, body, checked=True)
                    return
                call = TaskCall(held.task_id, body, held.message_id, held.attempt)
                outcome = self.tasks.run(call, self._record_progress)
                if not outcome.ok:
                    self._task_failed(held, outcome)
                    return
                held.outcome = {"result": outcome.result, "outputs": outcome.outputs}
                if outcome.outputs:  # a marker only where there is output to protect from a redo
                    marker_body = {
                        "task": held.task_id,
                        "outputs": outcome.outputs,
                        "result": outcome.result,
                        "worker": self.config.worker_id,
                    }
                    body_text = json.dumps(marker_body, default=str)
                    put_once(self.s3, self.config.bucket, self._marker_key(held.task_id), body_text, content_type=JSON)
        except Exception as error:  # the runtime's own trouble (S3 unreachable...): a failed attempt too
            log.exception("task attempt failed in the runtime", extra={"task": held.task_id})
            self._task_failed(held, TaskOutcome("error", error=f"{type(error).__name__}: {error}"[:1000]))
            return
        finally:
            with self._lock:
                self._progress.pop(held.task_id, None)
        self._queue_ack(held)

    def _past_attempts(self, held: Held) -> bool:
        """No attempt on this delivery, only the reason recorded: the attempts are used up, or it is the last
        delivery SQS makes before the dead-letter queue (kept for the record)."""
        if self.max_attempts is not None and held.attempt > self.max_attempts:
            return True
        return self.max_receive_count is not None and held.delivery >= self.max_receive_count

    def _last_attempt(self, held: Held) -> bool:
        """After this one, no attempt: its failure is final, and its success is acknowledged at once."""
        if self.max_attempts is not None and held.attempt >= self.max_attempts:
            return True
        return self.max_receive_count is not None and held.delivery >= self.max_receive_count - 1

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
        with self._lock:
            self.counts["duplicates"] += 1

    def _past_last_attempt(self, held: Held) -> None:
        """A spare delivery: every attempt's worker was lost (or the last failure was recorded already).
        Record why, then release it; SQS moves it to the DLQ once the spare deliveries are used up."""
        marker = self._completion_marker(held.task_id)
        row = self.status.read(held.task_id)
        if marker is not None or (row or {}).get("state") == "SUCCEEDED":
            self._done_before(held, marker or {"outputs": (row or {}).get("outputs")})
            self._queue_ack(held)
            return
        if (row or {}).get("state") != "FAILED":
            reason = self._dead_letter_reason(held, row or {})
            log.warning("task dead-lettered", extra={"task": held.task_id, "reason": reason})
            self.status.task_failed(
                held.task_id, state="FAILED", attempts=held.attempt - 1, worker=self.config.worker_id, error=reason
            )
        self._release([held])

    def _dead_letter_reason(self, held: Held, row: dict[str, Any]) -> str:
        attempts = held.attempt - 1  # before this delivery, which runs none
        if attempts < (self.max_attempts or 0):  # out of deliveries, not of attempts
            unstarted = held.delivery - 1 - attempts
            reason = (
                f"dead-lettered after {attempts} attempt{'s' if attempts != 1 else ''} of {self.max_attempts}: "
                f"{unstarted} deliveries were lost before their task started (workers killed while holding them)"
            )
        elif row.get("error"):  # earlier attempts failed on their own; the last one's worker was lost
            reason = f"worker lost during the last of {attempts} attempts"
        else:
            reason = f"worker lost during {attempts} attempt{'s' if attempts != 1 else ''}"
        if row.get("error"):
            reason = f"{reason}; before: {row['error']}"
        return reason[:1000]

    def _task_failed(self, held: Held, outcome: TaskOutcome) -> None:
        with self._lock:
            if held.message_id not in self._held:  # released meanwhile (a stop): not ours to judge
                return
        final = self._last_attempt(held)
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
        with self._lock:
            self.counts["failed"] += 1
        # After the last attempt no back-off: the next delivery only dead-letters it.
        self._release([held], delay=0 if final else min(self.config.retry_delay * held.attempt, 43200))

    def _record_progress(self, task_id: str, fraction: float, note: str) -> None:
        with self._lock:
            self._progress[task_id] = (fraction, note)

    # ---------------------------------------------------------------- acknowledging

    def _queue_ack(self, held: Held) -> None:
        with self._lock:
            if held.message_id not in self._held:  # released meanwhile (spot notice): not ours
                return
            held.finished = True
            self._to_ack.append(held)
            self._slot_freed.notify_all()
            if self._oldest_ack is None:
                self._oldest_ack = time.monotonic()
            # On its last delivery a finished task is acknowledged at once: one more crash would dead-letter it.
            last_chance = self._last_attempt(held)
            # Nothing else held to join the batch soon: acknowledge now rather than after the delay.
            idle = all(h.finished for h in self._held.values())
            full = len(self._to_ack) >= ACK_BATCH or last_chance or idle
        if full:
            self._flush_acks(force=True)

    @_handing_back
    def _flush_acks(self, *, force: bool = False) -> None:
        """Forward finished tasks downstream, store their SUCCEEDED rows, then delete them.

        In that order, so that whatever is killed when, a deleted message has its row and its forward.
        """
        with self._lock:
            if not self._to_ack:
                return
            if not force and time.monotonic() - (self._oldest_ack or 0) < self.config.ack_delay_seconds:
                return
            batch, self._to_ack = self._to_ack[:ACK_BATCH], self._to_ack[ACK_BATCH:]
            self._oldest_ack = time.monotonic() if self._to_ack else None
        forwarded = self._forward_downstream(batch)
        done = [h for h in batch if h.message_id in forwarded]
        rows = [
            (
                held.task_id,
                {
                    "state": "SUCCEEDED",
                    "attempts": held.attempt,
                    "worker": self.config.worker_id,
                    "duration_s": time.monotonic() - (held.started or time.monotonic()),
                    "outputs": held.outcome.get("outputs") or None,
                    "redelivered": True if held.outcome.get("duplicate") else None,
                },
            )
            for held in done
        ]
        if not self.status.tasks_finished(rows):
            # Not deleted without its row: back to the queue after a pause; the redelivery finds the task
            # done (completion marker) and tries the row again.
            log.error("status rows not stored: tasks released undeleted", extra={"tasks": len(done)})
            self._release(done, delay=self.config.retry_delay)
            done = []
        for start in range(0, len(done), SQS_BATCH):
            chunk = done[start : start + SQS_BATCH]
            response = self.sqs.delete_message_batch(
                QueueUrl=self.config.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": h.receipt} for i, h in enumerate(chunk)],
            )
            for failure in response.get("Failed", []):
                log.warning("delete failed", extra={"task": chunk[int(failure["Id"])].task_id, **failure})
        with self._lock:
            for held in batch:
                self._held.pop(held.message_id, None)
            self.counts["succeeded"] += sum(1 for h in done if not h.outcome.get("duplicate"))
            self._slot_freed.notify_all()

    def _forward_downstream(self, batch: list[Held]) -> set[str]:
        """Message ids that may be deleted: all of them without a downstream queue, else those sent on.

        The contract downstream: at least once, ``{"key": <task id>, "source": <fleet>, "outputs"?,
        "result"?}``; a consumer dedupes on ``key`` (a redelivered finished task is forwarded again).
        """
        ids = {h.message_id for h in batch}
        if not self.config.downstream_queue_url:
            return ids
        failed: set[str] = set()
        for start in range(0, len(batch), SQS_BATCH):
            chunk = batch[start : start + SQS_BATCH]
            entries = []
            for i, held in enumerate(chunk):
                body = {"key": held.task_id, "source": self.config.fleet_name}
                body.update({k: v for k, v in held.outcome.items() if k in ("outputs", "result") and v})
                entries.append({"Id": str(i), "MessageBody": json.dumps(body, default=str)})
            response = self.sqs.send_message_batch(QueueUrl=self.config.downstream_queue_url, Entries=entries)
            failed |= {chunk[int(f["Id"])].message_id for f in response.get("Failed", [])}
        for message_id in failed:  # not forwarded: leave it undeleted, SQS will deliver it again
            log.warning("forward failed", extra={"message": message_id})
        return ids - failed

    # ---------------------------------------------------------------- releasing

    def _wait_for_hand_backs(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._slot_freed.wait_for(lambda: self._hand_backs == 0, timeout=timeout)

    @_handing_back
    def _release(self, helds: list[Held], *, delay: int = 0) -> None:
        """Make messages visible again after ``delay`` seconds and forget them."""
        with self._lock:
            helds = [h for h in helds if self._held.pop(h.message_id, None) is not None]
            self._to_ack = [h for h in self._to_ack if h not in helds]
            self.counts["released"] += len(helds) if delay == 0 else 0
            self._slot_freed.notify_all()
        for start in range(0, len(helds), SQS_BATCH):
            chunk = helds[start : start + SQS_BATCH]
            try:
                response = self.sqs.change_message_visibility_batch(
                    QueueUrl=self.config.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": h.receipt, "VisibilityTimeout": delay}
                        for i, h in enumerate(chunk)
                    ],
                )
            except Exception:
                log.exception("release failed; the messages reappear when their visibility times out")
                continue
            for failure in response.get("Failed", []):
                log.warning("release failed", extra={"task": chunk[int(failure["Id"])].task_id, **failure})

    def _release_unfinished(self) -> None:
        with self._lock:
            unfinished = [h for h in self._held.values() if not h.finished]
        if unfinished:
            self._release(unfinished)

    # ---------------------------------------------------------------- background duties

    def _heartbeat_loop(self) -> None:
        next_worker_row = 0.0
        while True:
            try:
                self._extend_visibility()
                self._flush_acks()
                now = time.monotonic()
                if now >= next_worker_row and not self._stopping.is_set():
                    next_worker_row = now + self.config.worker_heartbeat_seconds
                    self._write_worker_row()
                with self._lock:
                    busy = any(h.started is not None and not h.finished for h in self._held.values())
                self.instance.update_protection(busy)
            except Exception:
                log.exception("heartbeat failed")
            time.sleep(0.5)

    def _extend_visibility(self) -> None:
        """Extend messages whose hidden time is running out (a third of the timeout left)."""
        margin = max(1.0, self.visibility_timeout / 3)
        now = time.monotonic()
        with self._lock:
            due = [h for h in self._held.values() if h.visible_until - now <= margin]
        for start in range(0, len(due), SQS_BATCH):
            chunk = due[start : start + SQS_BATCH]
            response = self.sqs.change_message_visibility_batch(
                QueueUrl=self.config.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": h.receipt, "VisibilityTimeout": self.visibility_timeout}
                    for i, h in enumerate(chunk)
                ],
            )
            failed = {int(f["Id"]) for f in response.get("Failed", [])}
            for i, held in enumerate(chunk):
                if i not in failed:
                    held.visible_until = now + self.visibility_timeout

    def _count_fields(self) -> dict[str, Any]:
        with self._lock:
            return {f"tasks_{name}": count for name, count in self.counts.items()}

    def _write_worker_row(self) -> None:
        with self._lock:
            working_on = {
                h.task_id: {"progress": self._progress.get(h.task_id, (0.0, ""))[0]}
                for h in self._held.values()
                if h.started is not None and not h.finished
            }
        self.status.worker_heartbeat(
            self.config.worker_id, state="RUNNING", working_on=working_on or None, **self._count_fields()
        )
