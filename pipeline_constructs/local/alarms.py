"""CloudWatch alarms locally: each alarm of the template set to ALARM once, its notification sent to its topic
actions by CloudWatch, as on AWS (so the topic's policy, and its key's, decide whether it arrives), and what
became of each notification: delivered and sent on to the topic's subscriptions, or refused as AWS refuses it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from pipeline_constructs.local.resolver import PARTITION
from pipeline_constructs.local.resource_policies import DeliveryDenial, Sender, alarm_sender
from pipeline_constructs.local.triggers import Triggers


@dataclass(frozen=True)
class AlarmNotification:
    """One alarm's notification to one of its topics."""

    topic: str  # the topic's ARN
    #: What the alarm's history says when the topic's or its key's policy refuses it; "" once delivered.
    denied: str = ""
    #: The topic's subscriptions it went on to (``sqs <queue ARN>``, ``lambda <function>``, ``email <address>``).
    sent_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class FiredAlarm:
    """An alarm set to ALARM by the local run, and its notifications (none when no action is a topic)."""

    alarm: str  # the alarm's construct path
    notifications: tuple[AlarmNotification, ...]


def fire_alarms(triggers: Triggers) -> list[FiredAlarm]:
    """Set every alarm of the stack ``triggers`` serves to ALARM once. Actions that are not topics (an Auto
    Scaling policy) are not taken: they change the run's capacity, not who is told."""
    stack, resolver = triggers.stack, triggers.resolver
    fired = []
    for logical_id, resource in stack.resources_of_type("AWS::CloudWatch::Alarm").items():
        props = resolver.resolve(resource["Properties"])
        sender = alarm_sender(stack, resolver, logical_id)
        topics = [str(a) for a in props.get("AlarmActions", []) if str(a).startswith(f"arn:{PARTITION}:sns:")]
        message = json.dumps(_notification(resolver.physical_name(logical_id), sender.source_arn, props))
        notifications = tuple(_notify(triggers, sender, topic, message) for topic in dict.fromkeys(topics))
        fired.append(FiredAlarm(sender.what.removeprefix("CloudWatch alarm "), notifications))
    return fired


def _notify(triggers: Triggers, sender: Sender, topic: str, message: str) -> AlarmNotification:
    """CloudWatch publishing ``message`` to ``topic``: only if the topic's policies allow the alarm (an alarm
    action has no dead-letter queue: a refused notification is lost, and the alarm's history says why)."""
    if triggers.policies is not None and (denial := triggers.policies.check(sender, topic)) is not None:
        return AlarmNotification(topic, denied=_history_error(denial, sender.source_arn))
    triggers.clients.sns.publish(TopicArn=topic, Message=message)
    return AlarmNotification(topic, sent_to=topic_subscribers(triggers, topic))


def topic_subscribers(triggers: Triggers, topic: str) -> tuple[str, ...]:
    """Where SNS sends a notification of ``topic`` on: the subscriptions the emulator delivers to (an SQS
    queue), the functions the local run invokes for theirs, and those of the template no one can receive
    locally (an e-mail address), said so."""
    taps = {tap.subscription_arn: tap.function.name for tap in triggers.sns_taps}
    subscribers = []
    listing = triggers.clients.sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    for subscription in listing:
        if subscription["SubscriptionArn"] in taps:
            subscribers.append(f"lambda {taps[subscription['SubscriptionArn']]}")
        else:
            subscribers.append(f"{subscription['Protocol']} {subscription['Endpoint']}")
    for resource in triggers.stack.resources_of_type("AWS::SNS::Subscription").values():
        props = triggers.resolver.resolve(resource["Properties"])
        if props["TopicArn"] == topic and props["Protocol"] not in ("sqs", "lambda"):
            subscribers.append(f"{props['Protocol']} {props.get('Endpoint', '')} (not sent locally)")
    return tuple(subscribers)


def _history_error(denial: DeliveryDenial, alarm_arn: str) -> str:
    """The alarm history's entry for a refused notification, as CloudWatch writes it, and the policy's why."""
    if denial.action.startswith("kms:"):
        error = "null (Service: AWSKMS; Status Code: 400; Error Code: AccessDeniedException)"
    else:
        error = f"Resource: {alarm_arn} is not authorized to perform: SNS:Publish on resource: {denial.target}"
    return f'Failed to execute action {denial.target}. Received error: "{error}" ({denial.why})'


def _notification(name: str, arn: str, props: dict[str, Any]) -> dict[str, Any]:
    """The message CloudWatch publishes to an alarm's topic when the alarm goes to ALARM."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    return {
        "AlarmName": name,
        "AlarmDescription": props.get("AlarmDescription"),
        "AWSAccountId": arn.split(":")[4],
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
