"""PipelineNetwork: a VPC that costs nothing while idle."""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import compliance_profile, mark_compliance_cost
from pipeline_constructs.building_blocks.logs import pipeline_log_group
from pipeline_constructs.building_blocks.nag import acknowledge_control
from pipeline_constructs.building_blocks.validation import argument_error, check_not_empty, check_range

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
    :param availability_zones: AZ names to spread subnets over; naming them avoids a context lookup
        (and so AWS credentials) at synth. Default: the first ``max_azs`` of the region, resolved at deploy.
    :param max_azs: how many AZs when ``availability_zones`` is not given. Default: 2. Range: 1 to 6.
    :param cidr: the VPC's IPv4 range. Default: 10.0.0.0/16.
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
        if vpc is not None:
            self.vpc: ec2.IVpc = vpc
            self.subnet_selection = subnet_selection or _subnets_with_a_route_out(self, vpc)
            return
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
