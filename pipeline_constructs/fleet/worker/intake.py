"""Receiving task messages: in whole batches, as room for them frees, prefetching beyond the running ones."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import WorkerConfig
from .leases import LeaseKeeper
from .messages import SQS_BATCH, Held, Tally
from .task import parse_body, task_id_of

log = logging.getLogger("pipeline.worker")

#: Longest pause between receives that keep failing (after the SDK's own retries): 1 s, 2 s, 4 s... up to this.
RECEIVE_BACKOFF_LIMIT = 20.0


class Intake:
    """Receives messages, holds them and hands each to ``start`` (which runs it on a thread of its own).

    At most ``concurrency + prefetch`` unfinished messages are held; a finished one waiting for its batched
    deletion takes no room. A receive that fails (SQS throttling or failing past the SDK's retries) is tried
    again after a pause: the worker goes on with the tasks it holds, rather than stop and hand them back.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        sqs: Any,
        leases: LeaseKeeper,
        tally: Tally,
        stopping: threading.Event,
        start: Callable[[Held, Any], None],
    ) -> None:
        self.config = config
        self.sqs = sqs
        self.leases = leases
        self.tally = tally
        self.stopping = stopping
        self.start = start
        self._failures = 0  # receives failed in a row

    def wait_for_capacity(self) -> int:
        """How many messages to ask for: waits until a whole batch fits, so receives stay full (cheap)."""
        limit = self.config.concurrency + self.config.prefetch
        batch = min(SQS_BATCH, limit)
        with self.leases.changed:
            while not self.stopping.is_set():
                room = limit - len(self.leases.unfinished())
                if room >= batch:
                    return batch
                self.leases.changed.wait(timeout=1.0)
        return 0

    def receive(self, count: int) -> None:
        """Receive up to ``count`` messages (one long poll), hold them and start each. They are hidden for the
        lease keeper's visibility timeout, the one it keeps them by (the worker's setting may differ from the
        queue's)."""
        try:
            response = self.sqs.receive_message(
                QueueUrl=self.config.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self.config.wait_seconds,
                VisibilityTimeout=self.leases.visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        except Exception as error:
            self._failures += 1
            pause = min(RECEIVE_BACKOFF_LIMIT, 2.0 ** (self._failures - 1))
            log.warning("receive failed; trying again", extra={"in_s": pause, "error": str(error)[:300]})
            self.stopping.wait(pause)
            return
        self._failures = 0
        now = time.monotonic()
        for message in response.get("Messages", []):
            body = parse_body(message.get("Body", ""))
            delivery = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            held = Held(
                message=message,
                receipt=message["ReceiptHandle"],
                delivery=delivery,
                task_id=task_id_of(body, message["MessageId"]),
                attempt=delivery,  # until a redelivery counts the attempt it starts (AttemptRunner)
            )
            self.leases.hold(held, received_at=now)
            self.tally.add("received")
            if self.stopping.is_set():  # a long poll that returned after a stop: hand it straight back
                self.leases.release([held])
                continue
            self.start(held, body)
