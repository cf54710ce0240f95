"""The worker loop: receive in batches, run tasks on threads, keep them hidden, acknowledge in batches.

Guarantees:
- a message is deleted only after its outputs are written (and, with a downstream queue, forwarded);
- a redelivered task already done (its completion marker exists) is acknowledged without running again,
  and outputs are written with conditional puts, so a task never duplicates its output;
- a message held longer than the visibility timeout is extended (heartbeat), so no other worker gets it;
- a failed task is released after a back-off, and SQS moves it to the DLQ after ``max_receive_count``;
- on SIGTERM running tasks may finish for a grace period; on a spot interruption notice every unfinished
  message is made visible again at once; then the worker exits 0.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .config import WorkerConfig
from .metadata import InstanceMetadata
from .status import StatusRecorder
from .task import Task, TaskFunction, parse_body, put_once, task_id_of

log = logging.getLogger("pipeline.worker")

SQS_BATCH = 10
COMPLETION_MARKER = "_SUCCESS"
JSON = "application/json"
ACK_DELAY_SECONDS = 1.0
IDLE_UNPROTECT_SECONDS = 30.0


@dataclass(eq=False)  # identity, not field equality: membership tests compare the very message held
class Held:
    """A received message this worker is responsible for until it is deleted or released."""

    message: dict[str, Any]
    receipt: str
    visible_until: float
    attempt: int
    task_id: str
    started: float | None = None
    future: Future | None = None
    outcome: dict[str, Any] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        task_function: TaskFunction,
        *,
        sqs: Any,
        s3: Any,
        table: Any | None = None,
        autoscaling: Any | None = None,
        metadata: InstanceMetadata | None = None,
    ) -> None:
        self.config = config
        self.task_function = task_function
        self.sqs, self.s3, self.autoscaling, self.metadata = sqs, s3, autoscaling, metadata
        self.status = StatusRecorder(
            table, config.fleet_name, flush_seconds=config.status_flush_seconds, ttl_days=config.status_ttl_days
        )
        self.visibility_timeout = config.visibility_timeout
        self.max_receive_count = config.max_receive_count
        self._held: dict[str, Held] = {}  # by message id
        self._to_ack: list[Held] = []
        self._oldest_ack: float | None = None
        self._progress: dict[str, tuple[float, str]] = {}
        self._lock = threading.RLock()
        self._slot_freed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="task")
        self._protected = False
        self._protection_enabled = False
        self._busy_since_idle = 0.0
        self._instance_id: str | None = None
        self._group: str | None = None
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
        metadata_ok = self._metadata_available()
        self._protection_enabled = (
            metadata_ok and self.autoscaling is not None and self.config.scale_in_protection != "off"
        )
        self._start_background("heartbeat", self._heartbeat_loop)
        if metadata_ok and self.config.spot_watch != "off":
            self._start_background("spot-watch", self._spot_watch_loop)
        log.info("worker started", extra={"worker": self.config.worker_id, "queue": self.config.queue_url})
        try:
            while not self._stopping.is_set():
                wanted = self._wait_for_capacity()
                if wanted:
                    self._receive(wanted)
        finally:
            self._shutdown()
        return 0

    def _start_background(self, name: str, target: Any) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    def _resolve_queue_settings(self) -> None:
        if self.visibility_timeout is not None and self.max_receive_count is not None:
            return
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.config.queue_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
        )["Attributes"]
        if self.visibility_timeout is None:
            self.visibility_timeout = int(attributes.get("VisibilityTimeout", 30))
        if self.max_receive_count is None and "RedrivePolicy" in attributes:
            self.max_receive_count = int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"])

    def _shutdown(self) -> None:
        grace_end = time.monotonic() + self.config.stop_grace_seconds
        with self._lock:
            waiting = [h for h in self._held.values() if h.started is None and h.future is not None]
        for held in waiting:  # queued but not started: give them back now
            if held.future.cancel():
                self._release([held])
        while time.monotonic() < grace_end and not self._released.is_set():
            with self._lock:
                running = [h for h in self._held.values() if h not in self._to_ack]
            if not running:
                break
            time.sleep(0.2)
        self._release_unfinished()
        self._flush_acks(force=True)
        self.status.flush()
        self._set_protection(False)
        self.status.worker_heartbeat(
            self.config.worker_id, state="STOPPED", reason=self.stop_reason, **self._count_fields()
        )
        self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra={"reason": self.stop_reason, **self.counts})

    # ---------------------------------------------------------------- receiving

    def _wait_for_capacity(self) -> int:
        """How many messages to ask for: waits until a whole batch fits, so receives stay full (cheap)."""
        limit = self.config.concurrency + self.config.prefetch
        batch = min(SQS_BATCH, limit)
        with self._lock:
            while not self._stopping.is_set():
                # Finished tasks waiting for their batched delete take no capacity.
                room = limit - (len(self._held) - len(self._to_ack))
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
            held = Held(
                message=message,
                receipt=message["ReceiptHandle"],
                visible_until=now + self.visibility_timeout,
                attempt=int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                task_id=task_id_of(body, message["MessageId"]),
            )
            with self._lock:
                self._held[message["MessageId"]] = held
                self.counts["received"] += 1
            if self._stopping.is_set():  # a long poll that returned after a stop: hand it straight back
                self._release([held])
                continue
            held.future = self._pool.submit(self._process, held, body)

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

    def _process(self, held: Held, body: Any) -> None:
        held.started = time.monotonic()
        self._set_protection(True)
        task = Task(
            id=held.task_id,
            body=body,
            message_id=held.message["MessageId"],
            attempt=held.attempt,
            bucket=self.config.bucket,
            prefix=self.config.prefix,
            _s3=self.s3,
            _on_progress=self._record_progress,
        )
        try:
            # Only a redelivery can find its work done (a worker died after finishing, before deleting):
            # first deliveries skip the check, so message-only tasks cost no S3 request at all.
            marker = self._completion_marker(task.id) if held.attempt > 1 else None
            if marker is not None:
                # Done before (the worker died before deleting): acknowledge, and forward it again, since the
                # first forward may never have happened; the next stage is idempotent in the same way.
                held.outcome = {"duplicate": True, "outputs": marker.get("outputs"), "result": marker.get("result")}
                with self._lock:
                    self.counts["duplicates"] += 1
            else:
                result = self.task_function(task)
                held.outcome = {"result": result, "outputs": task.outputs}
                if task.outputs:  # a marker only where there is output to protect from a redo
                    marker_body = {
                        "task": task.id,
                        "outputs": task.outputs,
                        "result": result,
                        "worker": self.config.worker_id,
                    }
                    body_text = json.dumps(marker_body, default=str)
                    put_once(self.s3, self.config.bucket, self._marker_key(task.id), body_text, content_type=JSON)
        except Exception as error:  # the task's own failure: release for a retry, record why
            self._task_failed(held, error)
            return
        finally:
            with self._lock:
                self._progress.pop(held.task_id, None)
        self._queue_ack(held)

    def _task_failed(self, held: Held, error: Exception) -> None:
        final = self.max_receive_count is not None and held.attempt >= self.max_receive_count
        log.warning(
            "task failed",
            extra={"task": held.task_id, "attempt": held.attempt, "final": final, "error": repr(error)},
        )
        self.status.task_failed(
            held.task_id,
            state="FAILED" if final else "RETRYING",
            attempts=held.attempt,
            worker=self.config.worker_id,
            duration_s=time.monotonic() - (held.started or time.monotonic()),
            error=f"{type(error).__name__}: {error}"[:1000],
            traceback="".join(traceback.format_exception(error))[-3000:],
        )
        with self._lock:
            self.counts["failed"] += 1
        self._release([held], delay=min(self.config.retry_delay * held.attempt, 43200))

    def _record_progress(self, task_id: str, fraction: float, note: str) -> None:
        with self._lock:
            self._progress[task_id] = (fraction, note)

    # ---------------------------------------------------------------- acknowledging

    def _queue_ack(self, held: Held) -> None:
        with self._lock:
            if held.message["MessageId"] not in self._held:  # released meanwhile (spot notice): not ours
                return
            self._to_ack.append(held)
            if self._oldest_ack is None:
                self._oldest_ack = time.monotonic()
            # On its last delivery a finished task is deleted at once: one more crash would dead-letter it.
            last_chance = self.max_receive_count is not None and held.attempt >= self.max_receive_count
            full = len(self._to_ack) >= SQS_BATCH or last_chance
        if full:
            self._flush_acks(force=True)

    def _flush_acks(self, *, force: bool = False) -> None:
        """Forward finished tasks downstream, then delete them: 10 per request each."""
        with self._lock:
            if not self._to_ack:
                return
            if not force and time.monotonic() - (self._oldest_ack or 0) < ACK_DELAY_SECONDS:
                return
            batch, self._to_ack = self._to_ack[:SQS_BATCH], self._to_ack[SQS_BATCH:]
            self._oldest_ack = time.monotonic() if self._to_ack else None
        forwarded = self._forward_downstream(batch)
        done = [h for h in batch if h.message["MessageId"] in forwarded]
        if done:
            response = self.sqs.delete_message_batch(
                QueueUrl=self.config.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": h.receipt} for i, h in enumerate(done)],
            )
            for failure in response.get("Failed", []):
                log.warning("delete failed", extra={"task": done[int(failure["Id"])].task_id, **failure})
        for held in done:
            if held.outcome.get("duplicate"):
                continue
            self.status.task_finished(
                held.task_id,
                state="SUCCEEDED",
                attempts=held.attempt,
                worker=self.config.worker_id,
                duration_s=time.monotonic() - (held.started or time.monotonic()),
                outputs=held.outcome.get("outputs") or None,
            )
        with self._lock:
            for held in batch:
                self._held.pop(held.message["MessageId"], None)
            self.counts["succeeded"] += sum(1 for h in done if not h.outcome.get("duplicate"))
            self._slot_freed.notify_all()
        if len(batch) == SQS_BATCH:
            self._flush_acks(force=force)

    def _forward_downstream(self, batch: list[Held]) -> set[str]:
        """Message ids that may be deleted: all of them without a downstream queue, else those sent on."""
        ids = {h.message["MessageId"] for h in batch}
        if not self.config.downstream_queue_url:
            return ids
        entries = []
        for i, held in enumerate(batch):
            body = {"key": held.task_id, "source": self.config.fleet_name}
            body.update({k: v for k, v in held.outcome.items() if k in ("outputs", "result") and v})
            entries.append({"Id": str(i), "MessageBody": json.dumps(body, default=str)})
        response = self.sqs.send_message_batch(QueueUrl=self.config.downstream_queue_url, Entries=entries)
        failed = {batch[int(f["Id"])].message["MessageId"] for f in response.get("Failed", [])}
        for message_id in failed:  # not forwarded: leave it undeleted, SQS will deliver it again
            log.warning("forward failed", extra={"message": message_id})
        return ids - failed

    # ---------------------------------------------------------------- releasing

    def _release(self, helds: list[Held], *, delay: int = 0) -> None:
        """Make messages visible again after ``delay`` seconds and forget them."""
        with self._lock:
            helds = [h for h in helds if self._held.pop(h.message["MessageId"], None) is not None]
            self._to_ack = [h for h in self._to_ack if h not in helds]
            self.counts["released"] += len(helds) if delay == 0 else 0
            self._slot_freed.notify_all()
        for start in range(0, len(helds), SQS_BATCH):
            chunk = helds[start : start + SQS_BATCH]
            try:
                self.sqs.change_message_visibility_batch(
                    QueueUrl=self.config.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": h.receipt, "VisibilityTimeout": delay}
                        for i, h in enumerate(chunk)
                    ],
                )
            except Exception:
                log.exception("release failed; the messages reappear when their visibility times out")

    def _release_unfinished(self) -> None:
        with self._lock:
            unfinished = [h for h in self._held.values() if h not in self._to_ack]
        if unfinished:
            self._release(unfinished)
        self._released.set()

    # ---------------------------------------------------------------- background duties

    def _heartbeat_loop(self) -> None:
        next_worker_row = 0.0
        while True:
            try:
                self._extend_visibility()
                self._flush_acks()
                if self.status.due():
                    self.status.flush()
                now = time.monotonic()
                if now >= next_worker_row and not self._stopping.is_set():
                    next_worker_row = now + self.config.worker_heartbeat_seconds
                    self._write_worker_row()
                self._update_protection()
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
                if h.started is not None and h not in self._to_ack
            }
        self.status.worker_heartbeat(
            self.config.worker_id, state="RUNNING", working_on=working_on or None, **self._count_fields()
        )

    # ---------------------------------------------------------------- spot and scale-in

    def _metadata_available(self) -> bool:
        if self.metadata is None:
            return False
        if self.config.spot_watch == "on":
            return True
        available = self.metadata.available()
        if not available:
            log.info("no instance metadata service: no spot notices, no scale-in protection")
        return available

    def _spot_watch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                notice = self.metadata.spot_interruption()
            except Exception:
                log.exception("spot notice poll failed")
                notice = None
            if notice:
                log.warning("spot interruption notice", extra={"notice": notice})
                self.request_stop("spot interruption notice", release_now=True)
                return
            self._stopping.wait(self.config.spot_poll_seconds)

    def _update_protection(self) -> None:
        with self._lock:
            busy = any(h.started is not None for h in self._held.values())
        now = time.monotonic()
        if busy:
            self._busy_since_idle = now
        elif self._protected and now - self._busy_since_idle >= IDLE_UNPROTECT_SECONDS:
            self._set_protection(False)

    def _set_protection(self, protect: bool) -> None:
        """Scale-in protection while busy, so the ASG never terminates a worker in the middle of a task."""
        if protect == self._protected or not self._protection_enabled:
            return
        with self._lock:
            if protect == self._protected:
                return
            self._protected = protect
        try:
            if self._instance_id is None:
                self._instance_id = self.metadata.instance_id()
                self._group = self.metadata.auto_scaling_group()
            if not self._instance_id or not self._group:
                return
            self.autoscaling.set_instance_protection(
                InstanceIds=[self._instance_id], AutoScalingGroupName=self._group, ProtectedFromScaleIn=protect
            )
        except Exception:
            log.exception("scale-in protection change failed", extra={"protect": protect})
