"""Acknowledging a finding of cdk-nag or of the Control Tower proactive controls: one construct, one rule
(or one finding of a rule), one reason."""

from __future__ import annotations

from typing import Any

import jsii
from aws_cdk import Acknowledgment, Stack, Validations
from constructs import IConstruct, IValidation


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    """Accept ``rule`` on ``construct`` (and its children), with the reason a reviewer reads.

    ``rule`` is the id cdk-nag prints, e.g. ``AwsSolutions-IAM5[Resource::*]`` or ``Serverless-LambdaDLQ``;
    the validation framework wants it qualified by its pack (``AwsSolutions::AwsSolutions-IAM5[...]``).
    """
    pack = rule.split("-", 1)[0]
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{pack}::{rule}", reason=reason))


#: The plugin name under which cdklabs-cdk-validator-cfnguard reports the Control Tower proactive controls.
CONTROL_TOWER_PLUGIN = "cdk-validator-cfnguard"


BASIC_MONITORING = (
    "Basic five-minute EC2 metrics are free; one-minute metrics cost about $2.10 a month per instance and "
    "nothing here scales on them (scaling reads SQS). detailed_monitoring=True turns them on."
)


def acknowledge_control(construct: IConstruct, rule: str, reason: str) -> None:
    """Accept a Control Tower proactive control (its guard rule name, e.g. ``sqs_dlq_check``) on ``construct``:
    a deliberate trade-off of the cheap default, which the compliance profile does not make."""
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{CONTROL_TOWER_PLUGIN}::{rule}", reason=reason))


def nag_notation(scope: IConstruct, value: str) -> str:
    """How cdk-nag spells a (possibly tokenized) value in a finding id: ``<LogicalId.Arn>/prefix/*``.

    Lets an acknowledgment name the one finding it accepts (``AwsSolutions-IAM5[Resource::...]``) even
    when the resource is an ARN built from tokens.
    """
    return _render(Stack.of(scope).resolve(value))


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_render(part) for part in parts)
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        return f"<{logical_id}.{attribute}>"
    if isinstance(value, dict) and isinstance(value.get("Fn::ImportValue"), str):
        return value["Fn::ImportValue"]  # a resource of another stack: cdk-nag spells its export's name
    raise ValueError(f"cannot spell {value!r} as cdk-nag does")


def acknowledge_wildcard_resources(construct: IConstruct, resources: list[str], reason: str) -> None:
    """Accept AwsSolutions-IAM5 for exactly these resource ARNs (prefix wildcards) on ``construct``.

    A resource of another stack (a bucket passed across stacks) only gets its final spelling, an export's
    name, when synthesis resolves the references: so the acknowledgments are spelled by a validation hook,
    which runs after that and before the rule packs read them.
    """
    construct.node.add_validation(_SpellAfterReferences(construct, resources, reason))


@jsii.implements(IValidation)
class _SpellAfterReferences:
    def __init__(self, construct: IConstruct, resources: list[str], reason: str) -> None:
        self.construct, self.resources, self.reason = construct, resources, reason

    def validate(self) -> list[str]:
        for resource in self.resources:
            spelled = nag_notation(self.construct, resource)
            acknowledge(self.construct, f"AwsSolutions-IAM5[Resource::{spelled}]", self.reason)
        return []
