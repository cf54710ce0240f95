"""``pipeline``: the operator's command line (submit, status, redrive, tail, start, cost, report, local).

Every command finds the pipeline from a deployed stack (``--stack <name>``, the name your app gave it, or
``<env>`` for the example's ``pipeline-<env>``; region from ``--region`` or the usual AWS settings) or from a
running local run (``--local``).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline_constructs.local import LOCAL_STATE_FILE
from pipeline_constructs.ops import operator
from pipeline_constructs.ops.operator import OperatorError, Target

app = typer.Typer(
    name="pipeline",
    help="Operate pipelines built with pipeline_constructs: deployed stacks, or a local run (--local).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

StackOption = Annotated[str | None, typer.Option("--stack", "-s", help="your app's stack name (as in cdk.out)")]
RegionOption = Annotated[str | None, typer.Option("--region", help="AWS region (default: AWS_REGION / profile)")]
LocalOption = Annotated[bool, typer.Option("--local", help="operate on the running local run")]
StateOption = Annotated[str, typer.Option("--state-file", help="local run state file")]
FleetOption = Annotated[str | None, typer.Option("--fleet", "-f", help="fleet name (its construct id)")]


def _fail(error: Exception) -> typer.Exit:
    # Errors quote the user's text (run names, paths): shown as it is, never read as Rich markup.
    console.print(f"[red]error:[/] {escape(str(operator.explain(error)))}")
    return typer.Exit(1)


def _one_line_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Whatever goes wrong in a command reaches the operator as one line naming what to fix, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:
            raise _fail(error) from None

    return run


def _target(stack: str | None, region: str | None, local: bool, state_file: str) -> Target:
    return operator.connect(stack, region=region, local=local, state_file=state_file)


@app.command()
@_one_line_errors
def submit(
    paths: Annotated[list[Path], typer.Argument(help="files or folders; one task per file")],
    fleet: FleetOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be submitted, change nothing")] = False,
    stack: StackOption = None,
    region: RegionOption = None,
    local: LocalOption = False,
    state_file: StateOption = LOCAL_STATE_FILE,
) -> None:
    """Upload files to the fleet's input/ prefix and enqueue one task each (skips tasks already known)."""
    target = _target(stack, region, local, state_file)
    if local:
        _wake_locally(target, state_file)
    files = operator.task_files(paths)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("enqueueing", total=len(files))
        report = operator.submit(target, fleet, paths, dry_run=dry_run, on_progress=lambda n: progress.advance(bar, n))
    verb = "would enqueue" if dry_run else "enqueued"
    count = report.found - report.already_known if dry_run else report.enqueued
    console.print(f"{report.found} file(s): {verb} {count}, skipped {report.already_known} already enqueued or done")
    if report.woke:
        console.print("the fleet was at zero workers: started one (its scaling on the backlog adds more)")
    if report.wake_error:
        console.print(
            f"[yellow]could not wake the fleet[/] ({report.wake_error}); it starts when its scaling sees the backlog"
        )
    if report.failed:
        console.print(f"[red]{len(report.failed)} not enqueued[/] (run again to retry): {', '.join(report.failed[:5])}")
        raise typer.Exit(1)


def _wake_locally(target: Target, state_file: str) -> None:
    """A local run's fleets answer Auto Scaling calls (the wake) at the run's own endpoint, not the emulator's."""
    endpoint = json.loads(Path(state_file).read_text()).get("autoscalingEndpoint")
    if endpoint:
        target._clients["autoscaling"] = target.session.client("autoscaling", endpoint_url=endpoint)


def _status_view(snapshot: dict) -> Table:
    table = Table(title=f"{snapshot['stack']}", title_justify="left")
    for column in ("fleet", "waiting", "in flight", "DLQ", "size", "tasks"):
        table.add_column(column)
    for name, fleet in snapshot["fleets"].items():
        tasks = ", ".join(f"{state} {count}" for state, count in sorted(fleet["tasks"].items())) or "-"
        short = name.rsplit("/", 1)[-1]
        table.add_row(
            short, str(fleet["waiting"]), str(fleet["in_flight"]), str(fleet["dead_letters"]), fleet["size"], tasks
        )
    for name, runs in snapshot["chains"].items():
        for run, state in runs.items():
            outcome = f"{state['status']}: {state['reason']}" if state["reason"] else state["status"]
            steps = ", ".join(f"{step}: {status}" for step, status in state["steps"].items())
            table.add_row(f"chain {name}", "", "", "", run, f"{outcome} ({steps})")
            for line in _failed_children_lines(state):
                table.add_row("", "", "", "", "", line)
    return table


