"""The feed chain's worker images as plain processes, against moto and a local HTTP feed server."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid

import pytest

from pipeline_constructs.local.cli import FeedServer
from tests.support import ROOT

WATCHER = ROOT / "worker_images" / "feed_watcher" / "watcher.py"
CONSUMER = ROOT / "worker_images" / "feed_consumer" / "consumer.py"


def feed_xml(count: int, version: str = "1") -> bytes:
    jobs = "".join(
        f'<job id="{i}"><title>Job {i}</title><city>Tokyo</city><description><![CDATA[]]></description></job>'
        for i in range(count)
    )
    return f'<?xml version="1.0" encoding="UTF-8"?><source version="{version}">{jobs}</source>'.encode()


@pytest.fixture
def feed_world(aws, aws_env):
    name = uuid.uuid4().hex[:8]
    bucket = f"feeds-{name}"
    aws.s3.create_bucket(Bucket=bucket)
    sns = aws.session.client("sns")
    topic = sns.create_topic(Name=f"start_feed_consumer{name}")["TopicArn"]
    inbox = aws.sqs.create_queue(QueueName=f"inbox{name}")["QueueUrl"]
    inbox_arn = aws.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"})
    server = FeedServer(gzip.compress(feed_xml(25)), feed_path="feeds/lovelive.xml.gz")
    yield type(
        "FeedWorld",
        (),
        {"bucket": bucket, "topic": topic, "inbox": inbox, "server": server, "aws": aws, "env": aws_env},
    )
    server.shutdown()


def run_script(script, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script)], env=os.environ | env, capture_output=True, text=True, timeout=120
    )


def published(world) -> list[str]:
    messages = world.aws.sqs.receive_message(QueueUrl=world.inbox, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    return [m["Body"] for m in messages.get("Messages", [])]


def read_single_output(world, prefix: str) -> bytes:
    (entry,) = world.aws.s3.list_objects_v2(Bucket=world.bucket, Prefix=prefix)["Contents"]
    assert entry["Key"].endswith("-lovelive.jsonl")
    return world.aws.s3.get_object(Bucket=world.bucket, Key=entry["Key"])["Body"].read()


def watcher_env(world) -> dict[str, str]:
    return world.env | {
        "FEED_URL": world.server.url,
        "FEED_TYPE": "lovelive",
        "FEED_RECORD_TAG": "job",
        "PIPELINE_BUCKET": world.bucket,
        "PIPELINE_PREFIX": "feeds/feed_watcher/",
        "PIPELINE_TOPIC_ARN": world.topic,
        "PIPELINE_STEP": "feed_watcher",
        "PIPELINE_CHAIN_RUN": "feeds-run-1",
    }


def test_changed_feed_is_stored_announced_and_converted_unchanged_feed_is_silent(feed_world):
    first = run_script(WATCHER, watcher_env(feed_world))
    assert first.returncode == 0, first.stderr
    (message,) = published(feed_world)
    body = json.loads(message)
    assert body["type"] == "lovelive" and body["jobXmlTag"] == "job" and body["gzipped"] is True
    (key,) = body["keys"]
    assert key.startswith("feeds/feed_watcher/") and key.endswith("lovelive.xml.gz")
    stored = feed_world.aws.s3.get_object(Bucket=feed_world.bucket, Key=key)["Body"].read()
    assert stored == feed_world.server.body

    second = run_script(WATCHER, watcher_env(feed_world))
    assert second.returncode == 0, second.stderr
    assert feed_world.server.requests[-1]["If-None-Match"] == feed_world.server.etag
    assert published(feed_world) == []

    # The users' message as it really arrives: one stray brace after the JSON.
    consumer = run_script(
        CONSUMER,
        feed_world.env
        | {
            "DOWNLOAD_MESSAGE": message + "}",
            "PARALLELISM": "15",
            "PIPELINE_BUCKET": feed_world.bucket,
            "PIPELINE_PREFIX": "feeds/feed_consumer/",
            "PIPELINE_CHAIN_RUN": "feeds-run-1",
        },
    )
    assert consumer.returncode == 0, consumer.stderr
    output = read_single_output(feed_world, "feeds/feed_consumer/feeds-run-1/")
    lines = [json.loads(line) for line in output.decode().splitlines()]
    assert len(lines) == 25
    assert lines[3] == {"@id": "3", "title": "Job 3", "city": "Tokyo"}
    assert "ignored characters after the message's JSON" in consumer.stdout


def test_the_consumer_reads_a_claim_checked_message_from_s3(feed_world):
    watcher = run_script(WATCHER, watcher_env(feed_world))
    assert watcher.returncode == 0, watcher.stderr
    (message,) = published(feed_world)
    feed_world.aws.s3.put_object(Bucket=feed_world.bucket, Key="feeds/_messages/run-9/feed_consumer.json", Body=message)
    consumer = run_script(
        CONSUMER,
        feed_world.env
        | {
            "DOWNLOAD_MESSAGE_S3": f"s3://{feed_world.bucket}/feeds/_messages/run-9/feed_consumer.json",
            "PIPELINE_BUCKET": feed_world.bucket,
            "PIPELINE_PREFIX": "feeds/feed_consumer/",
            "PIPELINE_CHAIN_RUN": "run-9",
        },
    )
    assert consumer.returncode == 0, consumer.stderr
    assert len(read_single_output(feed_world, "feeds/feed_consumer/run-9/").decode().splitlines()) == 25


def test_without_a_topic_a_change_is_stored_for_a_success_link_and_nothing_is_published(feed_world):
    """A watcher linked by success gets no PIPELINE_TOPIC_ARN (nor sns:Publish): it must not try to publish."""
    environment = {k: v for k, v in watcher_env(feed_world).items() if k != "PIPELINE_TOPIC_ARN"}
    result = run_script(WATCHER, environment)
    assert result.returncode == 0, result.stderr
    assert published(feed_world) == []
    latest = feed_world.aws.s3.get_object(Bucket=feed_world.bucket, Key="feeds/feed_watcher/latest-message.json")
    assert json.loads(latest["Body"].read())["type"] == "lovelive"


def test_content_hash_catches_a_server_that_ignores_conditional_requests(feed_world):
    feed_world.server.honour_conditionals = False
    assert run_script(WATCHER, watcher_env(feed_world)).returncode == 0
    assert len(published(feed_world)) == 1
    assert run_script(WATCHER, watcher_env(feed_world)).returncode == 0
    assert published(feed_world) == []  # same bytes: no announcement
    feed_world.server.body = gzip.compress(feed_xml(30, version="2"))
    assert run_script(WATCHER, watcher_env(feed_world)).returncode == 0
    (message,) = published(feed_world)
    assert json.loads(message)["sha256"]


def test_empty_cdata_is_kept_when_the_message_says_so(feed_world):
    run_script(WATCHER, watcher_env(feed_world) | {"FEED_EMPTY_CDATA": "true"})
    (message,) = published(feed_world)
    env = feed_world.env | {"DOWNLOAD_MESSAGE": message, "PIPELINE_BUCKET": feed_world.bucket, "PIPELINE_PREFIX": "c/"}
    assert run_script(CONSUMER, env).returncode == 0
    output = read_single_output(feed_world, "c/manual/")
    assert json.loads(output.decode().splitlines()[0])["description"] == ""


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("", "DOWNLOAD_MESSAGE is required"),
        ("not json", "DOWNLOAD_MESSAGE is not JSON"),
        ('{"bucket": "b", "keys": []}', "DOWNLOAD_MESSAGE.keys: missing"),
    ],
)
def test_consumer_names_what_is_wrong_with_its_message(feed_world, message, error):
    result = run_script(CONSUMER, feed_world.env | {"DOWNLOAD_MESSAGE": message})
    assert result.returncode == 1
    assert error in result.stderr


def test_watcher_without_a_feed_url_fails_with_the_variable_name(feed_world):
    result = run_script(WATCHER, watcher_env(feed_world) | {"FEED_URL": ""})
    assert result.returncode == 1
    assert "FEED_URL is required" in result.stderr


def test_an_entity_expansion_bomb_in_a_feed_is_refused_at_once():
    # The feed is untrusted: the consumer's parser must refuse a billion-laughs document, not expand it.
    import importlib.util
    import io
    import time
    from xml.etree.ElementTree import ParseError

    spec = importlib.util.spec_from_file_location("feed_consumer_under_test", CONSUMER)
    consumer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(consumer)
    entities = "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 10))
    bomb = f'<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY e0 "lol">{entities}]><feed><job>&e9;</job></feed>'
    started = time.monotonic()
    with pytest.raises(ParseError, match="amplification"):
        list(consumer.records(io.BytesIO(bomb.encode()), "job", False))
    assert time.monotonic() - started < 2


def consumer_env(world, run: str, **extra: str) -> dict[str, str]:
    return world.env | {"PIPELINE_BUCKET": world.bucket, "PIPELINE_PREFIX": "c/", "PIPELINE_CHAIN_RUN": run} | extra


def test_feed_files_of_one_name_in_two_folders_become_two_outputs(feed_world):
    for key, count in (("in/a/feed.xml", 3), ("in/b/feed.xml", 5)):
        feed_world.aws.s3.put_object(Bucket=feed_world.bucket, Key=key, Body=feed_xml(count))
    message = {"bucket": feed_world.bucket, "keys": ["in/a/feed.xml", "in/b/feed.xml"], "jobXmlTag": "job"}
    result = run_script(CONSUMER, consumer_env(feed_world, "run-2", DOWNLOAD_MESSAGE=json.dumps(message)))
    assert result.returncode == 0, result.stderr
    for key, count in (("c/run-2/in/a/feed.jsonl", 3), ("c/run-2/in/b/feed.jsonl", 5)):
        output = feed_world.aws.s3.get_object(Bucket=feed_world.bucket, Key=key)["Body"].read()
        assert len(output.decode().splitlines()) == count, key


def test_two_keys_that_would_write_one_output_are_refused_by_name(feed_world):
    message = {"bucket": feed_world.bucket, "keys": ["in/feed.xml", "in/feed.xml.gz"], "jobXmlTag": "job"}
    result = run_script(CONSUMER, consumer_env(feed_world, "run-3", DOWNLOAD_MESSAGE=json.dumps(message)))
    assert result.returncode == 1
    assert "['in/feed.xml', 'in/feed.xml.gz'] would write the same output" in result.stderr


def test_a_success_linked_consumer_converts_nothing_when_its_run_saw_no_change(feed_world):
    """A success link starts the consumer after every watcher run: an unchanged feed's run converts nothing."""
    without_topic = {k: v for k, v in watcher_env(feed_world).items() if k != "PIPELINE_TOPIC_ARN"}
    latest = {"MESSAGE_KEY": "feeds/feed_watcher/latest-message.json"}
    for run, changed in (("run-1", True), ("run-2", False)):
        watcher = run_script(WATCHER, without_topic | {"PIPELINE_CHAIN_RUN": run})
        assert watcher.returncode == 0, watcher.stderr
        consumer = run_script(CONSUMER, consumer_env(feed_world, run, **latest))
        assert consumer.returncode == 0, consumer.stderr
        listed = feed_world.aws.s3.list_objects_v2(Bucket=feed_world.bucket, Prefix=f"c/{run}/")
        assert len(listed.get("Contents", [])) == (1 if changed else 0), run
    assert "feed unchanged in this run" in consumer.stdout
