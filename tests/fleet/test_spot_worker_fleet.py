"""SpotWorkerFleet as synthesized: spot, IMDSv2, least privilege, scaling to and from zero."""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shutil
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs
from aws_cdk.assertions import Match, Template
from constructs import Construct

from pipeline_constructs import SpotWorkerFleet, WorkerDelivery
from pipeline_constructs.ops.cost import cost_report
from tests.support import ROOT

SQS_WORKER = ROOT / "worker_images" / "sqs_worker"


def _of_construct(template: Template, resource_type: str, path_part: str) -> dict:
    found = {
        lid: res
        for lid, res in template.find_resources(resource_type).items()
        if path_part in res.get("Metadata", {}).get("aws:cdk:path", lid)
    }
    assert found, f"no {resource_type} under {path_part}"
    return found


def _environment_lines(launch_templates: object) -> set[str]:
    """The ``NAME=value`` lines the boot script writes to the worker's environment file, for values known at
    synth (``pipeline_env NAME '<base64>'``; a deploy-time value is an Fn::Base64, left out)."""
    text = json.dumps(launch_templates)
    return {
        f"{name}={base64.b64decode(value).decode()}"
        for name, value in re.findall(r"pipeline_env ([A-Za-z_][A-Za-z0-9_]*) '([A-Za-z0-9+/=]+)'", text)
    }


def test_launch_template_requires_imdsv2_encrypts_volumes_and_has_no_key_pair(dev_template: Template):
    for template in _of_construct(dev_template, "AWS::EC2::LaunchTemplate", "Statistics").values():
        data = template["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"] == {
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 1,  # systemd delivery: no container hop to allow for
            "InstanceMetadataTags": "enabled",
        }
        assert data["BlockDeviceMappings"] == [
            {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "VolumeSize": 20, "VolumeType": "gp3"}}
        ]
        assert "KeyName" not in data


def test_worker_security_groups_allow_no_inbound_traffic(dev_template: Template):
    for group in _of_construct(dev_template, "AWS::EC2::SecurityGroup", "SecurityGroup").values():
        assert "SecurityGroupIngress" not in group["Properties"]
    dev_template.resource_count_is("AWS::EC2::SecurityGroupIngress", 0)


def test_group_is_all_spot_price_capacity_optimized_from_zero_with_rebalance(dev_template: Template):
    dev_template.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup",
        {
            "MinSize": "0",
            "MaxSize": "4",
            "CapacityRebalance": True,
            "MixedInstancesPolicy": {
                "InstancesDistribution": {
                    "OnDemandBaseCapacity": 0,
                    "OnDemandPercentageAboveBaseCapacity": 0,
                    "SpotAllocationStrategy": "price-capacity-optimized",
                },
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": Match.any_value(),
                    "Overrides": Match.array_with([{"InstanceType": "m7i.large"}, {"InstanceType": "c6a.large"}]),
                },
            },
            "MetricsCollection": [{"Granularity": "1Minute", "Metrics": ["GroupInServiceInstances"]}],
        },
    )
    assert "DesiredCapacity" not in json.dumps(dev_template.find_resources("AWS::AutoScaling::AutoScalingGroup"))


def test_backlog_target_tracking_and_steps_to_and_from_zero(dev_template: Template):
    dev_template.has_resource_properties(
        "AWS::AutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingConfiguration": {
                "TargetValue": 20,
                "CustomizedMetricSpecification": {
                    "Metrics": Match.array_with(
                        [
                            Match.object_like(
                                {"Id": "backlog", "Expression": "visible / IF(inservice > 0, inservice, 1)"}
                            )
                        ]
                    )
                },
            },
        },
    )
    # One step policy, one alarm: +1 when tasks wait with no worker, down to zero when nothing waits.
    dev_template.has_resource_properties(
        "AWS::AutoScaling::ScalingPolicy",
        {
            "PolicyType": "StepScaling",
            "AdjustmentType": "ChangeInCapacity",
            "StepAdjustments": [
                {"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 1, "ScalingAdjustment": -4},
                {"MetricIntervalLowerBound": 1, "ScalingAdjustment": 1},
            ],
        },
    )
    dev_template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "EvaluationPeriods": 1,
            "Threshold": 0.5,
            "TreatMissingData": "breaching",
            "Metrics": Match.array_with(
                [Match.object_like({"Expression": "IF(visible > 0, IF(FILL(inservice, 0) == 0, 2, 0), 1)"})]
            ),
        },
    )


