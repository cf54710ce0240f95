"""Where a BatchChain's jobs run: a spot compute environment that scales from zero, its job queue (which
cancels a job stuck in RUNNABLE), and the check that each step fits an instance type the environment may launch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aws_cdk import Duration, Token
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from pipeline_constructs.building_blocks.nag import BASIC_MONITORING, acknowledge, acknowledge_control
from pipeline_constructs.building_blocks.network import PipelineNetwork
from pipeline_constructs.building_blocks.validation import argument_error

if TYPE_CHECKING:
    from pipeline_constructs.chain.steps import ChainStep

#: BatchChain's ``architecture`` values, by CDK's instance architecture.
ARCHITECTURE_NAMES = {ec2.InstanceArchitecture.X86_64: "x86_64", ec2.InstanceArchitecture.ARM_64: "arm64"}
X86_INSTANCE_CLASSES = (ec2.InstanceClass.M6I, ec2.InstanceClass.C6I, ec2.InstanceClass.R6I, ec2.InstanceClass.M5)
ARM_INSTANCE_CLASSES = (ec2.InstanceClass.M7G, ec2.InstanceClass.C7G, ec2.InstanceClass.R7G, ec2.InstanceClass.M6G)

#: How long a job may wait in RUNNABLE for spot capacity before the chain's own queue cancels it (the run then
#: fails, with the reason on its status row). Spot shortages across several classes and zones pass within
#: hours; AWS's own example waits 4 hours. Batch allows 600 s to 86400 s.
DEFAULT_RUNNABLE_TIMEOUT = Duration.hours(4)
MIN_RUNNABLE_TIMEOUT, MAX_RUNNABLE_TIMEOUT = Duration.minutes(10), Duration.hours(24)
#: A job no allowed instance type (or not the environment's max vCPUs) can hold never leaves RUNNABLE by
#: waiting: cancelled after Batch's minimum instead (synth refuses such a step on the chain's own environment).
MISCONFIGURATION_TIMEOUT = MIN_RUNNABLE_TIMEOUT
#: How long jobs running when an edit of the compute environment (its launch template) reaches it may go on on
#: their old instances before Batch terminates them: the chain's longest step attempt, within Batch's default
#: of 30 minutes and 6 hours (so an update, which holds the old instances, ends in bounded time).
MIN_UPDATE_TIMEOUT, MAX_UPDATE_TIMEOUT = Duration.minutes(30), Duration.hours(6)

#: The largest size of each instance family, (size, vCPUs, GiB installed): a step fits a family if it fits this
#: size, since every size of a family is a fraction of it. A family not listed here is not checked.
LARGEST_SIZES: dict[str, tuple[str, int, int]] = {
    **{f: ("24xlarge", 96, gib) for f, gib in (("m5", 384), ("c5", 192), ("r5", 768))},
    **{f: ("24xlarge", 96, gib) for f, gib in (("m5a", 384), ("c5a", 192), ("r5a", 768))},
    **{f: ("32xlarge", 128, gib) for f, gib in (("m6i", 512), ("c6i", 256), ("r6i", 1024))},
    **{f: ("48xlarge", 192, gib) for f, gib in (("m6a", 768), ("c6a", 384), ("r6a", 1536))},
    **{f: ("48xlarge", 192, gib) for f, gib in (("m7i", 768), ("c7i", 384), ("r7i", 1536))},
    **{f: ("48xlarge", 192, gib) for f, gib in (("m7a", 768), ("c7a", 384), ("r7a", 1536))},
    **{f: ("16xlarge", 64, gib) for f, gib in (("m6g", 256), ("c6g", 128), ("r6g", 512))},
    **{f: ("16xlarge", 64, gib) for f, gib in (("m7g", 256), ("c7g", 128), ("r7g", 512))},
    **{f: ("48xlarge", 192, gib) for f, gib in (("m8g", 768), ("c8g", 384), ("r8g", 1536))},
}
#: AWS Batch, "Compute resource memory management": the ECS agent registers the memory the kernel reports
#: (an m4.large's 8192 MiB installed register as 7985 MiB), less the 32 MiB the Batch AMI reserves for the
#: agent and the system. Scaled from that documented example: usable = installed x 7985/8192 - 32 MiB.
REGISTERED_SHARE = 7985 / 8192
ECS_RESERVED_MIB = 32


def usable_memory_mib(installed_gib: int) -> int:
    """The memory jobs may ask on an instance with ``installed_gib`` GiB (see :data:`REGISTERED_SHARE`)."""
    return int(installed_gib * 1024 * REGISTERED_SHARE) - ECS_RESERVED_MIB


def instance_families(instance_classes: Sequence[ec2.InstanceClass] | None, architecture: str) -> list[str]:
    """The families (``m6i``) the chain's own environment may launch; none if a class is not one CDK knows."""
    classes = instance_classes or (ARM_INSTANCE_CLASSES if architecture == "arm64" else X86_INSTANCE_CLASSES)
    try:
        return [ec2.InstanceType.of(c, ec2.InstanceSize.LARGE).to_string().split(".")[0] for c in classes]
    except Exception:  # whatever jsii raises for a class it does not know: then nothing is checked
        return []


