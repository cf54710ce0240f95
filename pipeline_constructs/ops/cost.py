"""Idle cost of a synthesized template: what bills every month even when no work runs.

Always-on resources are priced from the checked-in, dated us-east-1 table (``pricing/us-east-1.json``);
request-priced services are listed as pay per use with their unit price.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRICE_TABLE = Path(__file__).resolve().parent / "pricing" / "us-east-1.json"
#: A fleet's wake check: a schedule whose input (JSON, perhaps inside an Fn::Join) is {"wake": ...}.
#: Template metadata on the resources the compliance profile adds that bill while idle (set by
#: ``building_blocks.compliance``; this module stays free of the CDK, for a quick ``pipeline cost``).
PROFILE_METADATA = "pipeline-constructs:profile"
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
    prices = prices or load_prices()
    always, hours = prices["always_on"], prices["hours_per_month"]
    instance_prices = prices["instance_hour_on_demand"]
    lines: list[CostLine] = []
    for logical_id, resource in template.get("Resources", {}).items():
        kind, props = resource.get("Type", ""), resource.get("Properties", {}) or {}
        if kind == "AWS::EC2::NatGateway":
            lines.append(
                CostLine(logical_id, "NAT gateway", "per hour, before traffic", always["nat_gateway_hour"] * hours)
            )
        elif kind == "AWS::EC2::VPCEndpoint" and props.get("VpcEndpointType") == "Interface":
            zones = len(props.get("SubnetIds") or []) or 1
            lines.append(
                CostLine(
                    logical_id,
                    "interface endpoint",
                    f"{zones} AZ(s)",
                    always["interface_endpoint_az_hour"] * zones * hours,
                )
            )
        elif kind == "AWS::KMS::Key":
            lines.append(CostLine(logical_id, "KMS key", "customer managed", always["kms_key_month"]))
        elif kind == "AWS::CloudWatch::Alarm":
            metrics = _alarm_metric_count(props)
            lines.append(
                CostLine(
                    logical_id,
                    "CloudWatch alarm",
                    f"{metrics} alarm metric(s)",
                    always["cloudwatch_alarm_metric_month"] * metrics,
                )
            )
        elif kind == "AWS::AutoScaling::ScalingPolicy" and props.get("PolicyType") == "TargetTrackingScaling":
            custom = (props.get("TargetTrackingConfiguration") or {}).get("CustomizedMetricSpecification") or {}
            metrics = _alarm_metric_count(custom) if custom.get("Metrics") else 1
            lines.append(
                CostLine(
                    logical_id,
                    "CloudWatch alarm",
                    f"2 target-tracking alarms x {metrics} metric(s)",
                    always["cloudwatch_alarm_metric_month"] * metrics * 2,
                )
            )
        elif kind == "AWS::CloudWatch::Dashboard":
            lines.append(CostLine(logical_id, "dashboard", "per dashboard", always["cloudwatch_dashboard_month"]))
        elif kind == "AWS::AutoScaling::AutoScalingGroup" and _int(props.get("MinSize")) > 0:
            count = _int(props.get("MinSize"))
            overrides = (((props.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}).get("Overrides")) or []
            instance_type = next((o.get("InstanceType") for o in overrides if o.get("InstanceType")), None)
            hourly = instance_prices.get(instance_type or "", 0.1)
            lines.append(
                CostLine(
                    logical_id,
                    "instances kept by min size",
                    f"{count} x {instance_type or 'instance'} on demand (upper bound; spot is cheaper)",
                    count * (hourly + always["public_ipv4_hour"]) * hours,
                )
            )
        elif kind == "AWS::EC2::Instance":
            hourly = instance_prices.get(str(props.get("InstanceType")), 0.1)
            lines.append(CostLine(logical_id, "EC2 instance", str(props.get("InstanceType")), hourly * hours))
        elif kind == "AWS::Batch::ComputeEnvironment":
            minimum = _int((props.get("ComputeResources") or {}).get("MinvCpus"))
            if minimum > 0:
                lines.append(
                    CostLine(
                        logical_id,
                        "Batch min vCPUs",
                        f"{minimum} vCPU kept running",
                        minimum * always["batch_vcpu_hour_on_demand"] * hours,
                    )
                )
        elif kind == "AWS::Lambda::Version" and props.get("ProvisionedConcurrencyConfig"):
            concurrency = _int(props["ProvisionedConcurrencyConfig"].get("ProvisionedConcurrentExecutions"))
            lines.append(
                CostLine(
                    logical_id,
                    "provisioned concurrency",
                    f"{concurrency} x 1 GB assumed",
                    concurrency * always["lambda_provisioned_gb_second"] * 3600 * hours,
                )
            )
        elif kind == "AWS::ElasticLoadBalancingV2::LoadBalancer":
            network = props.get("Type") == "network"
            rate = always["network_load_balancer_hour" if network else "application_load_balancer_hour"]
            lines.append(CostLine(logical_id, "load balancer", "NLB" if network else "ALB", rate * hours))
        elif kind == "AWS::Scheduler::Schedule" and WAKE_INPUT.search(json.dumps(props.get("Target", {}).get("Input"))):
            checks = _checks_per_month(str(props.get("ScheduleExpression", "")), hours)
            if checks:
                lines.append(
                    CostLine(
                        logical_id,
                        "fleet wake check",
                        f"{checks:,.0f} checks a month (Scheduler, glue Lambda 256 MB ~0.1 s, SQS), before free tiers",
                        checks * _wake_check_price(prices["per_request"]),
                    )
                )
        elif kind == "AWS::SecretsManager::Secret":
            lines.append(CostLine(logical_id, "secret", "Secrets Manager", always["secrets_manager_secret_month"]))
        elif kind == "AWS::EC2::EIP":
            lines.append(CostLine(logical_id, "public IPv4 address", "Elastic IP", always["public_ipv4_hour"] * hours))
    return [_with_profile(line, template) for line in lines]


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
