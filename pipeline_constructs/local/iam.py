"""IAM checked by execution: every AWS call a component of the local run makes is evaluated against the
policies of that component's role in the synthesized template, as IAM would evaluate it on AWS.

Each component (a Lambda function, a Batch job, a fleet's workers) signs its requests with an access key
that names its role's logical id. :class:`AccessChecker` reads the key and the service from the SigV4
``Authorization`` header, turns the request into the IAM actions and resource ARNs AWS authorizes it as
(``DeleteMessageBatch`` is ``sqs:DeleteMessage`` on the queue's ARN; an S3 ``GET /bucket?list-type=2`` is
``s3:ListBucket`` on the bucket with the ``s3:prefix`` condition key), and evaluates the role's statements:
explicit deny, then allow, else denied, with ``*``/``?`` wildcards in actions and resources and the
condition operators the templates use; a call on data under a customer-managed key also needs the key use S3,
SQS and SNS ask of the caller (:class:`DataKeys`). A denied call gets AccessDenied, as it would on AWS, and is
recorded with the component, the call, the resource and the missing action, so the run fails naming it.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import xml.etree.ElementTree as ElementTree  # nosec B405 - parses request bodies of our own processes
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pipeline_constructs.local.proxy import FaultProxy
from pipeline_constructs.local.resolver import PARTITION, Resolver

#: The access key of a process that runs as no role at all (a job definition without a job role).
NO_ROLE = "NoRole"
#: The key of the local run itself (creating resources, submitting sample tasks): an administrator.
ADMIN_KEY = "local"

#: Batch calls whose IAM action differs from the operation: the batch forms authorize as the single call.
_SQS_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
#: Batch's REST paths (``POST /v1/submitjob``) and the operation each one is.
_BATCH_OPERATIONS = {
    "submitjob": "SubmitJob",
    "describejobs": "DescribeJobs",
    "listjobs": "ListJobs",
    "terminatejob": "TerminateJob",
    "canceljob": "CancelJob",
    "describejobqueues": "DescribeJobQueues",
    "describejobdefinitions": "DescribeJobDefinitions",
}
#: A group's id as it appears in its ARN; unknown locally, and the templates' grants leave it a wildcard.
UNKNOWN_GROUP_ID = "00000000-0000-0000-0000-000000000000"
#: Operations whose service authorization reference lists no resource type: authorized on ``*``.
_NO_RESOURCE_TYPE = {
    "batch:DescribeJobs",
    "batch:ListJobs",
    "batch:DescribeJobQueues",
    "batch:DescribeJobDefinitions",
    "autoscaling:DescribeAutoScalingGroups",
    "sqs:ListQueues",
    "sns:ListTopics",
    "dynamodb:ListTables",
}


@dataclass(frozen=True)
class Authorization:
    """One IAM authorization a request needs: an action on a resource, with the condition keys it carries."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Denial:
    principal: str  # the role's construct path
    call: str  # service:Operation as the caller made it
    action: str
    resource: str
    why: str

    def __str__(self) -> str:
        return f"{self.principal}: {self.call} denied: {self.action} on {self.resource} ({self.why})"


