"""A SpotWorkerFleet's instances: their role, the launch template they boot from, and the Auto Scaling group
that draws them from several spot pools."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from aws_cdk import Acknowledgment, Duration, Token, Validations
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam

from pipeline_constructs.building_blocks.nag import BASIC_MONITORING, acknowledge, acknowledge_control
from pipeline_constructs.fleet.boot import WorkerDelivery
from pipeline_constructs.fleet.scaling import instance_refresh

if TYPE_CHECKING:
    from pipeline_constructs.fleet.construct import SpotWorkerFleet


def instance_role(fleet: SpotWorkerFleet) -> iam.Role:
    """The role the workers run as; :mod:`.permissions` and :mod:`.boot` grant it what they call."""
    return iam.Role(
        fleet,
        "InstanceRole",
        assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
        description=f"SpotWorkerFleet {fleet.node.path}: consume its queue, its S3 prefix, status writes",
    )


def worker_launch_template(fleet: SpotWorkerFleet, user_data: ec2.UserData) -> ec2.LaunchTemplate:
    """Amazon Linux 2023 of the fleet's architecture, IMDSv2 only, an encrypted gp3 root volume, no key pair."""
    arm = fleet.architecture == "arm64"
    template = ec2.LaunchTemplate(
        fleet,
        "LaunchTemplate",
        machine_image=ec2.MachineImage.latest_amazon_linux2023(
            cpu_type=ec2.AmazonLinuxCpuType.ARM_64 if arm else ec2.AmazonLinuxCpuType.X86_64
        ),
        role=fleet.role,
        security_group=fleet.security_group,
        user_data=user_data,
        require_imdsv2=True,
        # One hop: a worker under systemd talks to the metadata service directly, and a token cannot leave
        # the instance. Two only for the container delivery, whose bridge network adds a hop.
        http_put_response_hop_limit=2 if fleet.delivery == WorkerDelivery.CONTAINER else 1,
        detailed_monitoring=fleet.detailed_monitoring,
        # The worker reads its Auto Scaling group's name from its tags for scale-in protection.
        instance_metadata_tags=True,
        block_devices=[
            ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(
                    fleet.root_volume_size, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3
                ),
            )
        ],
    )
    if not fleet.detailed_monitoring:
        acknowledge_control(template, "ec2_launch_template_monitoring_enabled_check", BASIC_MONITORING)
    return template


def worker_group(fleet: SpotWorkerFleet) -> autoscaling.AutoScalingGroup:
    """Spot instances of every given type (price-capacity optimized, rebalanced before reclaims) in the
    network's subnets, replaced by an instance refresh when the launch template changes."""
    group = autoscaling.AutoScalingGroup(
        fleet,
        "Group",
        vpc=fleet.network.vpc,
        vpc_subnets=fleet.network.subnet_selection,
        min_capacity=fleet.min_size,
        max_capacity=fleet.max_size,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=fleet.launch_template,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(name))
                for name in fleet.instance_types
            ],
            instances_distribution=autoscaling.InstancesDistribution(
                on_demand_base_capacity=fleet.on_demand_base_capacity,
                on_demand_percentage_above_base_capacity=fleet.on_demand_percentage_above_base,
                spot_allocation_strategy=autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
            ),
        ),
        capacity_rebalance=True,
        group_metrics=[autoscaling.GroupMetrics(autoscaling.GroupMetric.IN_SERVICE_INSTANCES)],
        default_instance_warmup=Duration.minutes(3),
        update_policy=instance_refresh(),
    )
    _name_zones(fleet, group)
    _acknowledge_findings(group)
    return group


def _name_zones(fleet: SpotWorkerFleet, group: autoscaling.AutoScalingGroup) -> None:
    zones = fleet.network.selected_subnets().availability_zones
    if not zones or any(Token.is_unresolved(zone) for zone in zones):
        return
    # Named as well as implied by the subnets: CT.AUTOSCALING.PR.1 reads this property for multi-AZ.
    cast(autoscaling.CfnAutoScalingGroup, group.node.default_child).availability_zones = sorted(set(zones))
    Validations.of(group).acknowledge(
        Acknowledgment(
            id="CloudFormation-Validate::W3010",
            reason="The zones are those of the group's subnets, named where the network was made; listed "
            "again because the Control Tower control CT.AUTOSCALING.PR.1 reads them here.",
        )
    )


def _acknowledge_findings(group: autoscaling.AutoScalingGroup) -> None:
    acknowledge(
        group,
        "AwsSolutions-EC26",
        "cdk-nag's EC26 cannot read an ASG with a mixed instances policy (it throws); the launch "
        "template's only volume is encrypted gp3, which this library's tests assert.",
    )
    acknowledge(
        group,
        "AwsSolutions-AS3",
        "Scaling activity is visible in the Auto Scaling activity history and the worker status rows; "
        "e-mail per spot launch and reclaim would be noise for a fleet that scales to zero daily.",
    )
