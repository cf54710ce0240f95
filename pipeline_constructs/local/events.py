"""EventBridge locally: rule patterns, input transformers, and delivery to Lambda, SNS and SQS targets."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline_constructs.local.resource_policies import Sender


def matches(pattern: Any, event: Any) -> bool:
    """EventBridge pattern matching: every pattern key must match; a list holds the allowed values."""
    if isinstance(pattern, dict):
        if not isinstance(event, dict):
            return False
        return all(key in event and matches(value, event[key]) for key, value in pattern.items())
    if isinstance(pattern, list):
        values = event if isinstance(event, list) else [event]
        return any(_value_matches(allowed, value) for allowed in pattern for value in values)
    return pattern == event


def _value_matches(allowed: Any, value: Any) -> bool:
    if isinstance(allowed, dict):
        if "prefix" in allowed:
            return isinstance(value, str) and value.startswith(allowed["prefix"])
        if "suffix" in allowed:
            return isinstance(value, str) and value.endswith(allowed["suffix"])
        if "anything-but" in allowed:
            excluded = allowed["anything-but"]
            return value not in (excluded if isinstance(excluded, list) else [excluded])
        if "exists" in allowed:
            return (value is not None) == bool(allowed["exists"])
        return False
    return allowed == value


def json_path(event: Any, path: str) -> Any:
    """The value at a simple JSONPath such as ``$.detail.jobName`` (``$`` is the whole event)."""
    value = event
    for part in [p for p in path.removeprefix("$").split(".") if p]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def transform(transformer: dict[str, Any], event: Any) -> str:
    """Apply an InputTransformer: ``<name>`` in the template becomes the value at its path."""
    values = {name: json_path(event, path) for name, path in transformer.get("InputPathsMap", {}).items()}
    template = transformer["InputTemplate"]
    out, inside_string, index = [], False, 0
    while index < len(template):
        char = template[index]
        match = re.match(r"<([A-Za-z0-9_.-]+)>", template[index:])
        if match and match.group(1) in values:
            value = values[match.group(1)]
            if inside_string:
                out.append(json.dumps(value if isinstance(value, str) else json.dumps(value))[1:-1])
            else:
                out.append(json.dumps(value))
            index += len(match.group(0))
            continue
        if char == '"' and (index == 0 or template[index - 1] != "\\"):
            inside_string = not inside_string
        out.append(char)
        index += 1
    return "".join(out)


@dataclass
class Target:
    arn: str
    input: str | None = None
    input_transformer: dict[str, Any] | None = None
    #: The AWS service that delivers to this target (its policies decide); None: the local run itself.
    sender: Sender | None = None
    #: Where the sender puts what it could not deliver (a rule's, a schedule's, a subscription's DLQ).
    dead_letter: str | None = None

    def payload(self, event: Any) -> Any:
        if self.input is not None:
            return json.loads(self.input)
        if self.input_transformer is not None:
            text = transform(self.input_transformer, event)
            try:
                return json.loads(text)
            except ValueError:
                return text
        return event


@dataclass
class LocalRule:
    name: str
    pattern: dict[str, Any] | None
    schedule: str | None
    targets: list[Target] = field(default_factory=list)
    deliveries: int = 0


class LocalEventBus:
    """Routes events to the targets of every matching rule through ``deliver(target, payload)``."""

    def __init__(self, rules: list[LocalRule], deliver: Callable[[Target, Any], None]) -> None:
        self.rules = rules
        self.deliver = deliver
        self.events_put = 0

    def put(self, event: dict[str, Any]) -> int:
        self.events_put += 1
        delivered = 0
        for rule in self.rules:
            if rule.pattern is not None and matches(rule.pattern, event):
                for target in rule.targets:
                    self.deliver(target, target.payload(event))
                    delivered += 1
                rule.deliveries += 1
        return delivered