def instance_architectures(instance_classes: Sequence[ec2.InstanceClass] | None, architecture: str) -> set[str]:
    """The architectures (``x86_64``, ``arm64``) of the instances the chain's own environment may launch:
    ``architecture`` for its default classes, and for a class CDK does not know."""
    found: set[str] = set()
    for instance_class in instance_classes or []:
        try:
            kind = ec2.InstanceType.of(instance_class, ec2.InstanceSize.LARGE).architecture
        except Exception:  # whatever jsii raises for a class it does not know
            found.add(architecture)
            continue
        found.add(ARCHITECTURE_NAMES.get(kind, architecture))
    return found or {architecture}


def update_timeout(steps: Sequence[ChainStep]) -> Duration:
    """How long a running job may finish on its old instance when an edit reaches the environment (see
    :data:`MIN_UPDATE_TIMEOUT`): the longest step attempt, in whole minutes, within the bounds."""
    minutes = -(-int(max(step.timeout.to_seconds() for step in steps)) // 60)
    bounded = min(max(minutes, int(MIN_UPDATE_TIMEOUT.to_minutes())), int(MAX_UPDATE_TIMEOUT.to_minutes()))
    return Duration.minutes(bounded)


def check_steps_fit(scope: Construct, steps: Sequence[ChainStep], families: Sequence[str]) -> None:
    """Each step's vCPUs and memory fit the largest size of at least one family: a job that fits none sits
    in RUNNABLE (MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT) until the queue cancels it. Not checked when a
    family is unknown to :data:`LARGEST_SIZES` (it may fit)."""
    if not families or any(f not in LARGEST_SIZES for f in families):
        return
    largest = [(family, *LARGEST_SIZES[family]) for family in families]
    sizes = [(f"{family}.{size}", vcpus, usable_memory_mib(gib)) for family, size, vcpus, gib in largest]
    for index, step in enumerate(steps):
        if Token.is_unresolved(step.vcpus) or Token.is_unresolved(step.memory_mib):
            continue
        if any(step.vcpus <= vcpus and step.memory_mib <= memory for _, vcpus, memory in sizes):
            continue
        with_vcpus = [size for size in sizes if step.vcpus <= size[1]]
        if not with_vcpus:
            name, vcpus, _ = max(sizes, key=lambda size: size[1])
            allowed = f"at most {vcpus}, the vCPUs of the largest allowed instance type ({name})"
            raise argument_error(scope, f"steps[{index}].vcpus", step.vcpus, allowed)
        name, _, memory = max(with_vcpus, key=lambda size: size[2])
        allowed = (
            f"at most {memory} MiB with {step.vcpus} vCPUs: what {name} leaves jobs after the ECS agent's share "
            "(or allow a larger instance class in instance_classes)"
        )
        raise argument_error(scope, f"steps[{index}].memory_mib", step.memory_mib, allowed)


def spot_compute_environment(
    scope: Construct,
    network: PipelineNetwork,
    *,
    max_vcpus: int,
    architecture: str,
    instance_classes: Sequence[ec2.InstanceClass] | None,
    detailed_monitoring: bool,
    steps: Sequence[ChainStep],
) -> batch.IManagedComputeEnvironment:
    """A spot compute environment in ``network``, from zero to ``max_vcpus``, on IMDSv2-only instances with
    encrypted disks; ``instance_classes`` default to the architecture's general, compute and memory classes.

    An edit of its launch template reaches its instances: the environment names the template's latest version
    number, so the edit changes the environment and Batch runs an infrastructure update (new instances from
    the new version; jobs placed there from then on). Not by replacing the environment, which would take the
    instances of running jobs with it: running jobs finish on their old instances, for up to the longest
    step's attempt (:func:`update_timeout`), before Batch terminates those (a job cut then is retried or
    fails as its retry strategy says). Under ``$Default`` (no version), Batch would keep version 1."""
    arm = architecture == "arm64"
    launch_template = _launch_template(scope, detailed_monitoring)
    environment = batch.ManagedEc2EcsComputeEnvironment(
        scope,
        "ComputeEnvironment",
        vpc=network.vpc,
        vpc_subnets=network.subnet_selection,
        security_groups=[network.security_group(scope, "SecurityGroup", description="Batch jobs: no inbound")],
        spot=True,
        allocation_strategy=batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED,
        minv_cpus=0,
        maxv_cpus=max_vcpus,
        instance_classes=list(instance_classes or (ARM_INSTANCE_CLASSES if arm else X86_INSTANCE_CLASSES)),
        use_optimal_instance_classes=False,
        launch_template=launch_template,
        update_to_latest_image_version=True,
        replace_compute_environment=False,
        terminate_on_update=False,
        update_timeout=update_timeout(steps),
    )
    # The L2 names the template by id alone (Batch then reads $Default, version 1 for ever).
    resource = environment.node.default_child
    assert isinstance(resource, batch.CfnComputeEnvironment)
    resource.add_property_override("ComputeResources.LaunchTemplate.Version", launch_template.latest_version_number)
    acknowledge(
        environment,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role]",
        "The ECS container instance role needs AmazonEC2ContainerServiceforEC2Role (ECS agent, ECR pulls); "
        "AWS maintains that policy as the agent's needs change.",
    )
    # The class implements IManagedComputeEnvironment (jsii), but its Python binding lacks the protocol's
    # vpc_subnets property.
    return environment  # type: ignore[return-value]


