"""Resource policies executed in the local run: every delivery an AWS service makes for the stack (a CloudWatch
alarm's notification, an EventBridge rule's or a Scheduler schedule's target, an SNS subscription, a Lambda
on-failure destination, CloudWatch Logs' and S3 server access logging's use of a key) is evaluated as AWS
evaluates it before the local run performs it.

A service principal's delivery is held against the target's resource policy (topic policy, queue policy, the
function's permissions, a bucket policy) and, when the target is encrypted with a customer key, that key's
policy, with the delivery's ``aws:SourceArn`` and ``aws:SourceAccount`` and the encryption context the target's
service sets (``aws:sns:topicArn``, ``aws:sqs:arn``, ``aws:logs:arn``): an explicit Deny wins, else an Allow
naming the service whose conditions all hold, else an implicit deny. A topic policy replaces SNS's default
policy, which names no service. A delivery made with a role (Scheduler, a rule target with ``RoleArn``, a
Lambda destination) is held against the role's trust policy, then its own policies. A target under an AWS
managed key (``alias/aws/sns``) takes no delivery from a service: that key's policy cannot name one.

The statements are evaluated by :mod:`.iam`'s code; a denied delivery is not performed and is recorded as
AWS reports it, so the run fails naming the sender, the target, the action and why.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline_constructs.local.iam import (
    Authorization,
    DataKeys,
    RolePolicies,
    Statement,
    _logical_id,
    _statements,
    decide,
)
from pipeline_constructs.local.provisioning import cdk_path
from pipeline_constructs.local.resolver import PARTITION, Resolver
from pipeline_constructs.ops.assembly import SynthesizedStack

#: What a delivery to each kind of target is authorized as, and the encryption context its service sets.
_DELIVERY_ACTIONS = {
    "sns": ("sns:Publish", "aws:sns:topicArn"),
    "sqs": ("sqs:SendMessage", "aws:sqs:arn"),
    "lambda": ("lambda:InvokeFunction", ""),
    "s3": ("s3:PutObject", "aws:s3:arn"),
    "logs": ("", "aws:logs:arn"),  # CloudWatch Logs: only the key's use is authorized
}
#: The key use a service needs to write to an encrypted target (and read it back, as SNS does to fan out).
_KEY_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")


@dataclass(frozen=True)
class Sender:
    """Who makes a delivery on AWS: a service principal, for a source resource, with a role or without."""

    service: str  # "cloudwatch.amazonaws.com"
    source_arn: str
    what: str  # "CloudWatch alarm pipeline-dev/Alarms/GlueErrors"
    role_id: str | None = None  # the role the service assumes (logical id), if it delivers with one


@dataclass(frozen=True)
class Delivery:
    """One delivery the template configures: a sender, its target, and the queue it falls back to."""

    sender: Sender
    target: str  # the target's ARN
    dead_letter: str | None = None


@dataclass(frozen=True)
class DeliveryDenial:
    what: str
    target: str
    action: str
    resource: str
    why: str

    def __str__(self) -> str:
        return (
            f"{self.what} -> {self.target}: not authorized to perform: {self.action} on resource: "
            f"{self.resource} ({self.why})"
        )


@dataclass(frozen=True)
class _Granted:
    """A resource-policy statement and where the template makes it (``TopicPolicy statement 2``)."""

    origin: str
    statement: Statement


class ResourcePolicies:
    """The template's resource policies, key policies and trust policies, resolved to the local run's ARNs;
    :meth:`check` decides and records each delivery."""

    def __init__(self, template: dict[str, Any], resolver: Resolver, roles: RolePolicies | None = None) -> None:
        self.resolver = resolver
        self.roles = roles or RolePolicies(template, resolver)
        self.keys = DataKeys(template, resolver)
        #: Resource ARN (a topic, queue, function, bucket, key or role) -> its policy's statements.
        self.policies: dict[str, list[_Granted]] = defaultdict(list)
        #: A key's id or ARN as the template names it -> the key's ARN.
        self.key_arns: dict[str, str] = {}
        #: Topics and queues under an AWS managed key -> that key's alias.
        self.aws_managed: dict[str, str] = {}
        #: Log groups encrypted with a key -> the key as the template names it.
        self.log_group_keys: dict[str, str] = {}
        self.delivered: Counter[str] = Counter()
        self.denials: list[DeliveryDenial] = []
        self._lock = threading.Lock()
        for logical_id, resource in template.get("Resources", {}).items():
            self._read(logical_id, resource["Type"], resource.get("Properties", {}))

    # ------------------------------------------------------------------ the template's policies

    def _read(self, logical_id: str, kind: str, props: dict[str, Any]) -> None:
        resolve = self.resolver.resolve
        if kind == "AWS::SNS::TopicPolicy":
            self._add(logical_id, [str(t) for t in resolve(props.get("Topics", []))], props["PolicyDocument"])
        elif kind == "AWS::SQS::QueuePolicy":
            urls = resolve(props["Queues"])
            arns = [self.resolver.arn("sqs", str(url).rstrip("/").rsplit("/", 1)[-1]) for url in urls]
            self._add(logical_id, arns, props["PolicyDocument"])
        elif kind == "AWS::S3::BucketPolicy":
            self._add(logical_id, [f"arn:{PARTITION}:s3:::{resolve(props['Bucket'])}"], props["PolicyDocument"])
        elif kind == "AWS::KMS::Key":
            arn = self.resolver.get_att(logical_id, "Arn")
            self.key_arns |= {arn: arn, self.resolver.ref(logical_id): arn}
            self._add(logical_id, [arn], props["KeyPolicy"])
        elif kind == "AWS::IAM::Role":
            self._add(logical_id, [self.resolver.get_att(logical_id, "Arn")], props["AssumeRolePolicyDocument"])
        elif kind == "AWS::Lambda::Permission":
            arn = _function_arn(self.resolver, resolve(props["FunctionName"]))
            self.policies[arn].append(_Granted(logical_id, _permission_statement(resolve(props), arn)))
        elif kind == "AWS::Logs::LogGroup" and props.get("KmsKeyId") is not None:
            self.log_group_keys[self.resolver.get_att(logical_id, "Arn")] = str(resolve(props["KmsKeyId"]))
        elif kind in ("AWS::SNS::Topic", "AWS::SQS::Queue") and props.get("KmsMasterKeyId") is not None:
            key = str(resolve(props["KmsMasterKeyId"]))
            if "alias/aws/" in key:
                self.aws_managed[self.resolver.get_att(logical_id, "Arn")] = key.split(":")[-1]

    def _add(self, logical_id: str, owners: list[str], document: Any) -> None:
        statements = _statements(self.resolver.resolve(document))
        for index, raw in enumerate(statements):
            granted = _Granted(f"{logical_id} statement {raw.get('Sid', index)}", Statement.parse(raw))
            for owner in owners:
                self.policies[owner].append(granted)

    # ------------------------------------------------------------------ evaluation

    def authorize(self, sender: Sender, target: str) -> DeliveryDenial | None:
        """None when AWS would perform the delivery; else the denial, as AWS reports it."""
        for owner, request in self._requests(sender, target):
            why = self._evaluate(sender, owner, request)
            if why is not None:
                return DeliveryDenial(sender.what, target, request.action, request.resource, why)
        return None

    def check(self, sender: Sender, target: str) -> DeliveryDenial | None:
        """:meth:`authorize`, recorded: a count per delivery allowed, the denial of one denied."""
        denial = self.authorize(sender, target)
        with self._lock:
            if denial is None:
                self.delivered[f"{sender.what} -> {target}"] += 1
            else:
                self.denials.append(denial)
        return denial

    def granting(self, sender: Sender, target: str) -> list[str]:
        """Where the template allows this delivery: the origin of every Allow statement it relies on."""
        origins = []
        for owner, request in self._requests(sender, target):
            for granted in self._relevant(sender, owner):
                applies, _ = granted.statement.applies(request)
                if applies and granted.statement.effect == "Allow":
                    origins.append(granted.origin)
        return list(dict.fromkeys(origins))

    def _evaluate(self, sender: Sender, owner: str | None, request: Authorization) -> str | None:
        if owner is None:  # the role's own policies, as IAM evaluates any call of the role
            assert sender.role_id is not None
            return self.roles.evaluate(sender.role_id, request)
        if owner in self.aws_managed:
            return f"the AWS managed key {self.aws_managed[owner]} takes no service principal in its policy"
        if owner not in self.policies:
            return _NO_POLICY.get(owner.split(":")[2], "no resource policy allows it")
        statements = [granted.statement for granted in self._relevant(sender, owner)]
        why = decide(statements, request)
        return None if why is None else f"{why} for {sender.service} in the policy of {owner}"

    def _relevant(self, sender: Sender, owner: str | None) -> list[_Granted]:
        principal = sender.service
        return [g for g in self.policies.get(owner or "", []) if g.statement.names_service(principal)]

    def _requests(self, sender: Sender, target: str) -> Iterator[tuple[str | None, Authorization]]:
        """(whose policy decides, the authorization) for each step of the delivery; owner None: the role's
        own policies."""
        service = target.split(":")[2]
        action, context_key = _DELIVERY_ACTIONS.get(service, (f"{service}:*", ""))
        resource = ":".join(target.split(":")[:7]) if service == "lambda" else target
        source = {
            "aws:SourceArn": sender.source_arn,
            "aws:SourceAccount": self.resolver.account,
            "aws:SecureTransport": "true",  # services deliver over TLS
            "aws:PrincipalIsAWSService": "true",
            "aws:PrincipalServiceName": sender.service,
        }
        if sender.role_id is not None:
            role_arn = self.resolver.get_att(sender.role_id, "Arn")
            yield role_arn, Authorization("sts:AssumeRole", role_arn, tuple(source.items()))
            if action:
                identity = Authorization(action, resource)
                yield None, identity
                for implied in self.keys.implied(identity):
                    yield None, implied
            return
        if resource in self.aws_managed:
            yield resource, Authorization(action, resource, tuple(source.items()))
            return
        if action:  # a bucket's policy is the bucket's, for its objects too
            owner = resource.split("/", 1)[0] if service == "s3" else resource
            yield owner, Authorization(action, resource, tuple(source.items()))
        key = self._key_of(target, service)
        if key is not None:
            encryption = {f"kms:EncryptionContext:{context_key}": _context_arn(target, service)}
            for key_action in _KEY_ACTIONS:
                yield key, Authorization(key_action, key, tuple((source | encryption).items()))

    def _key_of(self, target: str, service: str) -> str | None:
        """The ARN of the customer key a target is encrypted with (as the template names it, if the template
        does not make the key)."""
        named = self.log_group_keys.get(target) if service == "logs" else self.keys._key_of(target)
        return self.key_arns.get(named, named) if named else None


#: Why a target without a resource policy takes no delivery from a service.
_NO_POLICY = {
    "sns": "the topic has no topic policy; SNS's default policy allows only the account's own principals",
    "sqs": "the queue has no queue policy; only the account's own principals may send to it",
    "lambda": "the function has no permission (AWS::Lambda::Permission) for this service and source",
    "s3": "the bucket has no bucket policy for this service",
}


def _context_arn(target: str, service: str) -> str:
    if service == "logs":
        return target.removesuffix(":*")
    if service == "s3":
        return target.split("/", 1)[0]
    return target


def _function_arn(resolver: Resolver, name: Any) -> str:
    """A function's unqualified ARN from a permission's ``FunctionName`` (a name, an ARN, a partial ARN)."""
    text = str(name)
    if text.startswith("arn:"):
        return ":".join(text.split(":")[:7])
    return resolver.arn("lambda", f"function:{text.split(':')[0]}")


def _permission_statement(props: dict[str, Any], function_arn: str) -> Statement:
    """An ``AWS::Lambda::Permission`` as the statement Lambda adds to the function's policy."""
    condition: dict[str, dict[str, Any]] = {}
    if props.get("SourceArn"):
        condition["ArnLike"] = {"aws:SourceArn": props["SourceArn"]}
    if props.get("SourceAccount"):
        condition["StringEquals"] = {"aws:SourceAccount": props["SourceAccount"]}
    principal = str(props["Principal"])
    return Statement(
        effect="Allow",
        actions=[str(props["Action"])],
        not_actions=[],
        resources=[function_arn, f"{function_arn}:*"],
        not_resources=[],
        condition=condition,
        principal="*" if principal == "*" else {"Service" if "." in principal else "AWS": principal},
    )


