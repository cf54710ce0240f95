"""The glue's submit-once guard under API faults: per fault kind and trigger kind, how many Batch jobs?

Each round is a fresh chain world (:mod:`tests.support.glue_world`) whose trigger reaches the glue twice at
once (AWS delivers at least once), each delivery retried twice when it fails (as Lambda retries an async
invocation), while a fault proxy strikes one call kind the glue makes: a burst of 5xx answers and one of
throttles (each past the SDK's retries of a call), a 10 s stall, and for SubmitJob an accepted call whose
answer is lost. A round is right when exactly one job of the trigger's name exists at the end: 0 is a
trigger lost, 2 or more a job submitted twice.

    python -m bench.glue_faults
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import boto3

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.local.proxy import FaultProxy, Rule, server_error, throttled
from tests.support.fan_out_world import LAMBDA_RETRIES, lambda_retried
from tests.support.glue_world import (
    BATCH_SERVER_ERROR,
    KINDS,
    LIST_JOBS,
    START_JOB_NAME,
    SUBMIT_JOB,
    GlueWorld,
    answer_lost,
    deliver_at_once,
    sdk_attempts,
)

STALL_SECONDS = 10.0
#: Whole calls a burst strikes: every SDK attempt of each (as the worker's fault matrix does).
BURST_CALLS = 2
#: Deliveries of each trigger at the same moment.
DELIVERIES = 2
#: Rounds run side by side, each with its own world and proxy on the one emulator.
ROUNDS_AT_ONCE = 8

TOO_MANY_REQUESTS = (
    429,
    {"Content-Type": "application/json", "x-amzn-ErrorType": "TooManyRequestsException"},
    b'{"message": "injected: too many requests"}',
)


def dynamodb_call(operation: str) -> dict[str, str]:
    return {"target": f"DynamoDB_20120810.{operation}"}


def faults_on(call: dict[str, str], service: str, after: list[Rule] | None = None) -> dict[str, list[Rule]]:
    """A 5xx burst, a throttle burst and a stall on one call kind of ``service`` (batch, dynamodb, s3), by
    name; ``after``: rules that make the glue make that call (ListJobs is called only when a SubmitJob's
    answer was lost)."""
    target, batch = call.get("target"), service == "batch"
    error = BATCH_SERVER_ERROR if batch else server_error(target)
    throttle = TOO_MANY_REQUESTS if batch else throttled(target)
    session = boto3.session.Session(region_name="us-east-1")
    client = session.client(service, config=glue.BATCH_CLIENT_CONFIG if batch else None)
    answers = BURST_CALLS * sdk_attempts(client)
    leading = after or []
    return {
        "5xx": [*leading, Rule(**call, answer=error, times=answers)],  # type: ignore[arg-type]
        "throttle": [*leading, Rule(**call, answer=throttle, times=answers)],  # type: ignore[arg-type]
        "10 s stall": [*leading, Rule(**call, stall=STALL_SECONDS)],  # type: ignore[arg-type]
    }


def fault_kinds() -> dict[str, dict[str, list[Rule]]]:
    """Call kind -> fault name -> the proxy rules of that fault (fresh rules each call)."""
    lost = Rule(**SUBMIT_JOB, when="after", action=answer_lost)  # type: ignore[arg-type]
    kinds = {
        "batch:SubmitJob": faults_on(SUBMIT_JOB, "batch") | {"answer lost": [lost]},
        "batch:ListJobs after a lost answer": faults_on(LIST_JOBS, "batch", after=[lost]),
    }
    for operation in ("PutItem", "GetItem", "UpdateItem"):
        kinds[f"dynamodb:{operation}"] = faults_on(dynamodb_call(operation), "dynamodb")
    return kinds


class FaultRound(Protocol):
    """A round of a fault bench: which call kind the proxy struck, with which fault."""

    call: str
    fault: str


AnyRound = TypeVar("AnyRound", bound=FaultRound)


@dataclass
class Round:
    call: str
    fault: str
    kind: str
    jobs: int
    fired: int
    failed_deliveries: int
    seconds: float


def _delivery(world: GlueWorld, kind: str, endpoint: str) -> tuple[Callable[[Any], Any], str]:
    """(deliver(session), the job name), its calls to ``endpoint``, with the clients production makes: Batch
    calls retried by the guard only, never by the SDK (a resent SubmitJob is a second job)."""
    if kind == "start":
        return world.start_by_hand(endpoint), START_JOB_NAME
    event, name = world.events()[kind]

    def deliver(session: Any) -> Any:
        batch = session.client("batch", endpoint_url=endpoint, config=glue.BATCH_CLIENT_CONFIG)
        dynamodb = session.resource("dynamodb", endpoint_url=endpoint)
        return glue.Glue(world.config, batch=batch, dynamodb=dynamodb).handle(json.loads(json.dumps(event)))

    return deliver, name


def run_round(world: GlueWorld, endpoint: str, call: str, fault: str, rules: list[Rule], kind: str) -> Round:
    proxy = FaultProxy(endpoint)
    for rule in rules:
        proxy.add(rule)
    deliver, name = _delivery(world, kind, proxy.endpoint)
    started = time.monotonic()
    try:
        results = deliver_at_once(DELIVERIES, lambda_retried(deliver))
    finally:
        proxy.close()
    return Round(
        call,
        fault,
        kind,
        jobs=len(world.jobs_named(name)),
        fired=sum(rule.fired for rule in rules),
        failed_deliveries=sum(1 for result in results if isinstance(result, Exception)),
        seconds=round(time.monotonic() - started, 1),
    )


def measure(endpoint: str) -> list[Round]:
    """Every trigger kind under every fault of every call kind the glue makes, rounds side by side."""
    plans = [(call, fault, kind) for call, faults in fault_kinds().items() for fault in faults for kind in KINDS]
    # Every world made first, one by one: moto's Batch is not safe against job definitions registered while
    # another thread looks one up.
    worlds = [GlueWorld(boto3.session.Session()) for _ in plans]
    with ThreadPoolExecutor(max_workers=ROUNDS_AT_ONCE) as pool:
        # Fresh rules (and counters) each round.
        futures = [
            pool.submit(run_round, world, endpoint, c, f, fault_kinds()[c][f], k)
            for world, (c, f, k) in zip(worlds, plans, strict=True)
        ]
        return [future.result() for future in futures]


def figures(rounds: list[Round]) -> dict[str, int]:
    return {
        "glue_triggers_lost": sum(1 for r in rounds if r.jobs == 0),
        "glue_jobs_submitted_twice": sum(max(0, r.jobs - 1) for r in rounds),
    }


def report_lines(rounds: list[Round]) -> list[str]:
    """The report's section: a row per call kind and fault, over every trigger kind."""
    lines = [
        "## Submit once under API faults (`bench/glue_faults.py`)",
        f"- Each trigger kind ({', '.join(KINDS)}) reaches the glue {DELIVERIES} times at once, each delivery "
        f"retried {LAMBDA_RETRIES} times when it fails (as Lambda retries an async invocation), with the clients "
        f"production makes, while the proxy strikes one call kind: a burst of 5xx answers and one of throttles, each "
        f"striking {BURST_CALLS} whole calls (every SDK attempt of each), a {STALL_SECONDS:g} s stall, and for "
        "SubmitJob an accepted call whose answer is lost (ListJobs is struck after one: only then is it called). "
        "Right: exactly one job of the trigger's name. "
        "`start` is the operator's `pipeline start`, the others the glue function.",
        "",
        "| call | fault | triggers | faults fired | triggers lost | jobs submitted twice "
        "| deliveries failed after retries | slowest s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (call, fault), group in by_call_and_fault(rounds).items():
        lines.append(
            f"| {call} | {fault} | {len(group)} | {sum(r.fired for r in group)} | "
            f"{sum(1 for r in group if r.jobs == 0)} | {sum(max(0, r.jobs - 1) for r in group)} | "
            f"{sum(r.failed_deliveries for r in group)} | {max(r.seconds for r in group)} |"
        )
    return lines


def by_call_and_fault(rounds: list[AnyRound]) -> dict[tuple[str, str], list[AnyRound]]:
    """The rounds of each call kind and fault (a row of the report), in the order they were planned."""
    groups: dict[tuple[str, str], list[AnyRound]] = {}
    for r in rounds:
        groups.setdefault((r.call, r.fault), []).append(r)
    return groups


def run_alone(
    measure: Callable[[str], list[AnyRound]],
    report_lines: Callable[[list[AnyRound]], list[str]],
    figures: Callable[[list[AnyRound]], dict[str, int]],
) -> None:
    """A fault bench's rounds on an emulator of their own: its report section, then its figures as JSON."""
    from bench.emulator import moto_endpoint

    with moto_endpoint() as endpoint:
        rounds = measure(endpoint)
    print("\n".join(report_lines(rounds)))
    print(json.dumps(figures(rounds)))


def main() -> None:
    run_alone(measure, report_lines, figures)


if __name__ == "__main__":
    main()
