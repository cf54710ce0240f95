"""hourly_split: the first step of the example's fan-out chain. Names the day's 24 hourly partitions and publishes
them as the chain's message ``{"partitions": [...]}``; the next step (a fan-out) runs one Batch array child per
partition, and the step after it (the join) runs once when all of them have finished.

Environment: PIPELINE_TOPIC_ARN, PIPELINE_STEP, PIPELINE_CHAIN_RUN (set by BatchChain); PARTITION_DAY (default:
yesterday, UTC, as YYYY-MM-DD).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys

import boto3


def partitions(day: str) -> list[str]:
    """The day's hourly partitions, as prefixes (``2026-12-04/00`` ... ``2026-12-04/23``)."""
    dt.date.fromisoformat(day)  # a clear error for a malformed PARTITION_DAY
    return [f"{day}/{hour:02d}" for hour in range(24)]


def main() -> int:
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    day = os.environ.get("PARTITION_DAY") or yesterday
    try:
        message = {"day": day, "partitions": partitions(day)}
    except ValueError:
        print(f"PARTITION_DAY={day!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return 2
    attributes = {
        name: {"DataType": "String", "StringValue": os.environ[var]}
        for name, var in (("step", "PIPELINE_STEP"), ("chainRun", "PIPELINE_CHAIN_RUN"))
        if os.environ.get(var)
    }
    boto3.client("sns").publish(
        TopicArn=os.environ["PIPELINE_TOPIC_ARN"], Message=json.dumps(message), MessageAttributes=attributes
    )
    print(f"published {len(message['partitions'])} partitions of {day}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
