"""feed_watcher: fetch an XML feed, and only when it changed store it in S3 and announce it on SNS.

The message is also written to ``<prefix>latest-message.json``, for a consumer started by a success link; it
names the chain run that saw the change (``chainRun``), so that a consumer started by a run whose feed was
unchanged knows the message is not its own.

Environment: FEED_URL; PIPELINE_BUCKET, PIPELINE_PREFIX (this step's own prefix), PIPELINE_TOPIC_ARN (set by
BatchChain for a step with a message link; without it, nothing is published and the next step, started by a
success link, reads the message from S3); optional FEED_TYPE (default "feed"), FEED_RECORD_TAG (the repeated
record element, default "item"), FEED_EMPTY_CDATA ("true"/"false"), PIPELINE_CHAIN_RUN and PIPELINE_STEP (set
by the glue Lambda).

Change detection: a conditional GET (If-None-Match / If-Modified-Since from the last run); when the server
ignores those, a SHA-256 of the content, kept with the validators in ``<prefix>state.json``.
Exit codes: 0 changed or unchanged, 1 a configuration or feed error (Batch then fails the job; no retry).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import posixpath
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import boto3
from botocore.exceptions import ClientError

STATE_NAME = "state.json"
LATEST_MESSAGE = "latest-message.json"
GZIP_MAGIC = b"\x1f\x8b"


def log(message: str, **fields: Any) -> None:
    print(json.dumps({"message": message, **fields}, default=str), flush=True)


def required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(f"error: {name} is required")
    return value


def load_state(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return {}
        raise


def fetch(url: str, state: dict[str, Any], timeout: float = 60) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, validators); status 304 means the server says nothing changed."""
    headers = {"User-Agent": "pipeline-constructs-feed-watcher/1"}
    if state.get("url") == url:
        if state.get("etag"):
            headers["If-None-Match"] = state["etag"]
        if state.get("last_modified"):
            headers["If-Modified-Since"] = state["last_modified"]
    request = urllib.request.Request(url, headers=headers)
    try:
        # FEED_URL is an http(s) URL, checked in run(): never file: or a custom scheme.
        with urllib.request.urlopen(request, timeout=timeout) as response:  # nosec B310
            body = response.read()
            validators = {
                "etag": response.headers.get("ETag", ""),
                "last_modified": response.headers.get("Last-Modified", ""),
            }
            return response.status, body, validators
    except urllib.error.HTTPError as error:
        if error.code == 304:
            return 304, b"", {}
        raise


def changed_key(prefix: str, url: str, when: dt.datetime) -> str:
    name = posixpath.basename(urllib.parse.urlparse(url).path) or "feed.xml"
    return f"{prefix}{when:%Y-%m-%d}/{when:%H%M%S}-{name}"


def run(
    environ: dict[str, str] | None = None, *, s3: Any = None, sns: Any = None, now: dt.datetime | None = None
) -> dict:
    env = os.environ if environ is None else environ
    url = env.get("FEED_URL", "").strip()
    bucket = env.get("PIPELINE_BUCKET", "").strip()
    topic = env.get("PIPELINE_TOPIC_ARN", "").strip()
    for name, value in (("FEED_URL", url), ("PIPELINE_BUCKET", bucket)):
        if not value:
            raise ValueError(f"{name} is required")
    if not url.startswith(("http://", "https://")):  # urllib would open file: and custom schemes too
        raise ValueError(f"FEED_URL={url!r} is invalid; allowed: an http:// or https:// URL")
    prefix = env.get("PIPELINE_PREFIX", "")
    s3 = s3 or boto3.client("s3")
    sns = sns or boto3.client("sns")
    now = now or dt.datetime.now(dt.UTC)
    state_key = f"{prefix}{STATE_NAME}"
    state = load_state(s3, bucket, state_key)

    status, body, validators = fetch(url, state)
    if status == 304:
        log("feed unchanged (304)", url=url)
        return {"changed": False, "reason": "not modified"}
    digest = hashlib.sha256(body).hexdigest()
    new_state = {"url": url, "sha256": digest, **validators, "checked_at": now.isoformat()}
    if state.get("sha256") == digest and state.get("url") == url:
        s3.put_object(
            Bucket=bucket, Key=state_key, Body=json.dumps(new_state | {"changed_at": state.get("changed_at")})
        )
        log("feed unchanged (same content)", url=url, sha256=digest)
        return {"changed": False, "reason": "same content"}

    gzipped = body[:2] == GZIP_MAGIC
    if gzipped:
        gzip.decompress(body)  # a corrupt gzip fails the job here, not the consumer later
    key = changed_key(prefix, url, now)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip" if gzipped else "application/xml")
    message = {
        "type": env.get("FEED_TYPE", "feed"),
        "jobXmlTag": env.get("FEED_RECORD_TAG", "item"),
        "gzipped": gzipped,
        "emptyCDATA": env.get("FEED_EMPTY_CDATA", "false").lower() == "true",
        "bucket": bucket,
        "keys": [key],
        "sha256": digest,
        "changedAt": now.isoformat(),
    }
    if env.get("PIPELINE_CHAIN_RUN"):
        message["chainRun"] = env["PIPELINE_CHAIN_RUN"]
    attributes = {
        name: {"DataType": "String", "StringValue": env[var]}
        for name, var in (("step", "PIPELINE_STEP"), ("chainRun", "PIPELINE_CHAIN_RUN"))
        if env.get(var)
    }
    # Also kept in S3, for a next step started by a success link rather than by this message.
    s3.put_object(Bucket=bucket, Key=f"{prefix}{LATEST_MESSAGE}", Body=json.dumps(message))
    message_id = None
    if topic:
        published = sns.publish(TopicArn=topic, Message=json.dumps(message), MessageAttributes=attributes)
        message_id = published["MessageId"]
    # State last: if publishing failed, the next run sees the change again instead of losing it.
    s3.put_object(Bucket=bucket, Key=state_key, Body=json.dumps(new_state | {"changed_at": now.isoformat()}))
    log("feed changed", url=url, key=key, message_id=message_id)
    return {"changed": True, "key": key, "message": message, "message_id": message_id}


def main() -> int:
    try:
        run()
    except (ValueError, urllib.error.URLError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
