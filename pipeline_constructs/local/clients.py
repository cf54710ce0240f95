"""The local run's own calls to the emulator: creating resources, submitting sample tasks, reading progress.

They are signed with the administrator's key, so the IAM check never stands in their way.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.config import Config

from pipeline_constructs.local.iam import ADMIN_KEY


class EmulatorClients:
    """boto3 clients of the emulator at ``endpoint``, and what the run reads of its queues."""

    def __init__(self, endpoint: str, region: str) -> None:
        self.endpoint = endpoint
        self.region = region
        self.session = boto3.session.Session(
            aws_access_key_id=ADMIN_KEY, aws_secret_access_key="local", region_name=region
        )
        config = Config(retries={"mode": "standard"}, max_pool_connections=20)
        self.sqs = self.session.client("sqs", endpoint_url=endpoint, config=config)
        self.s3 = self.session.client("s3", endpoint_url=endpoint, config=config)
        self.sns = self.session.client("sns", endpoint_url=endpoint, config=config)
        self.dynamodb = self.session.client("dynamodb", endpoint_url=endpoint, config=config)
        self.ssm = self.session.client("ssm", endpoint_url=endpoint, config=config)

    def client(self, service: str, endpoint: str) -> Any:
        """A client of one of the run's own endpoints (the local Auto Scaling one), as the administrator."""
        return self.session.client(service, endpoint_url=endpoint)

    def queue_url_of_arn(self, arn: str) -> str:
        """The emulator's URL of the queue whose ARN is ``arn``."""
        _, _, _, _, account, name = arn.split(":", 5)
        return f"{self.endpoint}/{account}/{name}"

    def queue_depth(self, url: str) -> tuple[int, int]:
        """(visible, in flight) messages of the queue at ``url``."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def dead_letter_url(self, queue_url: str) -> str | None:
        """The URL of the queue's dead-letter queue; None when it has no redrive policy."""
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
        if "RedrivePolicy" not in attributes:
            return None
        return self.queue_url_of_arn(json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"])
