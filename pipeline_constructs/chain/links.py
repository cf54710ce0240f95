"""How a BatchChain's steps hand over to each other: :class:`ChainLink`, and the wiring of a chain's links to
the stack's glue function (its configuration, the topic's subscription, the rule on the jobs' state changes).

At run time the glue function submits the next step: on the chain's SNS message (a message link) or on its
job's SUCCEEDED event (a success link); every state change of the chain's jobs also feeds its run tracking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns

from pipeline_constructs.building_blocks.compliance import grant_data_key_use
from pipeline_constructs.building_blocks.nag import (
    SUBMIT_JOB_RESOURCES,
    acknowledge_parliament,
    acknowledge_wildcard_resources,
)
from pipeline_constructs.chain.fan_out import ITEMS_FOLDER

if TYPE_CHECKING:
    from pipeline_constructs.chain.construct import BatchChain

#: Under the chain's prefix, where the glue function stores a message too large for SubmitJob (a claim
#: check, ``_messages/<run>/<message id>/<step>.json``); no step name starts with "_", so no step's prefix is this.
CLAIMS_FOLDER = "_messages/"
#: What a link hands the next step; set by the glue, so a step's or link's own value would be overridden
#: (or override the real message).
LINK_VARIABLES = ("DOWNLOAD_MESSAGE", "PREVIOUS_JOB_ID")


@dataclass(frozen=True)
class ChainLink:
    """How a step hands over to the next one.

    ``ChainLink.message(...)``: the step publishes to the chain's SNS topic; the next step gets the message,
    unchanged, in ``DOWNLOAD_MESSAGE`` (the users' way: the next job needs the previous job's output).
    ``ChainLink.on_success(...)``: when the step's job SUCCEEDED (EventBridge), the next step starts with
    ``PREVIOUS_JOB_ID``; the job needs no code for it. ``environment``: static variables for the next step
    (values become strings: ``{"PARALLELISM": 15}`` arrives as ``"15"``).
    """

    kind: str
    environment: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def message(cls, environment: Mapping[str, Any] | None = None) -> ChainLink:
        return cls("message", dict(environment or {}))

    @classmethod
    def on_success(cls, environment: Mapping[str, Any] | None = None) -> ChainLink:
        return cls("success", dict(environment or {}))


def is_message_link(link: ChainLink | None) -> bool:
    """Whether ``link`` hands over by the chain's topic (the step publishes, the next one reads a message)."""
    return link is not None and link.kind == "message"


def wire_links(chain: BatchChain) -> events.Rule:
    """Register ``chain`` with its glue function and route its messages and job state changes there.

    Returns the rule on every state change of the chain's jobs (run tracking, and the success links).
    """
    has_message_link = any(is_message_link(step.link) for step in chain.steps)
    steps_config = _steps_config(chain)
    chain.glue.register_chain(
        chain.chain_name,
        {
            "jobQueue": chain.job_queue.job_queue_arn,
            "topicArn": chain.topic.topic_arn if has_message_link else None,
            "table": chain.table.table_name,
            "steps": steps_config,
            **({"claims": _grant_claim_checks(chain)} if has_message_link else {}),
            **({"items": _grant_fan_out_items(chain)} if any(step.fan_out for step in chain.steps) else {}),
        },
        owner=chain,
    )
    _grant_submit(chain)
    chain.glue.grant_status(chain.table)
    chain.glue.use_guard_table(chain.table)
    if has_message_link:
        _subscribe_glue(chain)
    return _job_state_rule(chain)


def _steps_config(chain: BatchChain) -> list[dict[str, Any]]:
    """What the glue needs of each step: its job definition, array size, link, and the fleet it wakes."""
    steps_config = []
    for step in chain.steps:
        entry: dict[str, Any] = {
            "name": step.name,
            "jobDefinition": chain.job_definitions[step.name].job_definition_arn,
        }
        if step.array_size:
            entry["arraySize"] = step.array_size
        if step.fan_out is not None:
            entry["fanOut"] = step.fan_out.config()
        if step.link is not None:
            # Values stay as given; the glue turns each into a string (15 -> "15") when it submits.
            entry["link"] = {"kind": step.link.kind, "environment": dict(step.link.environment)}
        if step.feeds is not None:
            step.feeds.grant_wake(chain.glue.role)
            entry["wakes"] = step.feeds.auto_scaling_group.auto_scaling_group_name
        steps_config.append(entry)
    return steps_config


