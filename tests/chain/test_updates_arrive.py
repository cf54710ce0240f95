"""BatchChain updates that arrive: a launch template edit reaches the instances, a run in flight across a deploy
that revises the job definitions keeps its rules and grants, directory images are built for the instances that
run them, and registry images may be required to be pinned by digest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Template

from pipeline_constructs import BatchChain, ChainLink, ChainStep, StepImage
from tests.chain.test_batch_chain import glue_statements
from tests.support import ROOT

WATCHER = ROOT / "worker_images" / "feed_watcher"
TAGGED = "public.ecr.aws/docker/library/python:3.13-slim"
DIGESTED = f"public.ecr.aws/docker/library/python@sha256:{'ab12' * 16}"


def only_resource(template: Template, kind: str, **properties: object) -> dict:
    (resource,) = template.find_resources(kind, {"Properties": properties} if properties else None).values()
    return resource["Properties"]


def definition_names(template: Template) -> list[str]:
    return [r["Properties"]["JobDefinitionName"] for r in template.find_resources("AWS::Batch::JobDefinition").values()]


def joined(value: object) -> str:
    """An ``Fn::Join`` of literals and references, the references as ``{Ref}``."""
    assert isinstance(value, dict) and "Fn::Join" in value, value
    return "".join(part if isinstance(part, str) else "{Ref}" for part in value["Fn::Join"][1])


# ---------------------------------------------------------------- the launch template's edits arrive


def test_the_compute_environment_names_its_launch_templates_latest_version(dev_template):
    environment = only_resource(dev_template, "AWS::Batch::ComputeEnvironment")
    launch_template = environment["ComputeResources"]["LaunchTemplate"]
    template_id = launch_template["LaunchTemplateId"]["Ref"]
    assert template_id in dev_template.find_resources("AWS::EC2::LaunchTemplate")
    # No version is $Default, version 1 for ever: an edit (volume, monitoring, hop limit) never reached instances.
    assert launch_template["Version"] == {"Fn::GetAtt": [template_id, "LatestVersionNumber"]}


def test_an_edit_updates_the_environment_in_place_and_lets_running_jobs_finish(dev_template):
    environment = only_resource(dev_template, "AWS::Batch::ComputeEnvironment")
    # An infrastructure update, not a replacement (which takes the running jobs' instances with it) ...
    assert environment["ReplaceComputeEnvironment"] is False
    # ... in which running jobs keep their instances for the longest step's attempt (feed_consumer: 2 hours).
    assert environment["UpdatePolicy"] == {"TerminateJobsOnUpdate": False, "JobExecutionTimeoutMinutes": 120}


# ---------------------------------------------------------------- job definitions matched across revisions


def test_job_definitions_have_fixed_unique_names(dev_template, prod_template):
    dev, prod = definition_names(dev_template), definition_names(prod_template)
    assert len(set(dev + prod)) == len(dev + prod) == 12  # six steps per environment
    # Readable, and unique per account and region: the chain's construct path, a hash of it, the step.
    patterns = [
        r"pipeline-dev-Feeds-[0-9A-F]{8}-feed_(watcher|consumer)",
        r"pipeline-dev-Reports-[0-9A-F]{8}-daily_report",
        r"pipeline-dev-Partitions-[0-9A-F]{8}-hourly_(split|partition|join)",
    ]
    assert all(any(re.fullmatch(pattern, name) for pattern in patterns) for name in dev), dev


def test_the_state_change_rule_matches_every_revision_of_the_chains_definitions(dev_template):
    for chain, names in (("feeds", ["feed_watcher", "feed_consumer"]), ("reports", ["daily_report"])):
        rule = only_resource(dev_template, "AWS::Events::Rule", Description=f"Batch job state changes of chain {chain}")
        filters = rule["EventPattern"]["detail"]["jobDefinition"]
        prefixes = [joined(f["prefix"]) for f in filters]
        assert all(set(f) == {"prefix"} for f in filters)
        assert all(re.match(r"arn:(aws|\{Ref\}):batch:[^:]+:\{Ref\}:job-definition/", p) for p in prefixes)
        # The name, then the colon before the revision: any revision of this definition, no other definition.
        expected = [f"{n}:" for n in definition_names(dev_template) if n.rsplit("-", 1)[-1] in names]
        assert sorted(p.rsplit("/", 1)[-1] for p in prefixes) == sorted(expected) and len(expected) == len(names)


def glue_submit_resources(template: Template) -> list[object]:
    return [
        resource
        for statements in glue_statements(template).values()
        for statement in statements
        if statement["Action"] == "batch:SubmitJob"
        for resource in statement["Resource"]
    ]


def test_the_glue_may_submit_every_revision_of_the_chains_definitions_and_nothing_else(dev_template):
    resources = glue_submit_resources(dev_template)
    queues = [r for r in resources if isinstance(r, dict) and "Fn::GetAtt" in r]
    definitions = sorted(joined(r).split(":batch:", 1)[-1] for r in resources if r not in queues)
    # While a deploy revises the definitions, the function may still run with the previous configuration.
    region = definitions[0].split(":", 1)[0]
    assert definitions == sorted(f"{region}:{{Ref}}:job-definition/{name}:*" for name in definition_names(dev_template))
    assert all(r["Fn::GetAtt"][1] == "JobQueueArn" for r in queues)


def test_starting_a_run_by_hand_is_granted_on_every_revision_of_the_first_step():
    stack = cdk.Stack(cdk.App(), "Start", env=cdk.Environment(region="us-east-1"))
    chain = BatchChain(stack, "Chain", steps=[ChainStep(name="only", image=TAGGED)])
    role = iam.Role(stack, "Operator", assumed_by=iam.AccountRootPrincipal())
    chain.grant_start(role)
    template = Template.from_stack(stack)
    (name,) = definition_names(template)
    policy = only_resource(template, "AWS::IAM::Policy", Roles=[stack.resolve(role.role_name)])
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert joined(statement["Resource"][1]) == f"arn:{{Ref}}:batch:us-east-1:{{Ref}}:job-definition/{name}:*"


# ---------------------------------------------------------------- directory images built for the instances


def docker_platforms(assets_file: Path) -> dict[str, str]:
    images = json.loads(assets_file.read_text()).get("dockerImages", {})
    return {image["displayName"]: image["source"].get("platform", "") for image in images.values()}


def test_the_examples_directory_images_are_built_for_its_x86_instances(example_outdir):
    platforms = docker_platforms(example_outdir / "pipeline-dev.assets.json")
    assert platforms and set(platforms.values()) == {"linux/amd64"}, platforms


def three_step_chain(tmp_path: Path, **kwargs: object) -> dict[str, str]:
    app = cdk.App(outdir=str(tmp_path), context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "Arm", env=cdk.Environment(region="us-east-1"))
    BatchChain(
        stack,
        "Chain",
        steps=[
            ChainStep(name="fetch", image=WATCHER, link=ChainLink.on_success()),
            ChainStep(name="report", image=StepImage.from_registry(TAGGED)),
        ],
        **kwargs,
    )
    return docker_platforms(Path(app.synth().directory) / "Arm.assets.json")


def test_an_arm64_chains_directory_images_are_built_for_arm64(tmp_path):
    assert three_step_chain(tmp_path, architecture="arm64") == {"Chain/fetchContainer/AssetImage": "linux/arm64"}


def test_instance_classes_decide_the_platform_over_the_architecture(tmp_path):
    platforms = three_step_chain(tmp_path, instance_classes=[ec2.InstanceClass.C7G, ec2.InstanceClass.M7G])
    assert platforms == {"Chain/fetchContainer/AssetImage": "linux/arm64"}


@pytest.mark.user_mistake
def test_a_directory_image_on_instance_classes_of_two_architectures_is_refused():
    stack = cdk.Stack(cdk.App(), "Mixed", env=cdk.Environment(region="us-east-1"))
    with pytest.raises(ValueError) as error:
        BatchChain(
            stack,
            "Chain",
            steps=[ChainStep(name="fetch", image=WATCHER)],
            instance_classes=[ec2.InstanceClass.M6I, ec2.InstanceClass.M7G],
        )
    assert str(error.value) == (
        f"Mixed/Chain: steps[fetch].image='{WATCHER}' is invalid; allowed: a registry image (a multi-platform "
        "one), or instance_classes of one architecture: they mix arm64 and x86_64, and a directory is built for "
        "one platform"
    )


# ---------------------------------------------------------------- registry images pinned by digest


def test_digested_images_pass_when_digests_are_required():
    stack = cdk.Stack(cdk.App(), "Pinned", env=cdk.Environment(region="us-east-1"))
    steps = [
        ChainStep(name="fetch", image=WATCHER, link=ChainLink.on_success()),  # built and pushed by content hash
        ChainStep(name="convert", image=DIGESTED, link=ChainLink.on_success()),
        ChainStep(name="report", image=StepImage.from_registry(f"repo:1.2@{DIGESTED.rsplit('@', 1)[1]}")),
    ]
    BatchChain(stack, "Chain", steps=steps, require_image_digests=True)
    images = [
        r["Properties"]["ContainerProperties"]["Image"]
        for r in Template.from_stack(stack).find_resources("AWS::Batch::JobDefinition").values()
    ]
    assert DIGESTED in images


@pytest.mark.parametrize(
    ("image", "require", "message"),
    [
        (
            TAGGED,
            True,
            f"Test/Chain: steps[only].image='{TAGGED}' is invalid; allowed: a registry image pinned by digest "
            "(repository@sha256:<64 hex digits>): a tag can be moved, and the chain has require_image_digests=True",
        ),
        (
            StepImage.from_registry(TAGGED),
            True,
            f"Test/Chain: steps[only].image='{TAGGED}' is invalid; allowed: a registry image pinned by digest",
        ),
        (
            "repo@sha256:abc",
            False,
            "Test/Chain: steps[only].image='repo@sha256:abc' is invalid; allowed: a digest of the form "
            "repository@sha256:<64 hex digits>",
        ),
        ("repo@latest", False, "Test/Chain: steps[only].image='repo@latest' is invalid; allowed: a digest"),
    ],
)
@pytest.mark.user_mistake
def test_a_tag_where_digests_are_required_or_a_malformed_digest_is_one_error(image, require, message):
    stack = cdk.Stack(cdk.App(), "Test", env=cdk.Environment(region="us-east-1"))
    with pytest.raises(ValueError) as error:
        BatchChain(stack, "Chain", steps=[ChainStep(name="only", image=image)], require_image_digests=require)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
