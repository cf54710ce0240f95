"""PipelineNetwork: a VPC that costs nothing while idle."""

from __future__ import annotations

import ipaddress
import json
import math

from aws_cdk import Annotations, ContextProvider, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import compliance_profile, mark_compliance_cost
from pipeline_constructs.building_blocks.logs import pipeline_log_group
from pipeline_constructs.building_blocks.nag import acknowledge_control
from pipeline_constructs.building_blocks.validation import argument_error, check_not_empty, check_range, check_unique

#: How a user with a VPC of their own gets a PipelineNetwork (said by the error for ``network=vpc``).
NETWORK_HINT = " (a VPC of your own: PipelineNetwork(scope, 'Network', vpc=vpc))"


class PipelineNetwork(Construct):
    """Public subnets, no NAT gateway, no interface endpoints; free gateway endpoints for S3 and DynamoDB.
    (Under the compliance profile: private subnets for compute behind one NAT gateway, no public IPs.)

    Workers and Batch jobs get public IPs for outbound traffic (ECR, SQS, SNS, CloudWatch) through the
    internet gateway, which is free, instead of a NAT gateway (about $33 a month per AZ before traffic).
    Security groups made by :meth:`security_group` allow no inbound traffic at all, so nothing reaches
    the instances; S3 and DynamoDB traffic stays on the AWS network through gateway endpoints.

    :param vpc: an existing VPC to use instead; nothing is created then. Default: None, a new VPC.
    :param availability_zones: AZ names of the stack's region to spread subnets over. In a stack with an
        account and region the CDK checks them against the region's zones, which it looks up with AWS
        credentials at the first synth and keeps in ``cdk.context.json``; to synth without credentials, give
        the zones in ``cdk.json``'s context (``"availability-zones:account=<account>:region=<region>":
        [...]``; synth says so). Default: the first ``max_azs`` of the region (looked up the same way in
        such a stack; resolved at deploy in one without an account).
    :param max_azs: how many AZs when ``availability_zones`` is not given. Default: 2. Range: 1 to 6.
    :param cidr: the VPC's IPv4 range, with room for a /20 subnet per zone (two with NAT gateways).
        Default: 10.0.0.0/16. Range: /16 to /20.
    :param flow_log_retention: retention of the VPC flow log group. Default: one month (a year under the
        compliance profile).
    :param subnet_selection: where compute goes. Default: the created VPC's public subnets (its private ones
        when it has NAT gateways); in a passed ``vpc``, its private subnets with egress, else its public ones.
        A passed VPC with isolated subnets only is an error (no route to ECR, SQS, SNS or CloudWatch): pass
        ``subnet_selection`` when its interface endpoints make them usable.
    :param nat_gateways: NAT gateways of a created VPC; with any, compute goes into private subnets behind
        them and no subnet assigns public IPs. About $33 a month each before traffic. Default: 0 (1 under the
        compliance profile). Range: 0 to the number of AZs.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc | None = None,
        availability_zones: list[str] | None = None,
        max_azs: int = 2,
        cidr: str = "10.0.0.0/16",
        flow_log_retention: logs.RetentionDays | None = None,
        subnet_selection: ec2.SubnetSelection | None = None,
        nat_gateways: int | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if nat_gateways is None:
            nat_gateways = 1 if compliance_profile(self) else 0
        zone_count = len(availability_zones) if availability_zones else max_azs
        check_range(self, "nat_gateways", nat_gateways, minimum=0, maximum=zone_count)
        self.nat_gateways = nat_gateways
        private = nat_gateways > 0
        check_range(self, "max_azs", max_azs, minimum=1, maximum=6)
        check_not_empty(self, "availability_zones", availability_zones)
        _check_zones(self, availability_zones)
        if vpc is not None:
            self.vpc: ec2.IVpc = vpc
            self.subnet_selection = subnet_selection or _subnets_with_a_route_out(self, vpc)
            return
        _check_cidr(self, cidr, subnets=zone_count * (2 if private else 1))
        _explain_zone_lookup(self, availability_zones)
        created = _vpc(self, availability_zones, max_azs, cidr, nat_gateways)
        created.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                pipeline_log_group(self, "FlowLogGroup", retention=flow_log_retention), _flow_log_role(self)
            ),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        for subnet in [] if private else created.public_subnets:
            acknowledge_control(subnet, "subnet_auto_assign_public_ip_disabled_check", PUBLIC_IP_REASON)
        for gateway in created.node.find_all() if compliance_profile(self) else []:
            if isinstance(gateway, (ec2.CfnNatGateway, ec2.CfnEIP)):
                mark_compliance_cost(gateway)
        self.vpc = created
        self.subnet_selection = subnet_selection or ec2.SubnetSelection(
            subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS if private else ec2.SubnetType.PUBLIC
        )

    def selected_subnets(self) -> ec2.SelectedSubnets:
        """The subnets compute goes into (``subnet_selection`` applied to the VPC)."""
        # jsii's Python select_subnets takes the selection's fields as keywords, not the struct itself.
        return self.vpc.select_subnets(**self.subnet_selection._values)

    def security_group(self, scope: Construct, construct_id: str, *, description: str) -> ec2.SecurityGroup:
        """A security group with outbound access only: no inbound rule, now or later by default."""
        return ec2.SecurityGroup(scope, construct_id, vpc=self.vpc, description=description, allow_all_outbound=True)


PUBLIC_IP_REASON = (
    "Workers and Batch instances reach SQS, SNS, ECR and CloudWatch through the free internet gateway with a "
    "public IP, instead of a NAT gateway at about $33 a month per AZ; their security groups allow no inbound "
    "traffic."
)


#: Where the CDK CLI puts a failed lookup's reason in the context it gives the app (cx-api's PROVIDER_ERROR_KEY).
PROVIDER_ERROR = "$providerError"
#: Each subnet's prefix length (see _vpc).
SUBNET_PREFIX = 20


def _check_zones(network: PipelineNetwork, zones: list[str] | None) -> None:
    """Zones of the stack's region, each once: ``us-east-1a`` in an eu-west-1 stack, or the region's name
    itself, would otherwise fail only at deploy."""
    if not zones:
        return
    check_unique(network, "availability_zones", zones)
    region = Stack.of(network).region
    for zone in zones:
        if Token.is_unresolved(zone):
            continue
        if Token.is_unresolved(region):
            fits = zone[-1:].isalpha() and zone[-2:-1].isdigit()
        else:
            fits = zone.startswith(region) and len(zone) > len(region)
        if not fits:
            example = "eu-west-1a" if Token.is_unresolved(region) else f"{region}a"
            raise argument_error(
                network, "availability_zones", zone, f"zone names of the stack's region, such as {example}"
            )


def _check_cidr(network: PipelineNetwork, cidr: str, *, subnets: int) -> None:
    """An IPv4 range a VPC may have, with room for the subnets (else the CDK fails deep inside, or AWS at
    deploy)."""
    if Token.is_unresolved(cidr):
        return
    widest = SUBNET_PREFIX - math.ceil(math.log2(subnets))
    allowed = f"an IPv4 range from /16 to /{widest} (room for {subnets} /{SUBNET_PREFIX} subnets), such as 10.0.0.0/16"
    try:
        prefix = ipaddress.IPv4Network(cidr).prefixlen
    except ValueError:
        raise argument_error(network, "cidr", cidr, allowed) from None
    if not 16 <= prefix <= widest:
        raise argument_error(network, "cidr", cidr, allowed)


def _explain_zone_lookup(network: PipelineNetwork, zones: list[str] | None) -> None:
    """The CDK's VPC checks named zones against the region's, a lookup; where the CDK CLI could not make it
    (no credentials), say how to synth without one, beside the CLI's own error."""
    stack = Stack.of(network)
    if not zones or Token.is_unresolved(stack.account) or Token.is_unresolved(stack.region):
        return
    key = ContextProvider.get_key(stack, provider="availability-zones").key
    looked_up = network.node.try_get_context(key)
    if isinstance(looked_up, dict) and PROVIDER_ERROR in looked_up:
        Annotations.of(network).add_error(
            f"availability_zones are checked against the zones of {stack.region}, which the CDK looks up with AWS "
            f"credentials ({looked_up[PROVIDER_ERROR]}): to synth without them, put the zones in cdk.json's "
            f"context: {json.dumps({key: zones})}"
        )


