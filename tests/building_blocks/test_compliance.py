"""The compliance profile (prod in cdk.json): every Control Tower proactive control passes with one
acknowledgment (the access-log bucket's own logging), cdk-nag leaves nothing unacknowledged, and what it
takes is in the template."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_logs as logs
from aws_cdk.assertions import Match, Template

from pipeline_constructs import BatchChain, ChainStep, DataBucket
from pipeline_constructs.building_blocks.compliance import COMPLIANCE_CONTEXT, PROFILE_METADATA
from pipeline_constructs.building_blocks.logs import pipeline_log_group
from pipeline_constructs.glue.construct import VPC_ACCESS_ACTIONS
from pipeline_constructs.ops.cost import cost_report

CONTROL_TOWER = "cdk-validator-cfnguard"


def role_actions(template: Template, role_id: str, *, on_any_resource: bool = False) -> set[str]:
    """Every action the policies attached to ``role_id`` allow (only those on ``*`` if asked)."""
    return {
        action
        for policy in template.find_resources("AWS::IAM::Policy").values()
        if policy["Properties"]["Roles"] == [{"Ref": role_id}]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if not on_any_resource or statement["Resource"] == "*"
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    }


def _report(outdir) -> dict:
    return json.loads((outdir / "validation-report.json").read_text())


def test_prod_passes_every_control_tower_control_with_only_the_log_buckets_logging_acknowledged(example_outdir):
    """Server access logging of the access-log bucket is the one control not met (AWS advises against a log
    bucket logging: into itself an endless loop, into another bucket one more bucket needing a log bucket)."""
    (plugin,) = [p for p in _report(example_outdir)["pluginReports"] if p["pluginName"] == CONTROL_TOWER]
    assert plugin["violations"] == []
    acknowledged_in_prod = [
        (v["acknowledgedAt"], v["acknowledgedId"])
        for v in plugin.get("suppressedViolations", [])
        if "pipeline-prod" in v["acknowledgedAt"]
    ]
    assert acknowledged_in_prod == [
        ("pipeline-prod/Data/AccessLogs", f"{CONTROL_TOWER}::s3_bucket_logging_enabled_check")
    ]
    acknowledged_in_dev = [v for v in plugin["suppressedViolations"] if "pipeline-dev" in v["acknowledgedAt"]]
    assert len(acknowledged_in_dev) >= 15  # the default's trade-offs, each acknowledged with its reason


def test_every_data_store_uses_the_stacks_customer_managed_key(prod_template):
    (key_id,) = prod_template.find_resources("AWS::KMS::Key")
    key = {"Fn::GetAtt": [key_id, "Arn"]}
    for bucket in prod_template.find_resources("AWS::S3::Bucket").values():
        (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}
        assert bucket["Properties"]["ObjectLockEnabled"] is True
    for table in prod_template.find_resources("AWS::DynamoDB::Table").values():
        assert table["Properties"]["SSESpecification"]["KMSMasterKeyId"] == key
    for queue in prod_template.find_resources("AWS::SQS::Queue").values():
        assert queue["Properties"]["KmsMasterKeyId"] == key
    for topic in prod_template.find_resources("AWS::SNS::Topic").values():
        assert topic["Properties"]["KmsMasterKeyId"] == key
    for group in prod_template.find_resources("AWS::Logs::LogGroup").values():
        assert group["Properties"]["KmsKeyId"] == key
        assert group["Properties"]["RetentionInDays"] >= 365


def test_the_key_serves_the_services_that_write_on_their_own_and_grants_only_to_services(prod_template):
    (key,) = prod_template.find_resources("AWS::KMS::Key").values()
    assert key["Properties"]["EnableKeyRotation"] is True
    statements = {s.get("Sid"): s for s in key["Properties"]["KeyPolicy"]["Statement"]}
    assert statements["CloudWatchLogsOfThisAccount"]["Condition"]["ArnLike"]
    assert statements["GrantsOnlyForAwsServices"]["Effect"] == "Deny"
    assert {
        "S3ServerAccessLogging",
        "CloudWatchAlarmsToTopics",
        "EventBridgeToTopicsAndQueues",
        "SnsToDeadLetterQueues",
    } <= set(statements)


def test_schedules_may_dead_letter_into_the_encrypted_failure_queue(prod_template):
    """EventBridge Scheduler writes a failed invocation to the dead-letter queue with the schedule's role:
    under the key, that role needs the key's use as well as sqs:SendMessage."""
    schedule_roles = {
        schedule["Properties"]["Target"]["RoleArn"]["Fn::GetAtt"][0]
        for schedule in prod_template.find_resources("AWS::Scheduler::Schedule").values()
        if schedule["Properties"]["Target"].get("DeadLetterConfig")
    }
    assert schedule_roles
    for role in schedule_roles:
        assert {"sqs:SendMessage", "kms:GenerateDataKey", "kms:Decrypt"} <= role_actions(prod_template, role), role


