"""feed_consumer: read DOWNLOAD_MESSAGE, download the feed files, stream-parse the XML, write JSON lines.

Environment: DOWNLOAD_MESSAGE (the SNS message the previous step published, passed on unchanged by the
glue Lambda), or DOWNLOAD_MESSAGE_S3 (``s3://bucket/key``: the glue's claim check for a message too large
for SubmitJob), or, when a success link started the step, MESSAGE_KEY (the S3 key of that message);
PARALLELISM (files processed at once, default 4); PIPELINE_BUCKET and PIPELINE_PREFIX (this step's own
prefix, for the output); PIPELINE_CHAIN_RUN (names the output folder).

Each feed file ``K`` becomes ``<prefix><run>/K.jsonl`` (``.xml``/``.gz`` dropped): the source key's whole path,
so ``a/feed.xml`` and ``b/feed.xml`` never overwrite each other. A success link starts this step after every
run of the watcher, changed feed or not; the watcher's message names the run that saw the change
(``chainRun``), and a message of an earlier run means nothing changed in this one: nothing is converted again.

The message is ``{"bucket", "keys", "jobXmlTag", "gzipped", "emptyCDATA", ...}``. Real-world publishers
sometimes send a stray character after the JSON (the users' own example ends in ``}}``): the first JSON
object is read and the rest is reported, not fatal. Each element named ``jobXmlTag`` becomes one JSON line
(its attributes and child elements' text); elements are cleared as they are read, so memory stays flat.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tempfile

# The feed is untrusted, and the stdlib parser is safe for it (bandit B405/B314 accepted): Expat 2.4.1+
# (Python 3.11+ ships 2.5 and later) refuses entity expansion bombs, and ElementTree never fetches external
# entities; tests/test_feed_images.py feeds it a billion-laughs document.
import xml.etree.ElementTree as ElementTree  # nosec B405
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3


def log(message: str, **fields: Any) -> None:
    print(json.dumps({"message": message, **fields}, default=str), flush=True)


def parse_message(raw: str) -> dict[str, Any]:
    """The first JSON object in ``raw``; trailing characters are logged, not fatal."""
    if not raw or not raw.strip():
        raise ValueError("DOWNLOAD_MESSAGE is required")
    try:
        message, end = json.JSONDecoder().raw_decode(raw.strip())
    except ValueError as error:
        raise ValueError(f"DOWNLOAD_MESSAGE is not JSON: {error}") from None
    trailing = raw.strip()[end:]
    if trailing:
        log("ignored characters after the message's JSON", trailing=trailing[:50])
    if not isinstance(message, dict):
        raise ValueError("DOWNLOAD_MESSAGE: expected a JSON object")
    for field, kind in (("bucket", str), ("keys", list), ("jobXmlTag", str)):
        if not isinstance(message.get(field), kind) or not message[field]:
            raise ValueError(f"DOWNLOAD_MESSAGE.{field}: missing or not a {kind.__name__}")
    return message


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def records(stream: io.BufferedIOBase, record_tag: str, empty_cdata: bool) -> Iterator[dict[str, Any]]:
    """One dict per ``record_tag`` element, streamed."""
    depth_stack: list[str] = []
    for event, element in ElementTree.iterparse(stream, events=("start", "end")):  # nosec B314
        name = local_name(element.tag)
        if event == "start":
            depth_stack.append(name)
            continue
        depth_stack.pop()
        if name != record_tag:
            continue
        record: dict[str, Any] = {f"@{k}": v for k, v in element.attrib.items()}
        for child in element:
            text = (child.text or "").strip()
            if text or empty_cdata:
                key = local_name(child.tag)
                if key in record:  # repeated child: collect into a list
                    record[key] = record[key] if isinstance(record[key], list) else [record[key]]
                    record[key].append(text)
                else:
                    record[key] = text
        if not len(element) and (element.text or "").strip():
            record["#text"] = element.text.strip()
        yield record
        element.clear()


def output_names(keys: list[str]) -> dict[str, str]:
    """Each distinct source key -> its output's name under the run's prefix, one output per key."""
    names: dict[str, str] = {}
    for key in dict.fromkeys(keys):  # a key listed twice is converted once
        names[key] = key.lstrip("/").removesuffix(".gz").removesuffix(".xml") + ".jsonl"
    clashes = sorted(key for key in names if list(names.values()).count(names[key]) > 1)
    if clashes:
        raise ValueError(f"DOWNLOAD_MESSAGE.keys {clashes} would write the same output; rename one of them")
    return names


def convert(s3: Any, message: dict[str, Any], key: str, out_bucket: str, output_key: str) -> dict[str, Any]:
    gzipped = bool(message.get("gzipped")) or key.endswith(".gz")
    with tempfile.TemporaryFile() as raw, tempfile.NamedTemporaryFile("w+", suffix=".jsonl", delete=False) as out:
        try:
            s3.download_fileobj(message["bucket"], key, raw)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            count = 0
            for record in records(stream, message["jobXmlTag"], bool(message.get("emptyCDATA"))):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
            out.flush()
            s3.upload_file(out.name, out_bucket, output_key)
        finally:  # a feed that fails to parse must not leave its half-written output on the disk
            os.unlink(out.name)
    log("converted", source=key, output=output_key, records=count)
    return {"source": key, "output": output_key, "records": count}


def run(environ: dict[str, str] | None = None, *, s3: Any = None) -> list[dict[str, Any]]:
    env = os.environ if environ is None else environ
    s3 = s3 or boto3.client("s3")
    raw = env.get("DOWNLOAD_MESSAGE", "")
    claim = env.get("DOWNLOAD_MESSAGE_S3", "").strip()
    if not raw.strip() and claim:
        bucket, _, key = claim.removeprefix("s3://").partition("/")
        if not claim.startswith("s3://") or not bucket or not key:
            raise ValueError(f"DOWNLOAD_MESSAGE_S3={claim!r} is invalid; allowed: s3://bucket/key")
        raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    elif not raw.strip() and env.get("MESSAGE_KEY", "").strip():
        # Started by a success link: the previous step's message is in S3, not in the environment.
        raw = s3.get_object(Bucket=env["PIPELINE_BUCKET"], Key=env["MESSAGE_KEY"].strip())["Body"].read().decode()
    message = parse_message(raw)
    run_id = env.get("PIPELINE_CHAIN_RUN", "").strip() or "manual"
    if env.get("MESSAGE_KEY", "").strip() and message.get("chainRun") not in (None, run_id):
        log("feed unchanged in this run: nothing to convert", run=run_id, message_run=message["chainRun"])
        return []
    out_bucket = env.get("PIPELINE_BUCKET", "").strip() or message["bucket"]
    out_prefix = f"{env.get('PIPELINE_PREFIX', '')}{run_id}/"
    try:
        parallelism = int(env.get("PARALLELISM", "4"))
    except ValueError:
        raise ValueError(f"PARALLELISM={env.get('PARALLELISM')!r} is not a whole number") from None
    if parallelism < 1:
        raise ValueError(f"PARALLELISM={parallelism} is out of range; allowed: 1 or more")
    names = output_names(message["keys"])
    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        results = list(pool.map(lambda key: convert(s3, message, key, out_bucket, f"{out_prefix}{names[key]}"), names))
    log("done", files=len(results), records=sum(r["records"] for r in results))
    return results


def main() -> int:
    try:
        run()
    except (ValueError, ElementTree.ParseError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
