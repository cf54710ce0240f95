"""Idle cost of a synthesized template: what bills every month even when no work runs.

Always-on resources are priced from the checked-in, dated us-east-1 table (``pricing/us-east-1.json``);
request-priced services are listed as pay per use with their unit price.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline_constructs.building_blocks.template_metadata import PROFILE_METADATA

PRICE_TABLE = Path(__file__).resolve().parent / "pricing" / "us-east-1.json"
#: A fleet's wake check: a schedule whose input (JSON, perhaps inside an Fn::Join) is {"wake": ...}.
WAKE_INPUT = re.compile(r'\{\\*"wake\\*":')


@dataclass(frozen=True)
class CostLine:
    resource: str
    kind: str
    detail: str
    monthly: float
    #: "compliance" for what the compliance profile adds (template metadata), else "".
    profile: str = ""


def load_prices(path: Path = PRICE_TABLE) -> dict[str, Any]:
    return json.loads(path.read_text())


def _alarm_metric_count(properties: dict[str, Any]) -> int:
    metrics = properties.get("Metrics")
    if metrics:
        return max(1, sum(1 for query in metrics if "MetricStat" in query))
    return 1


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def idle_costs(template: dict[str, Any], prices: dict[str, Any] | None = None) -> list[CostLine]:
    """Every always-on billable resource of the template with its monthly list price."""
    monthly = _MonthlyIdleCost(prices or load_prices())
    lines = [monthly.line(logical_id, resource) for logical_id, resource in template.get("Resources", {}).items()]
    return [_with_profile(line, template) for line in lines if line is not None]


class _MonthlyIdleCost:
    """What one resource of a template bills a month while no work runs, priced by its CloudFormation type."""

    def __init__(self, prices: dict[str, Any]) -> None:
        self.prices = prices
        self.always, self.hours = prices["always_on"], prices["hours_per_month"]
        self.instance_hour = prices["instance_hour_on_demand"]

    def line(self, logical_id: str, resource: dict[str, Any]) -> CostLine | None:
        """The resource's cost line; None for what bills only per use, or not at all."""
        price = self.BY_TYPE.get(resource.get("Type", ""))
        return price(self, logical_id, resource.get("Properties", {}) or {}) if price else None

    def nat_gateway(self, logical_id: str, props: dict[str, Any]) -> CostLine:
        return CostLine(
            logical_id, "NAT gateway", "per hour, before traffic", self.always["nat_gateway_hour"] * self.hours
        )

    def vpc_endpoint(self, logical_id: str, props: dict[str, Any]) -> CostLine | None:
        if props.get("VpcEndpointType") != "Interface":
            return None  # gateway endpoints (S3, DynamoDB) are free
        zones = len(props.get("SubnetIds") or []) or 1
        monthly = self.always["interface_endpoint_az_hour"] * zones * self.hours
        return CostLine(logical_id, "interface endpoint", f"{zones} AZ(s)", monthly)

    def kms_key(self, logical_id: str, props: dict[str, Any]) -> CostLine:
        return CostLine(logical_id, "KMS key", "customer managed", self.always["kms_key_month"])

    def alarm(self, logical_id: str, props: dict[str, Any]) -> CostLine:
        metrics = _alarm_metric_count(props)
        monthly = self.always["cloudwatch_alarm_metric_month"] * metrics
        return CostLine(logical_id, "CloudWatch alarm", f"{metrics} alarm metric(s)", monthly)

    def scaling_policy(self, logical_id: str, props: dict[str, Any]) -> CostLine | None:
        if props.get("PolicyType") != "TargetTrackingScaling":
            return None
        # Target tracking keeps two alarms of its own (high and low) on its metrics.
        custom = (props.get("TargetTrackingConfiguration") or {}).get("CustomizedMetricSpecification") or {}
        metrics = _alarm_metric_count(custom) if custom.get("Metrics") else 1
        monthly = self.always["cloudwatch_alarm_metric_month"] * metrics * 2
        return CostLine(logical_id, "CloudWatch alarm", f"2 target-tracking alarms x {metrics} metric(s)", monthly)

    def dashboard(self, logical_id: str, props: dict[str, Any]) -> CostLine:
        # Listed at its price like the alarms: the account's 3 free dashboards may be in use already.
        detail = "per dashboard, beyond the account's 3 free ones (up to 50 metrics each)"
        return CostLine(logical_id, "dashboard", detail, self.always["cloudwatch_dashboard_month"])

    def auto_scaling_group(self, logical_id: str, props: dict[str, Any]) -> CostLine | None:
        count = _int(props.get("MinSize"))
        if count <= 0:
            return None
        overrides = (((props.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}).get("Overrides")) or []
        instance_type = next((o.get("InstanceType") for o in overrides if o.get("InstanceType")), None)
        hourly = self.instance_hour.get(instance_type or "", 0.1)
        return CostLine(
            logical_id,
            "instances kept by min size",
            f"{count} x {instance_type or 'instance'} on demand (upper bound; spot is cheaper)",
            count * (hourly + self.always["public_ipv4_hour"]) * self.hours,
        )

    def instance(self, logical_id: str, props: dict[str, Any]) -> CostLine:
        hourly = self.instance_hour.get(str(props.get("InstanceType")), 0.1)
        return CostLine(logical_id, "EC2 instance", str(props.get("InstanceType")), hourly * self.hours)

    def compute_environment(self, logical_id: str, props: dict[str, Any]) -> CostLine | None:
        minimum = _int((props.get("ComputeResources") or {}).get("MinvCpus"))
        if minimum <= 0:
            return None
        monthly = minimum * self.always["batch_vcpu_hour_on_demand"] * self.hours
        return CostLine(logical_id, "Batch min vCPUs", f"{minimum} vCPU kept running", monthly)

    def lambda_version(self, logical_id: str, props: dict[str, Any]) -> CostLine | None:
        if not props.get("ProvisionedConcurrencyConfig"):
            return None
        concurrency = _int(props["ProvisionedConcurrencyConfig"].get("ProvisionedConcurrentExecutions"))
        monthly = concurrency * self.always["lambda_provisioned_gb_second"] * 3600 * self.hours
        return CostLine(logical_id, "provisioned concurrency", f"{concurrency} x 1 GB assumed", monthly)

    def load_balancer(self, logical_id: str, props: dict[str, Any]) -> CostLine:
        network = props.get("Type") == "network"
        rate = self.always["network_load_balancer_hour" if network else "application_load_balancer_hour"]
        return CostLine(logical_id, "load balancer", "NLB" if network else "ALB", rate * self.hours)

    def schedule(self, logical_id: str, props: dict[str, Any]) -> CostLine | None:
        if not WAKE_INPUT.search(json.dumps(props.get("Target", {}).get("Input"))):
            return None  # other schedules bill per invocation of what they start
        checks = _checks_per_month(str(props.get("ScheduleExpression", "")), self.hours)
        if not checks:
            return None
        return CostLine(
            logical_id,
            "fleet wake check",
            f"{checks:,.0f} checks a month (Scheduler, glue Lambda 256 MB ~0.1 s, SQS), before free tiers",
            checks * _wake_check_price(self.prices["per_request"]),
        )

    def secret(self, logical_id: str, props: dict[str, Any]) -> CostLine:
        return CostLine(logical_id, "secret", "Secrets Manager", self.always["secrets_manager_secret_month"])

    def elastic_ip(self, logical_id: str, props: dict[str, Any]) -> CostLine:
        return CostLine(logical_id, "public IPv4 address", "Elastic IP", self.always["public_ipv4_hour"] * self.hours)

    BY_TYPE: ClassVar[dict[str, Callable[[_MonthlyIdleCost, str, dict[str, Any]], CostLine | None]]] = {
        "AWS::EC2::NatGateway": nat_gateway,
        "AWS::EC2::VPCEndpoint": vpc_endpoint,
        "AWS::KMS::Key": kms_key,
        "AWS::CloudWatch::Alarm": alarm,
        "AWS::AutoScaling::ScalingPolicy": scaling_policy,
        "AWS::CloudWatch::Dashboard": dashboard,
        "AWS::AutoScaling::AutoScalingGroup": auto_scaling_group,
        "AWS::EC2::Instance": instance,
        "AWS::Batch::ComputeEnvironment": compute_environment,
        "AWS::Lambda::Version": lambda_version,
        "AWS::ElasticLoadBalancingV2::LoadBalancer": load_balancer,
        "AWS::Scheduler::Schedule": schedule,
        "AWS::SecretsManager::Secret": secret,
        "AWS::EC2::EIP": elastic_ip,
    }


