"""daily_report: drain the finished-task queue a fleet forwards to, and write one report of the lot.

The second stage of the example pipeline, as a scheduled Batch step: each message is a task the statistics
fleet finished (``{"key", "source", "outputs": [...], "result": {...}}``), delivered at least once: the
report counts each task once (by ``source`` and ``key``). The report is written before any message
is deleted, so a crash loses nothing: the next run finds the messages again.

A run's report adds up every attempt of that run: what an attempt counted is kept beside the report
(``counted.json``: each task's rows and columns), so a Batch retry of an attempt that drained the queue and
died finds those tasks there and adds what it drains itself, instead of overwriting the report with the
empty queue it finds. A delete that SQS refuses is retried; what still fails fails the job, naming how many
(the run's retry counts those messages once, when they come back).

Environment: PIPELINE_QUEUE_URL (the queue to drain), PIPELINE_BUCKET and PIPELINE_PREFIX (this step's own
prefix, for the report), PIPELINE_CHAIN_RUN (names the report), MAX_TASKS (default 100000).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import boto3
from botocore.exceptions import ClientError

#: Deletes of one batch that SQS refused are tried again this often before the job fails.
DELETE_TRIES = 3


class DeleteError(RuntimeError):
    """Messages that stay undeleted after :data:`DELETE_TRIES` tries."""


def log(message: str, **fields: Any) -> None:
    print(json.dumps({"message": message, **fields}, default=str), flush=True)


def drain(sqs: Any, queue_url: str, limit: int) -> list[dict[str, Any]]:
    """Receive until the queue answers empty twice; messages stay hidden (not deleted) meanwhile."""
    messages: list[dict[str, Any]] = []
    empty = 0
    while empty < 2 and len(messages) < limit:
        batch = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=900
        ).get("Messages", [])
        empty = 0 if batch else empty + 1
        messages += batch
    return messages


def load_counted(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """What earlier attempts of this run counted: ``{"tasks": {identity: {...}}, "duplicate_messages",
    "unreadable_messages"}``; empty for the run's first attempt."""
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return {"tasks": {}, "duplicate_messages": 0, "unreadable_messages": []}
        raise


def count(s3: Any, bucket: str, messages: list[dict[str, Any]], counted: dict[str, Any]) -> None:
    """Adds ``messages`` to ``counted``, each task once: the fleet forwards at least once, so the same task
    may arrive twice (its worker died after forwarding, before deleting); ``source`` and ``key`` identify it."""
    tasks = counted["tasks"]
    for message in messages:
        try:
            body = json.loads(message["Body"])
        except ValueError:
            if message["MessageId"] not in counted["unreadable_messages"]:  # back again after a retry
                counted["unreadable_messages"].append(message["MessageId"])
            continue
        identity = json.dumps([str(body.get("source", "")), str(body.get("key") or message["MessageId"])])
        if identity in tasks:
            counted["duplicate_messages"] += 1
            continue
        rows, columns = 0, set()
        for key in body.get("outputs") or []:
            if key.endswith("stats.json"):
                stats = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                columns.update(stats)
                rows += max((column.get("count", 0) for column in stats.values()), default=0)
        tasks[identity] = {"rows": rows, "columns": sorted(columns)}


def summarize(counted: dict[str, Any]) -> dict[str, Any]:
    """The report of everything counted so far in this run."""
    tasks = counted["tasks"].values()
    return {
        "tasks": len(tasks),
        "duplicate_messages": counted["duplicate_messages"],
        "rows": sum(task["rows"] for task in tasks),
        "columns": sorted({column for task in tasks for column in task["columns"]}),
        "unreadable_messages": counted["unreadable_messages"],
    }


def delete(sqs: Any, queue: str, messages: list[dict[str, Any]]) -> None:
    """Deletes ``messages``, ten at a time, each refused one again up to :data:`DELETE_TRIES` times."""
    for start in range(0, len(messages), 10):
        pending = {str(i): m["ReceiptHandle"] for i, m in enumerate(messages[start : start + 10])}
        for _ in range(DELETE_TRIES):
            entries = [{"Id": i, "ReceiptHandle": handle} for i, handle in pending.items()]
            failed = sqs.delete_message_batch(QueueUrl=queue, Entries=entries).get("Failed", [])
            pending = {entry["Id"]: pending[entry["Id"]] for entry in failed}
            if not pending:
                break
        if pending:
            raise DeleteError(
                f"{len(pending)} messages could not be deleted after {DELETE_TRIES} tries; the report counts "
                "them, and this run's retry counts them once when they come back"
            )


def run(environ: dict[str, str] | None = None, *, sqs: Any = None, s3: Any = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    for name in ("PIPELINE_QUEUE_URL", "PIPELINE_BUCKET"):
        if not env.get(name, "").strip():
            raise ValueError(f"{name} is required")
    sqs, s3 = sqs or boto3.client("sqs"), s3 or boto3.client("s3")
    queue, bucket = env["PIPELINE_QUEUE_URL"], env["PIPELINE_BUCKET"]
    folder = f"{env.get('PIPELINE_PREFIX', '')}{env.get('PIPELINE_CHAIN_RUN', 'manual')}/"
    key, counted_key = f"{folder}report.json", f"{folder}counted.json"
    counted = load_counted(s3, bucket, counted_key)
    messages = drain(sqs, queue, int(env.get("MAX_TASKS", "100000")))
    count(s3, bucket, messages, counted)
    report = summarize(counted)
    # What was counted first, then the report: a crash between them leaves a retry that derives it again.
    s3.put_object(Bucket=bucket, Key=counted_key, Body=json.dumps(counted), ContentType="application/json")
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(report, indent=2), ContentType="application/json")
    delete(sqs, queue, messages)  # only now: the report that counts them is written
    log("report written", key=key, tasks=report["tasks"], rows=report["rows"])
    return report | {"key": key}


def main() -> int:
    try:
        run()
    except (ValueError, DeleteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
