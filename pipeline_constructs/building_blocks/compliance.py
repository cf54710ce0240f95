"""The compliance profile: one switch under which the constructs make none of the default's cost trade-offs.

Turn it on for an app, a stack or any scope with CDK context, before the constructs are added::

    stack.node.set_context(COMPLIANCE_CONTEXT, True)      # or: cdk synth -c pipeline-constructs:compliance=true

Under it every construct that gets no key of its own encrypts with the stack's customer-managed key
(:meth:`PipelineKey.of`): buckets, the status table, queues, topics and log groups; log groups keep a year at
least; launch templates turn on detailed monitoring; :class:`PipelineNetwork` puts compute in private
subnets behind a NAT gateway, with no public IP assigned anywhere; the glue function runs in the VPC; the
buckets get object lock (no default retention) and event notifications; log groups are retained when the
stack is deleted. The example then passes every Control Tower proactive control with one acknowledgment:
server access logging of the access-log bucket, which AWS advises against (see DataBucket). What it adds
while idle (the NAT gateway and its address, the key) carries the metadata below, which ``pipeline cost``
reads to show the default's idle cost next to it.
"""

from __future__ import annotations

from typing import Any, cast

import jsii
from aws_cdk import ArnFormat, CfnResource, IStableAnyProducer, Lazy, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct, IConstruct

from pipeline_constructs.building_blocks.nag import acknowledge_parliament
from pipeline_constructs.building_blocks.template_metadata import PROFILE_METADATA
from pipeline_constructs.building_blocks.validation import argument_error, stack_singleton

#: The context key of the switch (true / false).
COMPLIANCE_CONTEXT = "pipeline-constructs:compliance"
#: The id of the stack's shared key, at the stack's root.
KEY_ID = "Key"


def compliance_profile(scope: IConstruct) -> bool:
    """Whether the compliance profile is on for ``scope`` (context ``pipeline-constructs:compliance``).

    Anything but true or false (``-c`` gives strings) is an error: a misspelled switch would otherwise leave a
    governed account's stack on the cheap default without a word."""
    value = scope.node.try_get_context(COMPLIANCE_CONTEXT)
    if value is None or value is False or str(value).lower() == "false":
        return False
    if value is True or str(value).lower() == "true":
        return True
    raise argument_error(scope, f"context {COMPLIANCE_CONTEXT}", value, "true, false")


def mark_compliance_cost(resource: IConstruct) -> None:
    """Mark a resource the profile adds and that bills while idle (for ``pipeline cost``)."""
    cfn = resource if isinstance(resource, CfnResource) else resource.node.default_child
    if isinstance(cfn, CfnResource):
        cfn.add_metadata(PROFILE_METADATA, "compliance")


#: What a principal needs of a key to read and write data that S3, SQS, SNS and DynamoDB encrypt with it.
DATA_KEY_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")


def grant_data_key_use(key: kms.IKey, grantee: iam.IGrantable) -> iam.Grant:
    """Exactly :data:`DATA_KEY_ACTIONS` on ``key``: no ``kms:ReEncrypt*`` or ``kms:GenerateDataKey*``
    wildcards (the CDK's ``grant_encrypt_decrypt`` adds both)."""
    return key.grant(grantee, *DATA_KEY_ACTIONS)


def default_key(scope: Construct, given: kms.IKey | None) -> kms.IKey | None:
    """The key a construct encrypts with: the one it was given, else the stack's key under the profile."""
    if given is not None or not compliance_profile(scope):
        return given
    return PipelineKey.of(scope).key


