"""How work reaches the local run's compute, as the template wires it: SNS subscriptions, EventBridge rules on
a local event bus, schedules (EventBridge Scheduler's and scheduled rules) fired on demand or on their cron,
and the delivery of a payload to a target ARN (a function, a topic, a queue).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline_constructs.local.clients import EmulatorClients
from pipeline_constructs.local.cron import UnsupportedSchedule, due
from pipeline_constructs.local.events import LocalEventBus, LocalRule, Target
from pipeline_constructs.local.lambdas import LocalFunction
from pipeline_constructs.local.provisioning import cdk_path
from pipeline_constructs.local.resolver import Resolver
from pipeline_constructs.local.resource_policies import (
    ResourcePolicies,
    rule_sender,
    schedule_sender,
    topic_sender,
)
from pipeline_constructs.ops.assembly import SynthesizedStack

log = logging.getLogger("pipeline.local")


@dataclass
class Schedule:
    """A schedule of the template with one target: an EventBridge Scheduler schedule or a scheduled rule."""

    logical_id: str
    path: str
    expression: str
    time_zone: str
    target: Target
    kind: str  # "scheduler" or "rule"
    fired: int = 0
    input_text: str | None = None  # Scheduler's input, with <aws.scheduler.*> placeholders


@dataclass
class SnsTap:
    """SNS -> Lambda locally: the function's subscription delivers to this SQS queue, polled for it."""

    queue_url: str
    function: LocalFunction
    subscription_arn: str
    topic_arn: str
    dead_letter: str | None = None