@dataclass
class Statement:
    effect: str
    actions: list[str]
    not_actions: list[str]
    resources: list[str]
    not_resources: list[str]
    condition: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: A resource policy's ``Principal`` (None in an identity policy, which names no principal).
    principal: Any = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Statement:
        def strings(key: str) -> list[str]:
            value = raw.get(key, [])
            return [str(v) for v in (value if isinstance(value, list) else [value])]

        return cls(
            effect=raw.get("Effect", "Allow"),
            actions=strings("Action"),
            not_actions=strings("NotAction"),
            resources=strings("Resource"),
            not_resources=strings("NotResource"),
            condition=raw.get("Condition", {}),
            principal=raw.get("Principal"),
        )

    def names_service(self, service: str) -> bool:
        """Whether this resource-policy statement's ``Principal`` covers the service principal ``service``:
        ``*`` (or ``{"AWS": "*"}``) covers every principal, AWS services included; ``{"Service": ...}`` the
        services it lists; an account or a role never a service."""
        if self.principal == "*":
            return True
        if not isinstance(self.principal, dict):
            return False

        def listed(kind: str) -> list[str]:
            value = self.principal.get(kind, [])
            return [str(v) for v in (value if isinstance(value, list) else [value])]

        return "*" in listed("AWS") or service in listed("Service")

    def applies(self, request: Authorization) -> tuple[bool, str]:
        """(applies, why not) for this statement and one authorization."""
        if self.actions and not any(_glob(p, request.action, ignore_case=True) for p in self.actions):
            return False, "action"
        if self.not_actions and any(_glob(p, request.action, ignore_case=True) for p in self.not_actions):
            return False, "action"
        if self.resources and not any(_glob(p, request.resource) for p in self.resources):
            return False, "resource"
        if self.not_resources and any(_glob(p, request.resource) for p in self.not_resources):
            return False, "resource"
        for operator, tests in self.condition.items():
            for key, expected in tests.items():
                if not _condition_holds(operator, key, expected, dict(request.context)):
                    return False, f"condition {operator} {key}"
        return True, ""


