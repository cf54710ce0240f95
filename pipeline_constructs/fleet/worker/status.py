"""Status records in the DynamoDB status store, written sparingly.

A DynamoDB write costs more than three SQS requests, so the rows of finished tasks are written with
BatchWriteItem (25 items a request), together with the batched acknowledgement that deletes their
messages (rows first); a failure is written at once, because that is what an operator looks for.
Layout (shared with the CLI): partition ``fleet#<name>``, sort key ``task#<id>`` for a task's last state
and ``worker#<id>`` for a worker's heartbeat.
"""

from __future__ import annotations

import logging
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
    """Task rows and worker rows; finished tasks in batches of 25, failures and worker rows one by one."""

    def __init__(self, table: Any | None, fleet: str, *, ttl_days: int) -> None:
        self._table = table
        self._partition = f"fleet#{fleet}"
        self._ttl_seconds = ttl_days * 86400

    def _item(self, sort_key: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        item = {"pk": self._partition, "sk": sort_key, "updated_at": Decimal(str(round(now, 3)))}
        item["expires_at"] = int(now + self._ttl_seconds)
        item.update(_dynamo_value(fields))
        return item

    def tasks_finished(self, rows: list[tuple[str, dict[str, Any]]]) -> bool:
        """Store final rows (task id, fields) now, 25 a request; False if any could not be stored."""
        if self._table is None or not rows:
            return True
        items = [self._item(f"task#{task_id}", fields) for task_id, fields in rows]
        client = self._table.meta.client
        for start in range(0, len(items), BATCH_WRITE_LIMIT):
            requests = [{"PutRequest": {"Item": item}} for item in items[start : start + BATCH_WRITE_LIMIT]]
            for attempt in range(8):
                try:
                    response = client.batch_write_item(RequestItems={self._table.name: requests})
                except Exception:
                    log.exception("status batch write failed", extra={"records": len(requests)})
                    return False
                requests = response.get("UnprocessedItems", {}).get(self._table.name, [])
                if not requests:
                    break
                time.sleep(min(0.05 * 2**attempt, 2))
            if requests:
                return False
        return True

    def task_failed(self, task_id: str, **fields: Any) -> None:
        """Write a failed attempt now: the error and attempt count are what an operator needs first."""
        self._put(self._item(f"task#{task_id}", fields))

    def attempt_started(self, task_id: str) -> int | None:
        """Count a redelivered attempt as it starts (``started`` in the task's row) and return the count so
        far, or None without a store or when the write fails (the caller then counts deliveries instead)."""
        if self._table is None:
            return None
        now = time.time()
        try:
            response = self._table.update_item(
                Key=self._task_key(task_id),
                # A task with no row yet shows as running; a RETRYING one keeps its state and error.
                UpdateExpression=(
                    "ADD started :one "
                    "SET updated_at = :now, expires_at = :expires, #state = if_not_exists(#state, :running)"
                ),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":one": 1,
                    ":running": "RUNNING",
                    ":now": Decimal(str(round(now, 3))),
                    ":expires": int(now + self._ttl_seconds),
                },
                ReturnValues="UPDATED_NEW",
            )
            return int(response["Attributes"]["started"])
        except Exception:
            log.exception("status write failed: attempt counted by deliveries", extra={"task": task_id})
            return None

    def read(self, task_id: str) -> dict[str, Any] | None:
        """A task's row as it stands (strongly consistent), or None."""
        if self._table is None:
            return None
        return self._table.get_item(Key=self._task_key(task_id), ConsistentRead=True).get("Item")

    def _task_key(self, task_id: str) -> dict[str, str]:
        return {"pk": self._partition, "sk": f"task#{task_id}"}

    def worker_heartbeat(self, worker_id: str, **fields: Any) -> None:
        self._put(self._item(f"worker#{worker_id}", fields))

    def _put(self, item: dict[str, Any]) -> None:
        """Write one row now; without a store, nothing."""
        if self._table is None:
            return
        try:
            self._table.put_item(Item=item)
        except Exception:
            log.exception("status write failed", extra={"sk": item["sk"]})
