"""The result of a local run: what each job, fleet and function did, what is left in queues, what was written,
what was injected and denied, what became of each alarm's notification, and the verdict: did everything
complete as it should have?"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pipeline_constructs.local.batch import LocalBatch
from pipeline_constructs.local.clients import EmulatorClients
from pipeline_constructs.local.fleets import LocalFleet
from pipeline_constructs.local.iam import IamGate
from pipeline_constructs.local.progress import continued_fan_outs, jobless_failures
from pipeline_constructs.local.resolver import Resolver
from pipeline_constructs.local.resource_policies import ResourcePolicies
from pipeline_constructs.ops.assembly import SynthesizedStack

if TYPE_CHECKING:
    from pipeline_constructs.local.runner import LocalPipeline


def run_result(pipeline: LocalPipeline, chain_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The result of ``pipeline`` as it stands, ``chain_rows`` its chain jobs' status rows
    (:meth:`.Progress.chain_run_rows`); ``ok`` is the verdict."""
    jobs = batch_jobs(pipeline.compute.batch, continued=continued_fan_outs(chain_rows))
    jobless = jobless_failures(chain_rows, {job.job_id for job in pipeline.progress.jobs()})
    first_stage = pipeline.compute.first_stage_fleets()
    fleets = {
        fleet.name: fleet_result(pipeline, fleet, poison=pipeline.faults.poison if fleet in first_stage else 0)
        for fleet in pipeline.compute.fleets.values()
    }
    functions = {f.name: f.counts() for f in pipeline.compute.functions.values()}
    failures = failure_queue_depths(pipeline.stack, pipeline.resolver, pipeline.clients)
    drained = downstream_queue_depths(pipeline.clients, pipeline.compute.fleets.values())
    iam = iam_result(pipeline.iam)
    deliveries = delivery_result(pipeline.policies)
    return {
        "ok": all_completed(
            jobs, fleets, failures, drained, denied=iam["denied"] + deliveries["denied"], jobless_failures=jobless
        ),
        "account": pipeline.resolver.account,
        "region": pipeline.resolver.region,
        "jobs": jobs,
        "fleets": fleets,
        "functions": functions,
        "failure_queues": failures,
        "downstream_queues": drained,
        "objects": objects_written(pipeline.clients, pipeline.stacks),
        "injected": pipeline.faults.describe(),
        "fault_events": list(pipeline.faults.events),
        "not_emulated": dict(pipeline.not_emulated),
        "schedules": {s.path: s.fired for s in pipeline.schedules},
        "iam": iam,
        "deliveries": deliveries,
        "alarms": [asdict(alarm) for alarm in pipeline.fired_alarms],
    }


def all_completed(
    jobs: list[dict[str, Any]],
    fleets: dict[str, dict[str, int]],
    failures: dict[str, int],
    drained: dict[str, int],
    *,
    denied: list[str],
    jobless_failures: Sequence[dict[str, str]] = (),
) -> bool:
    """The verdict: every job succeeded (or is a fan-out whose run went on without its failed children), no
    chain step failed without a job, every task is done or an expected dead letter, the status store agrees,
    failure and downstream queues are empty, and no call was denied."""
    return (
        all(job["status"] == "SUCCEEDED" or job.get("continued") for job in jobs)
        and not jobless_failures
        and all(
            p["lost"] == 0 and p["unexpected_dead"] == 0 and p["waiting"] == 0 and p["in_flight"] == 0
            for p in fleets.values()
        )
        # The status store tells the truth: a SUCCEEDED row per finished task, a FAILED one per dead letter.
        and all(p["rows_succeeded"] == p["done"] and p["rows_failed"] == p["dead"] for p in fleets.values())
        and all(depth == 0 for depth in failures.values())
        and all(depth == 0 for depth in drained.values())
        # A call a role would not allow, or a delivery a resource policy would refuse, fails the run as it
        # would fail on AWS.
        and not denied
    )


