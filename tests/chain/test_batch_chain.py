"""BatchChain and ScheduledTrigger as synthesized: spot compute, retries, both link kinds, one glue function."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_batch as batch
from aws_cdk import aws_sqs as sqs
from aws_cdk.assertions import Match, Template
from cdk_nag import AwsSolutionsChecks, ServerlessChecks
from cfnlint.api import ManualArgs, lint_file

from pipeline_constructs import (
    BatchChain,
    ChainLink,
    ChainStep,
    PipelineNetwork,
    ScheduledTrigger,
    SpotWorkerFleet,
    StepImage,
    TaskQueue,
)
from pipeline_constructs.glue import construct as glue_function
from pipeline_constructs.glue.construct import GlueFunction
from tests.support import ROOT

WATCHER = ROOT / "worker_images" / "feed_watcher"


def three_steps(prefix: str = "") -> list[ChainStep]:
    return [
        ChainStep(name=f"{prefix}fetch", image=WATCHER, link=ChainLink.message({"PARALLELISM": 15})),
        ChainStep(
            name=f"{prefix}convert",
            image="public.ecr.aws/docker/library/python:3.13-slim",
            link=ChainLink.on_success({"MODE": "full"}),
            attempts=5,
        ),
        ChainStep(name=f"{prefix}report", image="public.ecr.aws/docker/library/python:3.13-slim", array_size=4),
    ]


@pytest.fixture(scope="module")
def three_chains(tmp_path_factory):
    """A nag-checked stack with three chains sharing one network, and a trigger of each kind."""
    app = cdk.App(outdir=str(tmp_path_factory.mktemp("chains")), context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "Chains", env=cdk.Environment(region="eu-central-1"))
    network = PipelineNetwork(stack, "Network", availability_zones=["eu-central-1a", "eu-central-1b"])
    chains = [
        BatchChain(stack, f"Chain{i}", chain_name=f"chain{i}", network=network, steps=three_steps(), max_vcpus=32)
        for i in range(3)
    ]
    ScheduledTrigger(stack, "Nightly", schedule="cron(0 3 * * ? *)", time_zone="Europe/Berlin", chain=chains[0])
    ScheduledTrigger(
        stack,
        "Legacy",
        schedule="rate(1 hour)",
        use_eventbridge_rule=True,
        job_queue=chains[1].job_queue,
        job_definition=chains[1].job_definitions["convert"],
        job_name="legacy-convert",
        container_overrides={"environment": [{"name": "PARALLELISM", "value": "15"}]},
        parameters={"day": "today"},
    )
    tasks = TaskQueue(stack, "Tasks").queue
    ScheduledTrigger(stack, "Enqueue", schedule="rate(5 minutes)", queue=tasks, message={"key": "daily"})
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    cdk.Validations.of(app).add_plugins(ServerlessChecks(app))
    assembly = app.synth()  # fails on any unacknowledged cdk-nag finding
    template_path = Path(assembly.directory, "Chains.template.json")
    return type(
        "Synth",
        (),
        {
            "template": Template.from_json(json.loads(open(template_path).read())),
            "path": template_path,
            "chains": chains,
            "stack": stack,
        },
    )


def test_spot_compute_environment_scales_from_zero_with_an_imdsv2_template(three_chains):
    template = three_chains.template
    template.has_resource_properties(
        "AWS::Batch::ComputeEnvironment",
        {
            "Type": "managed",
            "ComputeResources": Match.object_like(
                {
                    "Type": "SPOT",
                    "AllocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED",
                    "MinvCpus": 0,
                    "MaxvCpus": 32,
                    "LaunchTemplate": Match.any_value(),
                }
            ),
        },
    )
    for launch_template in template.find_resources("AWS::EC2::LaunchTemplate").values():
        data = launch_template["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1  # jobs use their job role, not the host's
        assert all(d["Ebs"]["Encrypted"] for d in data["BlockDeviceMappings"])


def test_jobs_retry_host_failures_and_exit_on_application_errors(three_chains):
    three_chains.template.has_resource_properties(
        "AWS::Batch::JobDefinition",
        {
            "RetryStrategy": {
                "Attempts": 5,
                "EvaluateOnExit": [
                    {"Action": "RETRY", "OnStatusReason": "Host EC2*"},
                    {"Action": "RETRY", "OnReason": "CannotPullContainerError:*"},
                    {"Action": "EXIT", "OnExitCode": "*"},
                ],
            },
            "Timeout": {"AttemptDurationSeconds": 3600},
        },
    )


def test_one_glue_function_serves_three_chains_and_both_link_kinds(three_chains):
    template = three_chains.template
    functions = template.find_resources("AWS::Lambda::Function")
    assert len(functions) == 1
    (function,) = functions.values()
    configs = glue_chain_configs(template)
    assert set(configs) == {"chain0", "chain1", "chain2"}
    assert all('\\"kind\\":\\"message\\"' in c and '\\"kind\\":\\"success\\"' in c for c in configs.values())
    # The function reads them (and only them) by their path; it does not depend on them (a chain in a nested
    # stack would make that a cycle): it reads them again for a chain it does not know.
    assert not set(function.get("DependsOn", [])) & set(glue_chain_parameters(template))
    assert function["Properties"]["Runtime"] == "python3.14"
    template.resource_count_is("AWS::SNS::Subscription", 3)
    template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "lambda", "RedrivePolicy": Match.any_value()}
    )
    template.has_resource_properties(
        "AWS::Events::Rule",
        {"EventPattern": Match.object_like({"source": ["aws.batch"], "detail-type": ["Batch Job State Change"]})},
    )
    template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {"MaximumRetryAttempts": 2, "DestinationConfig": {"OnFailure": {"Destination": Match.any_value()}}},
    )


def test_scheduler_uses_the_time_zone_and_a_role_scoped_to_the_glue_function(three_chains):
    template = three_chains.template
    template.has_resource_properties(
        "AWS::Scheduler::Schedule",
        {
            "ScheduleExpression": "cron(0 3 * * ? *)",
            "ScheduleExpressionTimezone": "Europe/Berlin",
            "Target": Match.object_like(
                {
                    "Input": Match.string_like_regexp("<aws.scheduler.scheduled-time>"),
                    "DeadLetterConfig": Match.any_value(),
                }
            ),
        },
    )
    policies = template.find_resources("AWS::IAM::Policy")
    schedule_policy = next(p for lid, p in policies.items() if lid.startswith("NightlyScheduleRole"))
    statements = {s["Action"]: s["Resource"] for s in schedule_policy["Properties"]["PolicyDocument"]["Statement"]}
    assert set(statements) == {"lambda:InvokeFunction", "sqs:SendMessage"}  # invoke the glue, dead-letter
    invoke = json.dumps(statements["lambda:InvokeFunction"])
    assert invoke.count("PipelineConstructsGlueFunction") == 2 and '"*"' not in invoke
    assert statements["sqs:SendMessage"] == {"Fn::GetAtt": ["PipelineConstructsGlueFailures6E40D22F", "Arn"]}


def glue_statements(template: Template) -> dict[str, list[dict]]:
    """The glue role's statements by policy: its own, and the chain grants beside it."""
    policies = template.find_resources("AWS::IAM::Policy") | template.find_resources("AWS::IAM::ManagedPolicy")
    return {
        logical_id: policy["Properties"]["PolicyDocument"]["Statement"]
        for logical_id, policy in policies.items()
        if logical_id.startswith(("PipelineConstructsGlueRole", "PipelineConstructsGlueChainGrants"))
    }


