"""Acknowledging finished tasks in batches: forward downstream, store the SUCCEEDED rows, delete the messages.

Each task's acknowledgement is its own: a call that fails is tried again (a few times, with back-off) for the
entries it failed, and a task that still could not be forwarded or rowed is released to the queue, after a
pause, for another delivery to complete (it finds the task done: its row or its completion marker); a
failure is logged, never left held. Deliveries of one task id in a batch are acknowledged as one (one
forward, one row, every message deleted); forwards are cut to SQS's limits before they are sent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from .config import WorkerConfig
from .leases import LeaseKeeper
from .messages import SQS_PAYLOAD_LIMIT, Held, Tally, sqs_batches, sqs_payload_batches
from .status import StatusRecorder

log = logging.getLogger("pipeline.worker")

#: Finished tasks acknowledged together: one status-store write, then one delete (SQS takes 10 a batch).
#: Batches of 10, not DynamoDB's 25: it bills per item either way, and a message left undeleted longer
#: only costs the queue (each one in flight is scanned again on every receive, on SQS's emulator at least).
ACK_BATCH = 10
#: Tries of one SQS batch call in an acknowledgement (each with the SDK's own retries), then its failed
#: entries are given up: released to the queue.
CALL_TRIES = 3
BACKOFF_SECONDS = 0.25
#: What a failed delete of a message this worker no longer holds says: nothing to retry or release.
RECEIPT_GONE = ("ReceiptHandleIsInvalid", "InvalidParameterValue", "AWS.SimpleQueueService.NonExistentQueue")


def _error(error: Exception) -> dict[str, Any]:
    code = getattr(error, "response", {}).get("Error", {}).get("Code") or type(error).__name__
    return {"Code": code, "Message": str(error)[:300], "SenderFault": False}


def send_with_retries(call: Callable[..., Any], entries: list[dict[str, Any]], *, what: str) -> dict[str, Any]:
    """One SQS batch ``call`` for ``entries``, the entries that failed tried again (:data:`CALL_TRIES` tries in
    all, with back-off; a sender's fault is not retried); the failures left, by entry ``Id``."""
    pending = entries
    given_up: dict[str, Any] = {}
    last: dict[str, Any] = {}
    for attempt in range(CALL_TRIES):
        if attempt:
            time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        try:
            response = call(Entries=pending)
        except Exception as error:  # the whole call: every pending entry failed with it
            last = {entry["Id"]: _error(error) for entry in pending}
            log.warning(f"{what} failed", extra={"entries": len(pending), "try": attempt + 1, **_error(error)})
            continue
        sent_ids = {entry["Id"] for entry in pending}
        failed = {f["Id"]: f for f in response.get("Failed", []) if f["Id"] in sent_ids}
        given_up |= {i: f for i, f in failed.items() if f.get("SenderFault")}
        pending = [entry for entry in pending if entry["Id"] in failed and entry["Id"] not in given_up]
        last = {entry["Id"]: failed[entry["Id"]] for entry in pending}
        if not pending:
            break
    return given_up | last


def by_task(batch: list[Held]) -> dict[str, list[Held]]:
    """The deliveries of a batch by task id, in the order their tasks first finished."""
    tasks: dict[str, list[Held]] = {}
    for held in batch:
        tasks.setdefault(held.task_id, []).append(held)
    return tasks


def lead(helds: list[Held]) -> Held:
    """The delivery whose outcome a task's deliveries forward and row: one found done by its stored row, if
    any (its row stands), else the first."""
    return next((h for h in helds if h.outcome.get("row_stored")), helds[0])


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
            try:
                self._acknowledge(batch)
            except Exception:  # the runtime's own trouble: whatever is still held goes back, never stays held
                log.exception("acknowledgement failed: tasks released undeleted", extra={"tasks": len(batch)})
                self._give_back([h for h in batch if self.leases.holds(h)])

    def flush_all(self) -> None:
        """Acknowledge every finished task now (the worker is stopping)."""
        for _ in range(self.leases.finished_count() // ACK_BATCH + 1):
            self.flush(force=True)

    def _acknowledge(self, batch: list[Held]) -> None:
        """Forward, row and delete each task of ``batch``; each one that fails a step is released alone."""
        tasks = self._still_held(by_task(batch))  # one let go meanwhile (a lost lease) is not ours to publish
        forwarded = self._forward_downstream(tasks)
        self._give_back([h for task_id, helds in tasks.items() if task_id not in forwarded for h in helds])
        rowed = self._store_rows(self._still_held({t: tasks[t] for t in forwarded}))
        deleted = self._delete([held for helds in rowed.values() for held in helds])
        self.tally.add("succeeded", sum(1 for h in deleted if not h.outcome.get("duplicate")))

    def _still_held(self, tasks: dict[str, list[Held]]) -> dict[str, list[Held]]:
        held_now = {task_id: [h for h in helds if self.leases.holds(h)] for task_id, helds in tasks.items()}
        return {task_id: helds for task_id, helds in held_now.items() if helds}

    def _give_back(self, helds: list[Held]) -> None:
        """Release tasks not acknowledged, after the retry delay: a later delivery completes them."""
        if not helds:
            return
        log.error("tasks not acknowledged: released", extra={"tasks": sorted({h.task_id for h in helds})[:20]})
        delay = self.config.retry_delay
        self.leases.release(helds, delay=delay)
        if delay:  # a release without delay is counted by the lease keeper itself; one found done, as such
            self.tally.add("released", sum(1 for h in helds if not h.outcome.get("duplicate")))

    # ---------------------------------------------------------------- the three steps

    def _forward_downstream(self, tasks: dict[str, list[Held]]) -> set[str]:
        """Task ids that may be rowed and deleted: all of them without a downstream queue, else those sent on.

        The contract downstream: at least once, ``{"key": <task id>, "source": <fleet>, "outputs"?,
        "result"?}``, or, when those are too large, ``"outputs_count"`` and ``"outcome"`` (the ``s3://`` URI of
        the completion marker holding them); a consumer dedupes on ``key`` (a task found done before is
        forwarded again, with its stored outcome).
        """
        if not self.config.downstream_queue_url:
            return set(tasks)
        entries, sent = [], set()
        for i, (task_id, helds) in enumerate(tasks.items()):
            body = json.dumps(self._forward_body(task_id, lead(helds).outcome), default=str)
            if len(body.encode()) > SQS_PAYLOAD_LIMIT:  # only a task id that large: no call could take it
                log.error("forward too large for SQS", extra={"task": task_id, "bytes": len(body.encode())})
                continue
            entries.append({"Id": str(i), "MessageBody": body})
        ids = list(tasks)
        for chunk in sqs_payload_batches(entries):
            failed = send_with_retries(self._send, chunk, what="forward")
            for entry_id, failure in failed.items():
                log.warning("forward failed", extra={"task": ids[int(entry_id)], **failure})
            sent |= {ids[int(entry["Id"])] for entry in chunk if entry["Id"] not in failed}
        return sent

    def _send(self, Entries: list[dict[str, Any]]) -> Any:
        return self.sqs.send_message_batch(QueueUrl=self.config.downstream_queue_url, Entries=Entries)

    def _forward_body(self, task_id: str, outcome: dict[str, Any]) -> dict[str, Any]:
        body = {"key": task_id, "source": self.config.fleet_name}
        if outcome.get("outcome"):
            return body | {"outputs_count": outcome.get("outputs_count", 0), "outcome": outcome["outcome"]}
        return body | {k: v for k, v in outcome.items() if k in ("outputs", "result") and v}

    def _store_rows(self, tasks: dict[str, list[Held]]) -> dict[str, list[Held]]:
        """The tasks whose row is stored (or was found stored); the others are released."""
        rows = [  # a task found done by its SUCCEEDED row keeps that row
            (task_id, self._succeeded_row(lead(helds)))
            for task_id, helds in tasks.items()
            if not lead(helds).outcome.get("row_stored")
        ]
        unstored = self.status.store_finished(rows)
        if unstored:
            log.error("status rows not stored", extra={"tasks": sorted(unstored)[:20]})
        self._give_back([h for task_id in unstored for h in tasks.get(task_id, [])])
        return {task_id: helds for task_id, helds in tasks.items() if task_id not in unstored}

    def _succeeded_row(self, held: Held) -> dict[str, Any]:
        outcome = held.outcome
        result = outcome.get("result")
        return {
            "state": "SUCCEEDED",
            "attempts": held.attempt,
            "worker": self.config.worker_id,
            "duration_s": time.monotonic() - (held.started or time.monotonic()),
            "outputs": outcome.get("outputs") or None,
            # As JSON text: as forwarded, whatever DynamoDB would make of its numbers and empty names.
            "result": json.dumps(result, default=str) if result is not None else None,
            "outputs_count": outcome.get("outputs_count") if outcome.get("outcome") else None,
            "outcome": outcome.get("outcome"),
            "redelivered": True if outcome.get("duplicate") else None,
        }

    def _delete(self, done: list[Held]) -> list[Held]:
        """Delete the messages of acknowledged tasks and let go of them; those deleted (or gone already). One
        that cannot be deleted is released after the retry delay: its next delivery finds the task's row."""
        deleted: list[Held] = []
        for chunk in sqs_batches(done):
            entries = [{"Id": str(i), "ReceiptHandle": h.receipt} for i, h in enumerate(chunk)]
            failed = send_with_retries(self._delete_batch, entries, what="delete")
            undeleted = []
            for entry_id, failure in failed.items():
                log.warning("delete failed", extra={"task": chunk[int(entry_id)].task_id, **failure})
                # A receipt no longer valid: another delivery holds the message, and finds the task done.
                if not failure.get("SenderFault") and failure.get("Code") not in RECEIPT_GONE:
                    undeleted.append(chunk[int(entry_id)])
            deleted += [h for h in chunk if h not in undeleted]
            self.leases.forget([h for h in chunk if h not in undeleted])
            self._give_back(undeleted)
        return deleted

    def _delete_batch(self, Entries: list[dict[str, Any]]) -> Any:
        return self.sqs.delete_message_batch(QueueUrl=self.config.queue_url, Entries=Entries)
