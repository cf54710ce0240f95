"""Acknowledging a cdk-nag finding: one construct, one rule (or one finding of a rule), one reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    """Accept ``rule`` on ``construct`` (and its children), with the reason a reviewer reads.

    ``rule`` is the id cdk-nag prints, e.g. ``AwsSolutions-IAM5[Resource::*]`` or ``Serverless-LambdaDLQ``;
    the validation framework wants it qualified by its pack (``AwsSolutions::AwsSolutions-IAM5[...]``).
    """
    pack = rule.split("-", 1)[0]
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{pack}::{rule}", reason=reason))