class PipelineKey(Construct):
    """The stack's customer-managed key for the compliance profile: rotated yearly, and usable by the
    services that write into the stack's resources on their own (CloudWatch Logs, S3 server access logging,
    CloudWatch alarms and EventBridge publishing to topics, SNS dead-lettering a subscription's failed
    deliveries), each only for this account's resources.

    :param removal_policy: what happens to the key when the stack is deleted. Default: RETAIN (data it
        encrypted stays readable).
    """

    def __init__(self, scope: Construct, construct_id: str, *, removal_policy: RemovalPolicy = RemovalPolicy.RETAIN):
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.key = kms.Key(
            self,
            "Key",
            description=f"pipeline_constructs: data, status, queues, topics and logs of {stack.stack_name}",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        mark_compliance_cost(self.key)
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchLogsOfThisAccount",
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                            service="logs",
                            resource="log-group",
                            resource_name="*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    }
                },
            )
        )
        # Grants only for AWS services acting for their resources (DynamoDB creates one for the table), never
        # for a principal to pass the key's use on (CT.KMS.PR.3).
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="GrantsOnlyForAwsServices",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["kms:CreateGrant"],
                resources=["*"],
                conditions={
                    "BoolIfExists": {"kms:GrantIsForAWSResource": "false", "aws:PrincipalIsAWSService": "false"}
                },
            )
        )
        _allow_services_of_this_account(self.key)
        _bind_service_statements_to_account(self.key)
        acknowledge_parliament(
            self.key, "RESOURCE_STAR[kms]", "In a key policy, Resource '*' is this key: it can name no other."
        )
        acknowledge_parliament(
            self.key,
            "UNKNOWN_CONDITION_FOR_ACTION[kms:EncryptionContext:aws:logs:arn]",
            "AWS's documented statement for CloudWatch Logs (kms:Describe* with the log-group encryption "
            "context); parliament's data gives the describe actions no condition keys.",
        )
        acknowledge_parliament(
            self.key,
            "MISMATCHED_TYPE[ArnLike]",
            "AWS documents ArnLike on kms:EncryptionContext:aws:logs:arn for CloudWatch Logs; parliament types "
            "every encryption-context key as a string.",
        )

    @classmethod
    def of(cls, scope: Construct) -> PipelineKey:
        """The stack's key, created on first use."""
        return stack_singleton(scope, KEY_ID, cls, cls)


def _allow_services_of_this_account(key: kms.Key) -> None:
    """The services that write into the stack's resources on their own, each for this account's resources only."""
    account = Stack.of(key).account
    for sid, principal in (
        ("S3ServerAccessLogging", "logging.s3.amazonaws.com"),
        ("CloudWatchAlarmsToTopics", "cloudwatch.amazonaws.com"),
        ("EventBridgeToTopicsAndQueues", "events.amazonaws.com"),
        # An SNS subscription's dead-letter queue (the glue function's failure queue) is written by SNS.
        ("SnsToDeadLetterQueues", "sns.amazonaws.com"),
    ):
        key.add_to_resource_policy(
            iam.PolicyStatement(
                sid=sid,
                principals=[iam.ServicePrincipal(principal)],
                actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )


#: Condition keys that bind a service principal's statement to its source (confused-deputy prevention).
SOURCE_CONDITION_KEYS = frozenset(
    {
        "aws:sourcearn",
        "aws:sourceaccount",
        "aws:sourceorgid",
        "aws:sourceorgpaths",
        "kms:encryptioncontext:aws:logs:arn",
    }
)


def is_source_bound(statement: dict[str, Any]) -> bool:
    """Whether a policy statement (as synthesized) carries a source condition."""
    keys = {key.lower() for values in statement.get("Condition", {}).values() for key in values}
    return not keys.isdisjoint(SOURCE_CONDITION_KEYS)


def _bind_service_statements_to_account(key: kms.Key) -> None:
    """The CDK adds statements for service principals to the key policy on its own, with no condition: S3
    server access logging (``grant_encrypt_decrypt`` when a logged bucket's target is encrypted) and
    EventBridge (``grant_publish`` when a rule targets an encrypted topic). No API of the CDK reaches a
    statement it made, so the policy is rendered through this escape hatch, which binds each such statement
    to this account, as the key's own service statements are."""
    cfn_key = cast(kms.CfnKey, key.node.default_child)  # a kms.Key's default child is its CfnKey
    cfn_key.key_policy = Lazy.any(_AccountBoundPolicy(key, cfn_key.key_policy))


@jsii.implements(IStableAnyProducer)
class _AccountBoundPolicy:
    def __init__(self, key: kms.Key, policy: Any) -> None:
        self.key, self.policy = key, policy  # the key's policy document, which the CDK keeps adding to

    def produce(self) -> Any:
        stack = Stack.of(self.key)
        document = stack.resolve(self.policy)
        for statement in document["Statement"]:
            principal = statement.get("Principal")
            serves = isinstance(principal, dict) and "Service" in principal
            if serves and statement["Effect"] == "Allow" and not is_source_bound(statement):
                condition = statement.setdefault("Condition", {}).setdefault("StringEquals", {})
                condition["aws:SourceAccount"] = stack.resolve(stack.account)
        return document