def _flow_log_role(network: PipelineNetwork) -> iam.Role:
    """The role VPC Flow Logs delivers with, which only this account's flow logs may assume: AWS's
    confused-deputy advice for it (the CDK's own role trusts the service unconditioned). A flow log's id is
    unknown until it exists, and it refers to the role: hence any flow log of the account and region."""
    stack = Stack.of(network)
    flow_logs = stack.format_arn(service="ec2", resource="vpc-flow-log", resource_name="*")
    principal = iam.ServicePrincipal(
        "vpc-flow-logs.amazonaws.com",
        conditions={"StringEquals": {"aws:SourceAccount": stack.account}, "ArnLike": {"aws:SourceArn": flow_logs}},
    )
    return iam.Role(network, "FlowLogRole", assumed_by=principal)


def _vpc(
    network: PipelineNetwork, availability_zones: list[str] | None, max_azs: int, cidr: str, nat_gateways: int
) -> ec2.Vpc:
    """Public subnets (and private ones behind the NAT gateways, if any) with gateway endpoints for S3 and
    DynamoDB."""
    private = nat_gateways > 0
    return ec2.Vpc(
        network,
        "Vpc",
        ip_addresses=ec2.IpAddresses.cidr(cidr),
        availability_zones=availability_zones,
        max_azs=None if availability_zones else max_azs,
        nat_gateways=nat_gateways,
        subnet_configuration=[
            # Behind NAT gateways nothing needs a public IP of its own (CT.EC2.PR.11: none assigned).
            ec2.SubnetConfiguration(
                name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=20, map_public_ip_on_launch=not private
            ),
            *([_private_subnets()] if private else []),
        ],
        # The CDK's default-SG lock-down adds a custom-resource Lambda per stack; nothing here uses
        # the default security group (see security_group()).
        restrict_default_security_group=False,
        gateway_endpoints={
            "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
            "DynamoDB": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.DYNAMODB),
        },
    )


def _private_subnets() -> ec2.SubnetConfiguration:
    return ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20)


def _subnets_with_a_route_out(network: PipelineNetwork, vpc: ec2.IVpc) -> ec2.SubnetSelection:
    """Private subnets with egress, else public ones: never the isolated subnets the CDK would pick first
    in a VPC without private ones, from where workers and jobs could not reach the AWS APIs they call."""
    if vpc.private_subnets:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
    if vpc.public_subnets:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
    raise argument_error(
        network,
        "vpc",
        vpc.node.path,
        "a VPC with private subnets with egress or public subnets (isolated ones reach no AWS API without "
        "interface endpoints; pass subnet_selection when it has them)",
    )