def _instance_role_statements(template: Template) -> list[dict]:
    roles = {lid for lid in _of_construct(template, "AWS::IAM::Role", "InstanceRole")}
    statements = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        if {r["Ref"] for r in policy["Properties"]["Roles"]} & roles:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def test_instance_role_names_no_wildcard_resource_beyond_its_own_prefixes(dev_template: Template):
    statements = _instance_role_statements(dev_template)
    assert statements
    for statement in statements:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(action != "*" and not action.endswith(":*") for action in actions), actions
        for resource in resources:
            text = json.dumps(resource)
            assert resource != "*", statement
            if "*" in text:
                allowed = ("/input/*", "/output/*", "/intermediate/*", ":autoScalingGroup:*:autoScalingGroupName/")
                assert any(part in text for part in allowed), text


def _arn_pattern(resource) -> str:
    """A policy resource as text, references to the group filled in with its name."""
    if isinstance(resource, str):
        return resource
    parts = resource["Fn::Join"][1]
    names = {"AWS::Partition": "aws", "AWS::AccountId": "123456789012", "AWS::Region": "us-east-1"}
    return "".join(p if isinstance(p, str) else names.get(p.get("Ref"), "statistics-group") for p in parts)


def test_the_group_statements_match_the_arn_auto_scaling_gives_the_group(dev_template: Template):
    # What IAM compares against: arn:aws:autoscaling:<region>:<account>:autoScalingGroup:<uuid>:...
    real = (
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:"
        "0b6d5c1e-1f2a-4f6b-9a0e-2d3c4b5a6f70:autoScalingGroupName/statistics-group"
    )
    group_statements = [
        s
        for s in _instance_role_statements(dev_template)
        if "autoscaling:CompleteLifecycleAction" in json.dumps(s["Action"])
    ]
    assert group_statements
    for statement in group_statements:
        assert fnmatch.fnmatchcase(real, _arn_pattern(statement["Resource"])), statement["Resource"]


#: The worker runtime's client variables, by service; batch calls are authorized by their single action.
WORKER_CLIENTS = {
    "sqs": "sqs",
    "s3": "s3",
    "_s3": "s3",
    "autoscaling": "autoscaling",
    "client": "dynamodb",
    "_table": "dynamodb",
}
BATCH_ACTIONS = {
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "SendMessageBatch": "SendMessage",
}


def worker_runtime_calls() -> set[str]:
    """Every AWS call in the worker runtime's source, as the IAM action that authorizes it."""
    calls = set()
    for path in (ROOT / "pipeline_constructs" / "fleet" / "worker").glob("*.py"):
        pattern = r"\b(?:self\.)?(sqs|s3|_s3|autoscaling|client|_table)\.([a-z_]+)\("
        for client, method in re.findall(pattern, path.read_text()):
            action = "".join(part.title() for part in method.split("_"))
            calls.add(f"{WORKER_CLIENTS[client]}:{BATCH_ACTIONS.get(action, action)}")
    return calls


def _granted_actions(template: Template) -> set[str]:
    actions = {a for s in _instance_role_statements(template) for a in s["Action"] if isinstance(s["Action"], list)}
    return actions | {s["Action"] for s in _instance_role_statements(template) if isinstance(s["Action"], str)}


def test_instance_role_allows_every_call_the_worker_runtime_makes(dev_template: Template):
    calls = worker_runtime_calls()
    assert len(calls) >= 12, calls  # the scan still finds the calls
    assert {"autoscaling:CompleteLifecycleAction", "dynamodb:GetItem", "sqs:ChangeMessageVisibility"} <= calls
    assert calls - _granted_actions(dev_template) == set()


def test_instance_role_grants_exactly_the_fleet_duties(dev_template: Template):
    actions = _granted_actions(dev_template)
    assert {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",
        "s3:GetObject",
        "s3:PutObject",
        "dynamodb:BatchWriteItem",
        "autoscaling:SetInstanceProtection",
        "logs:PutLogEvents",
    } <= actions
    assert not {a for a in actions if a.startswith(("s3:Delete", "dynamodb:Delete", "iam:", "ec2:"))}