def batch_jobs(batch: LocalBatch | None, *, continued: AbstractSet[str] = frozenset()) -> list[dict[str, Any]]:
    """Each submitted job (array children within their parent): its step, final state, attempts, reason, and
    whether it is a fan-out whose run went on without its failed children (its id in ``continued``)."""
    jobs = []
    for job in batch.jobs.values() if batch is not None else ():
        if job.parent is None:
            environment = job.definition.environment | job.environment
            jobs.append(
                {
                    "name": job.name,
                    "arn": job.arn,
                    "step": environment.get("PIPELINE_STEP", job.definition.name),
                    "run": environment.get("PIPELINE_CHAIN_RUN", ""),
                    "status": job.status,
                    "attempts": len(job.attempts),
                    "reason": job.status_reason,
                    "continued": job.job_id in continued,
                }
            )
    return jobs


def fleet_result(pipeline: LocalPipeline, fleet: LocalFleet, *, poison: int) -> dict[str, int]:
    """The fleet's progress, its tasks lost and its dead letters beyond the ``poison`` ones, its status rows,
    and what happened to its workers."""
    progress = pipeline.progress.fleet_progress(fleet)
    unfinished = progress["done"] + progress["dead"] + progress["waiting"] + progress["in_flight"]
    progress["lost"] = max(0, progress["expected"] - unfinished)
    progress["unexpected_dead"] = max(0, progress["dead"] - poison)
    rows = pipeline.progress.status_rows(fleet)
    progress["rows_succeeded"], progress["rows_failed"] = rows["SUCCEEDED"], rows["FAILED"]
    return progress | {
        "kills": fleet.kills,
        "restarts": fleet.restarts,
        "spot_notices": fleet.spot_notices,
        "lifecycle_terminations": fleet.lifecycle_terminations,
        "lifecycle_completed": len(pipeline.compute.autoscaling.completed_lifecycle_actions(fleet.group_name)),
        "replacements": fleet.replacements,
    }


def failure_queue_depths(stack: SynthesizedStack, resolver: Resolver, clients: EmulatorClients) -> dict[str, int]:
    """Depth of every on-failure destination of the template's functions, by queue name."""
    arns = set()
    for resource in stack.resources_of_type("AWS::Lambda::EventInvokeConfig").values():
        destination = resource["Properties"].get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        if destination:
            arns.add(resolver.resolve(destination))
    return {arn.rsplit(":", 1)[-1]: sum(clients.queue_depth(clients.queue_url_of_arn(arn))) for arn in arns}


def downstream_queue_depths(clients: EmulatorClients, fleets: Iterable[LocalFleet]) -> dict[str, int]:
    """Messages and dead letters left in the downstream queues no fleet consumes (a Batch step drains them:
    they must end empty), by queue name."""
    fleets = list(fleets)
    consumed = {f.queue_url for f in fleets}
    depths = {}
    for url in {f.downstream_queue_url for f in fleets} - consumed - {""}:
        dlq = clients.dead_letter_url(url)
        depths[url.rsplit("/", 1)[-1]] = sum(clients.queue_depth(url)) + (sum(clients.queue_depth(dlq)) if dlq else 0)
    return depths


def objects_written(clients: EmulatorClients, stacks: Iterable[tuple[SynthesizedStack, Resolver]]) -> dict[str, int]:
    """Objects in the buckets of ``stacks``, by bucket and first two key levels (``bucket/feeds/step/``)."""
    counts: Counter[str] = Counter()
    buckets = [
        resolver.physical_name(logical_id)
        for stack, resolver in stacks
        for logical_id in stack.resources_of_type("AWS::S3::Bucket")
    ]
    for bucket in buckets:
        paginator = clients.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            for entry in page.get("Contents", []):
                counts[f"{bucket}/{'/'.join(entry['Key'].split('/')[:2])}/"] += 1
    return dict(counts)


def iam_result(iam: IamGate | None) -> dict[str, Any]:
    """The IAM check's calls allowed (None with the check off), by role, and its denials."""
    return {
        "checked": iam.checker.checked if iam is not None else None,
        "allowed_by_role": dict(iam.checker.allowed) if iam is not None else {},
        "denied": sorted({str(d) for d in iam.checker.denials}) if iam is not None else [],
    }


def delivery_result(policies: ResourcePolicies | None) -> dict[str, Any]:
    """Deliveries by AWS services the target's policies allowed (a count each) and those they denied."""
    if policies is None:
        return {"delivered": {}, "denied": []}
    return {"delivered": dict(policies.delivered), "denied": sorted({str(d) for d in policies.denials})}
