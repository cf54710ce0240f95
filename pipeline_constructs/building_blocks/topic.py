"""SecureTopic: an SNS topic that only accepts TLS, encrypted when no customer key is needed for that."""

from __future__ import annotations

from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import default_key
from pipeline_constructs.building_blocks.nag import acknowledge_checkov

AWS_MANAGED_SNS_KEY_ALIAS = "alias/aws/sns"


def secure_topic(
    scope: Construct,
    construct_id: str,
    *,
    encryption_key: kms.IKey | None = None,
    service_publishers: bool = False,
    display_name: str | None = None,
) -> sns.Topic:
    """Create an SNS topic with a TLS-only topic policy.

    :param encryption_key: customer-managed KMS key for SSE. Default: None: the AWS managed key
        ``alias/aws/sns`` (free) when only IAM principals publish, no SSE when services do; the stack's key
        under the compliance profile.
    :param service_publishers: True when AWS services (CloudWatch alarms, EventBridge) publish to the topic.
        They cannot use the AWS managed SNS key, so without ``encryption_key`` the topic is left unencrypted;
        it should carry notifications only. Default: False.
    :param display_name: the topic's display name (shown in e-mail notifications). Default: none.
    """
    master_key: kms.IKey | None = default_key(scope, encryption_key)
    if master_key is None and not service_publishers:
        master_key = kms.Alias.from_alias_name(scope, f"{construct_id}AwsManagedKey", AWS_MANAGED_SNS_KEY_ALIAS)
    topic = sns.Topic(
        scope,
        construct_id,
        master_key=master_key,
        enforce_ssl=True,
        display_name=display_name,
    )
    if master_key is None:
        acknowledge_checkov(
            topic,
            "CKV_AWS_26",
            "AWS services (CloudWatch alarms, EventBridge) publish here, and they cannot use the AWS managed SNS "
            "key: the topic carries notifications only. Pass encryption_key (the compliance profile does).",
        )
    return topic
