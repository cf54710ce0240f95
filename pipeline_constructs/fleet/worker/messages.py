"""A received task message as the worker holds it, and what the parts that handle messages share."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: The most entries SQS takes in one receive or batch request.
SQS_BATCH = 10
#: The most bytes of message bodies SQS takes in one message, and in one batch request (its limit before
#: 2025, still a queue's ``MaximumMessageSize`` where it was set so): a batch is cut to fit before it is sent.
SQS_PAYLOAD_LIMIT = 256 * 1024

Item = TypeVar("Item")


def sqs_batches(items: Sequence[Item]) -> Iterator[Sequence[Item]]:
    """``items`` in slices of at most :data:`SQS_BATCH`, one slice a batch request."""
    for start in range(0, len(items), SQS_BATCH):
        yield items[start : start + SQS_BATCH]


def sqs_payload_batches(entries: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Send-batch ``entries`` (each with its ``MessageBody``) in batches of at most :data:`SQS_BATCH` entries
    and :data:`SQS_PAYLOAD_LIMIT` bytes of bodies, in their order; an entry over the limit goes alone."""
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        length = len(entry["MessageBody"].encode())
        if batch and (len(batch) == SQS_BATCH or size + length > SQS_PAYLOAD_LIMIT):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += length
    if batch:
        yield batch


@dataclass(eq=False)  # identity, not field equality: membership tests compare the very message held
class Held:
    """A received message this worker is responsible for until it is deleted or released."""

    message: dict[str, Any]
    receipt: str
    delivery: int  # SQS's receive count: deliveries lost before their task started count too
    task_id: str
    attempt: int  # the attempt this delivery runs; a redelivery's is counted in the status store
    visible_until: float = 0.0  # set when held, moved on by each extension
    started: float | None = None
    future: Future[None] | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # done, waiting for (or in) its batched acknowledgement: takes no capacity

    @property
    def message_id(self) -> str:
        return self.message["MessageId"]


class Tally:
    """What the worker did, for its status row and its logs; counted from any thread."""

    def __init__(self) -> None:
        self.counts = {"succeeded": 0, "failed": 0, "duplicates": 0, "released": 0, "received": 0}
        self._lock = threading.Lock()

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self.counts[name] += count

    def fields(self) -> dict[str, int]:
        """The counts as status row fields (``tasks_succeeded``...)."""
        with self._lock:
            return {f"tasks_{name}": count for name, count in self.counts.items()}
