"""PipelineNetwork: a VPC that costs nothing while idle."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from pipeline_constructs._nag import acknowledge_control
from pipeline_constructs._validation import check_not_empty, check_range
from pipeline_constructs.logs import DEFAULT_RETENTION, pipeline_log_group


class PipelineNetwork(Construct):
    """Public subnets, no NAT gateway, no interface endpoints; free gateway endpoints for S3 and DynamoDB.

    Workers and Batch jobs get public IPs for outbound traffic (ECR, SQS, SNS, CloudWatch) through the
    internet gateway, which is free, instead of a NAT gateway (about $33 a month per AZ before traffic).
    Security groups made by :meth:`security_group` allow no inbound traffic at all, so nothing reaches
    the instances; S3 and DynamoDB traffic stays on the AWS network through gateway endpoints.

    :param vpc: an existing VPC to use instead; nothing is created then. Default: None, a new VPC.
    :param availability_zones: AZ names to spread subnets over; naming them avoids a context lookup
        (and so AWS credentials) at synth. Default: the first ``max_azs`` of the region, resolved at deploy.
    :param max_azs: how many AZs when ``availability_zones`` is not given. Default: 2. Range: 1 to 6.
    :param cidr: the VPC's IPv4 range. Default: 10.0.0.0/16.
    :param flow_log_retention: retention of the VPC flow log group. Default: one month.
    :param subnet_selection: where compute goes in a passed ``vpc``. Default: the created VPC's public
        subnets, or the CDK's default choice (private subnets first) in a passed VPC.
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
        flow_log_retention: logs.RetentionDays = DEFAULT_RETENTION,
        subnet_selection: ec2.SubnetSelection | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        check_range(self, "max_azs", max_azs, minimum=1, maximum=6)
        check_not_empty(self, "availability_zones", availability_zones)
        if vpc is not None:
            self.vpc: ec2.IVpc = vpc
            self.subnet_selection = subnet_selection or ec2.SubnetSelection()
            return
        created = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(cidr),
            availability_zones=availability_zones,
            max_azs=None if availability_zones else max_azs,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=20)
            ],
            # The CDK's default-SG lock-down adds a custom-resource Lambda per stack; nothing here uses
            # the default security group (see security_group()).
            restrict_default_security_group=False,
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDB": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.DYNAMODB),
            },
        )
        created.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                pipeline_log_group(self, "FlowLogGroup", retention=flow_log_retention)
            ),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        for subnet in created.public_subnets:
            acknowledge_control(
                subnet,
                "subnet_auto_assign_public_ip_disabled_check",
                "Workers and Batch instances reach SQS, SNS, ECR and CloudWatch through the free internet gateway "
                "with a public IP, instead of a NAT gateway at about $33 a month per AZ; their security groups "
                "allow no inbound traffic.",
            )
        self.vpc = created
        self.subnet_selection = subnet_selection or ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)

    def selected_subnets(self) -> ec2.SelectedSubnets:
        """The subnets compute goes into (``subnet_selection`` applied to the VPC)."""
        # jsii's Python select_subnets takes the selection's fields as keywords, not the struct itself.
        return self.vpc.select_subnets(**self.subnet_selection._values)

    def security_group(self, scope: Construct, construct_id: str, *, description: str) -> ec2.SecurityGroup:
        """A security group with outbound access only: no inbound rule, now or later by default."""
        return ec2.SecurityGroup(scope, construct_id, vpc=self.vpc, description=description, allow_all_outbound=True)