def test_glue_submits_only_to_exact_queues_and_job_definitions(three_chains):
    statements = glue_statements(three_chains.template)
    submit = [s for policy in statements.values() for s in policy if s["Action"] == "batch:SubmitJob"]
    assert submit
    names = [
        r["Properties"]["JobDefinitionName"]
        for r in three_chains.template.find_resources("AWS::Batch::JobDefinition").values()
    ]
    for statement in submit:
        for resource in statement["Resource"]:
            # Exact ARNs: the queue's, and each job definition's (a trigger's) or every revision of a chain's
            # own (job-definition/<its name>:*), never a wider pattern.
            exact = isinstance(resource, dict) and ({"Ref", "Fn::GetAtt"} & set(resource))
            tail = "" if exact else resource["Fn::Join"][1][-1]
            assert exact or any(tail.endswith(f":job-definition/{name}:*") for name in names), resource


def test_eventbridge_rule_path_passes_the_users_constant_input(three_chains):
    rules = three_chains.template.find_resources(
        "AWS::Events::Rule", {"Properties": {"ScheduleExpression": "rate(1 hour)"}}
    )
    (rule,) = rules.values()
    (target,) = rule["Properties"]["Targets"]
    transformer = json.dumps(target["InputTransformer"])
    for field in ("jobName", "legacy-convert", "jobQueue", "jobDefinition", "containerOverrides", "parameters"):
        assert field in transformer
    assert "$.time" in transformer


def test_constant_input_schedules_are_guarded_by_a_table_the_glue_may_write(three_chains):
    (function,) = three_chains.template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"Handler": "handler.handler"}}
    ).values()
    config = json.dumps(function["Properties"]["Environment"]["Variables"]["GLUE_CONFIG"])
    first_table = three_chains.stack.resolve(three_chains.chains[0].table.table_name)["Ref"]
    assert f'\\"table\\":\\"", {{"Ref": "{first_table}"}}' in config
    statements = glue_statements(three_chains.template)
    writes = [s for policy in statements.values() for s in policy if "dynamodb:PutItem" in s["Action"]]
    assert {"Fn::GetAtt": [first_table, "Arn"]} in [s["Resource"] for s in writes]


