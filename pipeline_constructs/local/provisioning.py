"""What of a synthesized stack the local run brings up, and its data resources created in the emulator.

Buckets, queues, topics, tables and parameters are created under the names :class:`~.resolver.Resolver`
gives them; the stacks the run's stack imports from get theirs first. The compute is :mod:`.compute`'s.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline_constructs.local.clients import EmulatorClients
from pipeline_constructs.local.resolver import DEFAULT_ACCOUNT, Resolver
from pipeline_constructs.ops.assembly import CDK_PATH_METADATA, SynthesizedStack

#: Resource kinds the local run creates or runs; everything else is control plane (IAM, VPC, alarms...).
EMULATED = {
    "AWS::S3::Bucket": "created in the emulator",
    "AWS::SQS::Queue": "created in the emulator",
    "AWS::SNS::Topic": "created in the emulator",
    "AWS::SNS::Subscription": "created (sqs) or delivered locally (lambda)",
    "AWS::DynamoDB::Table": "created in the emulator",
    "AWS::SSM::Parameter": "created in the emulator (the glue's chain configuration)",
    "AWS::Lambda::Function": "run locally from its asset",
    "AWS::Lambda::EventInvokeConfig": "retries and on-failure destination applied",
    "AWS::Batch::JobQueue": "local Batch endpoint",
    "AWS::Batch::JobDefinition": "local Batch endpoint: its image directory's code, or a registry image's command",
    "AWS::Batch::ComputeEnvironment": "local Batch endpoint (parallel slots)",
    "AWS::Events::Rule": "local event bus",
    "AWS::Scheduler::Schedule": "fired on demand or on its schedule",
    "AWS::AutoScaling::AutoScalingGroup": "local worker processes",
    "AWS::AutoScaling::LifecycleHook": "workers drain and complete it (local Auto Scaling endpoint)",
    "AWS::EC2::LaunchTemplate": "user data read for the worker environment",
}
#: With the IAM check on (the default): the policies every call of a function, job or worker is held against.
IAM_CHECKED = {
    "AWS::IAM::Role": "each function's, job's and fleet's calls checked against its policies",
    "AWS::IAM::Policy": "statements evaluated for every call of the role's component",
    "AWS::IAM::ManagedPolicy": "statements evaluated for every call of the role's component",
    "AWS::IAM::InstanceProfile": "names the role of a fleet's workers",
    "AWS::KMS::Key": "its use checked with every call on the data it encrypts (compliance profile)",
    "AWS::SNS::TopicPolicy": "every delivery by a service to the topic checked against it",
    "AWS::SQS::QueuePolicy": "every delivery by a service to the queue checked against it",
    "AWS::S3::BucketPolicy": "service deliveries (access logs) checked against it",
    "AWS::Lambda::Permission": "every invocation by a service checked against it",
    "AWS::CloudWatch::Alarm": "fired once by --demo, its notification checked against the topic's policy",
}


def count_not_emulated(stack: SynthesizedStack, *, iam_check: bool) -> Counter[str]:
    """The stack's resources of kinds the local run neither creates nor runs, by type."""
    emulated = set(EMULATED) | (set(IAM_CHECKED) if iam_check else set())
    return Counter(resource["Type"] for resource in stack.resources.values() if resource["Type"] not in emulated)


def stack_account(stack: SynthesizedStack) -> str:
    """The account the stack's environment names (``aws://111111111111/eu-west-1``), which the local run uses
    as it is; an environment-agnostic stack's is the emulator's default."""
    account = stack.environment.removeprefix("aws://").split("/", 1)[0]
    return account if re.fullmatch(r"[0-9]{12}", account) else DEFAULT_ACCOUNT


def run_account(stack: SynthesizedStack, producers: Sequence[SynthesizedStack]) -> str:
    """The one account of a local run: ``stack``'s, which every stack it imports from must share (an export
    is imported only within its account on AWS, too)."""
    account = stack_account(stack)
    for producer in producers:
        if stack_account(producer) != account:
            raise ValueError(
                f"{stack.name} (account {account}) imports from {producer.name} (account "
                f"{stack_account(producer)}): Fn::ImportValue works only within one account and region"
            )
    return account


def cdk_path(stack: SynthesizedStack, logical_id: str) -> str:
    """The construct path of a resource (``pipeline-dev/Statistics/Group/ASG``); its logical id without one."""
    return stack.resources[logical_id].get("Metadata", {}).get(CDK_PATH_METADATA, logical_id)


