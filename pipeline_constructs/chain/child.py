"""What a fan-out step's child calls to get its item: stdlib + boto3 only (it runs in the step's container).

The protocol, for a child in any language: ``PIPELINE_ITEMS`` is ``s3://bucket/key`` of a JSON list (the
fan-out's items, stored by the glue function before it submitted the array), and the child's item is the one
at ``AWS_BATCH_JOB_ARRAY_INDEX`` (unset for a list of one item, which runs as a plain job: index 0).
``PIPELINE_ITEM_COUNT`` is the list's length.
"""

from __future__ import annotations

import json
import os
from typing import Any


def item_index(environ: dict[str, str] | None = None) -> int:
    """This child's index in the fan-out's list."""
    return int((environ if environ is not None else os.environ).get("AWS_BATCH_JOB_ARRAY_INDEX") or 0)


def item(s3: Any = None, environ: dict[str, str] | None = None) -> Any:
    """This child's item, as it stood in the list (a string, a number or an object)."""
    environment = environ if environ is not None else dict(os.environ)
    location = environment.get("PIPELINE_ITEMS", "")
    if not location.startswith("s3://"):
        raise RuntimeError("PIPELINE_ITEMS is not set: this job is not a child of a fan-out step")
    bucket, _, key = location.removeprefix("s3://").partition("/")
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    items = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return items[item_index(environment)]