def test_user_data_carries_boot_steps_and_no_credentials(dev_template: Template):
    user_data = json.dumps(
        [
            t["Properties"]["LaunchTemplateData"]["UserData"]
            for t in _of_construct(dev_template, "AWS::EC2::LaunchTemplate", "Statistics").values()
        ]
    )
    for secret_name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "aws configure"):
        assert secret_name not in user_data
    assert "systemctl enable --now pipeline-worker.service" in user_data
    assert "PIPELINE_TASK=task:csv_stats" in _environment_lines(user_data)
    assert "pipeline_env PIPELINE_DOWNSTREAM_QUEUE_URL '" in user_data


@pytest.fixture
def stack() -> cdk.Stack:
    return cdk.Stack(cdk.App(), "Test", env=cdk.Environment(region="us-east-1"))


def test_container_delivery_builds_the_image_with_the_runtime_context(stack):
    fleet = SpotWorkerFleet(
        stack, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats", delivery=WorkerDelivery.CONTAINER
    )
    assert fleet.image is not None
    template = Template.from_stack(stack)
    user_data = json.dumps(template.find_resources("AWS::EC2::LaunchTemplate"))
    assert "docker pull" in user_data and "pipeline-worker-container.service" in user_data
    assembly = stack.node.root.synth()
    (image,) = json.loads(Path(assembly.directory, "Test.assets.json").read_text())["dockerImages"].values()
    assert image["source"]["dockerBuildContexts"] == {"runtime": str(ROOT / "pipeline_constructs" / "fleet" / "worker")}
    (launch_template,) = template.find_resources("AWS::EC2::LaunchTemplate").values()
    assert launch_template["Properties"]["LaunchTemplateData"]["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    from tests.support.static_checks import shellcheck, user_data_scripts

    (script,) = user_data_scripts(dict(template.to_json())).values()
    assert shellcheck(script) == "", "the container delivery's boot script passes shellcheck too"


def test_on_demand_base_and_arm_architecture(stack):
    fleet = SpotWorkerFleet(
        stack,
        "Fleet",
        worker_directory=SQS_WORKER,
        task="task:csv_stats",
        architecture="arm64",
        on_demand_base_capacity=1,
        min_size=1,
    )
    assert fleet.instance_types[0].endswith("g.large")
    Template.from_stack(stack).has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup",
        {
            "MinSize": "1",
            "MixedInstancesPolicy": {"InstancesDistribution": Match.object_like({"OnDemandBaseCapacity": 1})},
        },
    )


