"""The API faults of the chaos benchmark (``bench/chaos.py``): what each worker's proxies do to its calls.

For every call kind the worker runtime makes (its SQS, DynamoDB, S3 and Auto Scaling calls, its task
processes' S3 calls included), three faults in a row: a 10 s stall, then a burst of 5xx answers, then a
burst of throttles, each burst longer than the SDK's retries so that it reaches the runtime's own code.
The faults of a run are shared by the proxies of all its workers (a restarted worker's proxy takes them
over), so each fires as often as it says, on whichever worker makes the call.

Besides, every proxy refuses what AWS refuses and moto accepts (:class:`Refusals`): an SQS message or
batch over 256 KiB (moto takes 1 MiB), a DynamoDB item over 400 KB and duplicate keys in one
BatchWriteItem (moto refuses those too; answered here, as DynamoDB does, so that they are counted).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline_constructs.local.proxy import Answer, Rule, server_error, throttled

#: Calls a burst strikes, each in every one of its attempts: longer than the SDK's retries, whatever they are.
BURST_CALLS = 2
STALL_SECONDS = 10.0
#: Matching calls let through between two faults of a call kind.
GAP = 1
#: SQS's largest message, and batch (the sum of its messages): 256 KiB.
SQS_PAYLOAD_LIMIT = 262_144
#: DynamoDB's largest item: 400 KB (counted as DynamoDB counts: names and values).
DYNAMODB_ITEM_LIMIT = 409_600
#: The status store's key attributes (the StatusStore construct's, and TABLE_KEYS').
TABLE_KEY_NAMES = ("pk", "sk")

AUTOSCALING_NAMESPACE = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


@dataclass(eq=False)
class Fault(Rule):
    """A proxy rule that knows what it is (``label``), when it last fired, and with ``calls`` strikes whole
    calls: every attempt of each of the first ``calls`` calls it matches (botocore names a call's attempts
    by one ``amz-sdk-invocation-id``), however many other calls run meanwhile. Safe to share between proxies.
    """

    label: str = ""
    call: str = ""  # the call kind it strikes
    autoscaling: bool = False  # on the workers' Auto Scaling proxies, not their AWS ones
    calls: int = 0
    after: Fault | None = None  # matches nothing until that fault is over: one fault at a time
    last_fired: float = 0.0
    struck: set[str] = field(default_factory=set)  # the invocations struck

    _shared: ClassVar[threading.Lock] = threading.Lock()

    def matches(self, method: str, path: str, headers: Any) -> bool:
        if self.after is not None and not self.after.over():
            return False
        with Fault._shared:
            hit = self._strikes(method, path, headers) if self.calls else super().matches(method, path, headers)
            if hit:
                self.last_fired = time.monotonic()
        return hit

    def _strikes(self, method: str, path: str, headers: Any) -> bool:
        wanted = ((self.target, headers.get("X-Amz-Target", "")), (self.method, method))
        if any(want is not None and want != got for want, got in wanted) or (self.path_contains or "") not in path:
            return False  # not a call of its kind
        invocation = headers.get("amz-sdk-invocation-id") or uuid.uuid4().hex
        if invocation not in self.struck:
            if len(self.struck) >= self.calls:
                return False
            if self.skip > 0:
                self.skip -= 1
                return False
            self.struck.add(invocation)
        self.fired += 1
        return True

    def over(self) -> bool:
        """Fired as often as it would, and (a stall) its call forwarded."""
        done = len(self.struck) >= self.calls if self.calls else self.fired >= self.times
        return done and time.monotonic() >= self.cleared_at

    @property
    def cleared_at(self) -> float:
        """When the fault last ended (monotonic; 0 if it never fired): a stall ends when it forwards."""
        return self.last_fired + self.stall if self.fired else 0.0


def _query_error(status: int, code: str, message: str) -> Answer:
    """An error as the Query protocol (Auto Scaling) sends it."""
    xml = (
        f'<ErrorResponse xmlns="{AUTOSCALING_NAMESPACE}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return status, {"Content-Type": "text/xml"}, xml.encode()


@dataclass(frozen=True)
class CallKind:
    """One kind of call the worker makes, how a proxy recognizes it, and how many of them to let through
    before its faults: ``skip`` in a round of its own, ``mixed_skip`` in the kill -9 matrix."""

    name: str
    target: str | None = None
    method: str | None = None
    path_contains: str | None = None
    skip: int = 0
    mixed_skip: int = 0
    autoscaling: bool = False
    stall_last: bool = False  # the bursts first: a call made once per worker start recurs only after a crash
    gap: int = GAP  # calls let through between two faults: none for the rarest calls

    def _answer(self, kind: str) -> Answer:
        if self.autoscaling:
            if kind == "5xx":
                return _query_error(500, "InternalFailure", "injected: internal failure")
            return _query_error(400, "Throttling", "injected: rate exceeded")
        return server_error(self.target) if kind == "5xx" else throttled(self.target)

    def faults(self, *, skip: int) -> list[Fault]:
        """A stall, a 5xx burst and a throttling burst (each of :data:`BURST_CALLS` whole calls), one after
        the other (the stall last with ``stall_last``): the first after ``skip`` matching calls, each next
        one ``gap`` calls after the one before is over."""
        match: dict[str, Any] = {
            "target": self.target,
            "method": self.method,
            "path_contains": self.path_contains,
            "call": self.name,
            "autoscaling": self.autoscaling,
        }
        faults = [
            Fault(**match, label="stall", stall=STALL_SECONDS),
            Fault(**match, label="5xx", answer=self._answer("5xx"), calls=BURST_CALLS),
            Fault(**match, label="throttle", answer=self._answer("throttle"), calls=BURST_CALLS),
        ]
        if self.stall_last:
            faults.append(faults.pop(0))
        for before, fault in zip([None, *faults], faults, strict=False):
            fault.after, fault.skip = before, skip if before is None else self.gap
        return faults


#: Every call kind of the worker runtime (and of its task processes), with the calls let through first:
#: some are made rarely (UpdateItem on redeliveries, GetItem on a task's spare deliveries).
CALL_KINDS = (
    CallKind("sqs:GetQueueAttributes", target="AmazonSQS.GetQueueAttributes", mixed_skip=2, stall_last=True, gap=0),
    CallKind("sqs:ReceiveMessage", target="AmazonSQS.ReceiveMessage", skip=4, mixed_skip=20),
    CallKind("sqs:ChangeMessageVisibilityBatch", target="AmazonSQS.ChangeMessageVisibilityBatch", mixed_skip=6),
    CallKind("sqs:DeleteMessageBatch", target="AmazonSQS.DeleteMessageBatch", skip=1, mixed_skip=15),
    CallKind("sqs:SendMessageBatch", target="AmazonSQS.SendMessageBatch", skip=1, mixed_skip=25),
    CallKind("dynamodb:BatchWriteItem", target="DynamoDB_20120810.BatchWriteItem", skip=1, mixed_skip=20),
    CallKind("dynamodb:PutItem", target="DynamoDB_20120810.PutItem", skip=2, mixed_skip=10),
    CallKind("dynamodb:UpdateItem", target="DynamoDB_20120810.UpdateItem", mixed_skip=8),
    CallKind("dynamodb:GetItem", target="DynamoDB_20120810.GetItem", mixed_skip=2),
    CallKind("s3:PUT", method="PUT", path_contains="/output/", skip=3, mixed_skip=150),
    CallKind("s3:GET", method="GET", skip=2, mixed_skip=60),
    CallKind("s3:HEAD", method="HEAD"),
    CallKind("autoscaling:*", method="POST", autoscaling=True, mixed_skip=1, gap=0),
)


def fired(faults: list[Fault]) -> dict[str, str]:
    """What each fault did, of what it would (summed over the call kinds when there are several):
    ``{"stall": "1/1", "5xx": "2/2 calls, 6 answers", ...}``."""
    counts: dict[str, list[int]] = {}
    for fault in faults:
        count = counts.setdefault(fault.label, [0, 0, 0])
        count[0] += len(fault.struck) if fault.calls else fault.fired
        count[1] += fault.calls or fault.times
        count[2] += fault.fired
    return {
        label: f"{done}/{planned}" + (f" calls, {answers} answers" if label != "stall" else "")
        for label, (done, planned, answers) in counts.items()
    }


def fired_by_call(faults: list[Fault]) -> dict[str, dict[str, str]]:
    """:func:`fired` for each call kind."""
    calls: dict[str, list[Fault]] = {}
    for fault in faults:
        calls.setdefault(fault.call, []).append(fault)
    return {call: fired(group) for call, group in calls.items()}


# ---------------------------------------------------------------- what AWS refuses and moto does not


def _value_size(value: dict[str, Any]) -> int:
    """An attribute value's size as DynamoDB counts it (typed JSON, as the SDK sends it)."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        return len(inner.lstrip("-").replace(".", "").lstrip("0")) // 2 + 2
    if kind == "B":
        return len(base64.b64decode(inner))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: element}) for element in inner)
    if kind == "L":
        return 3 + sum(_value_size(element) + 1 for element in inner)
    return 3 + sum(len(name.encode()) + _value_size(element) + 1 for name, element in inner.items())  # M


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _sqs_size(entry: dict[str, Any]) -> int:
    size = len(entry.get("MessageBody", "").encode())
    for name, attribute in (entry.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(attribute.get("DataType", "").encode())
        size += len(attribute.get("StringValue", "").encode()) + len(attribute.get("BinaryValue", ""))
    return size


def _json_error(type_name: str, message: str, query_error: str | None = None) -> Answer:
    headers = {"Content-Type": "application/x-amz-json-1.0"}
    if query_error:
        headers["x-amzn-query-error"] = f"{query_error};Sender"
    return 400, headers, json.dumps({"__type": type_name, "message": message}).encode()


class Refusals:
    """A proxy's ``authorize``: answers in AWS's place the requests AWS refuses for their size or shape,
    counting each refusal by what was refused."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _refuse(self, what: str, answer: Answer) -> Answer:
        with self._lock:
            self.counts[what] += 1
        return answer

    def authorize(self, method: str, path: str, headers: Any, body: bytes) -> Answer | None:
        target = headers.get("X-Amz-Target", "")
        if target in ("AmazonSQS.SendMessageBatch", "AmazonSQS.SendMessage"):
            request = json.loads(body or b"{}")
            entries = request.get("Entries", [request])
            size = sum(_sqs_size(entry) for entry in entries)
            if size > SQS_PAYLOAD_LIMIT:
                return self._refuse(
                    f"sqs:{target.rsplit('.', 1)[1]} over 256 KiB",
                    _json_error(
                        "com.amazonaws.sqs#BatchRequestTooLong",
                        f"Batch requests cannot be longer than {SQS_PAYLOAD_LIMIT} bytes. You have sent {size} bytes.",
                        "AWS.SimpleQueueService.BatchRequestTooLong",
                    ),
                )
        elif target in ("DynamoDB_20120810.PutItem", "DynamoDB_20120810.BatchWriteItem"):
            return self._dynamodb(target.rsplit(".", 1)[1], json.loads(body or b"{}"))
        return None

    def _dynamodb(self, operation: str, request: dict[str, Any]) -> Answer | None:
        if operation == "PutItem":
            items = [request.get("Item", {})]
        else:
            items = [
                entry["PutRequest"]["Item"]
                for entries in request.get("RequestItems", {}).values()
                for entry in entries
                if "PutRequest" in entry
            ]
        invalid = "com.amazon.coral.validate#ValidationException"
        if any(item_size(item) > DYNAMODB_ITEM_LIMIT for item in items):
            return self._refuse(
                f"dynamodb:{operation} item over 400 KB",
                _json_error(invalid, "Item size has exceeded the maximum allowed size"),
            )
        keys = [json.dumps({k: item.get(k) for k in TABLE_KEY_NAMES}, sort_keys=True) for item in items]
        if len(set(keys)) < len(keys):
            return self._refuse(
                f"dynamodb:{operation} duplicate keys",
                _json_error(invalid, "Provided list of item keys contains duplicates"),
            )
        return None