def _failed_children_lines(run: dict, shown: int = 10) -> list[str]:
    """One line per failed fan-out child of a run, at most ``shown`` a step, then how many more failed."""
    lines = []
    for step, children in run.get("children", {}).items():
        failed = [child for child in children if child["status"] == "FAILED"]
        # Items and reasons are the user's text: shown as they are, never read as Rich markup.
        lines += [escape(f"  {step} #{c['index']} {c['item']}: FAILED {c['reason']}".rstrip()) for c in failed[:shown]]
        more = len(failed[shown:]) + run.get("children_not_shown", {}).get(step, {}).get("FAILED", 0)
        if more:
            lines.append(f"  {step}: and {more} more failed children")
    return lines


@app.command()
@_one_line_errors
def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh every 2 seconds until Ctrl-C")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    stack: StackOption = None,
    region: RegionOption = None,
    local: LocalOption = False,
    state_file: StateOption = LOCAL_STATE_FILE,
) -> None:
    """Queue depth, in flight, DLQ depth, fleet size, task progress and chain runs."""
    try:
        target = _target(stack, region, local, state_file)
        snapshot = operator.status(target)
        if as_json:
            console.print_json(json.dumps(snapshot))
            return
        if not watch:
            console.print(_status_view(snapshot))
            return
        with Live(_status_view(snapshot), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(2)
                live.update(_status_view(operator.status(target)))
    except KeyboardInterrupt:
        return


@app.command()
@_one_line_errors
def redrive(
    fleet: FleetOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    stack: StackOption = None,
    region: RegionOption = None,
    local: LocalOption = False,
    state_file: StateOption = LOCAL_STATE_FILE,
) -> None:
    """Move the fleet's dead-letter messages back to its queue."""
    target = _target(stack, region, local, state_file)
    name, count = operator.dead_letter_count(target, fleet)
    if count == 0:
        console.print(f"{name}: the dead-letter queue is empty")
        return
    if not yes and not typer.confirm(f"Move {count} message(s) from {name}'s dead-letter queue back to its queue?"):
        console.print("nothing moved")
        raise typer.Exit(1)
    moved = operator.redrive(target, fleet)
    console.print(f"moved {moved} message(s) back to {name}")


@app.command()
@_one_line_errors
def tail(
    fleet: FleetOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="how many")] = 20,
    stack: StackOption = None,
    region: RegionOption = None,
    local: LocalOption = False,
    state_file: StateOption = LOCAL_STATE_FILE,
) -> None:
    """The latest task failures with their errors."""
    failures = operator.tail(_target(stack, region, local, state_file), fleet, limit)
    table = Table(title="latest failures", title_justify="left")
    for column in ("fleet", "task", "state", "attempts", "error"):
        table.add_column(column)
    for failure in failures:
        table.add_row(failure["fleet"], failure["task"], failure["state"], str(failure["attempts"]), failure["error"])
    console.print(table if failures else "no failures")


@app.command()
@_one_line_errors
def start(
    chain: Annotated[str, typer.Argument(help="chain name")],
    env: Annotated[list[str], typer.Option("--env", "-e", help="NAME=VALUE for the first step (repeatable)")] = [],  # noqa: B006
    run: Annotated[
        str | None, typer.Option("--run", help="run name; a start repeated with the same name submits once")
    ] = None,
    stack: StackOption = None,
    region: RegionOption = None,
    local: LocalOption = False,
    state_file: StateOption = LOCAL_STATE_FILE,
) -> None:
    """Start a chain run by hand: submit its first step, with optional environment overrides."""
    bad = [item for item in env if "=" not in item]
    if bad:
        raise OperatorError(f"--env {bad[0]!r}: expected NAME=VALUE")
    overrides = dict(item.split("=", 1) for item in env)
    started = operator.start(_target(stack, region, local, state_file), chain, overrides, run=run)
    again = " (already started: nothing submitted)" if started.get("duplicate") else ""
    console.print(f"started run {started['run']}: job {started['jobName']} ({started['jobId']}){again}")