def test_exposes_what_it_made(stack):
    fleet = SpotWorkerFleet(stack, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats")
    assert fleet.queue and fleet.dead_letter_queue and fleet.bucket and fleet.table and fleet.auto_scaling_group
    assert fleet.downstream_queue is None
    assert fleet.prefix == "fleet/"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"task_timeout": cdk.Duration.minutes(10), "visibility_timeout": cdk.Duration.minutes(5)},
            "Test/Fleet: visibility_timeout='300 seconds' is invalid; allowed: at least task_timeout (600 seconds)",
        ),
        ({"min_size": 5, "max_size": 2}, "Test/Fleet: max_size=2 is invalid; allowed: at least min_size (5)"),
        ({"instance_types": []}, "Test/Fleet: instance_types=[] is invalid; allowed: a non-empty list"),
        ({"architecture": "sparc"}, "Test/Fleet: architecture='sparc' is invalid; allowed: x86_64, arm64"),
        (
            {"architecture": "arm64", "instance_types": ["m7g.large", "m6i.large"]},
            "Test/Fleet: instance_types=['m6i.large'] is invalid; allowed: Graviton (arm64) types for "
            "architecture=arm64",
        ),
        ({"instance_types": ["c6gn.xlarge"]}, "Test/Fleet: instance_types=['c6gn.xlarge'] is invalid; allowed: x86_64"),
        ({"tasks_per_worker": 0}, "Test/Fleet: tasks_per_worker=0 is invalid; allowed: 1 to 100000"),
        ({"environment": {"PIPELINE_TASK": "x:y"}}, "Test/Fleet: environment=['PIPELINE_TASK'] is invalid"),
        ({"on_demand_percentage_above_base": 101}, "Test/Fleet: on_demand_percentage_above_base=101 is invalid"),
    ],
)
@pytest.mark.user_mistake
def test_bad_arguments_raise_one_value_error(stack, kwargs, message):
    with pytest.raises(ValueError) as error:
        SpotWorkerFleet(stack, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats", **kwargs)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "csv_stats"}, "Test/Fleet: task='csv_stats' is invalid; allowed: 'module:function'"),
        ({"task": "tasks:csv_stats"}, "Test/Fleet: task='tasks:csv_stats' is invalid; allowed: a module in "),
        (
            {"task": "task:csv_stat"},
            "Test/Fleet: task='task:csv_stat' is invalid; allowed: a function of task.py: column_statistics, csv_stats",
        ),
        ({"worker_directory": ROOT / "worker_images" / "nope"}, "Test/Fleet: worker_directory="),
        (
            {"task_timeout": 300},
            "Test/Fleet: task_timeout=300 is invalid; allowed: a Duration, such as Duration.minutes(5)",
        ),
    ],
)
@pytest.mark.user_mistake
def test_a_task_that_would_crash_every_worker_fails_synth_in_one_line(stack, kwargs, message):
    arguments = {"worker_directory": SQS_WORKER, "task": "task:csv_stats"} | kwargs
    with pytest.raises(ValueError) as error:
        SpotWorkerFleet(stack, "Fleet", **arguments)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_task_check_reads_the_source_and_never_runs_it(stack, tmp_path):
    (tmp_path / "requirements.txt").write_text("")
    shutil.copy(SQS_WORKER / "requirements.lock", tmp_path)
    shutil.copytree(SQS_WORKER / "wheels", tmp_path / "wheels")
    (tmp_path / "jobs.py").write_text("raise SystemExit('imported at synth')\nfrom helpers import handle as run\n")
    SpotWorkerFleet(stack, "Fleet", worker_directory=tmp_path, task="jobs:run")  # an imported name counts


def test_visibility_timeout_only_with_a_created_queue(stack):
    queue = sqs.Queue(stack, "Existing")
    with pytest.raises(ValueError, match="visibility_timeout='900 seconds' is invalid; allowed: only with a created"):
        SpotWorkerFleet(
            stack,
            "Fleet",
            worker_directory=SQS_WORKER,
            task="task:csv_stats",
            queue=queue,
            visibility_timeout=cdk.Duration.minutes(15),
        )