def test_a_job_trigger_alone_in_its_stack_gets_a_status_store_for_its_guard(tmp_path):
    app = cdk.App(outdir=str(tmp_path), context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "Alone")
    queue = batch.JobQueue.from_job_queue_arn(stack, "Q", "arn:aws:batch:us-east-1:1:job-queue/q")
    definition = batch.EcsJobDefinition.from_job_definition_arn(
        stack, "D", "arn:aws:batch:us-east-1:1:job-definition/d:1"
    )
    trigger = ScheduledTrigger(
        stack, "Nightly", schedule="cron(0 3 * * ? *)", job_queue=queue, job_definition=definition
    )
    assert trigger.table is not None
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::DynamoDB::Table", 1)
    assert '\\"table\\"' in json.dumps(template.find_resources("AWS::Lambda::Function"))


def test_queue_target_sends_one_message_with_a_scoped_role(three_chains):
    template = three_chains.template
    template.has_resource_properties(
        "AWS::Scheduler::Schedule",
        {"ScheduleExpression": "rate(5 minutes)", "Target": Match.object_like({"Input": '{"key": "daily"}'})},
    )
    policies = template.find_resources("AWS::IAM::Policy")
    sends = [
        s
        for p in policies.values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s["Action"] == "sqs:SendMessage"
    ]
    assert sends and all(s["Resource"] != "*" for s in sends)


def test_message_link_steps_may_publish_only_to_their_chain_topic(three_chains):
    chain = three_chains.chains[0]
    policies = three_chains.template.find_resources("AWS::IAM::Policy")
    fetch_policy = next(p for lid, p in policies.items() if lid.startswith("Chain0fetchJobRole"))
    publish = [s for s in fetch_policy["Properties"]["PolicyDocument"]["Statement"] if s["Action"] == "sns:Publish"]
    assert publish == [
        {
            "Action": "sns:Publish",
            "Effect": "Allow",
            "Resource": {"Ref": cdk.Stack.of(chain).get_logical_id(chain.topic.node.default_child)},
        }
    ]
    convert_policy = next(p for lid, p in policies.items() if lid.startswith("Chain0convertJobRole"))
    assert "sns:Publish" not in json.dumps(convert_policy)


def test_exposes_what_it_made(three_chains):
    chain = three_chains.chains[0]
    assert set(chain.job_definitions) == {"fetch", "convert", "report"}
    assert chain.compute_environment and chain.job_queue and chain.topic


def test_cfn_lint_is_clean_on_the_chains_stack(three_chains):
    errors = [
        str(m)
        for m in lint_file(three_chains.path, config=ManualArgs(regions=["eu-central-1"]))
        if m.rule.severity == "error"
    ]
    assert errors == []


def test_a_shared_compute_environment_and_queue_are_used_not_copied(three_chains):
    stack = cdk.Stack(cdk.App(), "Shared", env=cdk.Environment(region="us-east-1"))
    first = BatchChain(stack, "First", steps=three_steps())
    second = BatchChain(
        stack, "Second", steps=three_steps(), compute_environment=first.compute_environment, job_queue=first.job_queue
    )
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::Batch::ComputeEnvironment", 1)
    template.resource_count_is("AWS::Batch::JobQueue", 1)
    assert second.job_queue is first.job_queue


@pytest.fixture
def stack() -> cdk.Stack:
    return cdk.Stack(cdk.App(), "Test", env=cdk.Environment(region="us-east-1"))