def _grant_submit(chain: BatchChain) -> None:
    """SubmitJob on the chain's queue and every revision of its job definitions: while a deploy revises them,
    the function may still run with the configuration naming the revision before."""
    definitions = chain.job_definition_arns()
    policy = chain.glue.add_to_chain_policy(
        iam.PolicyStatement(actions=["batch:SubmitJob"], resources=[chain.job_queue.job_queue_arn, *definitions]),
        owner=chain.first_job_definition,
    )
    acknowledge_wildcard_resources(
        policy,
        definitions,
        f"Every revision of {chain.chain_name}'s own job definitions (job-definition/<name>:*), each named at "
        "synth; a deploy registers a new revision, and SubmitJob is authorized against the revision.",
    )
    acknowledge_parliament(policy, "RESOURCE_MISMATCH[batch]", SUBMIT_JOB_RESOURCES)


def _grant_claim_checks(chain: BatchChain) -> dict[str, str]:
    """Let the glue function store messages too large for SubmitJob under this chain's claims folder."""
    claims = chain.bucket.arn_for_objects(f"{chain.prefix}{CLAIMS_FOLDER}*")
    policy = chain.glue.add_to_chain_policy(
        iam.PolicyStatement(actions=["s3:PutObject"], resources=[claims]), owner=chain.bucket
    )
    if chain.bucket.encryption_key is not None:
        grant_data_key_use(chain.bucket.encryption_key, chain.glue.role)
    acknowledge_wildcard_resources(
        policy,
        [claims],
        f"Messages too large for SubmitJob, stored as claim checks under {chain.chain_name}'s "
        f"'{chain.prefix}{CLAIMS_FOLDER}' only; their keys are chain runs known at run time.",
    )
    return {"bucket": chain.bucket.bucket_name, "prefix": f"{chain.prefix}{CLAIMS_FOLDER}"}


def _grant_fan_out_items(chain: BatchChain) -> dict[str, str]:
    """Let the glue function store each fan-out's items under the chain's items folder (and read them back at
    the join), and read the manifests the steps before an ``over_manifest`` fan-out write under their prefixes."""
    items = chain.bucket.arn_for_objects(f"{chain.prefix}{ITEMS_FOLDER}*")
    manifests = [
        chain.bucket.arn_for_objects(f"{chain.prefix}{chain.steps[index - 1].name}/*")
        for index, step in enumerate(chain.steps)
        if step.fan_out is not None and step.fan_out.source == "manifest"
    ]
    statements = [iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[items])]
    if manifests:
        statements.append(iam.PolicyStatement(actions=["s3:GetObject"], resources=manifests))
    if chain.bucket.encryption_key is not None:
        grant_data_key_use(chain.bucket.encryption_key, chain.glue.role)
    for statement in statements:
        acknowledge_wildcard_resources(
            chain.glue.add_to_chain_policy(statement, owner=chain.bucket),
            statement.resources,
            f"The items of {chain.chain_name}'s fan-out steps, under '{chain.prefix}{ITEMS_FOLDER}' only, and the "
            "manifests the steps before them write under their own prefixes; keys are chain runs known at run time.",
        )
    return {"bucket": chain.bucket.bucket_name, "prefix": f"{chain.prefix}{ITEMS_FOLDER}"}


def _subscribe_glue(chain: BatchChain) -> None:
    """The glue function's subscription to the chain's topic, and the topic's right to invoke it."""
    # Made here rather than with SnsEventSource, whose ids (the topic's id under the shared function) would
    # collide between the chains of one stack.
    sns.Subscription(
        chain,
        "GlueSubscription",
        topic=chain.topic,
        protocol=sns.SubscriptionProtocol.LAMBDA,
        endpoint=chain.glue.function.function_arn,
        dead_letter_queue=chain.glue.failure_queue,
    )
    # In the chain's scope, beside its topic: chains of one id in two scopes do not collide, and in a nested
    # stack the permission stays with the topic it names.
    lambda_.CfnPermission(
        chain,
        "GlueInvokeFromTopic",
        action="lambda:InvokeFunction",
        function_name=chain.glue.function.function_arn,
        principal="sns.amazonaws.com",
        source_arn=chain.topic.topic_arn,
    )


def _job_state_rule(chain: BatchChain) -> events.Rule:
    """Every state change of this chain's jobs, to the glue function: run tracking, and the success links."""
    return events.Rule(
        chain,
        "JobStateChanges",
        description=f"Batch job state changes of chain {chain.chain_name}",
        event_pattern=events.EventPattern(
            source=["aws.batch"],
            detail_type=["Batch Job State Change"],
            detail={
                "jobQueue": [chain.job_queue.job_queue_arn],
                # Any revision: a job submitted before a deploy revised its definition is still this chain's.
                "jobDefinition": chain.job_definition_event_filter(),
            },
        ),
        targets=[
            events_targets.LambdaFunction(
                chain.glue.function, dead_letter_queue=chain.glue.failure_queue, retry_attempts=8
            )
        ],
    )