class Triggers:
    """The stack's subscriptions, rules and schedules, created by the ``create_*`` methods, and the delivery
    to their targets among ``functions`` (by ARN; filled as the run creates them), topics and queues."""

    def __init__(
        self,
        stack: SynthesizedStack,
        resolver: Resolver,
        clients: EmulatorClients,
        functions: Mapping[str, LocalFunction],
        *,
        not_emulated: Counter[str],
        stopping: threading.Event,
        record_event: Callable[[str], None],
        policies: ResourcePolicies | None = None,
    ) -> None:
        """``record_event`` notes what happened on its own (a schedule fired on its cron) for the result;
        ``stopping`` is set when the run ends; ``policies`` decide each delivery by a service (None: all are
        performed)."""
        self.policies = policies
        self.stack = stack
        self.resolver = resolver
        self.clients = clients
        self.functions = functions
        self.not_emulated = not_emulated
        self.stopping = stopping
        self.record_event = record_event
        self.sns_taps: list[SnsTap] = []
        self.rules: list[LocalRule] = []
        self.schedules: list[Schedule] = []
        self.bus = LocalEventBus(self.rules, self.deliver)

    # ------------------------------------------------------------------ bring-up

    def create_subscriptions(self) -> None:
        """SQS subscriptions in the emulator; a Lambda one as an :class:`SnsTap` (the emulator cannot invoke
        a local process)."""
        for resource in self.stack.resources_of_type("AWS::SNS::Subscription").values():
            props = self.resolver.resolve(resource["Properties"])
            protocol, topic, endpoint = props["Protocol"], props["TopicArn"], props.get("Endpoint", "")
            sns, sqs = self.clients.sns, self.clients.sqs
            if protocol == "sqs":
                attributes = {"RawMessageDelivery": str(props.get("RawMessageDelivery", False)).lower()}
                sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=endpoint, Attributes=attributes)
            elif protocol == "lambda" and endpoint in self.functions:
                tap_url = sqs.create_queue(QueueName=f"local-sns-tap-{uuid.uuid4().hex[:8]}")["QueueUrl"]
                tap_arn = sqs.get_queue_attributes(QueueUrl=tap_url, AttributeNames=["QueueArn"])["Attributes"][
                    "QueueArn"
                ]
                subscription = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=tap_arn)["SubscriptionArn"]
                dead_letter = props.get("RedrivePolicy", {}).get("deadLetterTargetArn")
                self.sns_taps.append(SnsTap(tap_url, self.functions[endpoint], subscription, topic, dead_letter))
            else:
                self.not_emulated[f"AWS::SNS::Subscription ({protocol})"] += 1

    def create_rules_and_schedules(self) -> None:
        """Event rules on the local bus; a schedule per target of a scheduled rule, and per Scheduler schedule."""
        for logical_id, resource in self.stack.resources_of_type("AWS::Events::Rule").items():
            props = resource["Properties"]
            targets = [self._target(logical_id, raw) for raw in props.get("Targets", [])]
            path = cdk_path(self.stack, logical_id)
            if props.get("ScheduleExpression"):
                for target in targets:
                    self.schedules.append(
                        Schedule(logical_id, path, props["ScheduleExpression"], "UTC", target, "rule")
                    )
            elif props.get("EventPattern"):
                pattern = self.resolver.resolve(props["EventPattern"])
                self.rules.append(LocalRule(path, pattern, None, targets))
        for logical_id, resource in self.stack.resources_of_type("AWS::Scheduler::Schedule").items():
            props = self.resolver.resolve(resource["Properties"])
            self.schedules.append(
                Schedule(
                    logical_id,
                    cdk_path(self.stack, logical_id),
                    props["ScheduleExpression"],
                    props.get("ScheduleExpressionTimezone", "UTC"),
                    Target(
                        arn=props["Target"]["Arn"],
                        sender=schedule_sender(self.stack, self.resolver, logical_id),
                        dead_letter=props["Target"].get("DeadLetterConfig", {}).get("Arn"),
                    ),
                    "scheduler",
                    input_text=props["Target"].get("Input"),
                )
            )

    def _target(self, rule_id: str, raw: dict[str, Any]) -> Target:
        sender = rule_sender(self.stack, self.resolver, rule_id, raw)
        raw = self.resolver.resolve(raw)
        return Target(
            arn=raw["Arn"],
            input=raw.get("Input"),
            input_transformer=raw.get("InputTransformer"),
            sender=sender,
            dead_letter=raw.get("DeadLetterConfig", {}).get("Arn"),
        )

    # ------------------------------------------------------------------ delivery

    def deliver(self, target: Target, payload: Any) -> None:
        """Send a payload to a target, as EventBridge, Scheduler, SNS, CloudWatch or a Lambda destination
        would: only if the target's policies allow its sender. A refused delivery goes to the sender's
        dead-letter queue (itself a delivery the queue's policy decides), as AWS sends it there."""
        if self.stopping.is_set():  # the run is over: job threads still winding down have no one to tell
            return
        refused = target.sender is not None and self.policies is not None
        if refused and self.policies.check(target.sender, target.arn) is not None:  # type: ignore[union-attr,arg-type]
            if target.dead_letter:
                self.deliver(Target(target.dead_letter, sender=target.sender), payload)
            return
        self._perform(target.arn, payload)

    def _perform(self, arn: str, payload: Any) -> None:
        if arn.startswith("arn:aws:lambda:"):
            function = self.functions.get(":".join(arn.split(":")[:7]))  # without a version or alias qualifier
            if function is None:
                raise KeyError(f"no local function {arn}")
            function.invoke_async(payload)
        elif arn.startswith("arn:aws:sns:"):
            self.clients.sns.publish(TopicArn=arn, Message=payload if isinstance(payload, str) else json.dumps(payload))
        elif arn.startswith("arn:aws:sqs:"):
            body = payload if isinstance(payload, str) else json.dumps(payload)
            self.clients.sqs.send_message(QueueUrl=self.clients.queue_url_of_arn(arn), MessageBody=body)
        else:
            raise KeyError(f"target {arn} is not emulated locally")

    def poll_sns_taps(self) -> None:
        """Until the run stops: each tap's notifications become SNS events of its function."""
        sqs = self.clients.sqs
        while not self.stopping.is_set():
            for tap in self.sns_taps:
                messages = sqs.receive_message(QueueUrl=tap.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
                for message in messages.get("Messages", []):
                    record = _sns_record(json.loads(message["Body"]), tap.subscription_arn)
                    target = Target(tap.function.arn, sender=topic_sender(tap.topic_arn), dead_letter=tap.dead_letter)
                    self.deliver(target, {"Records": [record]})
                    sqs.delete_message(QueueUrl=tap.queue_url, ReceiptHandle=message["ReceiptHandle"])
            self.stopping.wait(0.5)

    def busy(self) -> bool:
        """True while a notification waits in a tap."""
        return any(sum(self.clients.queue_depth(tap.queue_url)) for tap in self.sns_taps)

    # ------------------------------------------------------------------ schedules

    def schedule_names(self) -> list[str]:
        return [s.path for s in self.schedules]

    def fire(self, name: str = "all") -> list[str]:
        """Fire the schedules whose construct path, logical id or last path part is ``name`` (or all)."""
        fired = []
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        for schedule in self.schedules:
            names = {schedule.path, schedule.logical_id, *schedule.path.split("/")}
            # Without path metadata (synth outside the CLI) the logical id still starts with the construct id.
            if name != "all" and name not in names and not schedule.logical_id.startswith(name):
                continue
            self._fire(schedule, now)
            fired.append(schedule.path)
        if not fired:
            raise KeyError(f"no schedule named {name!r}; schedules: {', '.join(self.schedule_names()) or 'none'}")
        return fired

    def run_schedules(self) -> None:
        """Fire every schedule when its cron or rate comes due, until the run stops (checked each minute)."""
        started = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        fired_at: dict[str, dt.datetime] = {}
        while not self.stopping.wait(5):
            minute = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
            for schedule in list(self.schedules):
                if fired_at.get(schedule.logical_id) == minute:
                    continue
                try:
                    is_due = due(schedule.expression, schedule.time_zone, minute, started)
                except UnsupportedSchedule as error:
                    log.warning("schedule %s fires only on demand: %s", schedule.path, error)
                    self.schedules.remove(schedule)
                    continue
                if is_due:
                    fired_at[schedule.logical_id] = minute
                    self._fire(schedule, minute)
                    self.record_event(f"schedule {schedule.path} fired on its schedule at {minute:%H:%M} UTC")

    def _fire(self, schedule: Schedule, now: dt.datetime) -> None:
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        payload: Any
        if schedule.kind == "scheduler":
            raw = schedule.input_text or "{}"
            text = raw.replace("<aws.scheduler.scheduled-time>", stamp).replace(
                "<aws.scheduler.execution-id>", str(uuid.uuid4())
            )
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
        else:
            payload = schedule.target.payload(_scheduled_event(stamp, self.clients.region, self.resolver.account))
        schedule.fired += 1
        self.deliver(schedule.target, payload)


def _scheduled_event(stamp: str, region: str, account: str) -> dict[str, Any]:
    """The event a scheduled rule sends its targets."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": stamp,
        "region": region,
        "resources": [],
        "detail": {},
    }


def _sns_record(envelope: dict[str, Any], subscription_arn: str) -> dict[str, Any]:
    """The record SNS gives a subscribed function, from the notification an SQS subscription received."""
    return {
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": subscription_arn,
        "Sns": {
            "Type": envelope.get("Type", "Notification"),
            "MessageId": envelope["MessageId"],
            "TopicArn": envelope["TopicArn"],
            "Subject": envelope.get("Subject"),
            "Message": envelope["Message"],
            "Timestamp": envelope.get("Timestamp"),
            "MessageAttributes": envelope.get("MessageAttributes", {}),
        },
    }
