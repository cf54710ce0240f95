"""hourly_join: the join of the example's fan-out chain, started once when every partition child has finished.
``DOWNLOAD_MESSAGE`` is ``{"items": [the partitions whose child succeeded], "failed": [{"index", "item",
"reason"}], "total", "itemsObject"}``; it reads each succeeded partition's summary and writes the day's total.

Environment: DOWNLOAD_MESSAGE, PIPELINE_BUCKET, PIPELINE_PREFIX and PIPELINE_STEP (this step's prefix and name,
set by BatchChain); PARTITIONS_STEP (the fan-out step whose summaries it reads: its prefix is this step's with
that name in place of its own).
"""

from __future__ import annotations

import json
import os
import sys

import boto3


def main() -> int:
    message = json.loads(os.environ["DOWNLOAD_MESSAGE"])
    bucket = os.environ["PIPELINE_BUCKET"]
    prefix, step = os.environ.get("PIPELINE_PREFIX", ""), os.environ["PIPELINE_STEP"]
    source = f"{prefix.removesuffix(f'{step}/')}{os.environ['PARTITIONS_STEP']}/"
    s3 = boto3.client("s3")
    records = 0
    for partition in message["items"]:
        summary = json.loads(s3.get_object(Bucket=bucket, Key=f"{source}{partition}/summary.json")["Body"].read())
        records += summary["records"]
    day = {"partitions": len(message["items"]), "failed": message["failed"], "records": records}
    s3.put_object(Bucket=bucket, Key=f"{prefix}day.json", Body=json.dumps(day).encode())
    print(f"joined {len(message['items'])} of {message['total']} partitions: {records} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
