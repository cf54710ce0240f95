"""What a BatchChain's jobs may do: each step's job role holds its own S3 prefix, read access to the prefixes
of the steps it reads from, and what its link, its queue and its fleet need; nothing of the other steps'."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import aws_iam as iam

from pipeline_constructs.building_blocks.compliance import grant_data_key_use
from pipeline_constructs.building_blocks.nag import acknowledge_wildcard_resources
from pipeline_constructs.chain.fan_out import ITEMS_FOLDER
from pipeline_constructs.chain.links import CLAIMS_FOLDER, is_message_link

if TYPE_CHECKING:
    from pipeline_constructs.chain.construct import BatchChain
    from pipeline_constructs.chain.steps import ChainStep


def step_job_role(chain: BatchChain, index: int, step: ChainStep) -> iam.Role:
    """The job role of ``chain``'s step at ``index``, granted what the step's job may do."""
    role = iam.Role(
        chain,
        f"{step.name}JobRole",
        assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
        description=f"{chain.node.path} step {step.name}: its own S3 prefix and its chain's topic",
    )
    bucket, prefix = chain.bucket, chain.prefix
    sources = _read_sources(chain, index, step)
    readable = [bucket.arn_for_objects(f"{prefix}{name}/*") for name in sources]
    after_message = index and (is_message_link(chain.steps[index - 1].link) or chain.steps[index - 1].fan_out)
    if after_message and step.fan_out is None:
        # A message too large for SubmitJob (a join's list of items too) arrives as a claim check
        # (DOWNLOAD_MESSAGE_S3); a fan-out's children get no message, only their items (the glue reads it).
        readable.append(bucket.arn_for_objects(f"{prefix}{CLAIMS_FOLDER}*/{step.name}.json"))
    if step.fan_out is not None:
        # Each child reads its item from the fan-out's items object (PIPELINE_ITEMS).
        readable.append(bucket.arn_for_objects(f"{prefix}{ITEMS_FOLDER}*/{step.name}.json"))
    own = bucket.arn_for_objects(f"{prefix}{step.name}/*")
    role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[own]))
    if readable:
        role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=readable))
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{prefix}{name}/*" for name in [step.name, *sources]]}},
        )
    )
    if bucket.encryption_key is not None:
        grant_data_key_use(bucket.encryption_key, role)
    if is_message_link(step.link):
        grant_publish_only(chain, role)
    if step.consumes is not None:
        step.consumes.grant_consume_messages(role)
    acknowledge_wildcard_resources(
        role,
        [own, *readable],
        f"Object access limited to this step's own prefix ('{prefix}{step.name}/') and the prefixes "
        "of the steps it reads from; object keys are only known at run time.",
    )
    if step.feeds is not None:
        step.feeds.grant_submit(role)
    return role


def _read_sources(chain: BatchChain, index: int, step: ChainStep) -> list[str]:
    """The steps whose prefixes ``step`` reads: its ``reads_from``, else the step before it."""
    if step.reads_from is not None:
        return list(step.reads_from)
    return [chain.steps[index - 1].name] if index else []


def grant_publish_only(chain: BatchChain, grantee: iam.IGrantable) -> iam.Grant:
    """sns:Publish on the chain's topic, and its customer-managed key's use if it has one."""
    # sns:Publish alone: the topic's AWS managed key is usable through SNS by any principal of the account, so
    # the KMS grant Topic.grant_publish adds (on key/*) would only widen the role.
    grant = iam.Grant.add_to_principal(grantee=grantee, actions=["sns:Publish"], resource_arns=[chain.topic.topic_arn])
    if chain.topic_key is not None:  # a customer-managed key: SNS encrypts with the publisher's rights
        grant_data_key_use(chain.topic_key, grantee)
    return grant
