"""DataBucket: the S3 bucket every pattern reads inputs from and writes results to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import compliance_profile, default_key
from pipeline_constructs.building_blocks.nag import (
    EMPTYING_FINDINGS,
    TLS_VERSION_FINDINGS,
    acknowledge_checkov,
    acknowledge_control,
    acknowledge_parliament,
)
from pipeline_constructs.building_blocks.validation import check_duration

#: Key prefixes shared by the runtimes, under each fleet's prefix: inputs are read from ``input/``, results
#: written to ``output/`` and scratch data to ``intermediate/`` (which expires).
INPUT_PREFIX = "input/"
OUTPUT_PREFIX = "output/"
INTERMEDIATE_PREFIX = "intermediate/"
#: The CDK feature flag under which server access log delivery is granted by bucket policy, not by ACL.
LOG_DELIVERY_BY_POLICY = "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy"


class DataBucket(Construct):
    """A private, encrypted, versioned bucket with lifecycle rules and server access logging.

    Defaults: SSE-S3 (no KMS key to pay for), all public access blocked, TLS 1.2+ only, versioning on,
    noncurrent versions expire, server access logs go to a separate log bucket (which logs nowhere: AWS
    advises against a log bucket logging, an endless loop when into itself). Each fleet writing into the
    bucket gets a lifecycle rule expiring its ``<prefix>intermediate/`` (added when the fleet claims its
    prefix, :meth:`expire_scratch`); a bucket a fleet is given that is not a DataBucket's (imported, or the
    user's own) gets no rule: its owner adds one.

    :param encryption_key: customer-managed KMS key for SSE-KMS. Default: None, SSE-S3. Under the compliance
        profile: the stack's key for both buckets, and object lock (no default retention) on both.
    :param intermediate_expiration: how long objects under each fleet's ``intermediate/`` live. Default: 7 days.
    :param noncurrent_version_expiration: how long overwritten or deleted versions are kept. Default: 30 days.
    :param access_log_bucket: where server access logs go. Default: a new log bucket, ``self.access_log_bucket``.
    :param access_log_expiration: how long server access logs are kept in a created log bucket. Default: 365 days.
    :param removal_policy: what happens to the buckets when the stack is deleted. Default: RETAIN.
        DESTROY empties them first, every object version and delete marker (the CDK's ``auto_delete_objects``
        custom resource, one Lambda function per stack), then deletes them.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey | None = None,
        intermediate_expiration: Duration | None = None,
        noncurrent_version_expiration: Duration | None = None,
        access_log_bucket: s3.IBucket | None = None,
        access_log_expiration: Duration | None = None,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        # Log delivery granted by a bucket policy, never an ACL (CT.S3.PR.5), whatever the app's feature flags.
        self.node.set_context(LOG_DELIVERY_BY_POLICY, True)
        self.intermediate_expiration = intermediate_expiration or Duration.days(7)
        self.noncurrent_version_expiration = noncurrent_version_expiration or Duration.days(30)
        log_expiration = access_log_expiration or Duration.days(365)
        one_day = Duration.days(1)
        check_duration(self, "intermediate_expiration", self.intermediate_expiration, minimum=one_day)
        check_duration(self, "noncurrent_version_expiration", self.noncurrent_version_expiration, minimum=one_day)
        check_duration(self, "access_log_expiration", log_expiration, minimum=one_day)
        compliance = compliance_profile(self)
        encryption_key = default_key(self, encryption_key)

        if access_log_bucket is None:
            access_log_bucket = _access_log_bucket(self, compliance, encryption_key, log_expiration, removal_policy)
        self.access_log_bucket: s3.IBucket = access_log_bucket

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.KMS if encryption_key else s3.BucketEncryption.S3_MANAGED,
            encryption_key=encryption_key,
            bucket_key_enabled=encryption_key is not None,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            object_lock_enabled=compliance or None,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="data-bucket/",
            lifecycle_rules=self._lifecycle_rules(),
            removal_policy=removal_policy,
            auto_delete_objects=removal_policy == RemovalPolicy.DESTROY,
        )
        _notify_eventbridge(self.bucket)
        for finding, reason in TLS_VERSION_FINDINGS.items():
            acknowledge_parliament(cast(s3.BucketPolicy, self.bucket.policy), finding, reason)
        if encryption_key is None:
            acknowledge_control(self.bucket, "s3_bucket_default_encryption_kms_check", SSE_S3_REASON)
        if not compliance:
            acknowledge_control(self.bucket, "s3_bucket_object_lock_enabled_check", NO_OBJECT_LOCK_REASON)

        if removal_policy == RemovalPolicy.DESTROY:
            acknowledge_object_emptying(self)

    def _lifecycle_rules(self) -> list[s3.LifecycleRule]:
        """Overwritten and deleted versions expire (scratch data expires per fleet: :meth:`expire_scratch`)."""
        return [
            s3.LifecycleRule(
                id="expire-noncurrent-versions",
                noncurrent_version_expiration=self.noncurrent_version_expiration,
                expired_object_delete_marker=True,
                abort_incomplete_multipart_upload_after=Duration.days(7),
            ),
        ]

    def expire_scratch(self, prefix: str, folders: Sequence[str]) -> None:
        """Expire ``<prefix><folder>`` after ``intermediate_expiration``, for each folder (a writer's scratch)."""
        for folder in folders:
            self.bucket.add_lifecycle_rule(
                id=f"expire-{prefix}{folder}".rstrip("/"),
                prefix=f"{prefix}{folder}",
                expiration=self.intermediate_expiration,
            )


