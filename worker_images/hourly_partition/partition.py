"""hourly_partition: one Batch array child of the example's fan-out step, one per hourly partition. Reads its item
as the fan-out protocol gives it (any language can: the JSON list at ``PIPELINE_ITEMS``, index
``AWS_BATCH_JOB_ARRAY_INDEX``; see pipeline_constructs/chain/child.py) and writes the partition's summary under its
step's prefix, once per partition: a retried child overwrites its own object, never another's.

Environment: PIPELINE_ITEMS, PIPELINE_BUCKET, PIPELINE_PREFIX (set by BatchChain and the glue function).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import boto3


def my_partition(s3) -> str:
    """This child's item of the fan-out's list."""
    bucket, _, key = os.environ["PIPELINE_ITEMS"].removeprefix("s3://").partition("/")
    items = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return items[int(os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX") or 0)]


def summarize(partition: str) -> dict:
    """A stand-in for the real work on one partition: a deterministic record count."""
    records = int(hashlib.sha256(partition.encode()).hexdigest()[:4], 16) % 1000
    return {"partition": partition, "records": records}


def main() -> int:
    s3 = boto3.client("s3")
    partition = my_partition(s3)
    summary = summarize(partition)
    key = f"{os.environ.get('PIPELINE_PREFIX', '')}{partition}/summary.json"
    s3.put_object(Bucket=os.environ["PIPELINE_BUCKET"], Key=key, Body=json.dumps(summary).encode())
    print(f"{partition}: {summary['records']} records -> {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
