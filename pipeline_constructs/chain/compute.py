"""Where a BatchChain's jobs run: a spot compute environment that scales from zero, and its job queue."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from pipeline_constructs.building_blocks.nag import BASIC_MONITORING, acknowledge, acknowledge_control
from pipeline_constructs.building_blocks.network import PipelineNetwork

X86_INSTANCE_CLASSES = (ec2.InstanceClass.M6I, ec2.InstanceClass.C6I, ec2.InstanceClass.R6I, ec2.InstanceClass.M5)
ARM_INSTANCE_CLASSES = (ec2.InstanceClass.M7G, ec2.InstanceClass.C7G, ec2.InstanceClass.R7G, ec2.InstanceClass.M6G)


def spot_compute_environment(
    scope: Construct,
    network: PipelineNetwork,
    *,
    max_vcpus: int,
    architecture: str,
    instance_classes: Sequence[ec2.InstanceClass] | None,
    detailed_monitoring: bool,
) -> batch.IManagedComputeEnvironment:
    """A spot compute environment in ``network``, from zero to ``max_vcpus``, on IMDSv2-only instances with
    encrypted disks; ``instance_classes`` default to the architecture's general, compute and memory classes."""
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
    )
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


def own_job_queue(scope: Construct, compute_environment: batch.IManagedComputeEnvironment) -> batch.JobQueue:
    """The chain's own job queue, on ``compute_environment`` alone."""
    return batch.JobQueue(
        scope,
        "JobQueue",
        compute_environments=[batch.OrderedComputeEnvironment(compute_environment=compute_environment, order=1)],
        priority=1,
    )