def role_of(reference: Any) -> str | None:
    """The logical id of the role a ``RoleArn`` names (``{"Fn::GetAtt": [id, "Arn"]}``), if any."""
    return _logical_id(reference)


# ---------------------------------------------------------------------- the deliveries a template configures


def _construct_path(stack: SynthesizedStack, logical_id: str) -> str:
    """What a sender is called: its construct's path (``pipeline-dev/Alarms/GlueErrors``), not its resource's."""
    return cdk_path(stack, logical_id).removesuffix("/Resource")


def rule_sender(stack: SynthesizedStack, resolver: Resolver, logical_id: str, target: dict[str, Any]) -> Sender:
    """EventBridge delivering to one target of rule ``logical_id`` (with the target's role, if it names one)."""
    return Sender(
        "events.amazonaws.com",
        resolver.get_att(logical_id, "Arn"),
        f"EventBridge rule {_construct_path(stack, logical_id)}",
        role_of(target.get("RoleArn")),
    )


def schedule_sender(stack: SynthesizedStack, resolver: Resolver, logical_id: str) -> Sender:
    """EventBridge Scheduler invoking schedule ``logical_id``'s target, always with the schedule's role. Its
    ``aws:SourceArn`` is the schedule's group, not the schedule (what the CDK's own schedule role is bound to)."""
    properties = stack.resources[logical_id]["Properties"]
    group = resolver.resolve(properties.get("GroupName", "default"))
    return Sender(
        "scheduler.amazonaws.com",
        resolver.arn("scheduler", f"schedule-group/{group}"),
        f"EventBridge Scheduler schedule {_construct_path(stack, logical_id)}",
        role_of(properties["Target"].get("RoleArn")),
    )


