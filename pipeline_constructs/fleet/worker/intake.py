"""Receiving task messages: in whole batches, as room for them frees, prefetching beyond the running ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .config import WorkerConfig
from .leases import LeaseKeeper
from .messages import SQS_BATCH, Held, Tally
from .task import parse_body, task_id_of


class Intake:
    """Receives messages, holds them and hands each to ``start`` (which runs it on a thread of its own).

    At most ``concurrency + prefetch`` unfinished messages are held; a finished one waiting for its batched
    deletion takes no room.
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
        """Receive up to ``count`` messages (one long poll), hold them and start each."""
        response = self.sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=self.config.wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
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