def step(**changes) -> ChainStep:
    values = {"name": "only", "image": "public.ecr.aws/docker/library/python:3.13-slim"} | changes
    return ChainStep(**values)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "Test/Chain: steps=[] is invalid; allowed: a non-empty list"),
        ([step(link=ChainLink.message()), step()], "Test/Chain: steps[].name='only' is invalid; allowed: unique names"),
        ([step(memory_mib=2)], "Test/Chain: steps[0].memory_mib=2 is invalid; allowed: 4 to 25165824"),
        ([step(vcpus=0)], "Test/Chain: steps[0].vcpus=0 is invalid; allowed: 1 to 192"),
        ([step(vcpus=200)], "Test/Chain: steps[0].vcpus=200 is invalid; allowed: 1 to 192"),
        (
            [step(timeout=cdk.Duration.seconds(30))],
            "Test/Chain: steps[0].timeout='30 seconds' is invalid; allowed: at least 60 seconds",
        ),
        ([step(attempts=0)], "Test/Chain: steps[0].attempts=0 is invalid; allowed: 1 to 10"),
        ([step(attempts=11)], "Test/Chain: steps[0].attempts=11 is invalid; allowed: 1 to 10"),
        ([step(name="has space")], "Test/Chain: steps[0].name='has space' is invalid"),
        (
            [step(link=ChainLink.message())],
            "Test/Chain: steps[0].link='message' is invalid; allowed: None on the last step",
        ),
        ([step(), step(name="second")], "Test/Chain: steps[0].link=None is invalid"),
        ([step(array_size=1)], "Test/Chain: steps[0].array_size=1 is invalid; allowed: 2 to 10000"),
        (
            [step(image="steps/resize")],
            "Test/Chain: steps[only].image='steps/resize' is invalid; allowed: an existing directory (pass a Path), "
            "or a registry image with a tag or digest",
        ),
        ([step(feeds="a queue")], "Test/Chain: steps[0].feeds='str' is invalid; allowed: a SpotWorkerFleet"),
        (
            [step(image=StepImage.from_registry("public.ecr.aws/docker/library/python"))],
            "Test/Chain: steps[only].image='public.ecr.aws/docker/library/python' is invalid; allowed: a registry "
            "image with a tag or digest",
        ),
        (
            [step(image=StepImage.from_directory(ROOT / "worker_images"))],
            f"Test/Chain: steps[only].image='{ROOT / 'worker_images'}' is invalid; allowed: a directory with a "
            "Dockerfile",
        ),
        ([step(vcpus=96)], "Test/Chain: steps[0].vcpus=96 is invalid; allowed: at most the chain's max_vcpus (64)"),
        ([step(timeout=600)], "Test/Chain: steps[0].timeout=600 is invalid; allowed: a Duration"),
        (
            [step(environment={"PIPELINE_STEP": "x", "DOWNLOAD_MESSAGE": "y"})],
            "Test/Chain: steps[0].environment=['DOWNLOAD_MESSAGE', 'PIPELINE_STEP'] is invalid; allowed: names "
            "other than PIPELINE_* and DOWNLOAD_MESSAGE, PREVIOUS_JOB_ID (set by the chain)",
        ),
        (
            [step(link=ChainLink.message({"DOWNLOAD_MESSAGE": "fake"})), step(name="second")],
            "Test/Chain: steps[0].link.environment=['DOWNLOAD_MESSAGE'] is invalid",
        ),
    ],
)
@pytest.mark.user_mistake
def test_bad_chains_raise_one_value_error(stack, steps, message):
    with pytest.raises(ValueError) as error:
        BatchChain(stack, "Chain", steps=steps)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "cron(0 3 * * *)"}, "Test/Trigger: schedule='cron(0 3 * * *)' is invalid"),
        ({"schedule": "cron(0 3 * * * *)"}, "allowed: cron with '?' in day-of-month or day-of-week"),
        (
            {"schedule": "cron(0 25 * * ? *)"},
            "Test/Trigger: schedule='cron(0 25 * * ? *)' is invalid; allowed: cron fields within their ranges "
            "(hours 25 outside 0-23)",
        ),
        ({"schedule": "cron(0 3 0 * ? *)"}, "(day-of-month 0 outside 1-31)"),
        ({"schedule": "cron(0/0 3 ? * MON-FRI *)"}, "(minutes step 0 below 1)"),
        ({"schedule": "rate(1 hours)"}, "Test/Trigger: schedule='rate(1 hours)' is invalid"),
        ({"schedule": "every day"}, "Test/Trigger: schedule='every day' is invalid"),
        ({"time_zone": "Mars/Olympus"}, "Test/Trigger: time_zone='Mars/Olympus' is invalid"),
        (
            {"time_zone": "Europe/Berlin", "use_eventbridge_rule": True},
            "time_zone='Europe/Berlin' is invalid; allowed: UTC",
        ),
        ({"retry_attempts": 200}, "Test/Trigger: retry_attempts=200 is invalid; allowed: 0 to 185"),
        (
            {"queue": None, "fleet": "not a fleet"},
            "Test/Trigger: fleet='str' is invalid; allowed: a SpotWorkerFleet (a plain queue: queue=)",
        ),
    ],
)
@pytest.mark.user_mistake
def test_bad_triggers_quote_what_was_wrong(stack, kwargs, message):
    queue = sqs.Queue(stack, "Q")
    arguments = {"schedule": "rate(1 day)", "queue": queue} | kwargs
    with pytest.raises(ValueError) as error:
        ScheduledTrigger(stack, "Trigger", **arguments)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_trigger_needs_exactly_one_target(stack):
    with pytest.raises(ValueError, match="chain/job_queue/fleet/queue=0 is invalid; allowed: exactly one target"):
        ScheduledTrigger(stack, "Trigger", schedule="rate(1 day)")
    queue = batch.JobQueue.from_job_queue_arn(stack, "Q", "arn:aws:batch:us-east-1:111111111111:job-queue/feeds")
    with pytest.raises(ValueError, match="job_definition=None is invalid; allowed: given together with job_queue"):
        ScheduledTrigger(stack, "Trigger2", schedule="rate(1 day)", job_queue=queue)