def _launch_template(scope: Construct, detailed_monitoring: bool) -> ec2.LaunchTemplate:
    launch_template = ec2.LaunchTemplate(
        scope,
        "LaunchTemplate",
        require_imdsv2=True,
        # One hop: job containers get credentials from their job role (the ECS credentials endpoint) and the
        # region from their environment, so the instance's own credentials stay out of their reach.
        http_put_response_hop_limit=1,
        detailed_monitoring=detailed_monitoring,
        block_devices=[
            ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(50, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
            )
        ],
    )
    if not detailed_monitoring:
        acknowledge_control(launch_template, "ec2_launch_template_monitoring_enabled_check", BASIC_MONITORING)
    return launch_template


def own_job_queue(
    scope: Construct, compute_environment: batch.IManagedComputeEnvironment, runnable_timeout: Duration
) -> batch.JobQueue:
    """The chain's own job queue, on ``compute_environment`` alone. A job stuck in RUNNABLE is cancelled (and
    so fails, as does its run): after ``runnable_timeout`` without spot capacity in any allowed type, after
    :data:`MISCONFIGURATION_TIMEOUT` when no allowed type or not the environment's max vCPUs can hold it."""
    reasons = batch.JobStateTimeLimitActionsReason
    limits = (
        (reasons.INSUFFICIENT_INSTANCE_CAPACITY, runnable_timeout),
        (reasons.COMPUTE_ENVIRONMENT_MAX_RESOURCE, MISCONFIGURATION_TIMEOUT),
        (reasons.JOB_RESOURCE_REQUIREMENT, MISCONFIGURATION_TIMEOUT),
    )
    return batch.JobQueue(
        scope,
        "JobQueue",
        compute_environments=[batch.OrderedComputeEnvironment(compute_environment=compute_environment, order=1)],
        priority=1,
        job_state_time_limit_actions=[
            batch.JobStateTimeLimitAction(
                max_time=max_time,
                reason=reason,
                action=batch.JobStateTimeLimitActionsAction.CANCEL,
                state=batch.JobStateTimeLimitActionsState.RUNNABLE,
            )
            for reason, max_time in limits
        ],
    )
