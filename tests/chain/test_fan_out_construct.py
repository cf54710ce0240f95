"""A fan-out step as synthesized: its job definition (per child timeout and attempts), the glue's grants (ListJobs
of the children, the items folder, the manifests), the rule that brings the array parent's end to the glue,
and one ValueError per mistake."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template

from pipeline_constructs.chain.construct import BatchChain, ChainLink, ChainStep, ChildFailure, FanOut

PYTHON = "public.ecr.aws/docker/library/python:3.13-slim"


def steps(fan_out: FanOut | None = None, **work: object) -> list[ChainStep]:
    return [
        ChainStep(name="split", image=PYTHON, link=ChainLink.message()),
        ChainStep(
            name="work",
            image=PYTHON,
            fan_out=fan_out or FanOut.over_manifest(on_child_failure=ChildFailure.CONTINUE),
            timeout=cdk.Duration.minutes(5),
            attempts=2,
            **({"link": ChainLink.on_success()} | work),  # type: ignore[arg-type]
        ),
        ChainStep(name="join", image=PYTHON),
    ]


@pytest.fixture(scope="module")
def template() -> Template:
    app = cdk.App(context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "FanOut", env=cdk.Environment(region="eu-west-1"))
    BatchChain(stack, "Maps", steps=steps(), max_vcpus=16)
    return Template.from_stack(stack)


def resource_json(template: Template, kind: str) -> str:
    return json.dumps(template.find_resources(kind))


def test_the_fan_out_steps_job_definition_times_out_and_retries_each_child(template):
    template.has_resource_properties(
        "AWS::Batch::JobDefinition",
        {
            "JobDefinitionName": Match.string_like_regexp("-work$"),
            "Timeout": {"AttemptDurationSeconds": 300},
            "RetryStrategy": Match.object_like({"Attempts": 2}),
        },
    )


def test_the_glue_lists_the_children_and_owns_the_items_folder_and_reads_the_manifests(template):
    policies = resource_json(template, "AWS::IAM::Policy") + resource_json(template, "AWS::IAM::ManagedPolicy")
    assert '"batch:ListJobs"' in policies
    managed = template.find_resources("AWS::IAM::ManagedPolicy")
    statements = [
        statement
        for policy in managed.values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "s3:GetObject" in json.dumps(statement)
    ]
    resources = json.dumps(statements)
    assert "/Maps/_items/*" in resources and "/Maps/split/*" in resources
    assert "/Maps/work/*" not in resources  # nothing else of the chain's data


def test_the_glue_is_told_the_fan_out_and_its_policy(template):
    parameters = resource_json(template, "AWS::SSM::Parameter")
    assert '\\"fanOut\\":{\\"source\\":\\"manifest\\",\\"field\\":\\"manifest\\"' in parameters
    assert '\\"onChildFailure\\":\\"continue\\"' in parameters and '\\"items\\":{\\"bucket\\"' in parameters


def test_the_job_state_rule_matches_the_array_parent_of_the_fan_out_step(template):
    (rule,) = template.find_resources(
        "AWS::Events::Rule", {"Properties": {"EventPattern": {"source": ["aws.batch"]}}}
    ).values()
    definitions = json.dumps(rule["Properties"]["EventPattern"]["detail"]["jobDefinition"])
    assert "-work:" in definitions  # the parent's terminal event (sent after all children) reaches the glue


def test_children_read_the_items_and_the_join_may_read_a_large_list_as_a_claim_check(template):
    roles = {
        name: json.dumps(policy["Properties"]["PolicyDocument"])
        for name, policy in template.find_resources("AWS::IAM::Policy").items()
    }
    work = next(doc for name, doc in roles.items() if name.startswith("MapsworkJobRole"))
    join = next(doc for name, doc in roles.items() if name.startswith("MapsjoinJobRole"))
    assert "/Maps/_items/*/work.json" in work and "_items" not in join
    assert "/Maps/_messages/*/join.json" in join


@pytest.mark.parametrize(
    ("make", "argument", "value"),
    [
        (lambda: steps(link=ChainLink.message()), "steps[1].link", "message"),
        (lambda: steps(array_size=4), "steps[1].array_size", "4"),
        (lambda: steps(FanOut.over_message(on_child_failure="ignore")), "steps[1].fan_out.on_child_failure", "ignore"),
        (lambda: steps(FanOut.over_message(max_items=20000)), "steps[1].fan_out.max_items", "20000"),
        (lambda: [*steps()][1:], "steps[0].fan_out", "fan-out after nothing"),
        (lambda: steps("tiles"), "steps[1].fan_out", "str"),  # type: ignore[arg-type]
    ],
    ids=["message link", "array_size too", "policy", "max_items", "first step", "not a FanOut"],
)
def test_each_mistake_is_one_value_error_naming_the_argument_and_value(make, argument, value):
    stack = cdk.Stack(cdk.App(), "Mistake")
    with pytest.raises(ValueError) as raised:
        BatchChain(stack, "Maps", steps=make())
    message = str(raised.value)
    assert "Maps" in message and argument in message and value in message, message


def test_a_fan_out_step_may_be_last_without_a_join():
    stack = cdk.Stack(cdk.App(), "Last")
    BatchChain(stack, "Maps", steps=steps(link=None)[:2])
