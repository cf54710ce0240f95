"""The messages a worker holds, kept hidden from other workers until they are deleted, released or lost.

Lease keeping runs on a thread of its own (:meth:`LeaseKeeper.keep_hidden`) that makes no call but
ChangeMessageVisibilityBatch, on an SQS client of its own with short timeouts and few retries
(:func:`lease_client`): a stalled status write, delete or Auto Scaling call, or another call's retry sleeps,
never delay an extension. What it cannot keep it gives up, and says so:

- a lease is *lost* when an extension is refused for the message itself (its receipt handle no longer
  valid, the message back in the queue) or when its visibility runs out before an extension lands (the
  calls failed or stalled past the deadline, or SQS's 12 h cap from the receive was reached). Another
  worker may have it by then: a lost message is dropped from keeping at once, so its result is not
  published (``finish`` refuses it: no forward, no SUCCEEDED row, no delete), and its task is stopped
  (``on_lost``);
- a message finished but unacknowledged for :data:`FINISHED_TIMEOUTS` visibility timeouts (at least
  :data:`FINISHED_FLOOR_SECONDS`) is released: a stuck acknowledgement does not hold it for ever, and its
  redelivery finds the task done (completion marker).

No extension is sent after (or while) a message is released: a release takes it out of keeping first, then
waits for an extension of it already under way to land.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .messages import Held, Tally, sqs_batches

log = logging.getLogger("pipeline.worker")

#: SQS hides a message at most 12 hours from its receive (time spent prefetched counts).
MAX_VISIBILITY_SECONDS = 43200
#: Asked for less than the cap by this much: SQS's clock started at its receive, before ours.
CAP_MARGIN_SECONDS = 5
#: How often the lease thread looks for visibility running out.
LEASE_INTERVAL_SECONDS = 0.2
#: A finished message not acknowledged within this many visibility timeouts is released...
FINISHED_TIMEOUTS = 3
#: ... but never sooner than this after it finished (a short timeout, a slow but working acknowledgement).
FINISHED_FLOOR_SECONDS = 60.0
#: Longest a release waits for an extension of its messages already under way (the lease client's calls
#: give up well before).
EXTENSION_WAIT_SECONDS = 15.0
#: The lease client's settings: an extension fails fast and is tried again on the next beat.
LEASE_CLIENT_SETTINGS: dict[str, Any] = {
    "connect_timeout": 2,
    "read_timeout": 3,
    "retries": {"total_max_attempts": 2, "mode": "standard"},
}


def lease_client(sqs: Any) -> Any:
    """An SQS client for visibility changes alone, made like ``sqs`` (same region, endpoint and settings) but
    with :data:`LEASE_CLIENT_SETTINGS`, and its own connections; ``sqs`` itself when it is no botocore client
    (a test's stand-in)."""
    meta = getattr(sqs, "meta", None)
    config = getattr(meta, "config", None)
    if meta is None or config is None or not hasattr(config, "merge"):
        return sqs
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sqs",
        region_name=meta.region_name,
        endpoint_url=meta.endpoint_url,
        config=config.merge(Config(**LEASE_CLIENT_SETTINGS)),
    )


