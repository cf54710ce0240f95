"""No confused deputy: every statement that lets an AWS service act on a resource of the stack (a key, topic,
queue, bucket, function or role) is bound to its source, in every template the project synthesizes: the
example app (dev, and prod under the compliance profile) and the guide's two-stack app."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline_constructs.building_blocks.compliance import is_source_bound

#: Where a template grants a service principal: resource type -> the property holding the policy document.
POLICY_PROPERTIES = {
    "AWS::KMS::Key": "KeyPolicy",
    "AWS::SNS::TopicPolicy": "PolicyDocument",
    "AWS::SQS::QueuePolicy": "PolicyDocument",
    "AWS::S3::BucketPolicy": "PolicyDocument",
    "AWS::IAM::Role": "AssumeRolePolicyDocument",
}

#: Roles a service assumes to run the stack's own compute, where a source condition cannot bind anything
#: AWS documents: who gets the role is decided by iam:PassRole when the compute is created, not by the trust.
RUN_TIME_ROLE_TRUSTS = {
    "ec2.amazonaws.com": "instance-profile roles (fleet workers, Batch instances): EC2 sets no aws:SourceArn or "
    "aws:SourceAccount when an instance takes its profile's role",
    "lambda.amazonaws.com": "function execution roles (the glue, the CDK's bucket-emptying provider): Lambda "
    "documents no source key for the execution role's trust; the function names its role",
    "ecs-tasks.amazonaws.com": "Batch job and execution roles: ECS documents source keys for its own tasks, not "
    "for the tasks Batch starts in its managed clusters; a condition unverified there would leave every job "
    "without credentials",
}


def _services(principal: Any) -> list[str]:
    services = principal.get("Service", []) if isinstance(principal, dict) else []
    return services if isinstance(services, list) else [services]


def unbound_service_statements(template: dict[str, Any]) -> list[str]:
    """Each statement (and Lambda permission) that allows a service principal with no source condition."""
    found = []
    for logical_id, resource in template["Resources"].items():
        kind, properties = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::Lambda::Permission":
            principal = properties["Principal"]
            service = isinstance(principal, str) and principal.endswith(".amazonaws.com")
            if service and not ("SourceArn" in properties or "SourceAccount" in properties):
                found.append(f"{logical_id} ({kind}): {principal}")
            continue
        if kind not in POLICY_PROPERTIES:
            continue
        for statement in properties[POLICY_PROPERTIES[kind]]["Statement"]:
            services = _services(statement.get("Principal"))
            if kind == "AWS::IAM::Role":
                services = [s for s in services if s not in RUN_TIME_ROLE_TRUSTS]
            if services and statement["Effect"] == "Allow" and not is_source_bound(statement):
                found.append(f"{logical_id} ({kind}): {', '.join(services)}")
    return found


@pytest.mark.parametrize("stack", ["pipeline-dev", "pipeline-prod"])
def test_the_example_allows_no_service_without_its_source(example_stacks, stack):
    assert unbound_service_statements(example_stacks[stack].template) == []


def test_the_scan_finds_an_unbound_statement_in_each_place_it_looks():
    """The scan is no blanket pass: an unbound statement is found in every kind of resource it reads."""
    unbound = {"Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sns:Publish"}
    resources = {
        f"R{index}": {"Type": kind, "Properties": {prop: {"Statement": [unbound]}}}
        for index, (kind, prop) in enumerate(POLICY_PROPERTIES.items())
    }
    resources["P"] = {"Type": "AWS::Lambda::Permission", "Properties": {"Principal": "events.amazonaws.com"}}
    assert len(unbound_service_statements({"Resources": resources})) == len(POLICY_PROPERTIES) + 1


def _trust(template: dict[str, Any], logical_id_part: str) -> list[dict[str, Any]]:
    (role,) = [
        resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::IAM::Role" and logical_id_part in logical_id
    ]
    return role["Properties"]["AssumeRolePolicyDocument"]["Statement"]


@pytest.mark.parametrize("trigger", ["DailyFeedScheduleRole", "DailyReportScheduleRole"])
def test_the_schedule_roles_trust_only_this_accounts_schedules(example_stacks, trigger):
    """As the CDK's own schedule target role: the account and the (default) schedule group."""
    (statement,) = _trust(example_stacks["pipeline-dev"].template, trigger)
    assert statement["Principal"] == {"Service": "scheduler.amazonaws.com"}
    conditions = statement["Condition"]["StringEquals"]
    assert conditions["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert json.dumps(conditions["aws:SourceArn"]).endswith(':schedule-group/default"]]}')


def test_the_flow_log_role_trusts_only_this_accounts_flow_logs(example_stacks):
    (statement,) = _trust(example_stacks["pipeline-dev"].template, "FlowLog")
    assert statement["Principal"] == {"Service": "vpc-flow-logs.amazonaws.com"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert json.dumps(statement["Condition"]["ArnLike"]["aws:SourceArn"]).endswith(':vpc-flow-log/*"]]}')


def test_the_keys_statements_the_cdk_adds_are_bound_to_the_account(example_stacks):
    """The CDK grants S3 server access logging (a logged bucket's target is encrypted) the key with no
    condition; the key's policy binds it to the account."""
    (key,) = [r for r in example_stacks["pipeline-prod"].template["Resources"].values() if r["Type"] == "AWS::KMS::Key"]
    added_by_the_cdk = [
        s for s in key["Properties"]["KeyPolicy"]["Statement"] if "Sid" not in s and "Service" in s["Principal"]
    ]
    assert {service for s in added_by_the_cdk for service in _services(s["Principal"])} >= {"logging.s3.amazonaws.com"}
    for statement in added_by_the_cdk:
        assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
