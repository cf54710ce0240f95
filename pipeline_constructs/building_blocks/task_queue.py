"""TaskQueue: an SQS queue with its dead-letter queue, encrypted and TLS-only."""

from __future__ import annotations

import jsii
from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import default_key, grant_data_key_use
from pipeline_constructs.building_blocks.nag import SSE_SQS, acknowledge, acknowledge_checkov
from pipeline_constructs.building_blocks.validation import check_duration, check_range, check_visibility_covers, seconds

#: SQS' own limits.
MAX_VISIBILITY_TIMEOUT = Duration.hours(12)
DEAD_LETTER_RETENTION = Duration.days(14)
#: A dead-letter queue says so (the Control Tower control CT.SQS.PR.1 asks every queue for a redrive policy
#: or this). "allowAll" is SQS' behaviour without the policy; "byQueue" would need the source queue's ARN,
#: which already depends on this queue's.
LAST_STOP = sqs.RedriveAllowPolicy(redrive_permission=sqs.RedrivePermission.ALLOW_ALL)


class TaskQueue(Construct):
    """A task queue whose poison messages land in a dead-letter queue after ``max_receive_count`` receives.

    Both queues use SSE-SQS (no KMS key to pay for) unless a key is given, and deny any request not
    made over TLS. The DLQ keeps messages 14 days, the SQS maximum, so nothing is lost before someone looks.

    :param visibility_timeout: how long a received message stays hidden from other consumers.
        Default: the consumer timeout plus 30 s, or 5 minutes without one. Range: 0 s to 12 hours,
        and at least ``consumer_timeout``.
    :param consumer_timeout: the longest a consumer works on one message (a Lambda timeout, a worker's task
        timeout). When given, a shorter ``visibility_timeout`` is an error: the message would be handed to a
        second consumer while the first is still on it. Default: None, not checked.
    :param max_receive_count: receives before a message moves to the DLQ. Default: 3. Range: 1 to 1000.
    :param retention_period: how long the task queue keeps a message. Default: 4 days. Range: 60 s to 14 days.
    :param encryption_key: customer-managed KMS key for both queues. Default: None, SSE-SQS (the stack's key
        under the compliance profile).
    :param queue_name: physical name of the task queue (the DLQ gets a ``-dlq`` suffix). Default: generated.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        visibility_timeout: Duration | None = None,
        consumer_timeout: Duration | None = None,
        max_receive_count: int = 3,
        retention_period: Duration | None = None,
        encryption_key: kms.IKey | None = None,
        queue_name: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if visibility_timeout is None:
            consumer_seconds = seconds(consumer_timeout)
            visibility_timeout = (
                Duration.seconds(consumer_seconds + 30) if consumer_seconds is not None else Duration.minutes(5)
            )
        self.visibility_timeout = visibility_timeout
        self.consumer_timeout = consumer_timeout
        self.max_receive_count = max_receive_count
        self.retention_period = retention_period or Duration.days(4)

        check_duration(self, "visibility_timeout", visibility_timeout, maximum=MAX_VISIBILITY_TIMEOUT)
        check_range(self, "max_receive_count", max_receive_count, minimum=1, maximum=1000)
        check_duration(
            self,
            "retention_period",
            self.retention_period,
            minimum=Duration.seconds(60),
            maximum=Duration.days(14),
        )
        check_visibility_covers(self, visibility_timeout, "consumer_timeout", consumer_timeout)

        encryption_key = default_key(self, encryption_key)
        encryption = sqs.QueueEncryption.KMS if encryption_key else sqs.QueueEncryption.SQS_MANAGED
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            queue_name=f"{queue_name}-dlq" if queue_name else None,
            retention_period=DEAD_LETTER_RETENTION,
            encryption=encryption,
            encryption_master_key=encryption_key,
            enforce_ssl=True,
            redrive_allow_policy=LAST_STOP,
        )
        _acknowledge_last_stop(self.dead_letter_queue, referenced_by_redrive=True)
        self.queue = sqs.Queue(
            self,
            "Queue",
            queue_name=queue_name,
            visibility_timeout=visibility_timeout,
            retention_period=self.retention_period,
            encryption=encryption,
            encryption_master_key=encryption_key,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue, max_receive_count=max_receive_count),
        )
        for queue in (self.queue, self.dead_letter_queue) if encryption_key is None else ():
            acknowledge_checkov(queue, "CKV_AWS_27", SSE_SQS)


def grant_send(queue: sqs.IQueue, grantee: iam.IGrantable) -> iam.Grant:
    """What a producer needs to send to ``queue``: ``sqs:SendMessage`` (and the two reads SDKs make) and, on a
    queue with a customer-managed key, exactly the key use SQS asks of a sender. The CDK's
    ``grant_send_messages`` adds ``kms:ReEncrypt*`` and ``kms:GenerateDataKey*`` wildcards instead."""
    grant = iam.Grant.add_to_principal(
        grantee=grantee,
        actions=["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
        resource_arns=[queue.queue_arn],
    )
    if queue.encryption_master_key is not None:
        grant_data_key_use(queue.encryption_master_key, grantee)
    return grant


@jsii.implements(lambda_.IDestination)
class QueueDestination:
    """A Lambda on-failure (or on-success) destination queue, granted with :func:`grant_send`; the CDK's
    ``SqsDestination`` grants with ``grant_send_messages``."""

    def __init__(self, queue: sqs.IQueue) -> None:
        self.queue = queue

    def bind(
        self,
        scope: Construct,
        fn: lambda_.IFunction,
        *_options: lambda_.DestinationOptions,
        type: lambda_.DestinationType | None = None,
    ) -> lambda_.DestinationConfig:
        """Grant ``fn`` sending to the queue. (jsii passes the destination options as one struct, positionally,
        where :class:`~aws_cdk.aws_lambda.IDestination` declares their field ``type`` as a keyword.)"""
        grant_send(self.queue, fn)
        return lambda_.DestinationConfig(destination=self.queue.queue_arn)


def failure_queue(scope: Construct, construct_id: str, *, encryption_key: kms.IKey | None = None) -> sqs.Queue:
    """A queue that is itself a last stop (a Lambda on-failure destination, a subscription's DLQ).

    Same security as :class:`TaskQueue`'s DLQ: SSE-SQS unless a key is given, TLS only, 14 days retention.

    :param encryption_key: customer-managed KMS key. Default: None, SSE-SQS (the stack's key under the
        compliance profile).
    """
    encryption_key = default_key(scope, encryption_key)
    queue = sqs.Queue(
        scope,
        construct_id,
        retention_period=DEAD_LETTER_RETENTION,
        encryption=sqs.QueueEncryption.KMS if encryption_key else sqs.QueueEncryption.SQS_MANAGED,
        encryption_master_key=encryption_key,
        enforce_ssl=True,
        redrive_allow_policy=LAST_STOP,
    )
    _acknowledge_last_stop(queue, referenced_by_redrive=False)
    if encryption_key is None:
        acknowledge_checkov(queue, "CKV_AWS_27", SSE_SQS)
    return queue


def _acknowledge_last_stop(queue: sqs.Queue, *, referenced_by_redrive: bool) -> None:
    reason = "This queue is itself the dead-letter destination; a DLQ behind it would only move the problem."
    acknowledge(queue, "Serverless-SQSRedrivePolicy", reason)
    if not referenced_by_redrive:  # AwsSolutions-SQS3 already recognizes queues named in a redrive policy
        acknowledge(queue, "AwsSolutions-SQS3", reason)