def topic_sender(topic_arn: str) -> Sender:
    """SNS delivering a notification of ``topic_arn`` to a subscription (or its dead-letter queue)."""
    return Sender("sns.amazonaws.com", topic_arn, f"SNS topic {topic_arn.rsplit(':', 1)[-1]}")


def alarm_sender(stack: SynthesizedStack, resolver: Resolver, logical_id: str) -> Sender:
    return Sender(
        "cloudwatch.amazonaws.com",
        resolver.get_att(logical_id, "Arn"),
        f"CloudWatch alarm {_construct_path(stack, logical_id)}",
    )


def destination_sender(stack: SynthesizedStack, resolver: Resolver, logical_id: str) -> Sender:
    """Lambda sending function ``logical_id``'s failed invocation to its destination, with its role."""
    return Sender(
        "lambda.amazonaws.com",
        resolver.get_att(logical_id, "Arn"),
        f"Lambda function {_construct_path(stack, logical_id)} (on-failure destination)",
        role_of(stack.resources[logical_id]["Properties"].get("Role")),
    )


def configured_deliveries(stack: SynthesizedStack, resolver: Resolver) -> list[Delivery]:
    """Every delivery by an AWS service the template configures: rule and schedule targets, SNS
    subscriptions, alarm actions on topics, Lambda destinations, encrypted log groups, access logging."""
    resolve = resolver.resolve
    deliveries = []
    for logical_id, resource in stack.resources.items():
        kind, props = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::Events::Rule":
            for raw in props.get("Targets", []):
                target = resolve(raw)
                dead = target.get("DeadLetterConfig", {}).get("Arn")
                deliveries.append(Delivery(rule_sender(stack, resolver, logical_id, raw), target["Arn"], dead))
        elif kind == "AWS::Scheduler::Schedule":
            target = resolve(props["Target"])
            dead = target.get("DeadLetterConfig", {}).get("Arn")
            deliveries.append(Delivery(schedule_sender(stack, resolver, logical_id), target["Arn"], dead))
        elif kind == "AWS::SNS::Subscription" and props.get("Protocol") in ("sqs", "lambda"):
            subscription = resolve(props)
            dead = subscription.get("RedrivePolicy", {}).get("deadLetterTargetArn")
            deliveries.append(Delivery(topic_sender(subscription["TopicArn"]), subscription["Endpoint"], dead))
        elif kind == "AWS::CloudWatch::Alarm":
            actions = [str(a) for key in _ALARM_ACTIONS for a in resolve(props.get(key, []))]
            sender = alarm_sender(stack, resolver, logical_id)
            topics = [arn for arn in dict.fromkeys(actions) if arn.startswith(f"arn:{PARTITION}:sns:")]
            deliveries += [Delivery(sender, arn) for arn in topics]  # not Auto Scaling policies: no resource policy
        elif kind == "AWS::Lambda::EventInvokeConfig":
            deliveries += _destinations(stack, resolver, props)
        elif kind == "AWS::Logs::LogGroup" and props.get("KmsKeyId") is not None:
            arn = resolver.get_att(logical_id, "Arn")
            sender = Sender(f"logs.{resolver.region}.amazonaws.com", arn, f"CloudWatch Logs for log group {logical_id}")
            deliveries.append(Delivery(sender, arn))
        elif kind == "AWS::S3::Bucket" and props.get("LoggingConfiguration"):
            deliveries.append(_access_logging(stack, resolver, logical_id, resolve(props["LoggingConfiguration"])))
    return deliveries