class LeaseKeeper:
    """Every message this worker holds, from its receipt until it is deleted, released or lost.

    A held message is queued, running, or finished and waiting for its batched deletion; until it is let
    go its visibility is extended before it runs out (:meth:`extend_due`, on the lease thread), so no other
    worker gets it (see the module docstring for what is given up). Every method may be called from any
    thread. ``lock`` guards the held messages: hold it to act on several at once; ``changed`` is notified
    whenever a message finishes or is let go.
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        tally: Tally,
        *,
        on_lost: Callable[[Held], None] | None = None,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.visibility_timeout = 0  # set by start(): the worker's setting, else the queue's
        self.finished_limit = FINISHED_FLOOR_SECONDS
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._tally = tally
        self.on_lost = on_lost  # stops the task of a message whose lease was lost
        self._held: dict[str, Held] = {}  # by message id
        self._received: dict[str, float] = {}  # message id -> when it was received (SQS's 12 h cap)
        self._finished_at: dict[str, float] = {}  # message id -> when its task finished
        self._finished: list[Held] = []  # waiting for their deletion, in the order they finished
        self._extending: set[str] = set()  # message ids in an extension under way
        self._hand_backs = 0  # releases and deletions under way
        self._stop = threading.Event()
        self._extender = _Extender(self, tally=tally)

    def start(self, visibility_timeout: int) -> None:
        """Hold messages for ``visibility_timeout`` seconds at a time from now on."""
        self.visibility_timeout = visibility_timeout
        self.finished_limit = max(FINISHED_TIMEOUTS * visibility_timeout, FINISHED_FLOOR_SECONDS)

    # ---------------------------------------------------------------- holding

    def hold(self, held: Held, *, received_at: float) -> None:
        """Take a message received at ``received_at`` (monotonic time) into keeping."""
        held.visible_until = received_at + self.visibility_timeout
        with self.lock:
            self._held[held.message_id] = held
            self._received[held.message_id] = received_at

    def holds(self, held: Held) -> bool:
        """Whether the message is still this worker's (neither released, deleted nor lost)."""
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
        """Mark a message's task finished and queue it for deletion; False if it was let go (released or
        lost) meanwhile: then its result is not this worker's to publish."""
        with self.lock:
            if held.message_id not in self._held:
                return False
            held.finished = True
            self._finished.append(held)
            self._finished_at[held.message_id] = time.monotonic()
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

    def _drop(self, held: Held) -> bool:
        """Take a message out of keeping (under ``lock``); False if it was not held."""
        if self._held.pop(held.message_id, None) is None:
            return False
        for kept in (self._received, self._finished_at):
            kept.pop(held.message_id, None)
        self._extender.capped.discard(held.message_id)
        if held.finished:
            self._finished = [h for h in self._finished if h is not held]
        return True

    # ---------------------------------------------------------------- extending (the lease thread)

    def keep_hidden(self) -> None:
        """Extend what is held, on a thread of its own, until :meth:`stop`."""
        threading.Thread(target=self._keep, name="leases", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _keep(self) -> None:
        while not self._stop.wait(LEASE_INTERVAL_SECONDS):
            try:
                self.extend_due()
            except Exception:
                log.exception("lease keeping failed")

    def extend_due(self) -> None:
        """Extend messages whose hidden time is running out (a third of the timeout left); give up those
        lost and those finished too long ago (see the module docstring)."""
        self._extender.extend_due()

    def _cap_left(self, held: Held, now: float) -> float:
        """Seconds until SQS's cap of 12 h from the message's receive (less a margin); under ``lock``."""
        return self._received.get(held.message_id, now) + MAX_VISIBILITY_SECONDS - CAP_MARGIN_SECONDS - now

    def _change_visibility(self, chunk: Sequence[tuple[Held, int]]) -> dict[str, Any]:
        """One ChangeMessageVisibilityBatch: each message hidden for its number of seconds from now."""
        return self.sqs.change_message_visibility_batch(
            QueueUrl=self.queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": h.receipt, "VisibilityTimeout": seconds}
                for i, (h, seconds) in enumerate(chunk)
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

    def release(self, helds: list[Held], *, delay: int = 0, before_sending: Callable[[], None] | None = None) -> None:
        """Make messages visible again after ``delay`` seconds (at most until SQS's 12 h cap) and forget them.
        They leave keeping first (no extension is sent for them from then on, one under way lands first), then
        ``before_sending`` runs (stopping their tasks), then the release is sent."""
        with self.handing_back():
            with self.lock:
                now = time.monotonic()
                delays = {h.message_id: max(0, min(delay, int(self._cap_left(h, now)))) for h in helds}
                helds = [h for h in helds if self._drop(h)]
                self.changed.notify_all()
                ids = {h.message_id for h in helds}
                if not self.changed.wait_for(lambda: not ids & self._extending, timeout=EXTENSION_WAIT_SECONDS):
                    log.warning("releasing while an extension is still under way", extra={"messages": len(ids)})
            if before_sending is not None:
                before_sending()
            if delay == 0:
                self._tally.add("released", len(helds))
            for chunk in sqs_batches([(h, delays[h.message_id]) for h in helds]):
                try:
                    response = self._change_visibility(chunk)
                except Exception:
                    log.exception("release failed; the messages reappear when their visibility times out")
                    continue
                for failure in response.get("Failed", []):
                    log.warning("release failed", extra={"task": chunk[int(failure["Id"])][0].task_id, **failure})

    def release_unfinished(self, *, before_sending: Callable[[], None] | None = None) -> None:
        """Release every unfinished message; ``before_sending``: see :meth:`release`."""
        unfinished = self.unfinished()
        if unfinished or before_sending is not None:
            self.release(unfinished, before_sending=before_sending)

    def forget(self, helds: list[Held]) -> None:
        """Let go of acknowledged messages: deleted, or left undeleted for SQS to deliver again."""
        with self.lock:
            for held in helds:
                self._drop(held)
            self.changed.notify_all()


class _Extender:
    """The lease thread's work for a :class:`LeaseKeeper`: extensions, and giving up what cannot be kept."""

    def __init__(self, keeper: LeaseKeeper, *, tally: Tally) -> None:
        self.keeper = keeper
        self.tally = tally
        self.capped: set[str] = set()  # message ids whose lease ends at the cap (said so once); under the lock
        self.failing = False

    def extend_due(self) -> None:
        keeper = self.keeper
        now = time.monotonic()
        margin = max(1.0, keeper.visibility_timeout / 3)
        with keeper.lock:
            held_now = list(keeper._held.values())
            overdue = [h for h in held_now if self._finished_too_long(h, now)]
            due = [h for h in held_now if h.visible_until - now <= margin and h not in overdue]
            expired = [h for h in due if now >= h.visible_until]
            extend = [(h, self._seconds_left(h, now)) for h in due if h not in expired]
            extend = [(h, seconds) for h, seconds in extend if seconds > 0]
            keeper._extending.update(h.message_id for h, _ in extend)
        for held in expired:
            capped = held.message_id in self.capped
            self.lose(held, "SQS's 12 h visibility cap reached" if capped else "its visibility ran out")
        if overdue:
            log.warning(
                "finished tasks unacknowledged too long: released, to be found done when delivered again",
                extra={"tasks": [h.task_id for h in overdue], "after_s": keeper.finished_limit},
            )
            keeper.release(overdue)
        for chunk in sqs_batches(extend):
            self._extend(chunk, now)

    def _finished_too_long(self, held: Held, now: float) -> bool:
        finished_at = self.keeper._finished_at.get(held.message_id)
        return finished_at is not None and now - finished_at > self.keeper.finished_limit

    def _seconds_left(self, held: Held, now: float) -> int:
        """The visibility to ask for: the timeout, clamped to SQS's cap of 12 h from the receive (said once in
        the log: the lease ends there). 0 once at the cap."""
        cap = self.keeper._cap_left(held, now)
        if cap < self.keeper.visibility_timeout and held.message_id not in self.capped:
            self.capped.add(held.message_id)
            log.warning(
                "lease reaches SQS's 12 h visibility cap: it ends then, and the task with it",
                extra={"task": held.task_id, "ends_in_s": round(max(cap, held.visible_until - now), 1)},
            )
        return max(int(min(self.keeper.visibility_timeout, cap)), 0)

    def _extend(self, chunk: Sequence[tuple[Held, int]], sent_at: float) -> None:
        keeper = self.keeper
        failures: dict[int, dict[str, Any]] = {}
        try:
            response = keeper._change_visibility(chunk)
            failures = {int(f["Id"]): f for f in response.get("Failed", [])}
            self._failed(None)
        except Exception as error:  # tried again on the next beat, until the visibility runs out
            self._failed(error)
            failures = {i: {"SenderFault": False} for i in range(len(chunk))}
        finally:
            with keeper.lock:
                keeper._extending.difference_update(h.message_id for h, _ in chunk)
                keeper.changed.notify_all()
        for i, (held, seconds) in enumerate(chunk):
            failure = failures.get(i)
            if failure is None:
                held.visible_until = sent_at + seconds
            elif failure.get("SenderFault"):  # refused for the message itself: not ours any more
                self.lose(held, f"extension refused: {failure.get('Code')}: {failure.get('Message', '')}")

    def _failed(self, error: Exception | None) -> None:
        """Log the first failure of a run of them, and the recovery."""
        if error is not None and not self.failing:
            log.warning("extensions failing; the leases are lost if their visibility runs out", exc_info=error)
        elif error is None and self.failing:
            log.info("extensions succeed again")
        self.failing = error is not None

    def lose(self, held: Held, reason: str) -> None:
        """Another worker may have the message now: drop it (its result is not published) and stop its task."""
        with self.keeper.lock:
            if not self.keeper._drop(held):
                return
            self.keeper.changed.notify_all()
        log.warning(
            "lease lost: the task's result will not be published; the message is delivered again",
            extra={"task": held.task_id, "message_id": held.message_id, "reason": reason, "finished": held.finished},
        )
        self.tally.add("released")
        if held.future is not None and held.started is None:
            held.future.cancel()
        if self.keeper.on_lost is not None and not held.finished:
            self.keeper.on_lost(held)
