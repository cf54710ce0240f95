"""Fan-out and fan-in under API faults: per call kind and fault, one array job, one join, every child's row?

Each round is a fresh fan-out chain (:mod:`tests.support.fan_out_world`: ``split`` -> ``work``, a fan-out over
25 items -> ``join``) whose trigger reaches the glue twice at once, each delivery retried twice when it fails
(as Lambda retries an async invocation), while a fault proxy strikes one call kind that trigger makes, as
:mod:`bench.glue_faults` does for the other triggers. The triggers: the split step's message reaching the glue
(the array job over the list it holds, or over a manifest in S3 it names), and the array parent's terminal
event (children listed, items read, status rows written, the join submitted): every child succeeded, or 2 of
25 failed under each policy (``fail_run``: no join, the run failed naming them; ``continue``: the join).

    python -m bench.fan_out_faults
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3

from bench.glue_faults import (
    BURST_CALLS,
    DELIVERIES,
    LIST_JOBS,
    ROUNDS_AT_ONCE,
    STALL_SECONDS,
    SUBMIT_JOB,
    answer_lost,
    by_call_and_fault,
    dynamodb_call,
    faults_on,
    run_alone,
)
from pipeline_constructs.glue import handler as glue
from pipeline_constructs.local.proxy import FaultProxy, Rule
from tests.support.fan_out_world import ITEMS, LAMBDA_RETRIES, TWO_FAILED, FanOutWorld, lambda_retried
from tests.support.glue_world import deliver_at_once

FAN_OUT, FAN_OUT_MANIFEST = "fan-out, list in the message", "fan-out, manifest in S3"
FAN_IN_ALL, FAN_IN_FAIL_RUN, FAN_IN_CONTINUE = (
    "fan-in, every child succeeded",
    "fan-in, 2 failed, fail_run",
    "fan-in, 2 failed, continue",
)
TRIGGERS = (FAN_OUT, FAN_OUT_MANIFEST, FAN_IN_ALL, FAN_IN_FAIL_RUN, FAN_IN_CONTINUE)
MANIFEST_KEY = "maps/split/list.txt"
#: The calls each trigger makes (a round whose fault strikes a call its trigger never makes is left out).
GUARD_CALLS = ("batch:SubmitJob", "dynamodb:PutItem", "dynamodb:GetItem")
FAN_OUT_CALLS = (*GUARD_CALLS, "batch:ListJobs", "s3:GetObject", "s3:PutObject", "dynamodb:UpdateItem")
FAN_IN_CALLS = ("batch:ListJobs", "s3:GetObject", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem")
CALLS = {
    FAN_OUT: FAN_OUT_CALLS,
    FAN_OUT_MANIFEST: FAN_OUT_CALLS,
    FAN_IN_ALL: (*GUARD_CALLS, *FAN_IN_CALLS),
    FAN_IN_FAIL_RUN: FAN_IN_CALLS,  # no join to submit
    FAN_IN_CONTINUE: (*GUARD_CALLS, *FAN_IN_CALLS),
}


def fault_kinds(trigger: str) -> dict[str, dict[str, list[Rule]]]:
    """Call kind -> fault name -> the proxy rules of that fault, for the calls ``trigger`` makes (fresh rules
    each call). A fan-out lists jobs only after a SubmitJob whose answer was lost; a fan-in lists the children."""
    lost = Rule(**SUBMIT_JOB, when="after", action=answer_lost)  # type: ignore[arg-type]
    kinds = {
        "batch:SubmitJob": faults_on(SUBMIT_JOB, "batch") | {"answer lost": [lost]},
        "batch:ListJobs": faults_on(LIST_JOBS, "batch", after=[lost] if trigger.startswith("fan-out") else None),
        # The items object (and the manifest): the glue makes no other S3 GET, nor any other PUT here.
        "s3:GetObject": faults_on({"method": "GET", "path_contains": "/maps/"}, "s3"),
        "s3:PutObject": faults_on({"method": "PUT", "path_contains": "/maps/_items/"}, "s3"),
    }
    for operation in ("PutItem", "GetItem", "UpdateItem", "BatchWriteItem"):
        kinds[f"dynamodb:{operation}"] = faults_on(dynamodb_call(operation), "dynamodb")
    return {call: faults for call, faults in kinds.items() if call in CALLS[trigger]}


@dataclass
class Prepared:
    """A world made ready for a trigger: the event to deliver, and the name and number of jobs it should make."""

    world: FanOutWorld
    trigger: str
    event: dict[str, Any]
    job_name: str
    expected_jobs: int
    parent_job_id: str = ""


def prepare(trigger: str) -> Prepared:
    """A fresh world, and (for a fan-in) its array job submitted, without faults, and its children ended."""
    session = boto3.session.Session()
    if trigger.startswith("fan-out"):
        settings = {"source": "manifest", "field": "manifest"} if trigger == FAN_OUT_MANIFEST else {}
        world = FanOutWorld(session, settings)
        message = json.dumps(ITEMS)
        if trigger == FAN_OUT_MANIFEST:
            world.s3.put_object(Bucket=world.bucket, Key=MANIFEST_KEY, Body="\n".join(ITEMS).encode())
            message = json.dumps({"manifest": f"s3://{world.bucket}/{MANIFEST_KEY}"})
        return Prepared(world, trigger, world.publish(message), glue.job_name("maps", "work", "m-1"), 1)
    world = FanOutWorld(session, {"onChildFailure": "continue"} if trigger == FAN_IN_CONTINUE else {})
    request, job_id = world.fan_out(json.dumps(ITEMS))
    world.end_children({} if trigger == FAN_IN_ALL else TWO_FAILED)
    event = world.ended(request, job_id, "SUCCEEDED" if trigger == FAN_IN_ALL else "FAILED")
    join = glue.job_name("maps", "join", job_id)
    return Prepared(world, trigger, event, join, world.expected_joins(), parent_job_id=job_id)


@dataclass
class Round:
    call: str
    fault: str
    trigger: str
    fired: int
    #: Jobs of the trigger's name (the array, or the join) against how many there should be.
    jobs: int
    expected_jobs: int
    child_rows_wrong: int
    failed_deliveries: int
    seconds: float
    #: What is wrong with the fan-out's status row or its run.
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return int(self.jobs < self.expected_jobs)

    @property
    def twice(self) -> int:
        return max(0, self.jobs - self.expected_jobs)


def run_round(ready: Prepared, endpoint: str, call: str, fault: str, rules: list[Rule]) -> Round:
    world = ready.world
    proxy = FaultProxy(endpoint)
    for rule in rules:
        proxy.add(rule)

    def deliver(session: Any) -> Any:
        return world.glue(session, endpoint=proxy.endpoint).handle(copy.deepcopy(ready.event))

    started = time.monotonic()
    try:
        results = deliver_at_once(DELIVERIES, lambda_retried(deliver))
    finally:
        proxy.close()
    seconds = round(time.monotonic() - started, 1)
    fan_in = bool(ready.parent_job_id)
    return Round(
        call,
        fault,
        ready.trigger,
        fired=sum(rule.fired for rule in rules),
        jobs=len(world.jobs_named(ready.job_name)),
        expected_jobs=ready.expected_jobs,
        child_rows_wrong=world.child_rows_wrong(ready.parent_job_id) if fan_in else 0,
        failed_deliveries=sum(1 for result in results if isinstance(result, Exception)),
        seconds=seconds,
        problems=world.summary_wrong(ready.parent_job_id) if fan_in else world.fan_out_wrong(),
    )


def measure(endpoint: str) -> list[Round]:
    """Every fan-out and fan-in trigger under every fault of every call kind it makes, rounds side by side."""
    plans = [
        (call, fault, trigger)
        for trigger in TRIGGERS
        for call, faults in fault_kinds(trigger).items()
        for fault in faults
    ]
    # Every world made first, one by one: moto's Batch is not safe against job definitions registered while
    # another thread looks one up.
    worlds = [prepare(trigger) for _, _, trigger in plans]
    # The glue prints a metric line per job state it records: hundreds here, for nobody.
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere):
        return _run_side_by_side(worlds, plans, endpoint)


def _run_side_by_side(worlds: list[Prepared], plans: list[tuple[str, str, str]], endpoint: str) -> list[Round]:
    with ThreadPoolExecutor(max_workers=ROUNDS_AT_ONCE) as pool:
        futures = [
            pool.submit(run_round, ready, endpoint, c, f, fault_kinds(t)[c][f])
            for ready, (c, f, t) in zip(worlds, plans, strict=True)
        ]
        return [future.result() for future in futures]


#: The figures :func:`figures` gives, each with a target of 0.
FIGURES = (
    "fan_out_triggers_lost",
    "fan_out_jobs_submitted_twice",
    "fan_out_child_rows_missing_or_wrong",
    "fan_out_status_rows_wrong",
)


def figures(rounds: list[Round]) -> dict[str, int]:
    values = (
        sum(r.lost for r in rounds),
        sum(r.twice for r in rounds),
        sum(r.child_rows_wrong for r in rounds),
        sum(1 for r in rounds if r.problems),
    )
    return dict(zip(FIGURES, values, strict=True))


def report_lines(rounds: list[Round]) -> list[str]:
    """The report's section: a row per call kind and fault, over every trigger that makes the call."""
    lines = [
        "## Fan-out and fan-in under API faults (`bench/fan_out_faults.py`)",
        f"- A chain whose `work` step maps over {len(ITEMS)} items as one array job, then `join`. Each trigger "
        f"({'; '.join(TRIGGERS)}) reaches the glue {DELIVERIES} times at once, each delivery retried "
        f"{LAMBDA_RETRIES} times when it fails, with the clients production makes, while the proxy strikes one "
        f"call kind that trigger makes: a burst of 5xx answers and one of throttles, each striking {BURST_CALLS} "
        f"whole calls (every SDK attempt of each), a {STALL_SECONDS:g} s stall, and for SubmitJob (the array's, "
        "the join's) an accepted call whose answer is lost; a fan-out lists jobs only after such a loss, a "
        "fan-in lists the children (ListJobs `arrayJobId`: the call goes to the emulator, the children's "
        "outcome is the bench's). Right: exactly one array job (fan-out); at a fan-in exactly one join, none "
        "under `fail_run` with failed children, every child's row present with its state, reason and item, the "
        "fan-out's status row counting the children and naming the failed ones, and the run failed naming them "
        "(`fail_run`) or still running (`continue`). A join where none should run counts as submitted twice.",
        "",
        "| call | fault | triggers | faults fired | triggers lost | jobs submitted twice "
        "| child rows missing or wrong | status rows or runs wrong | deliveries failed after retries | slowest s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (call, fault), group in by_call_and_fault(rounds).items():
        lines.append(
            f"| {call} | {fault} | {len(group)} | {sum(r.fired for r in group)} | {sum(r.lost for r in group)} | "
            f"{sum(r.twice for r in group)} | {sum(r.child_rows_wrong for r in group)} | "
            f"{sum(1 for r in group if r.problems)} | {sum(r.failed_deliveries for r in group)} | "
            f"{max(r.seconds for r in group)} |"
        )
    wrong = [r for r in rounds if r.problems]
    lines += [f"- {r.call}, {r.fault}, {r.trigger}: {'; '.join(r.problems)}" for r in wrong]
    return lines


def main() -> None:
    run_alone(measure, report_lines, figures)


if __name__ == "__main__":
    main()
