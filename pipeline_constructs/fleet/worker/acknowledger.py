"""Acknowledging finished tasks in batches: forward downstream, store the SUCCEEDED rows, delete the messages."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .config import WorkerConfig
from .leases import LeaseKeeper
from .messages import Held, Tally, sqs_batches
from .status import StatusRecorder

log = logging.getLogger("pipeline.worker")

#: Finished tasks acknowledged together: one status-store write, then one delete (SQS takes 10 a batch).
#: Batches of 10, not DynamoDB's 25: it bills per item either way, and a message left undeleted longer
#: only costs the queue (each one in flight is scanned again on every receive, on SQS's emulator at least).
ACK_BATCH = 10


class Acknowledger:
    """Hands finished tasks back to the queue, a batch at a time: forwards them downstream, stores their
    SUCCEEDED rows, then deletes their messages.

    In that order, so that whatever is killed when, a deleted message has its row and its forward. A batch
    goes when it is full, when nothing else held could join it soon, on a task's last delivery, or once its
    oldest task waited ``ack_delay_seconds`` (the heartbeat calls :meth:`flush`).
    """

    def __init__(
        self, config: WorkerConfig, *, sqs: Any, leases: LeaseKeeper, status: StatusRecorder, tally: Tally
    ) -> None:
        self.config = config
        self.sqs = sqs
        self.leases = leases
        self.status = status
        self.tally = tally
        self._oldest: float | None = None  # when the oldest finished task began to wait; under leases.lock

    def queue(self, held: Held, *, last_chance: bool) -> None:
        """Acknowledge a finished task with the next batch; ``last_chance``: on its last delivery, where one
        more crash would dead-letter it, so at once."""
        with self.leases.lock:
            if not self.leases.finish(held):  # released meanwhile (spot notice): not ours
                return
            if self._oldest is None:
                self._oldest = time.monotonic()
            # Nothing else held to join the batch soon: acknowledge now rather than after the delay.
            idle = self.leases.all_finished()
            full = self.leases.finished_count() >= ACK_BATCH or last_chance or idle
        if full:
            self.flush(force=True)

    def flush(self, *, force: bool = False) -> None:
        """Acknowledge the next batch: now with ``force``, else once its oldest task waited long enough."""
        with self.leases.handing_back():
            with self.leases.lock:
                waiting = self.leases.finished_count()
                if not waiting:
                    return
                if not force and time.monotonic() - (self._oldest or 0) < self.config.ack_delay_seconds:
                    return
                batch = self.leases.take_finished(ACK_BATCH)
                self._oldest = time.monotonic() if waiting > len(batch) else None
            forwarded = self._forward_downstream(batch)
            done = [h for h in batch if h.message_id in forwarded]
            if not self.status.tasks_finished([(held.task_id, self._succeeded_row(held)) for held in done]):
                # Not deleted without its row: back to the queue after a pause; the redelivery finds the task
                # done (completion marker) and tries the row again.
                log.error("status rows not stored: tasks released undeleted", extra={"tasks": len(done)})
                self.leases.release(done, delay=self.config.retry_delay)
                done = []
            self._delete(done)
            self.leases.forget(batch)
            self.tally.add("succeeded", sum(1 for h in done if not h.outcome.get("duplicate")))

    def flush_all(self) -> None:
        """Acknowledge every finished task now (the worker is stopping)."""
        for _ in range(self.leases.finished_count() // ACK_BATCH + 1):
            self.flush(force=True)

    def _succeeded_row(self, held: Held) -> dict[str, Any]:
        return {
            "state": "SUCCEEDED",
            "attempts": held.attempt,
            "worker": self.config.worker_id,
            "duration_s": time.monotonic() - (held.started or time.monotonic()),
            "outputs": held.outcome.get("outputs") or None,
            "redelivered": True if held.outcome.get("duplicate") else None,
        }

    def _delete(self, done: list[Held]) -> None:
        for chunk in sqs_batches(done):
            response = self.sqs.delete_message_batch(
                QueueUrl=self.config.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": h.receipt} for i, h in enumerate(chunk)],
            )
            for failure in response.get("Failed", []):
                log.warning("delete failed", extra={"task": chunk[int(failure["Id"])].task_id, **failure})

    def _forward_downstream(self, batch: list[Held]) -> set[str]:
        """Message ids that may be deleted: all of them without a downstream queue, else those sent on.

        The contract downstream: at least once, ``{"key": <task id>, "source": <fleet>, "outputs"?,
        "result"?}``; a consumer dedupes on ``key`` (a redelivered finished task is forwarded again).
        """
        ids = {h.message_id for h in batch}
        if not self.config.downstream_queue_url:
            return ids
        failed: set[str] = set()
        for chunk in sqs_batches(batch):
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
