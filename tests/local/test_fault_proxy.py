"""The fault proxy makes the faults AWS's APIs make, and botocore reads them as it reads AWS's own: 5xx and
throttles retried by the SDK until a burst outlasts its retries, stalls that delay a call without losing it."""

from __future__ import annotations

import time
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from pipeline_constructs.local.proxy import Rule, server_error, throttled

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def clients(aws_env, proxy, config=NO_RETRIES):
    session = boto3.session.Session(
        aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"],
        region_name=aws_env["AWS_DEFAULT_REGION"],
    )
    return {
        name: session.client(name, endpoint_url=proxy.endpoint, config=config) for name in ("sqs", "dynamodb", "s3")
    }


@pytest.mark.parametrize(
    ("make", "sqs_code", "s3_code"),
    [(server_error, "InternalFailure", "InternalError"), (throttled, "ThrottlingException", "SlowDown")],
)
def test_an_injected_fault_reads_as_the_service_error_it_imitates(aws_env, proxy, make, sqs_code, s3_code):
    client = clients(aws_env, proxy)
    queue = client["sqs"].create_queue(QueueName=f"f{uuid.uuid4().hex[:8]}")["QueueUrl"]
    bucket = f"f{uuid.uuid4().hex[:8]}"
    client["s3"].create_bucket(Bucket=bucket)
    proxy.add(Rule(target="AmazonSQS.SendMessage", answer=make("AmazonSQS.SendMessage")))
    proxy.add(Rule(method="PUT", path_contains="/k", answer=make()))
    with pytest.raises(ClientError) as sqs_error:
        client["sqs"].send_message(QueueUrl=queue, MessageBody="x")
    with pytest.raises(ClientError) as s3_error:
        client["s3"].put_object(Bucket=bucket, Key="k", Body=b"x")
    assert sqs_error.value.response["Error"]["Code"] == sqs_code
    assert s3_error.value.response["Error"]["Code"] == s3_code
    client["sqs"].send_message(QueueUrl=queue, MessageBody="x")  # the burst of one is over
    assert (
        client["sqs"].get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
        == "1"
    ), "a refused call never reached the service"


def test_the_sdk_retries_a_burst_shorter_than_its_retries_and_not_a_longer_one(aws_env, proxy):
    retrying = clients(aws_env, proxy, Config(retries={"total_max_attempts": 3, "mode": "standard"}))["dynamodb"]
    target = "DynamoDB_20120810.ListTables"
    rule = proxy.add(Rule(target=target, answer=throttled(target), times=2))
    retrying.list_tables()
    assert rule.fired == 2
    proxy.add(Rule(target=target, answer=server_error(target), times=3))
    with pytest.raises(ClientError, match="InternalFailure"):
        retrying.list_tables()


def test_a_stalled_call_is_late_not_lost(aws_env, proxy):
    sqs = clients(aws_env, proxy)["sqs"]
    queue = sqs.create_queue(QueueName=f"f{uuid.uuid4().hex[:8]}")["QueueUrl"]
    proxy.add(Rule(target="AmazonSQS.SendMessage", stall=1.5))
    started = time.monotonic()
    sqs.send_message(QueueUrl=queue, MessageBody="late")
    assert time.monotonic() - started >= 1.5
    (message,) = sqs.receive_message(QueueUrl=queue)["Messages"]
    assert message["Body"] == "late"