def _glob(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    return _compiled(pattern, ignore_case).fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """IAM's wildcards (``*`` any run, ``?`` one character) as a regex, compiled once per pattern."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


#: IAM's numeric operators, on the request's value and the statement's.
_NUMERIC = {
    "NumericEquals": lambda a, b: a == b,
    "NumericNotEquals": lambda a, b: a != b,
    "NumericLessThan": lambda a, b: a < b,
    "NumericLessThanEquals": lambda a, b: a <= b,
    "NumericGreaterThan": lambda a, b: a > b,
    "NumericGreaterThanEquals": lambda a, b: a >= b,
}


def _condition_holds(operator: str, key: str, expected: Any, context: dict[str, str]) -> bool:
    """IAM's condition operators used by the templates; a key the request lacks fails (unless IfExists).
    Condition keys are case-insensitive, as in IAM."""
    values = [str(v) for v in (expected if isinstance(expected, list) else [expected])]
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    actual = next((value for name, value in context.items() if name.lower() == key.lower()), None)
    if base == "Null":  # "true": the key must be absent; "false": present
        return (actual is None) == (values[0].lower() == "true")
    if actual is None:  # as IAM: a missing key fails a condition, except a negated one or ...IfExists
        return if_exists or base in ("StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike")
    if base in ("StringEquals", "ArnEquals"):
        return actual in values
    if base == "StringEqualsIgnoreCase":
        return actual.lower() in (v.lower() for v in values)
    if base in ("StringLike", "ArnLike"):
        return any(_glob(v, actual) for v in values)
    if base in ("StringNotEquals", "ArnNotEquals"):
        return actual not in values
    if base in ("StringNotLike", "ArnNotLike"):
        return not any(_glob(v, actual) for v in values)
    if base == "Bool":
        return actual.lower() in (v.lower() for v in values)
    if base in _NUMERIC:
        return any(_NUMERIC[base](float(actual), float(v)) for v in values)
    raise ValueError(f"condition operator {operator} is not evaluated locally")


def decide(statements: list[Statement], request: Authorization) -> str | None:
    """IAM's evaluation of one policy's ``statements`` (already limited to the principal's): an explicit
    Deny wins, else an Allow whose action, resource and conditions all hold, else an implicit deny. None
    when allowed; else why not, in a few words."""
    try:
        outcomes = [(s, *s.applies(request)) for s in statements]
    except ValueError as error:
        return str(error)
    if any(s.effect == "Deny" for s, applies, _ in outcomes if applies):
        return "an explicit Deny"
    if any(s.effect == "Allow" for s, applies, _ in outcomes if applies):
        return None
    near = [why for s, applies, why in outcomes if s.effect == "Allow" and not applies and why != "action"]
    return f"statements for the action fail on their {near[0]}" if near else "no statement allows the action"


class RolePolicies:
    """Every role of a template with its statements, resolved to the local run's names and ARNs."""

    def __init__(self, template: dict[str, Any], resolver: Resolver) -> None:
        resources = template.get("Resources", {})
        self.paths: dict[str, str] = {}
        self.statements: dict[str, list[Statement]] = {}
        self.managed: dict[str, list[str]] = {}
        for logical_id, resource in resources.items():
            if resource["Type"] != "AWS::IAM::Role":
                continue
            props = resource.get("Properties", {})
            self.paths[logical_id] = (
                resource.get("Metadata", {}).get("aws:cdk:path", logical_id).removesuffix("/Resource")
            )
            self.statements[logical_id] = [
                Statement.parse(s)
                for policy in props.get("Policies", [])
                for s in _statements(resolver.resolve(policy["PolicyDocument"]))
            ]
            self.managed[logical_id] = [str(arn) for arn in resolver.resolve(props.get("ManagedPolicyArns", []))]
        for resource in resources.values():
            if resource["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                continue
            props = resource.get("Properties", {})
            document = resolver.resolve(props["PolicyDocument"])
            for role in props.get("Roles", []):
                role_id = role.get("Ref") if isinstance(role, dict) else None
                if role_id in self.statements:
                    self.statements[role_id].extend(Statement.parse(s) for s in _statements(document))

    def evaluate(self, role_id: str, request: Authorization) -> str | None:
        """None when the role may; else why not, in a few words."""
        statements = self.statements.get(role_id)
        if statements is None:
            return "the process runs with no role"
        detail = decide(statements, request)
        if detail is None or detail == "an explicit Deny":
            return detail
        if self.managed.get(role_id):
            detail += f"; AWS managed policies not modelled: {', '.join(self.managed[role_id])}"
        return detail


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


# ---------------------------------------------------------------------- requests as IAM sees them


def principal_and_service(headers: Any) -> tuple[str, str] | None:
    """(access key, signing service) from a SigV4 Authorization header; None for an unsigned request."""
    match = re.search(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/aws4_request", headers.get("Authorization", ""))
    return (match.group(1), match.group(2)) if match else None


def authorizations(
    service: str, method: str, path: str, headers: Any, body: bytes, region: str, account: str
) -> tuple[str, list[Authorization]]:
    """(the call as ``service:Operation``, the authorizations it needs), in ``region`` of ``account``."""

    def arn(svc: str, resource: str) -> str:
        return f"arn:{PARTITION}:{svc}:{region}:{account}:{resource}"

    parts = urlsplit(path)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    target = headers.get("X-Amz-Target", "")
    if service == "s3":
        return _s3(method, parts.path, query, headers, body)
    if service == "batch":
        operation = _BATCH_OPERATIONS.get(parts.path.rstrip("/").rsplit("/", 1)[-1], parts.path)
        return f"batch:{operation}", _batch(operation, json.loads(body or b"{}"), arn)
    if target:  # JSON protocols: SQS, DynamoDB, SNS (newer SDKs)
        operation = target.rsplit(".", 1)[-1]
        fields = json.loads(body or b"{}")
    else:  # Query protocol: SQS, SNS, Auto Scaling
        fields = dict(parse_qsl(body.decode(), keep_blank_values=True)) | query
        operation = fields.get("Action", "")
    call = f"{service}:{operation}"
    if service == "sqs":
        url = str(fields.get("QueueUrl", ""))
        name = url.rstrip("/").rsplit("/", 1)[-1] if url else str(fields.get("QueueName", "*"))
        action = f"sqs:{_SQS_ACTIONS.get(operation, operation)}"
        return call, [Authorization(action, "*" if action in _NO_RESOURCE_TYPE else arn("sqs", name))]
    if service == "dynamodb":
        return call, _dynamodb(operation, fields, arn)
    if service == "sns":
        topic = str(fields.get("TopicArn") or fields.get("TargetArn") or "*")
        return call, [Authorization(f"sns:{operation}", topic)]
    if service == "ssm":
        # GetParametersByPath is authorized against the path asked for, the others against the parameter.
        name = str(fields.get("Path") or fields.get("Name") or "")
        return call, [Authorization(f"ssm:{operation}", arn("ssm", f"parameter/{name.lstrip('/')}"))]
    if service == "autoscaling":
        action = f"autoscaling:{operation}"
        group = fields.get("AutoScalingGroupName")
        if action in _NO_RESOURCE_TYPE or not group:
            return call, [Authorization(action, "*")]
        resource = arn("autoscaling", f"autoScalingGroup:{UNKNOWN_GROUP_ID}:autoScalingGroupName/{group}")
        return call, [Authorization(action, resource)]
    return call, [Authorization(f"{service}:{operation}", "*")]


def _batch(operation: str, fields: dict[str, Any], arn: Callable[[str, str], str]) -> list[Authorization]:
    action = f"batch:{operation}"
    if operation == "SubmitJob":
        queue = str(fields.get("jobQueue", ""))
        definition = str(fields.get("jobDefinition", ""))
        queue_arn = queue if queue.startswith("arn:") else arn("batch", f"job-queue/{queue}")
        definition_arn = (
            definition
            if definition.startswith("arn:")
            else arn("batch", f"job-definition/{definition if ':' in definition else definition + ':1'}")
        )
        return [Authorization(action, queue_arn), Authorization(action, definition_arn)]
    if operation in ("TerminateJob", "CancelJob"):
        return [Authorization(action, arn("batch", f"job/{fields.get('jobId', '')}"))]
    return [Authorization(action, "*")]


def _dynamodb(operation: str, fields: dict[str, Any], arn: Callable[[str, str], str]) -> list[Authorization]:
    def table(name: str) -> str:
        return arn("dynamodb", f"table/{name}")

    if operation in ("BatchWriteItem", "BatchGetItem"):
        return [Authorization(f"dynamodb:{operation}", table(name)) for name in fields.get("RequestItems", {})]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        kinds = {
            "Put": "PutItem",
            "Update": "UpdateItem",
            "Delete": "DeleteItem",
            "ConditionCheck": "ConditionCheckItem",
        }
        kinds |= {"Get": "GetItem"}
        return [
            Authorization(f"dynamodb:{kinds[kind]}", table(request["TableName"]))
            for item in fields.get("TransactItems", [])
            for kind, request in item.items()
        ]
    resource = table(str(fields.get("TableName", "*")))
    if fields.get("IndexName"):
        resource += f"/index/{fields['IndexName']}"
    return [Authorization(f"dynamodb:{operation}", resource)]


def _s3(method: str, path: str, query: dict[str, str], headers: Any, body: bytes) -> tuple[str, list[Authorization]]:
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    bucket_arn = f"arn:{PARTITION}:s3:::{bucket}"
    object_arn = f"{bucket_arn}/{key}"
    if not key:
        if method == "POST" and "delete" in query:
            root = ElementTree.fromstring(body)  # nosec B314 - a DeleteObjects body from a local process
            keys = [e.text or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Key"]
            return "s3:DeleteObjects", [Authorization("s3:DeleteObject", f"{bucket_arn}/{k}") for k in keys]
        if method in ("GET", "HEAD") and not (
            set(query)
            - {
                "list-type",
                "prefix",
                "delimiter",
                "max-keys",
                "continuation-token",
                "start-after",
                "encoding-type",
                "fetch-owner",
            }
        ):
            context = (("s3:prefix", query["prefix"]),) if "prefix" in query else ()
            return "s3:ListObjectsV2", [Authorization("s3:ListBucket", bucket_arn, context)]
        subresource = next(iter(sorted(query)), "")
        action = {
            "versions": "s3:ListBucketVersions",
            "location": "s3:GetBucketLocation",
            "uploads": "s3:ListBucketMultipartUploads",
        }.get(subresource, f"s3:{method}Bucket?{subresource}")
        return action, [Authorization(action, bucket_arn)]
    if method in ("GET", "HEAD"):
        action = "s3:GetObjectVersion" if "versionId" in query else "s3:GetObject"
        if "uploadId" in query:
            return "s3:ListParts", [Authorization("s3:ListMultipartUploadParts", object_arn)]
        return ("s3:GetObject" if method == "GET" else "s3:HeadObject"), [Authorization(action, object_arn)]
    if method in ("PUT", "POST"):
        if "tagging" in query:
            return "s3:PutObjectTagging", [Authorization("s3:PutObjectTagging", object_arn)]
        operation = "PutObject"
        if "uploads" in query:
            operation = "CreateMultipartUpload"
        elif "uploadId" in query:
            operation = "UploadPart" if method == "PUT" else "CompleteMultipartUpload"
        needed = [Authorization("s3:PutObject", object_arn)]
        source = headers.get("x-amz-copy-source")
        if source:
            operation = "UploadPartCopy" if "uploadId" in query else "CopyObject"
            copied = unquote(source.split("?")[0]).lstrip("/")
            needed.append(Authorization("s3:GetObject", f"arn:{PARTITION}:s3:::{copied}"))
        return f"s3:{operation}", needed
    if method == "DELETE":
        if "uploadId" in query:
            return "s3:AbortMultipartUpload", [Authorization("s3:AbortMultipartUpload", object_arn)]
        return "s3:DeleteObject", [Authorization("s3:DeleteObject", object_arn)]
    return f"s3:{method}", [Authorization(f"s3:{method}", object_arn)]


# ---------------------------------------------------------------------- the checker


#: What S3, SQS and SNS ask of the caller's own rights on a customer-managed key, per action on the data.
_KEY_USE = {
    "s3:PutObject": ("kms:GenerateDataKey",),
    "s3:GetObject": ("kms:Decrypt",),
    "sqs:SendMessage": ("kms:GenerateDataKey", "kms:Decrypt"),
    "sqs:ReceiveMessage": ("kms:Decrypt",),
    "sns:Publish": ("kms:GenerateDataKey", "kms:Decrypt"),
}


class DataKeys:
    """The customer-managed key of each bucket, queue and topic of the template (the compliance profile's),
    so a call on their data also needs the caller's own right to use the key, as on AWS."""

    def __init__(self, template: dict[str, Any], resolver: Resolver) -> None:
        self.by_resource: dict[str, str] = {}
        for logical_id, resource in template.get("Resources", {}).items():
            props, kind = resource.get("Properties", {}), resource["Type"]
            if kind == "AWS::S3::Bucket":
                rules = (props.get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration") or []
                key = next((r["ServerSideEncryptionByDefault"].get("KMSMasterKeyID") for r in rules), None)
                target = resolver.get_att(logical_id, "Arn") + "/"
            elif kind in ("AWS::SQS::Queue", "AWS::SNS::Topic"):
                key = props.get("KmsMasterKeyId")
                target = resolver.get_att(logical_id, "Arn")
            else:
                continue
            resolved = str(resolver.resolve(key)) if key is not None else ""
            # An AWS managed key ("alias/aws/sns", or its ARN) is usable through its service by the account.
            if resolved and "alias/aws/" not in resolved:
                self.by_resource[target] = resolved

    def implied(self, request: Authorization) -> list[Authorization]:
        actions = _KEY_USE.get(request.action)
        key = self._key_of(request.resource) if actions else None
        return [Authorization(action, key) for action in actions] if actions and key else []

    def _key_of(self, resource: str) -> str | None:
        if resource in self.by_resource:
            return self.by_resource[resource]
        for prefix, key in self.by_resource.items():  # an object: its bucket's key (bucket ARNs end in "/")
            if prefix.endswith("/") and resource.startswith(prefix):
                return key
        return None


class AccessChecker:
    """Decides each request of the local run's components and keeps the denials."""

    def __init__(self, template: dict[str, Any], resolver: Resolver, region: str) -> None:
        self.policies = RolePolicies(template, resolver)
        self.keys = DataKeys(template, resolver)
        self.region, self.account = region, resolver.account
        self.denials: list[Denial] = []
        #: Allowed calls by role (logical id): which components the check saw at work.
        self.allowed: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def checked(self) -> int:
        return sum(self.allowed.values())

    def key_for(self, role_id: str | None) -> str:
        """The access key a component running as ``role_id`` signs with."""
        return role_id if role_id in self.policies.statements else NO_ROLE

    def check(self, method: str, path: str, headers: Any, body: bytes) -> Denial | None:
        signed = principal_and_service(headers)
        if signed is None or signed[0] == ADMIN_KEY:
            return None
        key, service = signed
        call, needed = authorizations(service, method, path, headers, body, self.region, self.account)
        needed = needed + [implied for request in needed for implied in self.keys.implied(request)]
        principal = self.policies.paths.get(key, "a process with no role")
        for request in needed:
            if request.action in _NO_RESOURCE_TYPE and request.resource != "*":
                request = Authorization(request.action, "*", request.context)
            why = self.policies.evaluate(key, request)
            if why is not None:
                denial = Denial(principal, call, request.action, request.resource, why)
                with self._lock:
                    self.denials.append(denial)
                return denial
        with self._lock:
            self.allowed[key] += 1
        return None


def access_denied_response(service: str, headers: Any, denial: Denial) -> tuple[int, dict[str, str], bytes]:
    """AccessDenied in the protocol of the call (JSON, REST-JSON, Query XML, S3 XML)."""
    message = f"User: {denial.principal} is not authorized to perform: {denial.action} on resource: {denial.resource}"
    if headers.get("X-Amz-Target") or service == "batch":
        code = "AccessDeniedException"
        body = json.dumps({"__type": code, "message": message}).encode()
        return 403, {"Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": code}, body
    if service == "s3":
        body = f"<Error><Code>AccessDenied</Code><Message>{_xml(message)}</Message></Error>".encode()
        return 403, {"Content-Type": "application/xml"}, body
    body = (
        "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
        f"<Message>{_xml(message)}</Message></Error><RequestId>local</RequestId></ErrorResponse>"
    ).encode()
    return 403, {"Content-Type": "text/xml"}, body


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class IamGate:
    """The local run's IAM check in front of each endpoint its components call (the emulator, the local
    Batch and Auto Scaling endpoints): a proxy that asks :class:`AccessChecker` before forwarding."""

    def __init__(self, template: dict[str, Any], resolver: Resolver, region: str) -> None:
        self.checker = AccessChecker(template, resolver, region)
        self.resources = template.get("Resources", {})
        self._proxies: dict[str, Any] = {}

    def front(self, upstream: str) -> str:
        """The endpoint to give components instead of ``upstream``."""
        if upstream not in self._proxies:
            self._proxies[upstream] = FaultProxy(upstream, authorize=self.authorize)
        return self._proxies[upstream].endpoint

    def authorize(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        denial = self.checker.check(method, path, headers, body)
        if denial is None:
            return None
        return access_denied_response(denial.call.split(":", 1)[0], headers, denial)

    def key_for(self, role_reference: Any) -> str:
        """The access key of a component whose role is ``role_reference`` (``{"Fn::GetAtt": [id, "Arn"]}``)."""
        return self.checker.key_for(_logical_id(role_reference))

    def key_for_instance_profile(self, profile_reference: Any) -> str:
        """The key of instances launched with this instance profile: its role's."""
        profile = self.resources.get(_logical_id(profile_reference) or "", {})
        roles = profile.get("Properties", {}).get("Roles", [])
        return self.checker.key_for(_logical_id(roles[0]) if roles else None)

    def close(self) -> None:
        for proxy in self._proxies.values():
            proxy.close()


def _logical_id(reference: Any) -> str | None:
    if isinstance(reference, dict) and "Fn::GetAtt" in reference:
        target = reference["Fn::GetAtt"]
        return target[0] if isinstance(target, list) else str(target).split(".", 1)[0]
    if isinstance(reference, dict) and "Ref" in reference:
        return reference["Ref"]
    return None
