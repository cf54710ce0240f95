"""How long a received message stays hidden, and how many deliveries and attempts a task gets."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from .config import WorkerConfig
from .messages import Held

log = logging.getLogger("pipeline.worker")


def attempt_budget(max_receive_count: int | None) -> int | None:
    """Attempts a task gets under a redrive policy of ``max_receive_count``: one delivery is kept spare, on
    which a worker records why the task is dead-lettered when the workers of every attempt were lost. A queue
    that delivers once (``maxReceiveCount`` 1) has none to spare: its only delivery runs the task."""
    if max_receive_count is None:
        return None
    return max_receive_count - 1 if max_receive_count >= 2 else 1


@dataclass(frozen=True)
class DeliveryLimits:
    """The worker's settings, else the queue's: its visibility timeout and its redrive policy's receives."""

    visibility_timeout: int
    max_receive_count: int | None
    max_attempts: int | None

    @classmethod
    def of_queue(cls, sqs: Any, config: WorkerConfig) -> DeliveryLimits:
        """The limits ``config`` sets, the rest read from the queue (one request, only if needed)."""
        visibility_timeout, max_receive_count = config.visibility_timeout, config.max_receive_count
        if visibility_timeout is None or max_receive_count is None:
            attributes = sqs.get_queue_attributes(
                QueueUrl=config.queue_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
            )["Attributes"]
            if visibility_timeout is None:
                visibility_timeout = int(attributes.get("VisibilityTimeout", 30))
            if max_receive_count is None and "RedrivePolicy" in attributes:
                max_receive_count = int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"])
        max_attempts = config.max_attempts
        if max_attempts is None:
            max_attempts = attempt_budget(max_receive_count)
        if max_receive_count == 1:
            log.warning(
                "the queue delivers a task once (maxReceiveCount 1): a failed attempt is not retried, and a task "
                "whose worker is lost goes to the dead-letter queue without a FAILED row; allow 2 or more receives"
            )
        return cls(visibility_timeout, max_receive_count, max_attempts)

    @property
    def spare_delivery(self) -> bool:
        """Whether the queue's last delivery is kept to record a reason: only when there is one besides it."""
        return self.max_receive_count is not None and self.max_receive_count >= 2

    def past_attempts(self, held: Held) -> bool:
        """No attempt on this delivery, only the reason recorded: the attempts are used up, or it is the last
        delivery SQS makes before the dead-letter queue (kept for the record, unless it is the only one)."""
        if self.max_attempts is not None and held.attempt > self.max_attempts:
            return True
        return self.spare_delivery and held.delivery >= (self.max_receive_count or 0)

    def last_attempt(self, held: Held) -> bool:
        """After this one, no attempt: its failure is final, and its success is acknowledged at once."""
        if self.max_attempts is not None and held.attempt >= self.max_attempts:
            return True
        return self.max_receive_count is not None and held.delivery >= self.max_receive_count - 1

    def dead_letter_reason(self, held: Held, row: dict[str, Any]) -> str:
        """Why a task runs no more attempts, for its FAILED row; ``row`` is its status row so far."""
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
