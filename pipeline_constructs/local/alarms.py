"""CloudWatch alarms locally: each alarm of the template set to ALARM once, its notification sent to its topic
actions by CloudWatch, as on AWS (so the topic's policy, and its key's, decide whether it arrives)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from pipeline_constructs.local.events import Target
from pipeline_constructs.local.resolver import ACCOUNT, PARTITION, Resolver
from pipeline_constructs.local.resource_policies import alarm_sender
from pipeline_constructs.ops.assembly import SynthesizedStack


def fire_alarms(
    stack: SynthesizedStack, resolver: Resolver, deliver: Callable[[Target, Any], None]
) -> list[tuple[str, list[str]]]:
    """Set every alarm of ``stack`` to ALARM: (alarm path, the topics notified) per alarm. Actions that are
    not topics (an Auto Scaling policy) are not taken: they change the run's capacity, not who is told."""
    fired = []
    for logical_id, resource in stack.resources_of_type("AWS::CloudWatch::Alarm").items():
        props = resolver.resolve(resource["Properties"])
        sender = alarm_sender(stack, resolver, logical_id)
        topics = [str(a) for a in props.get("AlarmActions", []) if str(a).startswith(f"arn:{PARTITION}:sns:")]
        message = json.dumps(_notification(resolver.physical_name(logical_id), sender.source_arn, props))
        for topic in topics:
            deliver(Target(topic, sender=sender), message)
        fired.append((sender.what.removeprefix("CloudWatch alarm "), topics))
    return fired


def _notification(name: str, arn: str, props: dict[str, Any]) -> dict[str, Any]:
    """The message CloudWatch publishes to an alarm's topic when the alarm goes to ALARM."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    return {
        "AlarmName": name,
        "AlarmDescription": props.get("AlarmDescription"),
        "AWSAccountId": ACCOUNT,
        "NewStateValue": "ALARM",
        "NewStateReason": "Set to ALARM by the local run, to prove its notification is delivered",
        "StateChangeTime": now,
        "Region": arn.split(":")[3],
        "AlarmArn": arn,
        "OldStateValue": "OK",
        "Trigger": {
            "MetricName": props.get("MetricName"),
            "Namespace": props.get("Namespace"),
            "Threshold": props.get("Threshold"),
            "ComparisonOperator": props.get("ComparisonOperator"),
        },
    }
