"""Acknowledging a finding of a rule pack (cdk-nag, the Control Tower proactive controls, checkov, parliament):
one construct, one rule (or one finding of a rule), one reason.

cdk-nag and the Control Tower controls read the CDK's validation acknowledgments. checkov and parliament read
synthesized templates, so their acknowledgments are CloudFormation metadata on the resource itself, where a
reviewer of the template sees them: ``checkov: {skip: [{id, comment}]}``, which checkov honours, and
``parliament: {skip: [{id, comment}]}`` on a policy's resource, which tests/app/test_rule_packs.py applies
(parliament reads bare policy documents and has no suppressions of its own).
"""

from __future__ import annotations

from typing import Any, cast

import jsii
from aws_cdk import Acknowledgment, CfnResource, Stack, Validations
from constructs import IConstruct, IValidation


def acknowledge(construct: IConstruct, rule: str, reason: str, *, checkov: str | None = None) -> None:
    """Accept ``rule`` on ``construct`` (and its children), with the reason a reviewer reads.

    ``rule`` is the id cdk-nag prints, e.g. ``AwsSolutions-IAM5[Resource::*]`` or ``Serverless-LambdaDLQ``;
    the validation framework wants it qualified by its pack (``AwsSolutions::AwsSolutions-IAM5[...]``).
    ``checkov``: the id of checkov's check for the same finding, accepted for the same reason.
    """
    pack = rule.split("-", 1)[0]
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{pack}::{rule}", reason=reason))
    if checkov:
        acknowledge_checkov(construct, checkov, reason)


def acknowledge_checkov(construct: IConstruct, check_id: str, reason: str) -> None:
    """Accept checkov's check ``check_id`` (e.g. ``CKV_AWS_27``) on the CloudFormation resource of
    ``construct`` (itself, or its default child): a ``checkov`` skip in the resource's metadata."""
    _add_skip(_own_resource(construct), "checkov", check_id, reason)


def acknowledge_parliament(construct: IConstruct, finding: str, reason: str) -> None:
    """Accept parliament's ``finding`` in the policy document of ``construct``'s CloudFormation resource
    (an IAM policy, a key, a bucket, topic or queue policy): ``ISSUE[subject]`` as the rule-pack test spells
    it, e.g. ``RESOURCE_STAR[kms]`` (the services of the actions) or ``UNKNOWN_CONDITION_FOR_ACTION[s3:TlsVersion]``
    (the condition key)."""
    _add_skip(_own_resource(construct), "parliament", finding, reason)


def _own_resource(construct: IConstruct) -> CfnResource:
    resource = construct if CfnResource.is_cfn_resource(construct) else construct.node.default_child
    if resource is None or not CfnResource.is_cfn_resource(resource):
        raise ValueError(f"{construct.node.path} has no CloudFormation resource of its own to acknowledge on")
    return cast(CfnResource, resource)


def _add_skip(resource: CfnResource, tool: str, rule: str, reason: str) -> None:
    """One entry per rule: a construct reached twice (a shared provider) is acknowledged once."""
    skips = list((resource.get_metadata(tool) or {}).get("skip", []))
    if all(skip["id"] != rule for skip in skips):
        resource.add_metadata(tool, {"skip": [*skips, {"id": rule, "comment": reason}]})


#: The plugin name under which cdklabs-cdk-validator-cfnguard reports the Control Tower proactive controls.
CONTROL_TOWER_PLUGIN = "cdk-validator-cfnguard"


BASIC_MONITORING = (
    "Basic five-minute EC2 metrics are free; one-minute metrics cost about $2.10 a month per instance and "
    "nothing here scales on them (scaling reads SQS). detailed_monitoring=True turns them on."
)

#: parliament's findings in the CDK's statement denying requests below TLS 1.2 (``minimum_tls_version``).
TLS_VERSION_FINDINGS = {
    "UNKNOWN_CONDITION_FOR_ACTION[s3:TlsVersion]": (
        "The CDK's statement denies every S3 action (s3:*) below TLS 1.2; parliament's data lacks s3:TlsVersion "
        "for two of them (s3:InitiateReplication, s3:PutAccessPointPublicAccessBlock), which no one calls on this "
        "bucket, and the statement denying any request without TLS covers them too."
    ),
    "MISMATCHED_TYPE[s3:TlsVersion]": (
        "s3:TlsVersion is numeric and AWS documents NumericLessThan 1.2 for it; parliament's number format "
        "accepts integers only."
    ),
}
#: parliament's findings in the statement the CDK adds to a bucket it empties before deleting it.
EMPTYING_FINDINGS = {
    "RESOURCE_POLICY_PRIVILEGE_ESCALATION[s3:PutBucketPolicy]": (
        "The CDK's emptying statement lets its function's role (assumed by Lambda only, for the CDK's own "
        "handler) add the statement denying new objects before it empties the bucket; that role may already "
        "delete every object."
    ),
    "RESOURCE_MISMATCH[s3]": (
        "The CDK's emptying statement grants s3:List* on the bucket and its objects; parliament expands it to "
        "account-level list actions (access grants, jobs, storage lens) that no bucket ARN names: none is granted."
    ),
}
#: parliament's finding in the glue's SubmitJob grants (chain/links.py, GlueFunction.grant_submit).
SUBMIT_JOB_RESOURCES = (
    "AWS scopes SubmitJob by job queue and job definition, both named here (every revision of each "
    "definition, ':*', as AWS documents); parliament's data also asks for the 'job' resource type (the job "
    "being made, which AWS's examples never name) and spells a definition without its revision."
)

SSE_SQS = (
    "SSE-SQS: SQS encrypts every message at rest with a key of its own, free (checkov counts only a KMS key). "
    "A customer-managed key costs $1 a month plus requests and every sender and receiver its use; pass "
    "encryption_key where one is required (the compliance profile's key does)."
)


def acknowledge_control(construct: IConstruct, rule: str, reason: str, *, checkov: str | None = None) -> None:
    """Accept a Control Tower proactive control (its guard rule name, e.g. ``sqs_dlq_check``) on ``construct``:
    a deliberate trade-off of the cheap default, which the compliance profile does not make.
    ``checkov``: the id of checkov's check for the same finding, accepted for the same reason."""
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{CONTROL_TOWER_PLUGIN}::{rule}", reason=reason))
    if checkov:
        acknowledge_checkov(construct, checkov, reason)


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