def asset_manifest(assembly_dir: Path, stack_name: str) -> dict[str, Path]:
    """Asset hash -> its staged directory in the cloud assembly (files and Docker images alike)."""
    manifest_path = assembly_dir / f"{stack_name}.assets.json"
    assets: dict[str, Path] = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        for asset_hash, entry in manifest.get("files", {}).items():
            assets[asset_hash] = assembly_dir / entry["source"]["path"]
        for asset_hash, entry in manifest.get("dockerImages", {}).items():
            assets[asset_hash] = assembly_dir / entry["source"]["directory"]
    return assets


def stack_resolvers(
    stack: SynthesizedStack, producers: Sequence[SynthesizedStack], *, region: str, endpoint: str, run_id: str
) -> list[tuple[SynthesizedStack, Resolver]]:
    """(stack, its resolver) of each producer in the order given, then of ``stack``: each resolves
    ``Fn::ImportValue`` with the exports of the stacks before it; all in the run's account (:func:`run_account`)."""
    account = run_account(stack, producers)
    exports: dict[str, Any] = {}
    resolvers = []
    for each in [*producers, stack]:
        resolver = Resolver(
            each.template,
            stack_name=each.name,
            region=region,
            queue_url_base=endpoint,
            run_id=run_id,
            imports=dict(exports),
            account=account,
        )
        exports |= resolver.exports()
        resolvers.append((each, resolver))
    return resolvers


def create_data_resources(
    clients: EmulatorClients, stack: SynthesizedStack, resolver: Resolver, *, visibility_timeout: int
) -> None:
    """The stack's buckets, queues (visibility timeouts capped at ``visibility_timeout``), topics and tables."""
    _create_buckets(clients, stack, resolver)
    _create_queues(clients, stack, resolver, visibility_timeout)
    for logical_id in stack.resources_of_type("AWS::SNS::Topic"):
        clients.sns.create_topic(Name=resolver.physical_name(logical_id))
    _create_tables(clients, stack, resolver)


def create_parameters(clients: EmulatorClients, stack: SynthesizedStack, resolver: Resolver) -> None:
    """The stack's SSM parameters (the glue's chain configuration)."""
    for resource in stack.resources_of_type("AWS::SSM::Parameter").values():
        props = resolver.resolve(resource["Properties"])
        clients.ssm.put_parameter(Name=props["Name"], Value=props["Value"], Type=props.get("Type", "String"))


def _create_buckets(clients: EmulatorClients, stack: SynthesizedStack, resolver: Resolver) -> None:
    for logical_id, resource in stack.resources_of_type("AWS::S3::Bucket").items():
        name = resolver.physical_name(logical_id)
        arguments: dict[str, Any] = {"Bucket": name}
        if clients.region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": clients.region}
        clients.s3.create_bucket(**arguments)
        versioning = resource.get("Properties", {}).get("VersioningConfiguration", {})
        if versioning.get("Status") == "Enabled":
            clients.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def _create_queues(
    clients: EmulatorClients, stack: SynthesizedStack, resolver: Resolver, visibility_timeout: int
) -> None:
    queues = stack.resources_of_type("AWS::SQS::Queue")
    # Dead-letter queues first: a redrive policy names one that exists.
    ordered = sorted(queues, key=lambda lid: "RedrivePolicy" in queues[lid].get("Properties", {}))
    for logical_id in ordered:
        props = resolver.resolve(queues[logical_id].get("Properties", {}))
        attributes = {}
        if "VisibilityTimeout" in props:
            attributes["VisibilityTimeout"] = str(min(int(props["VisibilityTimeout"]), visibility_timeout))
        if "MessageRetentionPeriod" in props:
            attributes["MessageRetentionPeriod"] = str(props["MessageRetentionPeriod"])
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
        name = resolver.physical_name(logical_id)
        url = clients.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        expected = resolver.ref(logical_id)
        if url != expected:
            raise RuntimeError(f"queue URL {url} differs from the resolved {expected}")


def _create_tables(clients: EmulatorClients, stack: SynthesizedStack, resolver: Resolver) -> None:
    for logical_id, resource in stack.resources_of_type("AWS::DynamoDB::Table").items():
        props = resolver.resolve(resource.get("Properties", {}))
        name = resolver.physical_name(logical_id)
        clients.dynamodb.create_table(
            TableName=name,
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
            BillingMode="PAY_PER_REQUEST",
        )
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            clients.dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True}
            )
