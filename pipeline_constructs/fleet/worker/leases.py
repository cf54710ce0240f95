"""The messages a worker holds, kept hidden from other workers until they are deleted or released."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .messages import Held, Tally, sqs_batches

log = logging.getLogger("pipeline.worker")


class LeaseKeeper:
    """Every message this worker holds, from its receipt until it is deleted or released.

    A held message is queued, running, or finished and waiting for its batched deletion; until it is let
    go its visibility is extended before it runs out (:meth:`extend_due`), so no other worker gets it.
    Every method may be called from any thread. ``lock`` guards the held messages: hold it to act on
    several at once; ``changed`` is notified whenever a message finishes or is let go.
    """

    def __init__(self, sqs: Any, queue_url: str, tally: Tally) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.visibility_timeout = 0  # set by start(): the worker's setting, else the queue's
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._tally = tally
        self._held: dict[str, Held] = {}  # by message id
        self._finished: list[Held] = []  # waiting for their deletion, in the order they finished
        self._hand_backs = 0  # releases and deletions under way

    def start(self, visibility_timeout: int) -> None:
        """Hold messages for ``visibility_timeout`` seconds at a time from now on."""
        self.visibility_timeout = visibility_timeout

    # ---------------------------------------------------------------- holding

    def hold(self, held: Held, *, received_at: float) -> None:
        """Take a message received at ``received_at`` (monotonic time) into keeping."""
        held.visible_until = received_at + self.visibility_timeout
        with self.lock:
            self._held[held.message_id] = held

    def holds(self, held: Held) -> bool:
        """Whether the message is still this worker's (neither released nor deleted)."""
        with self.lock:
            return held.message_id in self._held

    def unstarted(self) -> list[Held]:
        """Messages handed to a thread whose task has not started yet."""
        with self.lock:
            return [h for h in self._held.values() if h.started is None and h.future is not None]

    def running(self) -> list[Held]:
        with self.lock:
            return [h for h in self._held.values() if h.started is not None and not h.finished]

    def unfinished(self) -> list[Held]:
        with self.lock:
            return [h for h in self._held.values() if not h.finished]

    def all_finished(self) -> bool:
        with self.lock:
            return all(h.finished for h in self._held.values())

    def finish(self, held: Held) -> bool:
        """Mark a message's task finished and queue it for deletion; False if it was let go meanwhile."""
        with self.lock:
            if held.message_id not in self._held:
                return False
            held.finished = True
            self._finished.append(held)
            self.changed.notify_all()
            return True

    def finished_count(self) -> int:
        with self.lock:
            return len(self._finished)

    def take_finished(self, count: int) -> list[Held]:
        """The first ``count`` finished messages, to be deleted (and then forgotten) by the caller."""
        with self.lock:
            taken, self._finished = self._finished[:count], self._finished[count:]
            return taken

    def wake(self) -> None:
        """Wake whoever waits on ``changed`` (the worker is stopping)."""
        with self.changed:
            self.changed.notify_all()

    # ---------------------------------------------------------------- extending

    def extend_due(self) -> None:
        """Extend messages whose hidden time is running out (a third of the timeout left)."""
        margin = max(1.0, self.visibility_timeout / 3)
        now = time.monotonic()
        with self.lock:
            due = [h for h in self._held.values() if h.visible_until - now <= margin]
        for chunk in sqs_batches(due):
            response = self._change_visibility(chunk, self.visibility_timeout)
            failed = {int(f["Id"]) for f in response.get("Failed", [])}
            for i, held in enumerate(chunk):
                if i not in failed:
                    held.visible_until = now + self.visibility_timeout

    def _change_visibility(self, chunk: Sequence[Held], seconds: int) -> dict[str, Any]:
        return self.sqs.change_message_visibility_batch(
            QueueUrl=self.queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": h.receipt, "VisibilityTimeout": seconds} for i, h in enumerate(chunk)
            ],
        )

    # ---------------------------------------------------------------- letting go

    @contextmanager
    def handing_back(self) -> Iterator[None]:
        """Marks a release or deletion under way: the worker does not exit before it is done (a spot notice
        releases from its own thread while the main one shuts down)."""
        with self.lock:
            self._hand_backs += 1
        try:
            yield
        finally:
            with self.lock:
                self._hand_backs -= 1
                self.changed.notify_all()

    def wait_for_hand_backs(self, timeout: float = 30.0) -> None:
        with self.lock:
            self.changed.wait_for(lambda: self._hand_backs == 0, timeout=timeout)

    def release(self, helds: list[Held], *, delay: int = 0) -> None:
        """Make messages visible again after ``delay`` seconds and forget them."""
        with self.handing_back():
            with self.lock:
                helds = [h for h in helds if self._held.pop(h.message_id, None) is not None]
                self._finished = [h for h in self._finished if h not in helds]
                self.changed.notify_all()
            if delay == 0:
                self._tally.add("released", len(helds))
            for chunk in sqs_batches(helds):
                try:
                    response = self._change_visibility(chunk, delay)
                except Exception:
                    log.exception("release failed; the messages reappear when their visibility times out")
                    continue
                for failure in response.get("Failed", []):
                    log.warning("release failed", extra={"task": chunk[int(failure["Id"])].task_id, **failure})

    def release_unfinished(self) -> None:
        unfinished = self.unfinished()
        if unfinished:
            self.release(unfinished)

    def forget(self, helds: list[Held]) -> None:
        """Let go of acknowledged messages: deleted, or left undeleted for SQS to deliver again."""
        with self.lock:
            for held in helds:
                self._held.pop(held.message_id, None)
            self.changed.notify_all()
