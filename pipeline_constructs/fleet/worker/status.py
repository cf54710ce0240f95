"""Status records in the DynamoDB status store, written sparingly.

A DynamoDB write costs more than three SQS requests, so the rows of finished tasks are written with
BatchWriteItem (25 items a request), together with the batched acknowledgement that deletes their
messages (rows first); a failure is written at once, because that is what an operator looks for. Each
finished row stands alone: rows of one task id are merged (DynamoDB refuses a batch that names a key
twice), a row is kept under DynamoDB's 400 KB item limit, and a batch the service refuses for its content
is written row by row, so that one bad row fails only itself.
Layout (shared with the CLI): partition ``fleet#<name>``, sort key ``task#<id>`` for a task's last state
and ``worker#<id>`` for a worker's heartbeat.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from decimal import Decimal
from typing import Any

log = logging.getLogger("pipeline.worker")

BATCH_WRITE_LIMIT = 25
#: DynamoDB's item limit is 400 KB (names and values); rows are kept under it with room to spare.
ROW_LIMIT = 350 * 1024
#: What a finished row keeps when its fields are too large (or refused) for one: the task's outputs and
#: result are in the completion marker its ``outcome`` names.
ESSENTIAL_FIELDS = ("state", "attempts", "worker", "duration_s", "outputs_count", "outcome", "redelivered")

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


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__))


def item_size(item: dict[str, Any]) -> int:
    """An item's size, over-estimated: its JSON's bytes (quotes and separators count more than DynamoDB's
    own overhead of names, types and list entries)."""
    return len(json.dumps(item, default=str).encode())


class StatusRecorder:
    """Task rows and worker rows; finished tasks in batches of 25, failures and worker rows one by one."""

    def __init__(self, table: Any | None, fleet: str, *, ttl_days: int) -> None:
        self._table: Any = table  # None: no status store
        self._partition = f"fleet#{fleet}"
        self._ttl_seconds = ttl_days * 86400
        # For the worker's row (the performance report): since when it works, and the attempts it stopped
        # before they ended (a spot notice, a drain, a lost lease), which its STOPPED row's reason explains.
        self._since = Decimal(str(round(time.time(), 3)))
        self._given_back = 0
        self._given_back_lock = threading.Lock()  # task threads count, the heartbeat reads

    @property
    def stores(self) -> bool:
        """Whether there is a status store to write to."""
        return self._table is not None

    def _item(self, sort_key: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        item = {"pk": self._partition, "sk": sort_key, "updated_at": Decimal(str(round(now, 3)))}
        item["expires_at"] = int(now + self._ttl_seconds)
        item.update(_dynamo_value(fields))
        return item

    def tasks_finished(self, rows: list[tuple[str, dict[str, Any]]]) -> bool:
        """Store final rows (task id, fields) now, 25 a request; False if any could not be stored."""
        return not self.store_finished(rows)

    def store_finished(self, rows: list[tuple[str, dict[str, Any]]]) -> set[str]:
        """Store final rows (task id, fields) now, 25 a request; the ids of the tasks whose row could not be
        stored. Rows of one task id are merged (the last one's fields stand)."""
        if self._table is None or not rows:
            return set()
        items = {task_id: self._finished_item(task_id, fields) for task_id, fields in rows}
        ids = list(items)
        unstored: set[str] = set()
        for start in range(0, len(ids), BATCH_WRITE_LIMIT):
            chunk = {i: items[i] for i in ids[start : start + BATCH_WRITE_LIMIT]}
            unstored |= self._write_batch(chunk)
        return unstored

    def _finished_item(self, task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        item = self._item(f"task#{task_id}", fields)
        if item_size(item) > ROW_LIMIT:
            log.warning("status row too large: stored without its outputs and result", extra={"task": task_id})
            item = self._essential(item)
        return item

    def _essential(self, item: dict[str, Any]) -> dict[str, Any]:
        """The row without what made it too large or refused: its keys, times and :data:`ESSENTIAL_FIELDS`."""
        kept = {k: v for k, v in item.items() if k in ("pk", "sk", "updated_at", "expires_at", *ESSENTIAL_FIELDS)}
        kept.setdefault("outputs_count", len(item.get("outputs") or []))
        kept["note"] = "outputs and result left out of the status row (too large or refused)" + (
            f": see {item['outcome']}" if item.get("outcome") else ""
        )
        return kept

    def _write_batch(self, items: dict[str, dict[str, Any]]) -> set[str]:
        """One BatchWriteItem of ``items`` (by task id), its unprocessed items retried with back-off; a batch
        refused for its content is written row by row. The ids not stored."""
        client = self._table.meta.client
        pending = items
        for attempt in range(8):
            if attempt:
                time.sleep(min(0.05 * 2**attempt, 2))
            requests = [{"PutRequest": {"Item": item}} for item in pending.values()]
            try:
                response = client.batch_write_item(RequestItems={self._table.name: requests})
            except Exception as error:
                if _error_code(error) == "ValidationException":  # one bad row: find it, store the others
                    log.warning("status batch refused: rows written one by one", extra={"rows": len(pending)})
                    return self._put_each(pending)
                log.exception("status batch write failed", extra={"records": len(pending)})
                if attempt >= 2:
                    return set(pending)
                continue
            unprocessed = response.get("UnprocessedItems", {}).get(self._table.name, [])
            keys = {request["PutRequest"]["Item"]["sk"] for request in unprocessed}
            pending = {i: item for i, item in pending.items() if item["sk"] in keys}
            if not pending:
                return set()
        return set(pending)

    def _put_each(self, items: dict[str, dict[str, Any]]) -> set[str]:
        """Each row on its own; one refused for its content is stored with its essential fields only."""
        return {task_id for task_id, item in items.items() if not self._put_finished(task_id, item)}

    def _put_finished(self, task_id: str, item: dict[str, Any]) -> bool:
        try:
            self._table.put_item(Item=item)
            return True
        except Exception as error:
            if _error_code(error) != "ValidationException":
                log.exception("status write failed", extra={"task": task_id})
                return False
            log.warning("status row refused: stored with its essential fields", extra={"task": task_id})
        try:
            self._table.put_item(Item=self._essential(item))
            return True
        except Exception:
            log.exception("status write failed", extra={"task": task_id})
            return False

    def task_failed(self, task_id: str, **fields: Any) -> bool:
        """Write a failed attempt now: the error and attempt count are what an operator needs first. False if
        the write failed (logged)."""
        return self._put(self._item(f"task#{task_id}", fields))

    def attempt_starting(self, task_id: str) -> tuple[dict[str, Any], int | None]:
        """Count an attempt as it starts (``started`` in the task's row, one write) and look the task up in the
        same request: the row as it stood before (empty if none) and the attempts started so far, this one
        included; ``(row, None)`` without a store. A task with no row yet shows as RUNNING from now on.

        A finished (SUCCEEDED) row is left as it is: the condition fails and the row is read instead (a key sent
        again, the only case). A failing store raises: the caller runs the task unchecked, counting deliveries.
        """
        if self._table is None:
            return {}, None
        now = time.time()
        try:
            response = self._table.update_item(
                Key=self._task_key(task_id),
                # A RETRYING row keeps its state and error (the operator's view until this attempt ends).
                UpdateExpression=(
                    "ADD started :one "
                    "SET updated_at = :now, expires_at = :expires, #state = if_not_exists(#state, :running)"
                ),
                ConditionExpression="attribute_not_exists(#state) OR #state <> :succeeded",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":one": 1,
                    ":running": "RUNNING",
                    ":succeeded": "SUCCEEDED",
                    ":now": Decimal(str(round(now, 3))),
                    ":expires": int(now + self._ttl_seconds),
                },
                ReturnValues="ALL_OLD",
            )
        except Exception as error:
            if _error_code(error) != "ConditionalCheckFailedException":
                raise
            row = self.read(task_id) or {}
            return row, int(row.get("started") or 0)
        row = response.get("Attributes") or {}
        return row, int(row.get("started") or 0) + 1

    def attempt_given_back(self, task_id: str) -> None:
        """Uncount an attempt this worker stopped before it ended (its lease lost, the worker stopping): the
        task did not fail, so the attempt is not held against it. Best effort: a failed write only costs the
        task one attempt of its budget."""
        if self._table is None:
            return
        with self._given_back_lock:
            self._given_back += 1
        try:
            self._table.update_item(
                Key=self._task_key(task_id),
                UpdateExpression="ADD started :less",
                ConditionExpression="started > :none",
                ExpressionAttributeValues={":less": -1, ":none": 0},
            )
        except Exception as error:
            if _error_code(error) != "ConditionalCheckFailedException":
                log.warning("status write failed: the stopped attempt stays counted", extra={"task": task_id})

    def read(self, task_id: str, *, consistent: bool = True) -> dict[str, Any] | None:
        """A task's row as it stands (strongly consistent unless told otherwise: half the price), or None."""
        if self._table is None:
            return None
        return self._table.get_item(Key=self._task_key(task_id), ConsistentRead=consistent).get("Item")

    def _task_key(self, task_id: str) -> dict[str, str]:
        return {"pk": self._partition, "sk": f"task#{task_id}"}

    def worker_heartbeat(self, worker_id: str, **fields: Any) -> None:
        """The worker's row, with ``since`` (when it started) and ``attempts_given_back`` added."""
        with self._given_back_lock:
            given_back = self._given_back
        fields = {"since": self._since, "attempts_given_back": given_back, **fields}
        self._put(self._item(f"worker#{worker_id}", fields))

    def _put(self, item: dict[str, Any]) -> bool:
        """Write one row now (without a store, nothing); False if the write failed (logged)."""
        if self._table is None:
            return True
        try:
            self._table.put_item(Item=item)
            return True
        except Exception:
            log.exception("status write failed", extra={"sk": item["sk"]})
            return False