SSE_S3_REASON = (
    "SSE-S3 by default: a customer-managed key costs $1 a month and a request charge per object; pass "
    "encryption_key where a key is required."
)
NO_OBJECT_LOCK_REASON = (
    "Pipeline outputs are rewritten when a task is re-run and expire under the lifecycle rules; versioning "
    "keeps every overwritten or deleted object for noncurrent_version_expiration instead of a lock."
)


def _access_log_bucket(
    data_bucket: DataBucket,
    compliance: bool,
    encryption_key: kms.IKey | None,
    expiration: Duration,
    removal_policy: RemovalPolicy,
) -> s3.Bucket:
    """The bucket the data bucket's server access logs go to; under the compliance profile encrypted with
    ``encryption_key``, locked and notifying EventBridge like the data bucket."""
    # cdk-nag's S1 (access logs) does not apply to a bucket that is itself a log target.
    bucket = s3.Bucket(
        data_bucket,
        "AccessLogs",
        # SSE-S3 needs nothing of the logging service; a customer-managed key needs it in its key
        # policy (PipelineKey has it).
        encryption=s3.BucketEncryption.KMS if compliance else s3.BucketEncryption.S3_MANAGED,
        encryption_key=encryption_key if compliance else None,
        bucket_key_enabled=compliance or None,
        object_lock_enabled=compliance or None,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        # Object ownership left to the CDK: a bucket policy grants log delivery under the
        # serverAccessLogsUseBucketPolicy feature flag, an ACL (ObjectWriter) without it.
        enforce_ssl=True,
        minimum_tls_version=1.2,
        # Log objects are never overwritten: versioning costs nothing and keeps deletions recoverable.
        versioned=True,
        lifecycle_rules=[
            s3.LifecycleRule(
                id="expire-access-logs",
                expiration=expiration,
                noncurrent_version_expiration=Duration.days(1),
            )
        ],
        removal_policy=removal_policy,
        auto_delete_objects=removal_policy == RemovalPolicy.DESTROY,
    )
    acknowledge_control(bucket, "s3_bucket_logging_enabled_check", LOG_BUCKET_LOGS_NOWHERE_REASON, checkov="CKV_AWS_18")
    for finding, reason in TLS_VERSION_FINDINGS.items():
        acknowledge_parliament(cast(s3.BucketPolicy, bucket.policy), finding, reason)
    for finding, reason in EMPTYING_FINDINGS.items() if removal_policy == RemovalPolicy.DESTROY else ():
        acknowledge_parliament(cast(s3.BucketPolicy, bucket.policy), finding, reason)
    if compliance:
        _notify_eventbridge(bucket)
    else:
        _acknowledge_log_bucket(bucket)
    return bucket


LOG_BUCKET_LOGS_NOWHERE_REASON = (
    "This is the access-log bucket (CT.S3.PR.2 cannot be met here, under any profile): AWS advises against "
    "logging a log bucket. Into itself, every delivery is logged by a later one, an endless loop of log objects "
    "(each an EventBridge event too); into another bucket, that one would need a log bucket in turn."
)


def _notify_eventbridge(bucket: s3.Bucket) -> None:
    """Object events to EventBridge (free to emit) so users can react to uploads; set natively, where the
    CDK's ``event_bridge_enabled`` would add a notifications custom-resource Lambda to the stack."""
    cfn_bucket = cast(s3.CfnBucket, bucket.node.default_child)  # an s3.Bucket's default child is its CfnBucket
    cfn_bucket.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
        event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
    )


def _acknowledge_log_bucket(bucket: s3.Bucket) -> None:
    acknowledge_control(
        bucket,
        "s3_bucket_default_encryption_kms_check",
        "S3 server access logs are written by the logging service; SSE-S3 needs no key policy for it and costs "
        "nothing; a customer-managed key would need the logging service in its key policy.",
    )
    acknowledge_control(
        bucket,
        "s3_bucket_object_lock_enabled_check",
        "Access logs expire under a lifecycle rule; versioning keeps deleted log objects for a day instead of a lock.",
    )
    acknowledge_control(
        bucket,
        "s3_event_notifications_enabled_check",
        "Nothing reacts to log deliveries; events for them would be noise on the default event bus.",
    )


#: The id of the CDK's auto-delete custom resource provider, one per stack at its root.
AUTO_DELETE_PROVIDER_ID = "Custom::S3AutoDeleteObjectsCustomResourceProvider"


def acknowledge_object_emptying(data_bucket: DataBucket) -> None:
    """Accept, on the CDK's auto-delete provider (the function emptying the buckets), what the rule packs
    find in it. Its handler lists every object version and delete marker and deletes them, after a bucket
    policy statement denying new objects (access logs keep arriving for hours)."""
    handler = Stack.of(data_bucket).node.find_child(AUTO_DELETE_PROVIDER_ID).node.find_child("Handler")
    acknowledge_control(
        handler,
        "lambda_inside_vpc_check",
        "The CDK's function emptying DESTROY buckets runs only when the stack changes or is deleted and calls "
        "only S3 on those buckets; in the VPC, which the same deletion removes, its network interfaces "
        "(held by Lambda for minutes after use) would hold up the subnets' deletion.",
        checkov="CKV_AWS_117",
    )
    acknowledge_checkov(
        handler,
        "CKV_AWS_116",
        "CloudFormation invokes the CDK's emptying function synchronously and shows its failure as the stack "
        "event; a dead-letter queue receives only asynchronous invocations.",
    )
    acknowledge_checkov(
        handler,
        "CKV_AWS_115",
        "Invoked by CloudFormation once per bucket deleted or replaced; reserved concurrency would only take "
        "capacity from the account's unreserved pool.",
    )
    for finding, reason in EMPTYING_FINDINGS.items():
        acknowledge_parliament(cast(s3.BucketPolicy, data_bucket.bucket.policy), finding, reason)
