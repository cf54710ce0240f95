"""A SpotWorkerFleet's instances: their role, the launch template they boot from, and the Auto Scaling group
that draws them from several spot pools."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import jsii
from aws_cdk import Acknowledgment, Annotations, ContextProvider, Duration, Stack, Token, Validations
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_ssm as ssm
from constructs import IValidation

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
    template = ec2.LaunchTemplate(
        fleet,
        "LaunchTemplate",
        machine_image=worker_machine_image(fleet),
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


#: What the image lookup answers when it cannot be made (no credentials, no cached value): then the image is
#: resolved at deploy instead. Asking with a default also keeps `cdk synth` without credentials working.
UNLOOKED_IMAGE = "unlooked-up"
#: The public parameter CDK's own latest_amazon_linux2023 reads (kernel 6.1).
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-{arch}"


def worker_machine_image(fleet: SpotWorkerFleet) -> ec2.IMachineImage:
    """The given ``machine_image``, else the latest Amazon Linux 2023 of the architecture as it was when first
    looked up: the id is kept in ``cdk.context.json``, so a deploy changes the workers' image (replacing every
    worker) only after ``cdk context --reset`` of that entry. Resolved from SSM at each deploy instead, with a
    note, where no lookup can be made (a stack without an account and region, or a synth without credentials
    and without the cached value)."""
    if fleet.machine_image is not None:
        return fleet.machine_image
    stack = Stack.of(fleet)
    cpu = ec2.AmazonLinuxCpuType.ARM_64 if fleet.architecture == "arm64" else ec2.AmazonLinuxCpuType.X86_64
    latest = ec2.MachineImage.latest_amazon_linux2023(cpu_type=cpu)
    if not Token.is_unresolved(stack.account) and not Token.is_unresolved(stack.region):
        name = AL2023_PARAMETER.format(arch="arm64" if fleet.architecture == "arm64" else "x86_64")
        # Under the CDK CLI without credentials the lookup fails and its error is put in context: asking again
        # would make it a synth error, so the image is resolved at deploy instead (the note below).
        key = ContextProvider.get_key(fleet, provider="ssm", props={"parameterName": name}).key
        cached = fleet.node.try_get_context(key)
        unreachable = isinstance(cached, dict) and "$providerError" in cached
        image_id = UNLOOKED_IMAGE if unreachable else ssm.StringParameter.value_from_lookup(fleet, name, UNLOOKED_IMAGE)
        if image_id != UNLOOKED_IMAGE and not image_id.startswith("dummy-value-for-"):
            return ec2.MachineImage.generic_linux({stack.region: image_id})
        why = "the lookup needs AWS credentials: synth once with them to keep the image in cdk.context.json"
    else:
        why = "no lookup without an account and region: give the stack both, and synth once with credentials"
    Annotations.of(fleet).add_info(
        f"The workers' Amazon Linux 2023 image is resolved at every deploy ({why}): a deploy after an image "
        "release replaces every worker. Or pass machine_image."
    )
    return latest


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
    group.node.add_validation(_InstanceTagCheck(fleet))
    return group


#: A tag key instance metadata can serve: EC2 refuses to launch an instance with tags in its metadata that
#: has any other key ("Work with instance tags in instance metadata", EC2 User Guide).
METADATA_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]+")
UNSERVABLE_TAG_KEYS = {".", "..", "_index"}


@jsii.implements(IValidation)
class _InstanceTagCheck:
    """Instance tags are in instance metadata (the worker reads its group's name there), and EC2 then refuses
    to launch any instance with a tag key holding a space or ``/``: every launch of the group would fail. Checked
    after the tag aspects ran, over the tags instances get (the launch template's, the group's propagated ones and
    the stack's, which CloudFormation propagates too); tags given only at deploy time are not seen."""

    def __init__(self, fleet: SpotWorkerFleet) -> None:
        self._fleet = fleet

    def validate(self) -> list[str]:
        keys = sorted({key for key in self._instance_tag_keys() if not _servable_in_metadata(key)})
        if not keys:
            return []
        return [
            f"{self._fleet.node.path}: instance tag keys {keys} are invalid; allowed: letters, digits and "
            "+ - = . , _ : @ (instance tags are in instance metadata, where EC2 refuses to launch any other): "
            "rename them, or tag the group with apply_to_launched_instances=False and exclude "
            "AWS::EC2::LaunchTemplate from the tag"
        ]

    def _instance_tag_keys(self) -> set[str]:
        fleet = self._fleet
        stack = Stack.of(fleet)
        group = cast(autoscaling.CfnAutoScalingGroup, fleet.auto_scaling_group.node.default_child)
        template = cast(ec2.CfnLaunchTemplate, fleet.launch_template.node.default_child)
        keys = set(stack.tags.tag_values())
        keys |= {tag["key"] for tag in stack.resolve(group.tags.render_tags()) or [] if tag.get("propagateAtLaunch")}
        data: Any = stack.resolve(template.launch_template_data) or {}
        for specification in data.get("tagSpecifications") or []:
            if specification.get("resourceType") == "instance":
                keys |= {tag["key"] for tag in specification.get("tags") or []}
        return {key for key in keys if isinstance(key, str) and not Token.is_unresolved(key)}


def _servable_in_metadata(key: str) -> bool:
    return key not in UNSERVABLE_TAG_KEYS and METADATA_TAG_KEY.fullmatch(key) is not None


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
