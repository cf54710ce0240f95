"""How far the local run's work has come, read from the emulator as an operator would read it: each fleet's
tasks (done, waiting, in flight, dead letters), its rows in the status store, whether anything is busy, and
why what failed failed."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from pipeline_constructs.glue.handler import load_config
from pipeline_constructs.local.batch import LocalJob
from pipeline_constructs.local.clients import EmulatorClients
from pipeline_constructs.local.compute import LocalCompute
from pipeline_constructs.local.fleets import LocalFleet
from pipeline_constructs.local.iam import IamGate
from pipeline_constructs.local.triggers import Triggers
from pipeline_constructs.ops.operator import _query_all


class Progress:
    """Progress of the work on ``compute`` and ``triggers``."""

    def __init__(
        self,
        clients: EmulatorClients,
        compute: LocalCompute,
        triggers: Triggers,
        *,
        iam: IamGate | None,
    ) -> None:
        self.clients = clients
        self.compute = compute
        self.triggers = triggers
        #: The task keys submitted to each first-stage fleet, by fleet name: what it is expected to finish.
        self.submitted: dict[str, list[str]] = {}
        self.iam = iam

    def fleet_progress(self, fleet: LocalFleet) -> dict[str, int]:
        """The fleet's tasks: expected, done, waiting, in flight, dead (real dead letters) and stale_dead
        (dead-letter copies of tasks that finished)."""
        bucket, prefix = fleet.environment["PIPELINE_BUCKET"], fleet.environment.get("PIPELINE_PREFIX", "")
        paginator = self.clients.s3.get_paginator("list_objects_v2")
        done = sum(
            1
            for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}output/")
            for entry in page.get("Contents", [])
            if entry["Key"].endswith("/_SUCCESS")
        )
        visible, in_flight = self.clients.queue_depth(fleet.queue_url)
        dlq = self.clients.dead_letter_url(fleet.queue_url)
        dead = sum(self.clients.queue_depth(dlq)) if dlq else 0
        stale = self._done_in_dead_letters(fleet, dlq) if dlq and dead else 0
        upstream = [f for f in self.compute.fleets.values() if f.downstream_queue_url == fleet.queue_url]
        if upstream:
            # Done upstream tasks stuck as stale DLQ copies may never have been forwarded: not expected here.
            expected = sum(p["done"] - p["stale_dead"] for p in (self.fleet_progress(f) for f in upstream))
        else:
            expected = len(self.submitted.get(fleet.name, []))
        return {
            "expected": expected,
            "done": done,
            "waiting": visible,
            "in_flight": in_flight,
            "dead": dead - stale,
            "stale_dead": stale,
        }

    def status_rows(self, fleet: LocalFleet) -> Counter[str]:
        """The fleet's task rows in the status store, by state (what `pipeline status` reports)."""
        return Counter(item.get("state", {}).get("S", "?") for item in self._task_rows(fleet))

    def _task_rows(self, fleet: LocalFleet) -> Iterator[dict[str, Any]]:
        """The fleet's task rows in its status store (none without one), as DynamoDB items."""
        table = fleet.environment.get("PIPELINE_TABLE")
        if table:
            yield from self._rows(table, f"fleet#{fleet.name}", "task#")

    def _rows(self, table: str, partition: str, prefix: str) -> Iterator[dict[str, Any]]:
        """The rows of ``table`` in ``partition`` whose sort key starts with ``prefix``, as DynamoDB items."""
        paginator = self.clients.dynamodb.get_paginator("query")
        pages = paginator.paginate(
            TableName=table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": partition}, ":prefix": {"S": prefix}},
        )
        for page in pages:
            yield from page["Items"]

    def chain_run_rows(self) -> list[dict[str, Any]]:
        """Every chain job's status row (``run#...``, as `pipeline status` reads them), plain values, with its
        ``chain``: the chains are those of each glue function's configuration (its parameters in SSM)."""
        dynamodb = self.clients.session.resource("dynamodb", endpoint_url=self.clients.endpoint)
        rows = []
        for function in self.compute.functions.values():
            if "GLUE_CONFIG" not in function.environment:
                continue
            config = load_config({"GLUE_CONFIG": function.environment["GLUE_CONFIG"]}, ssm=self.clients.ssm)
            for name, chain in config["chains"].items():
                table = chain.get("table") or config.get("table")
                for row in _query_all(dynamodb.Table(table), f"chain#{name}", "run#") if table else ():
                    rows.append(row | {"chain": name})
        return rows

    def reasons(self, chain_rows: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Why work failed: each failed job (but a fan-out its run went on from), each chain step that failed
        with no job (a fan-out the glue refused), each kind of worker restart and each dead-letter error (tasks
        with the same error together), with the first line of the error and the log to read."""
        found, _ = job_outcomes(self.jobs(), chain_rows)
        for fleet in self.compute.fleets.values():
            short = fleet.short_name
            for why, restart in fleet.restart_reasons.items():
                found.append({"what": f"{short}: {restart.count} worker restart(s)", "reason": why, "log": restart.log})
            for error, (tasks, worker) in self._dead_letter_errors(fleet).items():
                named = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
                log = str(fleet.log_dir / f"worker-{worker}.log") if worker else ""
                found.append(
                    {"what": f"{short}: {len(tasks)} task(s) dead-lettered ({named})", "reason": error, "log": log}
                )
        return found

    def notes(self, chain_rows: list[dict[str, Any]]) -> list[dict[str, str]]:
        """What failed without failing the run: the children of each fan-out that went on without them."""
        _, continued = job_outcomes(self.jobs(), chain_rows)
        return continued

    def jobs(self) -> list[LocalJob]:
        """Every job submitted to the local Batch (array children too)."""
        batch = self.compute.batch
        return list(batch.jobs.values()) if batch is not None else []

    def _dead_letter_errors(self, fleet: LocalFleet) -> dict[str, tuple[list[str], str]]:
        """The first line of each error of the fleet's FAILED rows -> (its tasks, a worker that ran one)."""
        errors: dict[str, tuple[list[str], str]] = {}
        for item in self._task_rows(fleet):
            if item.get("state", {}).get("S") != "FAILED":
                continue
            error = _first_line(item.get("error", {}).get("S", "")) or "no error recorded"
            tasks, _ = errors.setdefault(error, ([], item.get("worker", {}).get("S", "")))
            tasks.append(item["sk"]["S"].removeprefix("task#"))
        return errors

    def _done_in_dead_letters(self, fleet: LocalFleet, dlq: str) -> int:
        """DLQ messages of tasks that are done (their worker was killed three times before deleting them):
        stale copies, not lost work; a redrive would acknowledge them as duplicates."""
        bucket, prefix = fleet.environment["PIPELINE_BUCKET"], fleet.environment.get("PIPELINE_PREFIX", "")
        messages = self.clients.sqs.receive_message(
            QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        ).get("Messages", [])
        stale = 0
        for message in messages:
            try:
                key = json.loads(message["Body"]).get("key", "")
                self.clients.s3.head_object(Bucket=bucket, Key=f"{prefix}output/{key}/_SUCCESS")
                stale += 1
            except Exception:  # not JSON, or no marker: a real dead letter
                continue
        return stale

    def busy(self) -> bool:
        """True while a job, a function, a tap or a fleet queue has work in hand."""
        if self.compute.busy() or self.triggers.busy():
            return True
        return any(sum(self.clients.queue_depth(fleet.queue_url)) for fleet in self.compute.fleets.values())

    def wait_until_idle(
        self,
        timeout: float,
        *,
        quiet_seconds: float = 1.0,
        interval: float = 0.5,
        on_tick: Callable[[], object] | None = None,
    ) -> bool:
        """True once nothing has been busy for ``quiet_seconds`` in a row (three looks): every hand-over is
        busy in some state while it lasts (a message in a tap or fleet queue until deleted, a function until
        it returns, a job until its final event is delivered); False at ``timeout``. A call denied by IAM ends
        the wait at once: the run has failed, and the work it blocked would never finish."""
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            if on_tick:
                on_tick()
            if self.iam is not None and self.iam.checker.denials:
                return True
            now = time.monotonic()
            if self.busy():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= quiet_seconds:
                return True
            time.sleep(interval)
        return False


def job_failure(job: LocalJob) -> dict[str, str] | None:
    """Why a failed job failed and its log; for an array job with failed children (failed, or still running
    at the run's end), how many failed and the first one's index, reason and log. None for anything else."""
    if job.parent is not None:
        return None  # said by its array job's entry
    failed = [child for child in job.children if child.status == "FAILED"]
    if failed:
        first = failed[0]
        return {
            "what": f"job {job.name}: {len(failed)} of {len(job.children)} child jobs FAILED",
            "reason": f"child {first.array_index}: {_first_line(first.status_reason)}",
            "log": str(first.log_path) if first.log_path else "",
        }
    if job.status != "FAILED":
        return None
    log = str(job.log_path) if job.log_path else ""
    return {"what": f"job {job.name} FAILED", "reason": _first_line(job.status_reason), "log": log}


def continued_fan_outs(chain_rows: list[dict[str, Any]]) -> set[str]:
    """The job ids of the fan-outs whose children partly failed and whose run went on (``onChildFailure``
    ``continue``: the glue started the join with the rest and marked the step's row ``continued``)."""
    return {str(row.get("jobId")) for row in chain_rows if row.get("continued")}


def jobless_failures(chain_rows: list[dict[str, Any]], job_ids: set[str]) -> list[dict[str, str]]:
    """The chain steps that FAILED with no job of this run behind them (a fan-out the glue refused: a manifest
    missing, a message that is no list): their row is all there is to say it."""
    return [
        {
            "what": f"chain {row.get('chain', '?')} run {row.get('chain_run', '?')}: step {row.get('step', '?')} "
            "FAILED, no job submitted",
            "reason": _first_line(str(row.get("reason", ""))),
            "log": "",
        }
        for row in chain_rows
        if row.get("status") == "FAILED" and str(row.get("jobId")) not in job_ids
    ]


def job_outcomes(
    jobs: list[LocalJob], chain_rows: list[dict[str, Any]]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(what failed the run: failed jobs and job-less failed steps; what failed without failing it: the
    failed children of each fan-out that continued), each as :func:`job_failure` says it."""
    continued = continued_fan_outs(chain_rows)
    failures, notes = [], []
    for job in jobs:
        failure = job_failure(job)
        if failure and job.job_id in continued:
            notes.append(failure | {"what": failure["what"] + "; its run continued with the rest"})
        elif failure:
            failures.append(failure)
    return failures + jobless_failures(chain_rows, {job.job_id for job in jobs}), notes


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