@app.command()
def cost(
    template: Annotated[Path | None, typer.Option("--template", help="a synthesized template file")] = None,
    assembly: Annotated[Path, typer.Option("--assembly", help="cloud assembly directory")] = Path("cdk.out"),
    stack: StackOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Monthly idle cost of a synthesized stack: always-on resources priced, request-priced ones listed."""
    from pipeline_constructs.ops.assembly import find_stack, load_assembly
    from pipeline_constructs.ops.cost import cost_report

    try:
        if template is not None:
            name, body = template.stem, json.loads(template.read_text())
        else:
            stacks = load_assembly(assembly)
            if not stacks:
                raise KeyError(f"no stacks in {assembly}")
            chosen = find_stack(stacks, stack) if stack else stacks[0]
            name, body = chosen.name, chosen.template
    except (OSError, KeyError, ValueError) as error:
        raise _fail(OperatorError(str(error).strip("'\""))) from None
    report = cost_report(body)
    if as_json:
        console.print_json(json.dumps(report | {"lines": [line.__dict__ for line in report["lines"]]}))
        return
    table = Table(
        title=f"{name}: idle cost per month (us-east-1 list prices of {report['as_of']})", title_justify="left"
    )
    for column in ("resource", "kind", "detail"):
        table.add_column(column)
    table.add_column("$/month", justify="right")
    for line in report["lines"]:
        detail = f"{line.detail} [dim](compliance profile)[/]" if line.profile else line.detail
        table.add_row(line.resource, line.kind, detail, f"{line.monthly:.2f}")
    table.add_row("", "", "[bold]total idle[/]", f"[bold]{report['idle_monthly']:.2f}[/]")
    if report["compliance_monthly"]:
        table.add_row("", "", "of which the compliance profile", f"{report['compliance_monthly']:.2f}")
        table.add_row("", "", "the default profile would be", f"{report['default_profile_monthly']:.2f}")
    console.print(table)
    usage = Table(title="pay per use (nothing while idle)", title_justify="left")
    usage.add_column("service")
    usage.add_column("unit price")
    for service, price in report["pay_per_use"].items():
        usage.add_row(service, price)
    console.print(usage)
    for note in report["notes"]:
        console.print(f"note: {note}")


@app.command()
@_one_line_errors
def report(
    fleet: FleetOption = None,
    chain: Annotated[str | None, typer.Option("--chain", "-c", help="only this chain (its latest runs)")] = None,
    run: Annotated[str | None, typer.Option("--run", help="only this run of --chain")] = None,
    runs: Annotated[int, typer.Option("--runs", help="latest runs per chain (0: all)", min=0)] = 5,
    since: Annotated[
        str | None, typer.Option("--since", help="rows of the last 90m, 6h, 2d, or since an ISO time")
    ] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON to this file")] = None,
    chart: Annotated[
        Path | None, typer.Option("--chart", help="draw throughput and backlog: FILE.html (page) or FILE.svg")
    ] = None,
    instance_type: Annotated[
        list[str], typer.Option("--instance-type", help="the fleets' instance types, for cost (repeatable)")
    ] = [],  # noqa: B006
    slots: Annotated[
        int | None, typer.Option("--slots", help="tasks one instance runs at once, for cost [default: 2]", min=1)
    ] = None,
    job_vcpus: Annotated[float, typer.Option("--job-vcpus", help="vCPUs of a chain job, for cost", min=0.25)] = 1.0,
    stack: StackOption = None,
    region: RegionOption = None,
    local: LocalOption = False,
    state_file: StateOption = LOCAL_STATE_FILE,
) -> None:
    """Per fleet and chain run: tasks, attempts, durations, throughput, retries, spot interruptions, dead
    letters and an estimated cost, from the status store. Cost: the fleet's instance types and tasks at once
    as its stack names them, unless given here; else the price table's large types, 2 tasks at once."""
    from pipeline_constructs.ops import report as performance

    if run and not chain:
        raise OperatorError("--run needs --chain: the run of which chain?")
    figures = performance.gather(
        _target(stack, region, local, state_file),
        fleet=fleet,
        chain=chain,
        run=run,
        since=performance.since_seconds(since) if since else None,
        runs=runs,
        instance_types=instance_type,
        slots=slots,
        job_vcpus=job_vcpus,
    )
    performance.render(figures, console)
    if json_file is not None:
        performance.write_json(figures, json_file)
        console.print(f"figures written to {json_file}")
    if chart is not None:
        performance.write_chart(figures, chart)
        console.print(f"chart written to {chart}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def local(ctx: typer.Context) -> None:
    """Run a synthesized stack locally (same options as python -m pipeline_constructs.local; try --help)."""
    from pipeline_constructs.local.cli import main as local_main

    raise typer.Exit(local_main(list(ctx.args)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