def test_a_fleet_target_sends_its_task_through_the_glue_and_may_wake_only_that_fleet(stack):
    from pipeline_constructs import SpotWorkerFleet

    worker = ROOT / "worker_images" / "sqs_worker"
    fleet = SpotWorkerFleet(stack, "Fleet", worker_directory=worker, task="task:csv_stats")
    ScheduledTrigger(stack, "Nightly", schedule="cron(0 2 * * ? *)", fleet=fleet, message={"key": "nightly"})
    template = Template.from_stack(stack)
    (schedule,) = template.find_resources("AWS::Scheduler::Schedule").values()
    target = schedule["Properties"]["Target"]
    assert "PipelineConstructsGlueFunction" in json.dumps(target["Arn"])
    parts = target["Input"]["Fn::Join"][1]
    sent = json.loads("".join(p if isinstance(p, str) else "<ref>" for p in parts))
    assert sent["enqueue"] == {
        "queue": "<ref>",
        "body": '{"key": "nightly"}',
        "group": "<ref>",
        "taskPerFiring": True,
        "inputPrefix": "fleet/input/",
    }
    statements = [
        s
        for lid, p in template.find_resources("AWS::IAM::Policy").items()
        if lid.startswith("PipelineConstructsGlueRole")
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    by_action = {json.dumps(s["Action"]): s["Resource"] for s in statements}
    assert ":autoScalingGroup:*:autoScalingGroupName/" in json.dumps(by_action['"autoscaling:SetDesiredCapacity"'])
    sends = [s for s in statements if "sqs:SendMessage" in json.dumps(s["Action"])]
    assert any(s["Resource"] == stack.resolve(fleet.queue.queue_arn) for s in sends)


def test_a_step_that_feeds_a_fleet_may_send_it_tasks_and_the_glue_may_wake_only_that_fleet(stack):
    from pipeline_constructs import SpotWorkerFleet

    fleet = SpotWorkerFleet(
        stack, "Fleet", worker_directory=ROOT / "worker_images" / "sqs_worker", task="task:csv_stats"
    )
    chain = BatchChain(stack, "Chain", steps=[step(name="produce", feeds=fleet)])
    template = Template.from_stack(stack)
    definition = template.find_resources("AWS::Batch::JobDefinition")
    (props,) = [r["Properties"] for r in definition.values()]
    names = {e["Name"] for e in props["ContainerProperties"]["Environment"]}
    assert {"PIPELINE_FEEDS_QUEUE_URL", "PIPELINE_FEEDS_BUCKET", "PIPELINE_FEEDS_PREFIX"} <= names
    policies = template.find_resources("AWS::IAM::Policy")
    job_role_statements = [
        s
        for lid, p in policies.items()
        if lid.startswith("ChainproduceJobRole")
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert any(
        "sqs:SendMessage" in json.dumps(s["Action"]) and s["Resource"] == stack.resolve(fleet.queue.queue_arn)
        for s in job_role_statements
    )
    config = glue_chain_configs(template)[chain.chain_name]
    assert '\\"wakes\\":\\"' in config
    glue_statements = [
        s
        for lid, p in policies.items()
        if lid.startswith("PipelineConstructsGlueRole")
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    (set_desired,) = [s for s in glue_statements if s["Action"] == "autoscaling:SetDesiredCapacity"]
    assert stack.resolve(fleet.auto_scaling_group.auto_scaling_group_name) in set_desired["Resource"]["Fn::Join"][1]


def glue_chain_parameters(template: Template) -> dict[str, dict]:
    """The glue's chain parameters by logical id."""
    return {
        lid: resource
        for lid, resource in template.find_resources("AWS::SSM::Parameter").items()
        if lid.startswith("PipelineConstructsGlueChain")
    }


def glue_chain_configs(template: Template) -> dict[str, str]:
    """Each chain's glue configuration (its parameter's value, as template JSON) by chain name."""
    configs = {}
    for parameter in glue_chain_parameters(template).values():
        name = parameter["Properties"]["Name"]["Fn::Join"][1][-1].rsplit("/", 1)[-1]
        configs[name] = json.dumps(parameter["Properties"]["Value"])
    return configs


def test_the_glue_reads_each_chains_configuration_from_a_parameter_on_its_stacks_path(three_chains):
    template = three_chains.template
    (function,) = template.find_resources("AWS::Lambda::Function").values()
    variables = function["Properties"]["Environment"]["Variables"]
    path = ["/pipeline-constructs/", {"Ref": "AWS::StackName"}, "/glue"]
    assert variables["GLUE_CONFIG"]["Fn::Join"][1][-3:] == ['","chainsPath":"/pipeline-constructs/', path[1], '/glue"}']
    for parameter in glue_chain_parameters(template).values():
        props = parameter["Properties"]
        # Not a secret; free unless a long chain takes it over 4 KB.
        assert props["Type"] == "String" and props["Tier"] == "Intelligent-Tiering"
        assert props["Name"]["Fn::Join"][1][:2] == path[:2]
    policies = template.find_resources("AWS::IAM::Policy")
    glue_policy = next(p for lid, p in policies.items() if lid.startswith("PipelineConstructsGlueRole"))
    (read,) = [s for s in glue_policy["Properties"]["PolicyDocument"]["Statement"] if "ssm" in json.dumps(s["Action"])]
    # GetParametersByPath is authorized against the path: exactly that ARN, no wildcard.
    assert read["Action"] == "ssm:GetParametersByPath"
    assert read["Resource"]["Fn::Join"][1][-3:] == [
        ":parameter/pipeline-constructs/",
        {"Ref": "AWS::StackName"},
        "/glue",
    ]


def _glue_with_chains(count: int, steps: int = 3) -> GlueFunction:
    """The glue of a stack with ``count`` chains of ``steps`` steps registered (their definitions stand-ins
    with generated names, as a chain's are), without synthesizing the chains' other resources."""
    app = cdk.App(context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "pipeline-production-eu", env=cdk.Environment(region="eu-central-1"))
    glue = GlueFunction.of(stack)
    for i in range(count):
        queue = cdk.CfnResource(stack, f"Queue{i}", type="AWS::Batch::JobQueue")
        topic = cdk.CfnResource(stack, f"Topic{i}", type="AWS::SNS::Topic")
        definitions = [
            cdk.CfnResource(stack, f"Chain{i}Step{s}Definition", type="AWS::Batch::JobDefinition") for s in range(steps)
        ]
        links = [{"kind": "message", "environment": {"PARALLELISM": 4}}, {"kind": "success", "environment": {}}]
        config = {
            "jobQueue": queue.get_att("JobQueueArn").to_string(),
            "topicArn": topic.ref,
            "table": "status",
            "steps": [
                {"name": f"step{s}", "jobDefinition": d.ref, **({"link": links[s % 2]} if s < steps - 1 else {})}
                for s, d in enumerate(definitions)
            ],
        }
        glue.register_chain(f"chain{i}", config, owner=stack)
    return glue


def test_fifty_three_step_chains_leave_the_glue_environment_as_small_as_one():
    # The configuration lived in the environment: 5-6 chains of three steps took it over Lambda's 4 KB.
    one, fifty = _glue_with_chains(1), _glue_with_chains(50)
    assert fifty.deployed_config_bytes() == one.deployed_config_bytes() < 400
    sizes = fifty.deployed_chain_bytes()
    assert len(sizes) == 50 and max(sizes.values()) < 1200
    cdk.App.of(fifty).synth()  # and nothing refuses it


def test_chains_in_nested_stacks_share_the_parents_glue_status_store_and_manifest(tmp_path):
    """How more chains than 500 resources hold fit in one deployed stack: nested stacks of chains, the shared
    constructs in the parent (the CLI reads the parent's manifest), nothing circular, nag and cfn-lint clean;
    a step may feed a fleet in another nested stack."""
    app = cdk.App(outdir=str(tmp_path), context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "Parent", env=cdk.Environment(region="eu-central-1"))
    network = PipelineNetwork(stack, "Network", availability_zones=["eu-central-1a", "eu-central-1b"])
    fleet = SpotWorkerFleet(
        cdk.NestedStack(stack, "Fleets"),
        "Stats",
        task="task:csv_stats",
        worker_directory=ROOT / "worker_images" / "sqs_worker",
        network=network,
    )
    first = None
    for group in range(2):
        nested = cdk.NestedStack(stack, f"Chains{group}")
        for i in range(2):
            shared = {"compute_environment": first.compute_environment, "job_queue": first.job_queue} if first else {}
            *steps, last = three_steps()
            # The first chain's last step feeds the fleet, across nested stacks. Chain0 and Chain1 in each
            # nested stack: the same ids in two scopes.
            chain = BatchChain(
                nested,
                f"Chain{i}",
                chain_name=f"chain{group}{i}",
                steps=[*steps, dataclasses.replace(last, feeds=fleet) if first is None else last],
                network=network,
                **shared,
            )
            first = first or chain
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    assembly = app.synth()  # fails on any unacknowledged cdk-nag finding
    parent = assembly.get_stack_by_name("Parent").template
    nested_paths = sorted(Path(assembly.directory).glob("*.nested.template.json"))  # Chains0, Chains1, Fleets
    nested = [json.loads(path.read_text()) for path in nested_paths]
    kinds = [[r["Type"] for r in t["Resources"].values()] for t in [parent, *nested]]
    assert [k.count("AWS::Lambda::Function") for k in kinds] == [1, 0, 0, 0], "one glue function, in the parent"
    assert [k.count("AWS::DynamoDB::Table") for k in kinds] == [1, 0, 0, 0], "one status store, in the parent"
    assert [k.count("AWS::SSM::Parameter") for k in kinds] == [4, 0, 0, 0], "each chain's configuration"
    assert [k.count("AWS::Lambda::Permission") for k in kinds][1:3] == [4, 4], "topic and rule, beside them"
    assert [k.count("AWS::AutoScaling::AutoScalingGroup") for k in kinds] == [0, 0, 0, 1]
    # The feeding step's job role (Chains0) sends to the fleet's queue, and the glue (parent) wakes its group:
    # both reach into the Fleets stack through the parent, which CloudFormation deploys first.
    feeding = [
        s for s in _statements(nested[0]) if "sqs:SendMessage" in _actions(s) and "Fleets" in json.dumps(s["Resource"])
    ]
    waking = [s for s in _statements(parent) if "autoscaling:SetDesiredCapacity" in _actions(s)]
    assert feeding and waking and "Fleets" in json.dumps(waking[0]["Resource"])
    manifest = json.dumps(parent["Outputs"]["PipelineConstructsManifest"])
    assert all(f'\\"chain{g}{i}\\"' in manifest for g in range(2) for i in range(2))
    assert not any("PipelineConstructsManifest" in t.get("Outputs", {}) for t in nested)
    errors = [
        str(m)
        for path in [Path(assembly.directory, "Parent.template.json"), *nested_paths]
        for m in lint_file(path, config=ManualArgs(regions=["eu-central-1"]))
        if m.rule.severity == "error"
    ]
    assert errors == []


def _statements(template: dict) -> list[dict]:
    """Every statement of the template's identity policies, inline and managed."""
    policies = [
        r for r in template["Resources"].values() if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    ]
    return [statement for policy in policies for statement in policy["Properties"]["PolicyDocument"]["Statement"]]


def _actions(statement: dict) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


def _grant_submit_on(glue: GlueFunction, name: str, definitions: int) -> None:
    """The glue's SubmitJob on a queue and ``definitions`` job definitions, as a chain of that many steps gets."""
    stack = cdk.Stack.of(glue)
    queue = batch.JobQueue.from_job_queue_arn(
        stack, f"{name}Queue", cdk.CfnResource(stack, f"{name}QueueResource", type="AWS::Batch::JobQueue").ref
    )
    arns = [
        cdk.CfnResource(stack, f"{name}Definition{i}", type="AWS::Batch::JobDefinition").ref for i in range(definitions)
    ]
    glue.grant_submit(
        queue, [batch.EcsJobDefinition.from_job_definition_arn(stack, f"{name}D{i}", a) for i, a in enumerate(arns)]
    )


def test_the_glues_grants_on_the_chains_are_packed_and_checked_against_iams_limits(monkeypatch):
    glue = _glue_with_chains(1)
    for name in ("A", "B", "C"):
        _grant_submit_on(glue, name, 25)  # about 4 KB each deployed: one managed policy each
    assert len(glue.chain_policies) == 3
    monkeypatch.setattr(glue_function, "MANAGED_POLICIES_PER_ROLE", 2)
    with pytest.raises(Exception, match=r"need 3 managed policies; allowed: 2 a role \(IAM's default quota\)"):
        cdk.App.of(glue).synth()

    glue = _glue_with_chains(1)
    _grant_submit_on(glue, "Huge", 60)  # one statement past what a managed policy holds
    with pytest.raises(Exception, match=r"ChainGrants1: .* bytes deployed; allowed: at most 6144 \(IAM's limit"):
        cdk.App.of(glue).synth()


def test_a_chain_configuration_is_measured_at_its_deployed_size_not_its_placeholders():
    glue = _glue_with_chains(1, steps=45)
    config = glue.config["chains"]["chain0"]
    placeholders = len(json.dumps(cdk.Stack.of(glue).resolve(config)))
    assert placeholders < 8192 < glue.deployed_chain_bytes()["chain0"]
    with pytest.raises(
        Exception, match=r"chain chain0's glue configuration would be about \d+ bytes deployed; allowed: at most 8192"
    ):
        cdk.App.of(glue).synth()


def test_only_a_step_that_may_publish_is_told_the_topic(dev_template):
    """The topic ARN goes with the sns:Publish grant (a message link): a step told the topic without the grant
    would fail on AccessDenied when it published (found by the local run's IAM check)."""
    steps = {}
    for definition in dev_template.find_resources("AWS::Batch::JobDefinition").values():
        environment = {e["Name"]: e["Value"] for e in definition["Properties"]["ContainerProperties"]["Environment"]}
        steps[environment["PIPELINE_STEP"]] = "PIPELINE_TOPIC_ARN" in environment
    assert steps == {
        "feed_watcher": True,
        "feed_consumer": False,
        "daily_report": False,
        "hourly_split": True,
        "hourly_partition": False,
        "hourly_join": False,
    }


def test_message_links_get_a_claim_check_folder_the_glue_writes_and_the_next_step_reads(dev_template):
    """A message over SubmitJob's 30 KiB goes to S3: the glue may write only the chain's _messages/ folder,
    and only the step after a message link may read its own claim checks there."""
    glue = glue_statements(dev_template)
    writes, reads = [], {}
    policies = dev_template.find_resources("AWS::IAM::Policy") | dev_template.find_resources("AWS::IAM::ManagedPolicy")
    for logical_id, policy in policies.items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            text = json.dumps(statement["Resource"])
            if "_messages/" in text:
                if logical_id in glue:
                    writes.append((statement["Action"], text))
                else:
                    reads[logical_id] = text
    assert writes == [("s3:PutObject", writes[0][1])]
    assert "/feeds/_messages/*" in writes[0][1] and "/partitions/_messages/*" in writes[0][1]
    # The step after each message link (not the fan-out's children, who get items, not a message) and the join.
    readers = {reader[: reader.index("JobRole")]: resource for reader, resource in reads.items()}
    assert set(readers) == {"Feedsfeedconsumer", "Partitionshourlyjoin"}
    assert "/feeds/_messages/*/feed_consumer.json" in readers["Feedsfeedconsumer"]
    assert "/partitions/_messages/*/hourly_join.json" in readers["Partitionshourlyjoin"]
    # The key the glue writes is one the step may read.
    from pipeline_constructs.glue.handler import SUBMIT_JOB_BUDGET, claim_check
    from pipeline_constructs.local.iam import _glob

    environment = [
        {"name": "PIPELINE_STEP", "value": "feed_consumer"},
        {"name": "PIPELINE_CHAIN_RUN", "value": "feeds-2026-12-04T03-00-00Z"},
        {"name": "DOWNLOAD_MESSAGE", "value": "m" * SUBMIT_JOB_BUDGET},
    ]
    request = {"jobName": "j", "containerOverrides": {"environment": environment}}
    _, key, _, _ = claim_check(request, {"bucket": "b", "prefix": "feeds/_messages/"}, "95df01b4-message-id")
    (readable,) = re.findall(r'"(/feeds/_messages/[^"]*)"', readers["Feedsfeedconsumer"])
    assert _glob(f"arn:aws:s3:::b{readable}", f"arn:aws:s3:::b/{key}"), (readable, key)


def test_steps_links_and_images_still_import_from_the_chains_module():
    """They live in chain/steps.py and chain/links.py now; code that imported them beside BatchChain (from
    ``pipeline_constructs.batch_chain`` before the component folders) gets the same classes."""
    from pipeline_constructs.chain import construct

    assert (construct.ChainStep, construct.ChainLink, construct.StepImage) == (ChainStep, ChainLink, StepImage)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [step(memory_mib=8)],
            "Test/Chain: steps[0].memory_mib=8 is invalid; allowed: at least 128 MiB; the value is in MiB: did you "
            "mean 8 GiB = 8192?",
        ),
        (
            [step(command="python -m job --fast")],
            "Test/Chain: steps[0].command='python -m job --fast' is invalid; allowed: a list of strings, such as "
            "['python', '-m', 'job', '--fast']",
        ),
        (
            [step(environment={"WORKERS": 4})],
            "Test/Chain: steps[0].environment['WORKERS']=4 is invalid; allowed: a string, such as '4'",
        ),
    ],
)
@pytest.mark.user_mistake
def test_values_aws_takes_but_no_user_means_fail_synth(stack, steps, message):
    """Each would deploy: a job the kernel kills at once, a command of one-character arguments, a definition
    that Batch refuses at deploy (or jsii's TypeError at synth, a traceback)."""
    with pytest.raises(ValueError) as error:
        BatchChain(stack, "Chain", steps=steps)
    assert str(error.value) == message


def test_a_links_environment_values_may_be_numbers(stack):
    """The chain makes them strings (ChainLink's docstring), so no error for them."""
    BatchChain(stack, "Chain", steps=[step(link=ChainLink.message({"PARALLELISM": 15})), step(name="second")])
