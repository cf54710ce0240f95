"""Resource policies executed: every delivery an AWS service makes for the example stacks is allowed by the
target's policies, and denied, as AWS denies it, once the statement allowing it is removed."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from pipeline_constructs.local.resolver import Resolver
from pipeline_constructs.local.resource_policies import ResourcePolicies, Sender, configured_deliveries
from pipeline_constructs.ops.assembly import SynthesizedStack

#: Every delivery by an AWS service each example stack configures, named ``sender -> target`` by logical ids
#: without their hashes: the removal test below runs once per delivery (without a synth to collect it), and
#: ``test_the_example_configures_the_deliveries_named_here`` keeps the list true.
_BOTH_STACKS = (
    "S3 server access logging of DataBucket -> bucket dataaccesslogs",
    "Lambda function PipelineConstructsGlueFunction (on-failure destination) -> queue PipelineConstructsGlueFailures",
    "SNS topic FeedsTopic -> function PipelineConstructsGlueFunction",
    "SNS topic FeedsTopic -> queue PipelineConstructsGlueFailures",
    "EventBridge rule FeedsJobStateChanges -> function PipelineConstructsGlueFunction",
    "EventBridge rule FeedsJobStateChanges -> queue PipelineConstructsGlueFailures",
    "EventBridge Scheduler schedule DailyFeedSchedule -> function PipelineConstructsGlueFunction",
    "EventBridge Scheduler schedule DailyFeedSchedule -> queue PipelineConstructsGlueFailures",
    "EventBridge rule ReportsJobStateChanges -> function PipelineConstructsGlueFunction",
    "EventBridge rule ReportsJobStateChanges -> queue PipelineConstructsGlueFailures",
    "EventBridge Scheduler schedule DailyReportSchedule -> function PipelineConstructsGlueFunction",
    "EventBridge Scheduler schedule DailyReportSchedule -> queue PipelineConstructsGlueFailures",
    "CloudWatch alarm AlarmsGlueErrors -> topic AlarmsTopic",
    "CloudWatch alarm AlarmsGlueFailures -> topic AlarmsTopic",
    "EventBridge rule AlarmsFeedsFailedJobs -> topic AlarmsTopic",
    "EventBridge rule AlarmsFeedsFailedJobs -> queue PipelineConstructsGlueFailures",
    "EventBridge rule AlarmsFeedsStuckJobs -> topic AlarmsTopic",
    "EventBridge rule AlarmsFeedsStuckJobs -> queue PipelineConstructsGlueFailures",
    "EventBridge rule AlarmsReportsFailedJobs -> topic AlarmsTopic",
    "EventBridge rule AlarmsReportsFailedJobs -> queue PipelineConstructsGlueFailures",
    "EventBridge rule AlarmsReportsStuckJobs -> topic AlarmsTopic",
    "EventBridge rule AlarmsReportsStuckJobs -> queue PipelineConstructsGlueFailures",
    "CloudWatch alarm AlarmsStatisticsDeadLetters -> topic AlarmsTopic",
    "CloudWatch alarm AlarmsFinishedDeadLetters -> topic AlarmsTopic",
    "CloudWatch alarm AlarmsWordCountsDeadLetters -> topic AlarmsTopic",
    "CloudWatch alarm AlarmsWordFrequenciesDeadLetters -> topic AlarmsTopic",
    # The fan-out chain: its message link, its job states, its schedule, its alarms' rules.
    "SNS topic PartitionsTopic -> function PipelineConstructsGlueFunction",
    "SNS topic PartitionsTopic -> queue PipelineConstructsGlueFailures",
    "EventBridge rule PartitionsJobStateChanges -> function PipelineConstructsGlueFunction",
    "EventBridge rule PartitionsJobStateChanges -> queue PipelineConstructsGlueFailures",
    "EventBridge Scheduler schedule DailyPartitionsSchedule -> function PipelineConstructsGlueFunction",
    "EventBridge Scheduler schedule DailyPartitionsSchedule -> queue PipelineConstructsGlueFailures",
    "EventBridge rule AlarmsPartitionsFailedJobs -> topic AlarmsTopic",
    "EventBridge rule AlarmsPartitionsFailedJobs -> queue PipelineConstructsGlueFailures",
    "EventBridge rule AlarmsPartitionsStuckJobs -> topic AlarmsTopic",
    "EventBridge rule AlarmsPartitionsStuckJobs -> queue PipelineConstructsGlueFailures",
)
DELIVERIES = {
    "pipeline-dev": _BOTH_STACKS,
    # prod's log groups are encrypted with the stack's key: CloudWatch Logs uses it for each.
    "pipeline-prod": (
        *_BOTH_STACKS,
        *(
            f"CloudWatch Logs for log group {group} -> log group {group}"
            for group in (
                "NetworkFlowLogGroup",
                "PipelineConstructsGlueLogs",
                "StatisticsLogs",
                "WordCountsLogs",
                "WordFrequenciesLogs",
                "FeedsJobLogs",
                "ReportsJobLogs",
                "PartitionsJobLogs",
            )
        ),
    ),
}
STACKS = tuple(DELIVERIES)
_TARGET_KINDS = {"s3": "bucket", "sqs": "queue", "sns": "topic", "lambda": "function", "logs": "log group"}
_LOGICAL_ID_HASH = re.compile(r"(?<=[A-Za-z])[0-9A-Fa-f]{8}\b")


def _policies(stack: SynthesizedStack) -> tuple[ResourcePolicies, Resolver]:
    resolver = Resolver(stack.template, stack_name=stack.name, region=stack.region or "us-east-1", queue_url_base="")
    return ResourcePolicies(stack.template, resolver), resolver


def _deliveries(stack: SynthesizedStack) -> dict[str, tuple[Sender, str]]:
    """Each delivery (to its target, and to its dead-letter queue) by its name in :data:`DELIVERIES`."""
    _, resolver = _policies(stack)
    named: dict[str, tuple[Sender, str]] = {}
    for delivery in configured_deliveries(stack, resolver):
        for target in (delivery.target, delivery.dead_letter):
            if target:
                name = _delivery_name(stack, delivery.sender, target)
                assert name not in named, f"two deliveries named {name}"
                named[name] = (delivery.sender, target)
    return named


def _delivery_name(stack: SynthesizedStack, sender: Sender, target: str) -> str:
    service, resource = target.split(":")[2], target.split(":", 5)[5].removesuffix(":*")
    name = resource.split("/")[0] if service == "s3" else resource.replace(":", "/").rsplit("/", 1)[-1]
    text = f"{sender.what} -> {_TARGET_KINDS[service]} {name.removeprefix(f'{stack.name}-')}"
    return _LOGICAL_ID_HASH.sub("", text.replace(f"{stack.name}-", ""))


@pytest.mark.parametrize("name", STACKS)
def test_the_example_configures_the_deliveries_named_here(example_stacks, name):
    assert sorted(_deliveries(example_stacks[name])) == sorted(DELIVERIES[name])


@pytest.mark.parametrize("name", STACKS)
def test_every_delivery_of_the_example_is_allowed_by_its_targets_policies(example_stacks, name):
    """Includes the alarm topic: CloudWatch may publish to it for the stack's own alarms (it could not)."""
    stack = example_stacks[name]
    policies, _ = _policies(stack)
    deliveries = _deliveries(stack).values()
    assert any(sender.service == "cloudwatch.amazonaws.com" for sender, _ in deliveries)
    denied = [str(d) for sender, target in deliveries if (d := policies.authorize(sender, target))]
    assert denied == []


