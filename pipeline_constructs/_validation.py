"""Synth-time argument checks shared by every construct.

Every check raises one ``ValueError`` naming the construct id, the argument, the value and the allowed
range, and skips values that are unresolved CDK tokens (they are only known at deploy time).
"""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import Duration, Token
from constructs import Construct


def _unresolved(value: object) -> bool:
    return Token.is_unresolved(value)


def argument_error(scope: Construct | str, argument: str, value: object, allowed: str) -> ValueError:
    """The one error shape of this library: ``<id>: <argument>=<value> is invalid; allowed: <allowed>``."""
    construct_id = scope if isinstance(scope, str) else scope.node.path or scope.node.id
    return ValueError(f"{construct_id}: {argument}={value!r} is invalid; allowed: {allowed}")


def check_range(
    scope: Construct | str,
    argument: str,
    value: float | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str = "",
) -> None:
    """Raise unless ``minimum <= value <= maximum`` (either bound may be open)."""
    if value is None or _unresolved(value):
        return
    too_low = minimum is not None and value < minimum
    too_high = maximum is not None and value > maximum
    if too_low or too_high:
        if minimum is not None and maximum is not None:
            allowed = f"{_number(minimum)} to {_number(maximum)}{unit}"
        elif minimum is not None:
            allowed = f"at least {_number(minimum)}{unit}"
        else:
            allowed = f"at most {_number(maximum)}{unit}"
        shown: object = f"{_number(value)}{unit}" if unit else value
        raise argument_error(scope, argument, shown, allowed)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def seconds(duration: Duration | None) -> float | None:
    """A duration in seconds, or None when absent or unresolved."""
    if duration is None or duration.is_unresolved():
        return None
    return duration.to_seconds()


def check_duration(
    scope: Construct | str,
    argument: str,
    value: Duration | None,
    *,
    minimum: Duration | None = None,
    maximum: Duration | None = None,
) -> None:
    """Like :func:`check_range`, for durations; the error shows the value in seconds."""
    check_range(
        scope,
        argument,
        seconds(value),
        minimum=seconds(minimum),
        maximum=seconds(maximum),
        unit=" seconds",
    )


def check_visibility_covers(
    scope: Construct | str, visibility_timeout: Duration | None, other: str, timeout: Duration | None
) -> None:
    """A queue's visibility timeout must cover ``other`` (the consumer's or task's timeout), else a message
    is handed to a second consumer while the first is still on it."""
    visibility_s, timeout_s = seconds(visibility_timeout), seconds(timeout)
    if visibility_s is not None and timeout_s is not None and visibility_s < timeout_s:
        raise argument_error(
            scope,
            "visibility_timeout",
            f"{_number(visibility_s)} seconds",
            f"at least {other} ({_number(timeout_s)} seconds) up to 43200 seconds",
        )


def check_not_empty(scope: Construct | str, argument: str, values: Iterable[object] | None) -> None:
    if values is not None and not list(values):
        raise argument_error(scope, argument, [], "a non-empty list")


def check_unique(scope: Construct | str, argument: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise argument_error(scope, argument, name, "unique names (this one appears twice)")
        seen.add(name)
