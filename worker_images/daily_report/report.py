"""daily_report: drain the finished-task queue a fleet forwards to, and write one report of the lot.

The second stage of the example pipeline, as a scheduled Batch step: each message is a task the statistics
fleet finished (``{"key", "source", "outputs": [...], "result": {...}}``), delivered at least once: the
report counts each task once (by ``source`` and ``key``). The report is written before any message
is deleted, so a crash loses nothing: the next run finds the messages again.

Environment: PIPELINE_QUEUE_URL (the queue to drain), PIPELINE_BUCKET and PIPELINE_PREFIX (this step's own
prefix, for the report), PIPELINE_CHAIN_RUN (names the report), MAX_TASKS (default 100000).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import boto3


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


def summarize(s3: Any, bucket: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts distinct tasks: the fleet forwards at least once, so the same task may arrive twice (its
    worker died after forwarding, before deleting); ``source`` and ``key`` identify it."""
    seen: set[tuple[str, str]] = set()
    rows, columns, unreadable, duplicates = 0, set(), [], 0
    for message in messages:
        try:
            body = json.loads(message["Body"])
        except ValueError:
            unreadable.append(message["MessageId"])
            continue
        identity = (str(body.get("source", "")), str(body.get("key") or message["MessageId"]))
        if identity in seen:
            duplicates += 1
            continue
        seen.add(identity)
        for key in body.get("outputs") or []:
            if key.endswith("stats.json"):
                stats = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                columns.update(stats)
                rows += max((column.get("count", 0) for column in stats.values()), default=0)
    return {
        "tasks": len(seen),
        "duplicate_messages": duplicates,
        "rows": rows,
        "columns": sorted(columns),
        "unreadable_messages": unreadable,
    }


def run(environ: dict[str, str] | None = None, *, sqs: Any = None, s3: Any = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    for name in ("PIPELINE_QUEUE_URL", "PIPELINE_BUCKET"):
        if not env.get(name, "").strip():
            raise ValueError(f"{name} is required")
    sqs, s3 = sqs or boto3.client("sqs"), s3 or boto3.client("s3")
    queue, bucket = env["PIPELINE_QUEUE_URL"], env["PIPELINE_BUCKET"]
    messages = drain(sqs, queue, int(env.get("MAX_TASKS", "100000")))
    report = summarize(s3, bucket, messages)
    key = f"{env.get('PIPELINE_PREFIX', '')}{env.get('PIPELINE_CHAIN_RUN', 'manual')}/report.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(report, indent=2), ContentType="application/json")
    for start in range(0, len(messages), 10):  # only now: the report that counts them is written
        chunk = messages[start : start + 10]
        sqs.delete_message_batch(
            QueueUrl=queue, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
        )
    log("report written", key=key, tasks=report["tasks"], rows=report["rows"])
    return report | {"key": key}


def main() -> int:
    try:
        run()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