def test_an_alarm_of_another_stack_may_not_publish_to_the_alarm_topic(example_stacks):
    stack = example_stacks["pipeline-dev"]
    policies, resolver = _policies(stack)
    (topic,) = [resolver.ref(lid) for lid in stack.resources_of_type("AWS::SNS::Topic") if "Alarms" in lid]
    stranger = Sender("cloudwatch.amazonaws.com", resolver.arn("cloudwatch", "alarm:someone-elses"), "alarm")
    assert "aws:SourceArn" in policies.authorize(stranger, topic).why
    rule = Sender("events.amazonaws.com", resolver.arn("events", "rule/any-rule"), "rule")
    assert "aws:SourceArn" in policies.authorize(rule, topic).why


def _without(template: dict[str, Any], origin: str) -> dict[str, Any]:
    """``template`` without the statement ``origin`` names (``Logical statement Sid``, or a permission)."""
    template = copy.deepcopy(template)
    logical_id, _, which = origin.partition(" statement ")
    resource = template["Resources"][logical_id]
    if not which:
        del template["Resources"][logical_id]
        return template
    props = resource["Properties"]
    key = next(k for k in ("PolicyDocument", "KeyPolicy", "AssumeRolePolicyDocument") if k in props)
    statements = props[key]["Statement"]
    props[key]["Statement"] = [s for index, s in enumerate(statements) if str(s.get("Sid", index)) != which]
    return template


@pytest.mark.parametrize(
    ("name", "delivery"),
    [(name, delivery) for name, deliveries in DELIVERIES.items() for delivery in deliveries],
    ids=[f"{name}: {delivery}" for name, deliveries in DELIVERIES.items() for delivery in deliveries],
)
def test_removing_the_statement_that_allows_a_delivery_denies_it(example_stacks, name, delivery):
    """Each delivery of the example stacks, one at a time: without each statement it relies on (a topic,
    queue or key policy's, a function permission, a role's trust), the delivery is denied, as on AWS."""
    stack = example_stacks[name]
    deliveries = _deliveries(stack)
    assert delivery in deliveries, f"{name} no longer makes it (see the test of the names)"
    sender, target = deliveries[delivery]
    policies, _ = _policies(stack)
    origins = policies.granting(sender, target)
    assert origins, f"nothing allows {sender.what} -> {target}"
    for origin in origins:
        changed = SynthesizedStack(stack.name, _without(stack.template, origin), stack.template_path, stack.environment)
        without, _ = _policies(changed)
        still_allowed = [o for o in without.granting(sender, target) if o != origin]
        if still_allowed:  # another statement allows it as well (the account's key statement and a service one)
            continue
        denial = without.authorize(sender, target)
        assert denial is not None, f"{sender.what} -> {target} still allowed without {origin}"
        assert "not authorized to perform" in str(denial) and sender.what in str(denial)