def test_roles_use_the_key_with_exact_actions_only(prod_template):
    """kms:Decrypt and kms:GenerateDataKey, never the CDK grants' kms:ReEncrypt* / kms:GenerateDataKey*."""
    seen = 0
    for policy in prod_template.find_resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            kms_actions = [a for a in actions if a.startswith("kms:")]
            if kms_actions:
                seen += 1
                assert kms_actions == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert seen >= 5


def test_no_public_ip_anywhere_and_compute_behind_a_nat_gateway(prod_template):
    for subnet in prod_template.find_resources("AWS::EC2::Subnet").values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False
    assert len(prod_template.find_resources("AWS::EC2::NatGateway")) == 1
    private = {
        logical_id
        for logical_id, subnet in prod_template.find_resources("AWS::EC2::Subnet").items()
        if "private" in logical_id
    }
    for group in prod_template.find_resources("AWS::AutoScaling::AutoScalingGroup").values():
        assert {ref["Ref"] for ref in group["Properties"]["VPCZoneIdentifier"]} == private
    for environment in prod_template.find_resources("AWS::Batch::ComputeEnvironment").values():
        assert {ref["Ref"] for ref in environment["Properties"]["ComputeResources"]["Subnets"]} == private


def test_launch_templates_turn_on_detailed_monitoring(prod_template):
    for launch_template in prod_template.find_resources("AWS::EC2::LaunchTemplate").values():
        assert launch_template["Properties"]["LaunchTemplateData"]["Monitoring"] == {"Enabled": True}


def test_the_glue_function_runs_in_the_vpc_with_what_lambda_needs_to_attach_it(prod_template):
    (function,) = prod_template.find_resources("AWS::Lambda::Function").values()
    assert function["Properties"]["VpcConfig"]["SubnetIds"]
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    assert set(VPC_ACCESS_ACTIONS) <= role_actions(prod_template, role_id, on_any_resource=True)
    assert policy_of_function_is_created_first(prod_template, function, role_id)


def policy_of_function_is_created_first(template: Template, function: dict, role_id: str) -> bool:
    """Lambda checks the ENI permissions when the function is created: the policy must exist by then."""
    policies = [
        logical_id
        for logical_id, policy in template.find_resources("AWS::IAM::Policy").items()
        if policy["Properties"]["Roles"] == [{"Ref": role_id}]
    ]
    return set(policies) <= set(function.get("DependsOn", []))


def test_cost_shows_the_profiles_idle_cost_next_to_the_defaults(example_stacks):
    report = cost_report(example_stacks["pipeline-prod"].template)
    added = {line.kind for line in report["lines"] if line.profile == "compliance"}
    assert added == {"NAT gateway", "public IPv4 address", "KMS key"}
    assert report["compliance_monthly"] == pytest.approx(32.85 + 3.65 + 1.0)
    assert report["default_profile_monthly"] == cost_report(example_stacks["pipeline-dev"].template)["idle_monthly"]
    assert all(
        PROFILE_METADATA in example_stacks["pipeline-prod"].template["Resources"][line.resource]["Metadata"]
        for line in report["lines"]
        if line.profile
    )


def _compliance_stack() -> cdk.Stack:
    app = cdk.App(context={COMPLIANCE_CONTEXT: True})
    return cdk.Stack(app, "Governed", env=cdk.Environment(region="eu-central-1", account="123456789012"))


@pytest.mark.user_mistake
def test_a_misspelled_compliance_switch_is_refused_at_synth():
    app = cdk.App(context={COMPLIANCE_CONTEXT: "yes"})
    stack = cdk.Stack(app, "Governed")
    with pytest.raises(ValueError) as error:
        DataBucket(stack, "Data")
    assert str(error.value) == (
        "Governed/Data: context pipeline-constructs:compliance='yes' is invalid; allowed: true, false"
    )


@pytest.mark.user_mistake
def test_a_log_retention_under_a_year_is_refused_at_synth():
    stack = _compliance_stack()
    with pytest.raises(ValueError, match=r"log_retention=.*14 days.*365 days or more under the compliance profile"):
        pipeline_log_group(stack, "Logs", retention=logs.RetentionDays.TWO_WEEKS)


@pytest.mark.user_mistake
def test_a_glue_function_without_a_network_is_refused_at_synth():
    stack = _compliance_stack()
    bucket = DataBucket(stack, "Data").bucket
    chain = BatchChain(
        stack,
        "Chain",
        bucket=bucket,
        steps=[ChainStep(name="one", image="public.ecr.aws/a/b:1")],
        log_retention=logs.RetentionDays.ONE_YEAR,
    )
    # A chain creates its network (and gives it to the glue function): fine. A trigger alone could not.
    Template.from_stack(stack).has_resource_properties("AWS::Lambda::Function", {"VpcConfig": Match.any_value()})
    assert chain.glue.function is not None
    from pipeline_constructs.glue.construct import GlueFunction

    other = _compliance_stack()
    with pytest.raises(ValueError, match=r"PipelineConstructs/Glue: network=None.*compliance profile"):
        GlueFunction.of(other)
