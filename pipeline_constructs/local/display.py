"""What the local run's command line shows: the live progress of a run, and the summary of its result."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from pipeline_constructs.local.runner import LocalPipeline


def progress_view(pipeline: LocalPipeline, started: float) -> Group:
    """Each job's state and each fleet's tasks and live workers, ``started`` (monotonic) the run's start."""
    jobs = _table(f"Batch jobs ({time.monotonic() - started:.0f} s)", "job", "status", "attempts", "reason")
    if pipeline.batch is not None:
        for job in list(pipeline.batch.jobs.values()):
            if job.parent is None:
                jobs.add_row(job.name, job.status, str(len(job.attempts)), job.status_reason[:60])
    fleets = _table("Fleets", "fleet", "expected", "done", "waiting", "in flight", "DLQ", "workers")
    for fleet in pipeline.fleets.values():
        p = pipeline.fleet_progress(fleet)
        live = sum(1 for w in fleet.workers if w.process.poll() is None)
        fleets.add_row(
            fleet.name.rsplit("/", 1)[-1],
            str(p["expected"]),
            str(p["done"]),
            str(p["waiting"]),
            str(p["in_flight"]),
            str(p["dead"]),
            str(live),
        )
    return Group(jobs, fleets)


def print_summary(console: Console, result: dict[str, Any]) -> None:
    """The result of a run (:meth:`.LocalPipeline.result`): tables, what is left over, what was injected
    and denied, what became of each alarm's notification, what failed without failing the run (the failed
    children of a fan-out that went on), and the verdict."""
    console.print(_jobs_table(result), _fleets_table(result), _functions_table(result), _objects_table(result))
    _print_leftovers(console, result)
    if result["injected"]:
        _print_faults(console, result)
    iam = result["iam"]
    if iam["checked"] is not None:
        console.print(f"IAM: {iam['checked']} call(s) of functions, jobs and workers allowed by their roles' policies")
    for denial in iam["denied"]:
        console.print(f"[red]IAM denied[/] {escape(denial)}")
    deliveries = result.get("deliveries", {})
    if deliveries.get("delivered"):
        console.print(
            f"Deliveries by AWS services allowed by the targets' policies: {sum(deliveries['delivered'].values())}"
        )
    for denial in deliveries.get("denied", []):
        console.print(f"[red]delivery denied[/] {escape(denial)}")
    _print_alarms(console, result.get("alarms", []))
    for note in result.get("notes", []):  # failed without failing the run: information, not a failure
        where = f" (log: {note['log']})" if note["log"] else ""
        console.print(f"[yellow]{escape(note['what'])}[/]: {escape(note['reason'] + where)}", soft_wrap=True)
    verdict = "[green]everything completed[/]" if result["ok"] else "[red]NOT everything completed[/]"
    console.print(f"Result: {verdict}")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, min_width=len(column))  # headers whole, even 80 columns wide
    return table


def _jobs_table(result: dict[str, Any]) -> Table:
    jobs = _table("Jobs", "job", "step", "final state", "attempts", "reason")
    for job in result["jobs"]:
        status = job["status"] + (", run continued" if job.get("continued") else "")
        jobs.add_row(job["name"], job["step"], status, str(job["attempts"]), job["reason"][:70])
    return jobs


def _fleets_table(result: dict[str, Any]) -> Table:
    columns = ("fleet", "expected", "done", "in DLQ", "lost", "status rows", "kills", "restarts", "spot", "drained")
    fleets = _table("Fleet tasks", *columns)
    for name, p in result["fleets"].items():
        fleets.add_row(
            name.rsplit("/", 1)[-1],
            str(p["expected"]),
            str(p["done"]),
            str(p["dead"]),
            str(p["lost"]),
            f"{p['rows_succeeded']} ok, {p['rows_failed']} failed",
            str(p["kills"]),
            str(p["restarts"]),
            str(p["spot_notices"]),
            f"{p['lifecycle_completed']}/{p['lifecycle_terminations']}",
        )
    return fleets


def _functions_table(result: dict[str, Any]) -> Table:
    functions = _table("Lambda functions", "function", "invocations", "succeeded", "failed")
    for name, counts in result["functions"].items():
        functions.add_row(name, str(counts["invocations"]), str(counts["succeeded"]), str(counts["failed"]))
    return functions


def _objects_table(result: dict[str, Any]) -> Table:
    objects = Table(title="Objects written", title_justify="left")
    objects.add_column("prefix")
    objects.add_column("objects", justify="right")
    for prefix, count in sorted(result["objects"].items()):
        objects.add_row(prefix, str(count))
    return objects


def _print_leftovers(console: Console, result: dict[str, Any]) -> None:
    """Messages left in downstream and on-failure queues, and the resources the run did not emulate."""
    if result.get("downstream_queues"):
        console.print(
            "Downstream queues left (messages + dead letters): "
            + ", ".join(f"{k}={v}" for k, v in result["downstream_queues"].items())
        )
    if result["failure_queues"]:
        console.print("On-failure queues: " + ", ".join(f"{k}={v}" for k, v in result["failure_queues"].items()))
    if result["not_emulated"]:
        console.print(
            "Not emulated (control plane, nothing to run locally): "
            + ", ".join(f"{kind} ×{count}" for kind, count in sorted(result["not_emulated"].items()))
        )


def _print_alarms(console: Console, alarms: list[dict[str, Any]]) -> None:
    """Each alarm the run set to ALARM: the topic its notification was delivered to and the subscriptions it
    went on to, or why the topic refused it (the alarm's history entry)."""
    for fired in alarms:
        alarm = escape(fired["alarm"])
        if not fired["notifications"]:
            console.print(f"alarm {alarm} set to ALARM: none of its actions is a topic (nothing to notify)")
        for notification in fired["notifications"]:
            topic = escape(notification["topic"].rsplit(":", 1)[-1])
            if notification["denied"]:
                console.print(
                    f"[red]alarm {alarm} set to ALARM: notification to {topic} denied[/] "
                    f"{escape(notification['denied'])}",
                    soft_wrap=True,
                )
            else:
                onward = ", ".join(notification["sent_to"]) or "no subscription"
                console.print(
                    f"alarm {alarm} set to ALARM: notification delivered to {topic}, sent on to {escape(onward)}"
                )


def _print_faults(console: Console, result: dict[str, Any]) -> None:
    """The faults injected, what they struck, and what the fleets lost to them."""
    console.print("[bold]Injected:[/] " + "; ".join(result["injected"]))
    for event in result["fault_events"]:
        console.print(f"  - {event}")
    dead = sum(p["dead"] for p in result["fleets"].values())
    lost = sum(p["lost"] for p in result["fleets"].values())
    stale = sum(p.get("stale_dead", 0) for p in result["fleets"].values())
    console.print(f"  => tasks lost: {lost}; tasks in dead-letter queues: {dead}")
    if stale:
        console.print(
            f"  => {stale} finished task(s) also sit in a DLQ (killed before the delete); "
            "`pipeline redrive` acknowledges and forwards them"
        )
