"""Status records in the DynamoDB status store, written sparingly.

A DynamoDB write costs more than three SQS requests, so final task states are buffered and written with
BatchWriteItem (25 items a request) at most every ``flush_seconds``; a failure is written at once, because
that is what an operator looks for. Layout (shared with the CLI): partition ``fleet#<name>``, sort key
``task#<id>`` for a task's last state and ``worker#<id>`` for a worker's heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal
from typing import Any

log = logging.getLogger("pipeline.worker")

BATCH_WRITE_LIMIT = 25

#: The status store's keys, for tools that create a table outside CloudFormation (tests, benchmarks);
#: the StatusStore construct declares the same ``pk``/``sk`` string keys.
TABLE_KEYS = {
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
    ],
}


def _dynamo_value(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(round(value, 3)))
    if isinstance(value, dict):
        return {k: _dynamo_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_dynamo_value(v) for v in value]
    return value


class StatusRecorder:
    """Buffers task records and writes them in batches; writes failures and worker rows at once."""

    def __init__(self, table: Any | None, fleet: str, *, flush_seconds: float, ttl_days: int) -> None:
        self._table = table
        self._partition = f"fleet#{fleet}"
        self._flush_seconds = flush_seconds
        self._ttl_seconds = ttl_days * 86400
        self._pending: dict[str, dict[str, Any]] = {}
        self._oldest: float | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._table is not None

    def _item(self, sort_key: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        item = {"pk": self._partition, "sk": sort_key, "updated_at": Decimal(str(round(now, 3)))}
        item["expires_at"] = int(now + self._ttl_seconds)
        item.update(_dynamo_value(fields))
        return item

    def task_finished(self, task_id: str, **fields: Any) -> None:
        """Queue a final state (SUCCEEDED); written with the next batch."""
        if not self.enabled:
            return
        with self._lock:
            self._pending[task_id] = self._item(f"task#{task_id}", fields)
            if self._oldest is None:
                self._oldest = time.monotonic()
        if len(self._pending) >= BATCH_WRITE_LIMIT:
            self.flush()

    def task_failed(self, task_id: str, **fields: Any) -> None:
        """Write a failed attempt now: the error and attempt count are what an operator needs first."""
        if not self.enabled:
            return
        with self._lock:
            self._pending.pop(task_id, None)
        self._put(self._item(f"task#{task_id}", fields))

    def worker_heartbeat(self, worker_id: str, **fields: Any) -> None:
        if self.enabled:
            self._put(self._item(f"worker#{worker_id}", fields))

    def due(self) -> bool:
        with self._lock:
            return self._oldest is not None and time.monotonic() - self._oldest >= self._flush_seconds

    def flush(self) -> None:
        """Write every buffered record, 25 a request, retrying what DynamoDB leaves unprocessed."""
        if not self.enabled:
            return
        with self._lock:
            items = list(self._pending.values())
            self._pending.clear()
            self._oldest = None
        client = self._table.meta.client
        for start in range(0, len(items), BATCH_WRITE_LIMIT):
            requests = [{"PutRequest": {"Item": item}} for item in items[start : start + BATCH_WRITE_LIMIT]]
            for attempt in range(8):
                try:
                    response = client.batch_write_item(RequestItems={self._table.name: requests})
                except Exception:  # a status write must never cost a task; log and keep going
                    log.exception("status batch write failed", extra={"records": len(requests)})
                    break
                requests = response.get("UnprocessedItems", {}).get(self._table.name, [])
                if not requests:
                    break
                time.sleep(min(0.05 * 2**attempt, 2))

    def _put(self, item: dict[str, Any]) -> None:
        try:
            self._table.put_item(Item=item)
        except Exception:
            log.exception("status write failed", extra={"sk": item["sk"]})