def test_grant_submit_lets_a_producer_enqueue_and_upload_inputs(stack):
    from aws_cdk import aws_iam as iam

    fleet = SpotWorkerFleet(stack, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats")
    producer = iam.Role(stack, "Producer", assumed_by=iam.AccountRootPrincipal())
    fleet.grant_submit(producer)
    policies = Template.from_stack(stack).find_resources("AWS::IAM::Policy")
    producer_policy = next(p for lid, p in policies.items() if lid.startswith("ProducerDefaultPolicy"))
    text = json.dumps(producer_policy)
    assert "sqs:SendMessage" in text and "fleet/input/*" in text
    assert "sqs:ReceiveMessage" not in text


def _fleet_template(worker_directory: Path) -> dict:
    stack = cdk.Stack(cdk.App(), "Rolling", env=cdk.Environment(region="us-east-1"))
    SpotWorkerFleet(stack, "Fleet", worker_directory=worker_directory, task="task:csv_stats")
    return dict(Template.from_stack(stack).to_json())


def test_changed_worker_code_rolls_out_as_an_instance_refresh_that_drains_each_worker(tmp_path):
    worker = tmp_path / "worker"
    shutil.copytree(SQS_WORKER, worker, ignore=shutil.ignore_patterns("__pycache__"))
    before = _fleet_template(worker)
    (worker / "task.py").write_text((worker / "task.py").read_text() + "\n# changed\n")
    after = _fleet_template(worker)

    def only(template: dict, kind: str) -> tuple[str, dict]:
        (found,) = [(lid, r) for lid, r in template["Resources"].items() if r["Type"] == kind]
        return found

    # The new code is a new launch template version of the same group (no group replacement) ...
    lt_id, lt_before = only(before, "AWS::EC2::LaunchTemplate")
    _, lt_after = only(after, "AWS::EC2::LaunchTemplate")
    assert lt_before["Properties"]["LaunchTemplateData"] != lt_after["Properties"]["LaunchTemplateData"]
    group_id, group = only(before, "AWS::AutoScaling::AutoScalingGroup")
    assert only(after, "AWS::AutoScaling::AutoScalingGroup") == (group_id, group)
    spec = group["Properties"]["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
    assert spec["Version"] == {"Fn::GetAtt": [lt_id, "LatestVersionNumber"]}
    # ... which CloudFormation rolls out as an instance refresh, busy instances included ...
    refresh = group["UpdatePolicy"]["AutoScalingInstanceRefresh"]
    assert refresh["Strategy"] == "Rolling"
    assert refresh["Preferences"] | {"MinHealthyPercentage": 0} == {
        "MaxHealthyPercentage": 100,
        "MinHealthyPercentage": 0,
        "ScaleInProtectedInstances": "Refresh",
        "SkipMatching": True,
    }
    assert "AutoScalingRollingUpdate" not in group["UpdatePolicy"]
    # ... and every terminated instance first waits on the drain hook that its worker completes.
    _, hook = only(after, "AWS::AutoScaling::LifecycleHook")
    assert hook["Properties"] | {"AutoScalingGroupName": None} == {
        "AutoScalingGroupName": None,
        "LifecycleHookName": "pipeline-drain",
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
        "HeartbeatTimeout": 120,
        "DefaultResult": "CONTINUE",
    }
    assert hook["Properties"]["AutoScalingGroupName"] == {"Ref": group_id}
    assert "PIPELINE_LIFECYCLE_HOOK=pipeline-drain" in _environment_lines(lt_after["Properties"]["LaunchTemplateData"])
    policies = {lid: r for lid, r in after["Resources"].items() if r["Type"] == "AWS::IAM::Policy"}
    assert "autoscaling:CompleteLifecycleAction" in json.dumps(policies)


def test_the_worker_gets_its_task_timeout_and_attempt_budget_and_the_queue_three_spare_deliveries(stack):
    SpotWorkerFleet(
        stack,
        "Fleet",
        worker_directory=SQS_WORKER,
        task="task:csv_stats",
        task_timeout=cdk.Duration.minutes(5),
        max_receive_count=4,
    )
    template = Template.from_stack(stack)
    environment = _environment_lines(template.find_resources("AWS::EC2::LaunchTemplate"))
    for line in ("PIPELINE_TASK_TIMEOUT=300", "PIPELINE_MAX_ATTEMPTS=4", "PIPELINE_MAX_RECEIVE_COUNT=7"):
        assert line in environment
    template.has_resource_properties(
        "AWS::SQS::Queue", {"RedrivePolicy": Match.object_like({"maxReceiveCount": 7}), "VisibilityTimeout": 360}
    )


def test_the_wake_check_looks_every_minute_and_may_only_raise_its_own_group(stack):
    fleet = SpotWorkerFleet(
        stack, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats", max_size=4, wake_check=True
    )
    template = Template.from_stack(stack)
    (schedule,) = template.find_resources("AWS::Scheduler::Schedule").values()
    target = schedule["Properties"]["Target"]
    assert schedule["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    assert "PipelineConstructsGlueFunction" in json.dumps(target["Arn"])
    assert '{\\"wake\\":{\\"queue\\":' in json.dumps(target)
    glue_statements = [
        statement
        for logical_id, policy in template.find_resources("AWS::IAM::Policy").items()
        if logical_id.startswith("PipelineConstructsGlueRole")
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    by_action = {json.dumps(s["Action"]): s["Resource"] for s in glue_statements}
    set_desired = by_action['"autoscaling:SetDesiredCapacity"']
    assert ":autoScalingGroup:*:autoScalingGroupName/" in json.dumps(set_desired)
    assert stack.resolve(fleet.auto_scaling_group.auto_scaling_group_name) in set_desired["Fn::Join"][1]
    assert by_action['"autoscaling:DescribeAutoScalingGroups"'] == "*", "no resource-level permissions exist"
    assert by_action['"sqs:GetQueueAttributes"'] == stack.resolve(fleet.queue.queue_arn)
    (line,) = [c for c in cost_report(dict(template.to_json()))["lines"] if c.kind == "fleet wake check"]
    assert line.monthly == pytest.approx(0.085, abs=0.005) and "43,800 checks a month" in line.detail


def test_without_the_option_there_is_no_wake_check(stack):
    SpotWorkerFleet(stack, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats")
    Template.from_stack(stack).resource_count_is("AWS::Scheduler::Schedule", 0)


def test_fleets_and_chains_sharing_a_bucket_cannot_share_a_prefix(stack):
    from pipeline_constructs import BatchChain, ChainStep, DataBucket

    bucket = DataBucket(stack, "Shared").bucket
    first, second = Construct(stack, "TeamA"), Construct(stack, "TeamB")
    SpotWorkerFleet(first, "Stats", worker_directory=SQS_WORKER, task="task:csv_stats", bucket=bucket)
    with pytest.raises(ValueError) as error:
        SpotWorkerFleet(second, "Stats", worker_directory=SQS_WORKER, task="task:csv_stats", bucket=bucket)
    assert str(error.value) == (
        "Test/TeamB/Stats: prefix='stats/' is invalid; allowed: a prefix of its own in the bucket "
        "(Test/TeamA/Stats uses 'stats/')"
    )
    image = "public.ecr.aws/docker/library/python:3.13-slim"
    with pytest.raises(ValueError, match="Test/Chain: prefix='' is invalid; allowed: a prefix of its own"):
        BatchChain(stack, "Chain", steps=[ChainStep(name="only", image=image)], bucket=bucket, prefix="")
    SpotWorkerFleet(second, "Other", worker_directory=SQS_WORKER, task="task:csv_stats", bucket=bucket, prefix="b/")


def test_fleets_chains_and_triggers_without_a_table_share_one_status_store_per_stack(stack):
    from pipeline_constructs import BatchChain, ChainStep, ScheduledTrigger, StatusStore

    image = "public.ecr.aws/docker/library/python:3.13-slim"
    fleets = [SpotWorkerFleet(stack, f"Fleet{i}", worker_directory=SQS_WORKER, task="task:csv_stats") for i in (1, 2)]
    chains = [BatchChain(stack, f"Chain{i}", steps=[ChainStep(name="only", image=image)]) for i in (1, 2)]
    ScheduledTrigger(stack, "Nightly", schedule="rate(1 day)", chain=chains[0])
    Template.from_stack(stack).resource_count_is("AWS::DynamoDB::Table", 1)
    shared = StatusStore.of(stack).table
    assert all(part.table is shared for part in [*fleets, *chains])


@pytest.mark.parametrize(
    ("instance_types", "message"),
    [
        (
            ["m7i.larg"],
            "Test/Fleet: instance_types='m7i.larg' is invalid; allowed: an EC2 instance type (did you mean m7i.large",
        ),
        (
            ["M6I.LARGE"],
            "Test/Fleet: instance_types='M6I.LARGE' is invalid; allowed: an EC2 instance type (did you mean m6i.large",
        ),
        (["m6i.large", "m6i.large"], "Test/Fleet: instance_types='m6i.large' is invalid; allowed: unique names"),
    ],
)
@pytest.mark.user_mistake
def test_instance_types_that_do_not_exist_fail_synth_with_the_close_ones(stack, instance_types, message):
    """EC2 would refuse them only when the Auto Scaling group is created, at deploy."""
    with pytest.raises(ValueError) as error:
        SpotWorkerFleet(
            stack, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats", instance_types=instance_types
        )
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_every_real_instance_type_of_any_family_passes(stack):
    fleet = SpotWorkerFleet(
        stack,
        "Fleet",
        worker_directory=SQS_WORKER,
        task="task:csv_stats",
        instance_types=["x2idn.16xlarge", "t3.micro"],
    )
    assert fleet.instance_types == ["x2idn.16xlarge", "t3.micro"]
