"""Resource policies executed: every delivery an AWS service makes for the example stacks is allowed by the
target's policies, and denied, as AWS denies it, once the statement allowing it is removed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pipeline_constructs.local.resolver import Resolver
from pipeline_constructs.local.resource_policies import ResourcePolicies, Sender, configured_deliveries
from pipeline_constructs.ops.assembly import SynthesizedStack

STACKS = ("pipeline-dev", "pipeline-prod")


def _policies(stack: SynthesizedStack) -> tuple[ResourcePolicies, Resolver]:
    resolver = Resolver(stack.template, stack_name=stack.name, region=stack.region or "us-east-1", queue_url_base="")
    return ResourcePolicies(stack.template, resolver), resolver


def _deliveries(stack: SynthesizedStack) -> list[tuple[Sender, str]]:
    _, resolver = _policies(stack)
    pairs = []
    for delivery in configured_deliveries(stack, resolver):
        pairs += [(delivery.sender, delivery.target)]
        pairs += [(delivery.sender, delivery.dead_letter)] if delivery.dead_letter else []
    return pairs


@pytest.mark.parametrize("name", STACKS)
def test_every_delivery_of_the_example_is_allowed_by_its_targets_policies(example_stacks, name):
    """Includes the alarm topic: CloudWatch may publish to it for the stack's own alarms (it could not)."""
    stack = example_stacks[name]
    policies, _ = _policies(stack)
    deliveries = _deliveries(stack)
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


def _each_granting_statement() -> list[tuple[str, int]]:
    return [(name, index) for name in STACKS for index in range(40)]


@pytest.mark.parametrize(("name", "index"), _each_granting_statement())
def test_removing_the_statement_that_allows_a_delivery_denies_it(example_stacks, name, index):
    """Each delivery of the example stacks, one at a time: without each statement it relies on (a topic,
    queue or key policy's, a function permission, a role's trust), the delivery is denied, as on AWS."""
    stack = example_stacks[name]
    deliveries = _deliveries(stack)
    if index >= len(deliveries):
        pytest.skip(f"{name} has {len(deliveries)} deliveries")
    sender, target = deliveries[index]
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
