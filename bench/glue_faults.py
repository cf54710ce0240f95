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
from typing import Any

import boto3

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.local.proxy import FaultProxy, Rule, server_error, throttled
from tests.support.glue_world import KINDS, START_JOB_NAME, GlueWorld, deliver_at_once, sdk_attempts

#: Lambda retries a failed async invocation twice.
LAMBDA_RETRIES = 2
STALL_SECONDS = 10.0
#: Whole calls a burst strikes: every SDK attempt of each (as the worker's fault matrix does).
BURST_CALLS = 2
#: Deliveries of each trigger at the same moment.
DELIVERIES = 2
#: Rounds run side by side, each with its own world and proxy on the one emulator.
ROUNDS_AT_ONCE = 8

SUBMIT_JOB = {"method": "POST", "path_contains": "/v1/submitjob"}
LIST_JOBS = {"method": "POST", "path_contains": "/v1/listjobs"}
TOO_MANY_REQUESTS = (
    429,
    {"Content-Type": "application/json", "x-amzn-ErrorType": "TooManyRequestsException"},
    b'{"message": "injected: too many requests"}',
)
BATCH_SERVER_ERROR = (
    500,
    {"Content-Type": "application/json", "x-amzn-ErrorType": "ServerException"},
    b'{"message": "injected: server error"}',
)


def _answer_lost() -> None:
    """After forwarding: the call landed, and the caller's connection is cut before the answer."""
    raise ConnectionResetError("injected: the answer is lost")


def _dynamodb(operation: str) -> dict[str, str]:
    return {"target": f"DynamoDB_20120810.{operation}"}


def _faults_on(call: dict[str, str], *, batch: bool, after: list[Rule] | None = None) -> dict[str, list[Rule]]:
    """A 5xx burst, a throttle burst and a stall on one call kind, by name; ``after``: rules that make the
    glue make that call (ListJobs is called only when a SubmitJob's answer was lost)."""
    target = call.get("target")
    error = BATCH_SERVER_ERROR if batch else server_error(target)
    throttle = TOO_MANY_REQUESTS if batch else throttled(target)
    session = boto3.session.Session(region_name="us-east-1")
    client = session.client("batch", config=glue.BATCH_CLIENT_CONFIG) if batch else session.client("dynamodb")
    answers = BURST_CALLS * sdk_attempts(client)
    leading = after or []
    return {
        "5xx": [*leading, Rule(**call, answer=error, times=answers)],  # type: ignore[arg-type]
        "throttle": [*leading, Rule(**call, answer=throttle, times=answers)],  # type: ignore[arg-type]
        "10 s stall": [*leading, Rule(**call, stall=STALL_SECONDS)],  # type: ignore[arg-type]
    }


def fault_kinds() -> dict[str, dict[str, list[Rule]]]:
    """Call kind -> fault name -> the proxy rules of that fault (fresh rules each call)."""
    answer_lost = Rule(**SUBMIT_JOB, when="after", action=_answer_lost)  # type: ignore[arg-type]
    kinds = {
        "batch:SubmitJob": _faults_on(SUBMIT_JOB, batch=True) | {"answer lost": [answer_lost]},
        "batch:ListJobs after a lost answer": _faults_on(LIST_JOBS, batch=True, after=[answer_lost]),
    }
    for operation in ("PutItem", "GetItem", "UpdateItem"):
        kinds[f"dynamodb:{operation}"] = _faults_on(_dynamodb(operation), batch=False)
    return kinds


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


def _retried(deliver: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A delivery that Lambda retries when it fails; its last error if every try failed."""

    def with_retries(session: Any) -> Any:
        for attempt in range(LAMBDA_RETRIES + 1):
            try:
                return deliver(session)
            except Exception:
                if attempt == LAMBDA_RETRIES:
                    raise
                time.sleep(1)
        return None

    return with_retries


def run_round(world: GlueWorld, endpoint: str, call: str, fault: str, rules: list[Rule], kind: str) -> Round:
    proxy = FaultProxy(endpoint)
    for rule in rules:
        proxy.add(rule)
    deliver, name = _delivery(world, kind, proxy.endpoint)
    started = time.monotonic()
    try:
        results = deliver_at_once(DELIVERIES, _retried(deliver))
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
    groups: dict[tuple[str, str], list[Round]] = {}
    for r in rounds:
        groups.setdefault((r.call, r.fault), []).append(r)
    for (call, fault), group in groups.items():
        lines.append(
            f"| {call} | {fault} | {len(group)} | {sum(r.fired for r in group)} | "
            f"{sum(1 for r in group if r.jobs == 0)} | {sum(max(0, r.jobs - 1) for r in group)} | "
            f"{sum(r.failed_deliveries for r in group)} | {max(r.seconds for r in group)} |"
        )
    return lines


def main() -> None:
    from bench.emulator import moto_endpoint

    with moto_endpoint() as endpoint:
        rounds = measure(endpoint)
    print("\n".join(report_lines(rounds)))
    print(json.dumps(figures(rounds)))


if __name__ == "__main__":
    main()