def _with_profile(line: CostLine, template: dict[str, Any]) -> CostLine:
    metadata = template["Resources"][line.resource].get("Metadata") or {}
    profile = metadata.get(PROFILE_METADATA, "")
    return CostLine(line.resource, line.kind, line.detail, line.monthly, profile) if profile else line


def _checks_per_month(expression: str, hours: float) -> float:
    """Invocations a month of ``rate(N minute[s]|hour[s])``; 0 for other expressions."""
    match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours)\)", expression.strip())
    if not match:
        return 0.0
    minutes = int(match[1]) * (60 if match[2].startswith("hour") else 1)
    return hours * 60 / minutes


def _wake_check_price(per_request: dict[str, float]) -> float:
    """One check: a Scheduler invocation, a glue Lambda invocation, one GetQueueAttributes (and a free
    DescribeAutoScalingGroups)."""
    lambda_seconds = 0.1 * 0.25  # ~0.1 s of the glue function at 256 MB
    return (
        per_request["scheduler_invocation"]
        + per_request["lambda_request"]
        + lambda_seconds * per_request["lambda_gb_second_arm"]
        + per_request["sqs_request"]
    )


def cost_report(template: dict[str, Any], prices: dict[str, Any] | None = None) -> dict[str, Any]:
    prices = prices or load_prices()
    lines = idle_costs(template, prices)
    return {
        "as_of": prices["as_of"],
        "region": prices["region"],
        "lines": lines,
        "idle_monthly": round(sum(line.monthly for line in lines), 2),
        # What the compliance profile adds while idle, and so what the same stack costs without it.
        "compliance_monthly": round(sum(line.monthly for line in lines if line.profile == "compliance"), 2),
        "default_profile_monthly": round(sum(line.monthly for line in lines if line.profile != "compliance"), 2),
        "pay_per_use": prices["pay_per_use"],
        "notes": prices["notes"],
    }