_ALARM_ACTIONS = ("AlarmActions", "OKActions", "InsufficientDataActions")


def _destinations(stack: SynthesizedStack, resolver: Resolver, props: dict[str, Any]) -> list[Delivery]:
    name = str(resolver.resolve(props["FunctionName"]))
    functions = stack.resources_of_type("AWS::Lambda::Function")
    function = next((lid for lid in functions if resolver.physical_name(lid) == name.rsplit(":", 1)[-1]), None)
    destination = resolver.resolve(props.get("DestinationConfig", {})).get("OnFailure", {}).get("Destination")
    if function is None or not destination:
        return []
    return [Delivery(destination_sender(stack, resolver, function), str(destination))]


def _access_logging(stack: SynthesizedStack, resolver: Resolver, logical_id: str, logging: dict[str, Any]) -> Delivery:
    """S3 server access logging of bucket ``logical_id``: a log object put into the destination bucket."""
    source = resolver.get_att(logical_id, "Arn")
    destination = logging.get("DestinationBucketName") or resolver.physical_name(logical_id)
    key = f"{logging.get('LogFilePrefix', '')}2026-01-01-00-00-00-LOCAL"
    sender = Sender(
        "logging.s3.amazonaws.com", source, f"S3 server access logging of {_construct_path(stack, logical_id)}"
    )
    return Delivery(sender, f"arn:{PARTITION}:s3:::{destination}/{key}")
