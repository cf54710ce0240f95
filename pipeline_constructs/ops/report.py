"""``pipeline report``: how the fleets and chain runs went, from the status store's rows.

Pure functions turn rows into figures (:func:`fleet_figures`, :func:`chain_figures`); :func:`gather` reads the
rows of a deployed or local pipeline; :func:`render` prints the figures as tables, :func:`write_chart` draws
them (an SVG, or an HTML page holding the SVGs and the tables; stdlib only).

What the rows hold, and so what the figures can say:

- a task's row (``fleet#<name>``, ``task#<id>``): its state, the attempts it took, its last attempt's
  ``duration_s`` and ``updated_at`` (when its state was written: the attempt's end, within the worker's
  acknowledgement delay), ``redelivered`` when a later delivery found it done;
- a worker's row (``worker#<id>``): ``since`` (when it started), ``updated_at`` (its last heartbeat, or its
  stop), ``state`` and the ``reason`` it stopped (a spot interruption notice, a lifecycle termination, a
  signal), and ``attempts_given_back``: the attempts it stopped before they ended;
- a chain job's row (``chain#<name>``, ``run#<run>#<step index>#<job id>``): its status, Batch attempts,
  and Batch's ``createdAt``/``startedAt``/``stoppedAt`` (milliseconds).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_constructs.fleet.worker.instance import LIFECYCLE_TERMINATION, SPOT_NOTICE
from pipeline_constructs.ops.cost import load_prices
from pipeline_constructs.ops.operator import OperatorError, Target, _query_all, chain_runs, queue_depth

#: Tasks a worker runs at once by default: its instance's vCPUs, 2 for the default ``large`` types.
DEFAULT_SLOTS = 2
#: A worker whose last heartbeat is older than this, without a stop row, was lost (kill -9, instance gone).
LOST_AFTER_SECONDS = 300
FINISHED = ("SUCCEEDED", "FAILED")
#: Bucket widths the chart may use: the first that draws the run's span in at most CHART_BUCKETS bars.
BUCKET_CHOICES = (5, 10, 15, 30, 60, 300, 900, 3600, 86400)
CHART_BUCKETS = 60


# ---------------------------------------------------------------- pricing


@dataclass(frozen=True)
class Pricing:
    """What an hour of work costs, from the price table of ``pipeline cost`` (on-demand list prices)."""

    instance_hour: float
    instance_note: str
    vcpu_hour: float
    spot_discount: float
    slots: int = DEFAULT_SLOTS
    job_vcpus: float = 1.0

    @classmethod
    def from_table(
        cls,
        instance_types: Sequence[str] = (),
        *,
        slots: int = DEFAULT_SLOTS,
        job_vcpus: float = 1.0,
        prices: dict[str, Any] | None = None,
    ) -> Pricing:
        """The mean on-demand price of ``instance_types`` (those the table knows), else of the table's
        ``large`` types (the fleets' default kind)."""
        prices = prices or load_prices()
        table = prices["instance_hour_on_demand"]
        known = [t for t in instance_types if t in table]
        chosen = known or [t for t in table if t.endswith(".large")]
        hourly = sum(table[t] for t in chosen) / len(chosen)
        named = ", ".join(chosen) if known else "the price table's large types"
        named = f"the mean of {named}" if len(chosen) > 1 else named
        note = f"{named}: ${hourly:.4f}/h on demand"
        return cls(
            instance_hour=hourly,
            instance_note=note,
            slots=slots,
            vcpu_hour=prices["always_on"]["batch_vcpu_hour_on_demand"],
            job_vcpus=job_vcpus,
            spot_discount=prices["spot_typical_discount"],
        )

    def fleet_method(self) -> str:
        return (
            f"instance-hours = each finished task's last attempt duration x its attempts, / {self.slots} tasks "
            f"an instance runs at once; priced at {self.instance_note}; spot estimate "
            f"{self.spot_discount:.0%} less. Attempts a worker stopped before they ended are not counted"
        )

    def chain_method(self) -> str:
        return (
            f"vCPU-hours = each job's run time (startedAt to stoppedAt) x {self.job_vcpus:g} vCPU, a fan-out "
            f"step's children each for the whole step (an upper bound); priced at ${self.vcpu_hour}/vCPU-hour on "
            f"demand; spot estimate {self.spot_discount:.0%} less"
        )


def _money(on_demand: float, pricing: Pricing) -> dict[str, float]:
    return {"on_demand": round(on_demand, 6), "spot_estimate": round(on_demand * (1 - pricing.spot_discount), 6)}


# ---------------------------------------------------------------- figures from rows


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values``, interpolated between the closest ranks (as numpy's)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """p50, p95 and max of durations in seconds; None without any."""
    if not values:
        return None
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.5), 3),
        "p95": round(percentile(values, 0.95), 3),
        "max": round(max(values), 3),
    }


def buckets(times: Iterable[float], start: float, end: float, width: float) -> list[int]:
    """How many of ``times`` fall in each ``width``-second bucket from ``start`` (the last ends after ``end``)."""
    counts = [0] * max(1, math.ceil((end - start) / width + 1e-9))
    for moment in times:
        index = min(int((moment - start) // width), len(counts) - 1)
        counts[max(index, 0)] += 1
    return counts


def bucket_width(span: float) -> int:
    """The chart's bucket: the narrowest that shows ``span`` seconds in at most CHART_BUCKETS bars."""
    return next((w for w in BUCKET_CHOICES if span / w <= CHART_BUCKETS), BUCKET_CHOICES[-1])


def _number(row: dict[str, Any], field: str, default: float = 0.0) -> float:
    value = row.get(field)
    return float(value) if value is not None else default


def _attempts(row: dict[str, Any]) -> int:
    return int(_number(row, "attempts") or _number(row, "started"))


def task_figures(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts, attempts, retries and durations of a fleet's task rows."""
    states = Counter(str(row.get("state", "?")) for row in rows)
    succeeded = [row for row in rows if row.get("state") == "SUCCEEDED"]
    failed = [row for row in rows if row.get("state") == "FAILED"]
    return {
        "tasks": len(rows),
        "states": dict(sorted(states.items())),
        "succeeded": len(succeeded),
        "dead_lettered": len(failed),  # a FAILED row: out of attempts, its message goes to the DLQ
        "attempts": sum(_attempts(row) for row in rows),
        "retries": sum(max(_attempts(row) - 1, 0) for row in rows),
        "tasks_retried": sum(1 for row in rows if _attempts(row) > 1),
        "redelivered_done": sum(1 for row in rows if row.get("redelivered")),
        "duration_s": spread([_number(row, "duration_s") for row in succeeded]),
        "failed_duration_s": spread([_number(row, "duration_s") for row in failed]),
    }


def worker_figures(rows: Sequence[dict[str, Any]], now: float) -> dict[str, Any]:
    """Workers, why they stopped (spot interruptions, lifecycle drains), the attempts they gave back, and
    their uptime (``since`` to the last row)."""
    stopped_by: Counter[str] = Counter()
    given_back_by: Counter[str] = Counter()
    lost = 0
    uptime = 0.0
    for row in rows:
        reason = str(row.get("reason") or "") if row.get("state") == "STOPPED" else ""
        if not reason and now - _number(row, "updated_at") > LOST_AFTER_SECONDS:
            reason = "lost (no stop row)"
        stopped_by[reason or "running"] += 1
        given_back_by[reason or "running"] += int(_number(row, "attempts_given_back"))
        lost += reason == "lost (no stop row)"
        if row.get("since") is not None:
            uptime += max(_number(row, "updated_at") - _number(row, "since"), 0.0)
    return {
        "workers": len(rows),
        "spot_interruptions": stopped_by[SPOT_NOTICE],
        "lifecycle_drains": stopped_by[LIFECYCLE_TERMINATION],
        "lost": lost,
        "stopped_by": dict(sorted(stopped_by.items())),
        "attempts_given_back": sum(given_back_by.values()),
        "attempts_given_back_by": {reason: n for reason, n in sorted(given_back_by.items()) if n},
        "worker_hours": round(uptime / 3600, 6),
    }


def timeline(rows: Sequence[dict[str, Any]], width: int | None = None) -> dict[str, Any] | None:
    """Finished tasks per bucket, and at each bucket's end the tasks still to finish (of these rows: tasks
    ``pipeline submit`` enqueued have one from the start, others from their first attempt) and the attempts
    running (each finished task's last attempt: its end less its duration)."""
    ends = [(_number(row, "updated_at"), _number(row, "duration_s")) for row in rows if row.get("state") in FINISHED]
    if not ends:
        return None
    start = min(end - duration for end, duration in ends)
    finish = max(end for end, _ in ends)
    width = width or bucket_width(finish - start)
    finished = buckets((end for end, _ in ends), start, finish, width)
    edges = [start + width * (i + 1) for i in range(len(finished))]
    running = [sum(1 for end, duration in ends if end - duration < edge <= end) for edge in edges]
    remaining, done = [], 0
    for count in finished:
        done += count
        remaining.append(len(rows) - done)
    per_minute = buckets((end for end, _ in ends), start, finish, 60)
    return {
        "start": round(start, 3),
        "end": round(finish, 3),
        "span_s": round(finish - start, 3),
        "bucket_s": width,
        "finished": finished,
        "remaining": remaining,
        "running": running,
        "per_minute": per_minute,
        "peak_per_minute": max(per_minute),
        # Over a minute at least: a run shorter than a minute did its tasks in that minute.
        "mean_per_minute": round(len(ends) / max(finish - start, 60.0) * 60, 3),
    }


def fleet_figures(
    name: str,
    rows: Sequence[dict[str, Any]],
    pricing: Pricing,
    *,
    dead_letters_waiting: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything the report says of a fleet, from its rows (tasks and workers)."""
    now = time.time() if now is None else now
    tasks = [row for row in rows if str(row.get("sk", "")).startswith("task#")]
    workers = [row for row in rows if str(row.get("sk", "")).startswith("worker#")]
    figures = {"fleet": name, **task_figures(tasks), **worker_figures(workers, now)}
    figures["dead_letters_waiting"] = dead_letters_waiting
    figures["timeline"] = timeline(tasks)
    attempt_seconds = sum(_number(row, "duration_s") * _attempts(row) for row in tasks if row.get("state") in FINISHED)
    hours = attempt_seconds / pricing.slots / 3600
    finished = figures["succeeded"] + figures["dead_lettered"]
    figures["cost"] = {
        "instance_hours": round(hours, 6),
        "run": _money(hours * pricing.instance_hour, pricing),
        "per_task": _money(hours * pricing.instance_hour / finished, pricing) if finished else None,
        "worker_hours_cost": _money(figures["worker_hours"] * pricing.instance_hour, pricing),
        "method": pricing.fleet_method(),
    }
    return figures


def _job_seconds(row: dict[str, Any], start: str, end: str) -> float | None:
    if row.get(start) is None or row.get(end) is None:
        return None
    return max(_number(row, end) - _number(row, start), 0.0) / 1000


def run_figures(run: str, rows: Sequence[dict[str, Any]], state: dict[str, Any], pricing: Pricing) -> dict[str, Any]:
    """One chain run: its state, jobs (and a fan-out step's children), attempts, durations, throughput and
    cost."""
    spans = [(_job_seconds(row, "startedAt", "stoppedAt"), int(_number(row, "children_total"))) for row in rows]
    ran = [seconds for seconds, _ in spans if seconds is not None]
    waited = [s for s in (_job_seconds(row, "createdAt", "startedAt") for row in rows) if s is not None]
    created = [_number(row, "createdAt") / 1000 for row in rows if row.get("createdAt") is not None]
    stopped = [_number(row, "stoppedAt") / 1000 for row in rows if row.get("stoppedAt") is not None]
    attempts = [int(_number(row, "attempts")) for row in rows]
    # A fan-out step's row spans its array job: each child is counted for all of it (an upper bound).
    hours = sum(seconds * max(children, 1) for seconds, children in spans if seconds is not None)
    hours *= pricing.job_vcpus / 3600
    per_minute = buckets(stopped, min(created or stopped), max(stopped), 60) if stopped else []
    return {
        "run": run,
        "status": state["status"],
        "reason": state["reason"],
        "jobs": len(rows),
        "children": sum(children for _, children in spans),
        "children_failed": sum(int(_number(row, "children_failed")) for row in rows),
        "job_states": dict(sorted(Counter(str(row.get("status", "?")) for row in rows).items())),
        "steps": state["steps"],
        "attempts": sum(attempts),
        "retries": sum(max(a - 1, 0) for a in attempts),
        "job_duration_s": spread(ran),
        "waited_s": spread(waited),
        "wall_s": round(max(stopped) - min(created), 3) if created and stopped else None,
        "per_minute": per_minute,
        "cost": {"vcpu_hours": round(hours, 6), "run": _money(hours * pricing.vcpu_hour, pricing)},
    }


def chain_figures(
    name: str, rows: Sequence[dict[str, Any]], steps: Sequence[str], pricing: Pricing, *, runs: int = 5
) -> dict[str, Any]:
    """The chain's most recent ``runs`` runs (all with ``runs=0``), the newest last (as ``pipeline status``),
    from its job rows."""
    jobs = [row for row in rows if str(row.get("sk", "")).startswith("run#")]
    states = chain_runs(jobs, list(steps), latest=runs)
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in jobs:
        by_run[str(row.get("chain_run", "?"))].append(row)
    return {
        "chain": name,
        "runs": [run_figures(run, by_run[run], state, pricing) for run, state in states.items()],
        "method": pricing.chain_method(),
    }


# ---------------------------------------------------------------- reading a pipeline


def gather(
    target: Target,
    *,
    fleet: str | None = None,
    chain: str | None = None,
    run: str | None = None,
    since: float | None = None,
    runs: int = 5,
    instance_types: Sequence[str] = (),
    slots: int | None = None,
    job_vcpus: float = 1.0,
) -> dict[str, Any]:
    """The report of a deployed or local pipeline: its fleets (or ``fleet``) and chains (or ``chain``; one
    ``run`` of it, else its latest ``runs``), from the status store; rows older than ``since`` (epoch
    seconds) left out. A named fleet or chain leaves out the other kind. A fleet is priced at
    ``instance_types`` and ``slots`` tasks an instance, else at those its manifest entry names
    (``instanceTypes``, ``concurrency``), else at the price table's large types and 2 tasks."""
    fleets = [target.fleet(fleet)[0]] if fleet else ([] if chain else list(target.manifest.get("fleets", {})))
    chains = [chain] if chain else ([] if fleet else list(target.manifest.get("chains", {})))
    report: dict[str, Any] = {"stack": target.stack, "generated_at": round(time.time(), 3), "fleets": [], "chains": []}
    prices = load_prices()
    for name in fleets:
        entry = target.manifest["fleets"][name]
        rows = _recent(_query_all(target.table(entry["table"]), f"fleet#{name}", ""), since)
        waiting = queue_depth(target, entry.get("deadLetterQueueUrl"))[0] if entry.get("deadLetterQueueUrl") else None
        pricing = Pricing.from_table(
            instance_types or entry.get("instanceTypes") or (),
            slots=slots or int(entry.get("concurrency") or DEFAULT_SLOTS),
            prices=prices,
        )
        report["fleets"].append(fleet_figures(name, rows, pricing, dead_letters_waiting=waiting))
    pricing = Pricing.from_table(job_vcpus=job_vcpus, prices=prices)
    for name in chains:
        entry = target.chain(name)
        rows = _query_all(target.table(entry["table"]), f"chain#{name}", "run#")
        if run:
            rows = _rows_of_run(name, run, rows, entry.get("steps") or [])
        rows = _recent(rows, since)
        report["chains"].append(chain_figures(name, rows, entry.get("steps") or [], pricing, runs=0 if run else runs))
    return report


def _rows_of_run(chain: str, run: str, rows: list[dict[str, Any]], steps: list[str]) -> list[dict[str, Any]]:
    """The rows of one run of the chain; a run it does not have is an error naming the runs it has."""
    chosen = [row for row in rows if row.get("chain_run") == run]
    if not chosen:
        recent = list(reversed(chain_runs(rows, steps, latest=5)))
        known = f"its latest runs, newest first: {', '.join(recent)}" if recent else "it has no runs"
        raise OperatorError(f"chain {chain} has no run {run!r}; {known}")
    return chosen


def _recent(rows: list[dict[str, Any]], since: float | None) -> list[dict[str, Any]]:
    return rows if since is None else [row for row in rows if _number(row, "updated_at") >= since]


def since_seconds(text: str, now: float | None = None) -> float:
    """``--since``: ``90m``, ``6h``, ``2d`` ago, or an ISO time (``2026-12-05T03:00:00Z``); epoch seconds."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in units:
        return now - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected 90m, 6h, 2d or an ISO time such as 2026-12-05T03:00:00Z"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- tables


def _seconds(figures: dict[str, float] | None) -> str:
    if not figures:
        return "-"
    return f"{figures['p50']:g} / {figures['p95']:g} / {figures['max']:g} s"


def _usd(amount: float) -> str:
    return f"${amount:.4f}" if amount >= 0.01 else f"${amount:.6f}"  # a task's share is often a fraction of a cent


def _dollars(money: dict[str, float] | None) -> str:
    if not money:
        return "-"
    return f"{_usd(money['on_demand'])} on demand, ~{_usd(money['spot_estimate'])} spot"


def fleet_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) lines of a fleet, as the table and the HTML page show them."""
    line = figures["timeline"] or {}
    dead = f"{figures['dead_lettered']} task(s) FAILED" + (
        f", {figures['dead_letters_waiting']} message(s) in the DLQ now"
        if figures["dead_letters_waiting"] is not None
        else ""
    )
    given_back = ", ".join(f"{reason}: {n}" for reason, n in figures["attempts_given_back_by"].items()) or "none"
    cost = figures["cost"]
    return [
        ("tasks", ", ".join(f"{state} {n}" for state, n in figures["states"].items()) or "none"),
        ("attempts", f"{figures['attempts']} ({figures['retries']} retries over {figures['tasks_retried']} task(s))"),
        ("duration p50 / p95 / max", _seconds(figures["duration_s"])),
        ("failed tasks' last attempt", _seconds(figures["failed_duration_s"])),
        (
            "throughput",
            f"{line.get('mean_per_minute', 0):g}/min mean, {line.get('peak_per_minute', 0)}/min peak "
            f"over {line.get('span_s', 0):g} s",
        ),
        ("dead letters", dead),
        ("workers", ", ".join(f"{why} {n}" for why, n in figures["stopped_by"].items()) or "none"),
        ("spot interruptions", str(figures["spot_interruptions"])),
        ("lifecycle drains", str(figures["lifecycle_drains"])),
        ("attempts given back", given_back),
        ("instance-hours", f"{cost['instance_hours']:.4f} (workers up {figures['worker_hours']:.4f} h)"),
        ("cost of the run", _dollars(cost["run"])),
        ("cost per task", _dollars(cost["per_task"])),
    ]


def run_row(run: dict[str, Any]) -> list[str]:
    """A chain run's line: run, state, jobs, attempts, job durations, waits, wall time, cost."""
    state = f"{run['status']}: {run['reason']}" if run["reason"] else run["status"]
    wall = f"{run['wall_s']:g} s" if run["wall_s"] is not None else "-"
    children = f"; {run['children']} children, {run['children_failed']} failed" if run["children"] else ""
    return [
        run["run"],
        state,
        ", ".join(f"{s} {n}" for s, n in run["job_states"].items()) + children,
        f"{run['attempts']} ({run['retries']} retries)",
        _seconds(run["job_duration_s"]),
        _seconds(run["waited_s"]),
        wall,
        _dollars(run["cost"]["run"]),
    ]


RUN_COLUMNS = ("run", "state", "jobs", "attempts", "job p50 / p95 / max", "waited", "wall", "cost")


def render(report: dict[str, Any], console: Any) -> None:
    """The report as rich tables (a table per fleet, one per chain with a line per run), how costs are
    estimated under each."""
    from rich.table import Table

    for figures in report["fleets"]:
        table = Table(title=f"fleet {figures['fleet']}", title_justify="left")
        table.add_column("figure")
        table.add_column("value")
        for name, value in fleet_rows(figures):
            table.add_row(name, value)
        console.print(table)
        console.print(f"[dim]cost: {figures['cost']['method']}[/]")
    for chain in report["chains"]:
        table = Table(title=f"chain {chain['chain']}", title_justify="left")
        for column in RUN_COLUMNS:
            table.add_column(column)
        for run in chain["runs"]:
            table.add_row(*run_row(run))
        console.print(table if chain["runs"] else f"chain {chain['chain']}: no runs")
        console.print(f"[dim]cost: {chain['method']}[/]")


# ---------------------------------------------------------------- the picture


@dataclass(frozen=True)
class ChartBox:
    """Where a chart draws: its size and the plot's margins, in pixels."""

    width: int = 760
    height: int = 280
    left: int = 56
    right: int = 56
    top: int = 44
    bottom: int = 36

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom


LINE_COLOURS = {"remaining": "#d95f02", "running": "#1b9e77"}


def _ticks(top: float) -> list[float]:
    """Four or five round values from 0 to at least ``top``."""
    step = 10 ** math.floor(math.log10(max(top, 1) / 4)) if top > 4 else 1
    for factor in (1, 2, 5, 10):
        if top / (step * factor) <= 5:
            step *= factor
            break
    return [step * i for i in range(math.ceil(top / step) + 1)]


def chart_svg(title: str, bucket_s: int, bars: Sequence[int], lines: dict[str, Sequence[int]]) -> str:
    """An SVG chart: ``bars`` (finished per bucket, left axis) and ``lines`` (counts at each bucket's end,
    right axis) over time from the first attempt's start."""
    box = ChartBox()
    left_ticks = _ticks(max(bars, default=0) or 1)
    right_ticks = _ticks(max((max(v, default=0) for v in lines.values()), default=0) or 1)
    slot = box.plot_width / max(len(bars), 1)

    def y(value: float, ticks: list[float]) -> float:
        return box.top + box.plot_height * (1 - value / ticks[-1])

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{box.width}" height="{box.height}" '
        f'viewBox="0 0 {box.width} {box.height}" font-family="sans-serif" font-size="11">',
        f'<text x="{box.left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    for value in left_ticks:
        parts.append(
            f'<line x1="{box.left}" x2="{box.width - box.right}" y1="{y(value, left_ticks):.1f}" '
            f'y2="{y(value, left_ticks):.1f}" stroke="#ddd"/><text x="{box.left - 6}" '
            f'y="{y(value, left_ticks) + 4:.1f}" text-anchor="end">{value:g}</text>'
        )
    for value in right_ticks:
        parts.append(f'<text x="{box.width - box.right + 6}" y="{y(value, right_ticks) + 4:.1f}">{value:g}</text>')
    for index, count in enumerate(bars):
        top = y(count, left_ticks)
        parts.append(
            f'<rect x="{box.left + index * slot + 1:.1f}" y="{top:.1f}" width="{max(slot - 2, 1):.1f}" '
            f'height="{box.top + box.plot_height - top:.1f}" fill="#7570b3"><title>{count}</title></rect>'
        )
    for name, values in lines.items():
        points = " ".join(f"{box.left + (i + 1) * slot:.1f},{y(v, right_ticks):.1f}" for i, v in enumerate(values))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{LINE_COLOURS.get(name, "#333")}" stroke-width="2"/>'
        )
    parts.append(_axes_and_legend(box, bucket_s, len(bars), list(lines)))
    parts.append("</svg>")
    return "\n".join(parts)


def _axes_and_legend(box: ChartBox, bucket_s: int, count: int, lines: list[str]) -> str:
    span = bucket_s * count
    unit, scale = ("min", 60) if span >= 300 else ("s", 1)
    marks = []
    for value in _ticks(span / scale):
        x = box.left + box.plot_width * value * scale / max(span, 1)
        if x <= box.width - box.right + 0.5:
            marks.append(f'<text x="{x:.1f}" y="{box.height - box.bottom + 14}" text-anchor="middle">{value:g}</text>')
    bottom = 32  # the legend's baseline, under the title
    legend = [
        f'<rect x="{box.left}" y="{bottom - 9}" width="10" height="10" fill="#7570b3"/>'
        f'<text x="{box.left + 14}" y="{bottom}">finished per {bucket_s} s (left)</text>'
    ]
    for offset, name in enumerate(lines, start=1):
        x = box.left + 200 * offset
        colour = LINE_COLOURS.get(name, "#333")
        legend.append(
            f'<line x1="{x}" x2="{x + 12}" y1="{bottom - 4}" y2="{bottom - 4}" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{x + 16}" y="{bottom}">{name} (right)</text>'
        )
    time_axis = (
        f'<text x="{box.width - box.right}" y="{box.height - box.bottom + 28}" text-anchor="end">'
        f"{unit} from the start</text>"
    )
    return "\n".join([*marks, time_axis, *legend])


def charts(report: dict[str, Any]) -> list[str]:
    """One chart per fleet (throughput, backlog of its tasks, attempts running) and per chain run with
    finished jobs (jobs finished per minute)."""
    drawn = []
    for figures in report["fleets"]:
        line = figures["timeline"]
        if line:
            lines = {"remaining": line["remaining"], "running": line["running"]}
            drawn.append(chart_svg(f"fleet {figures['fleet']}", line["bucket_s"], line["finished"], lines))
    for chain in report["chains"]:
        for run in chain["runs"]:
            if run["per_minute"]:
                drawn.append(chart_svg(f"chain {chain['chain']}, run {run['run']}", 60, run["per_minute"], {}))
    return drawn


def write_chart(report: dict[str, Any], path: Path) -> None:
    """``path``: ``.svg``, the charts stacked in one SVG; else a self-contained HTML page with the charts
    inline and the figures as tables."""
    drawn = charts(report) or [chart_svg(f"{report['stack']}: nothing finished yet", 60, [], {})]
    if path.suffix.lower() == ".svg":
        height = ChartBox().height
        inner = "\n".join(f'<g transform="translate(0,{i * height})">{svg}</g>' for i, svg in enumerate(drawn))
        path.write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{ChartBox().width}" height="{height * len(drawn)}">'
            f"\n{inner}\n</svg>\n"
        )
        return
    path.write_text(report_html(report, drawn))


def report_html(report: dict[str, Any], drawn: list[str]) -> str:
    """The page: the charts, each fleet's figures, each chain's runs, and how cost was estimated."""
    cell = html.escape
    sections = []
    for figures in report["fleets"]:
        rows = "".join(f"<tr><th>{cell(k)}</th><td>{cell(v)}</td></tr>" for k, v in fleet_rows(figures))
        sections.append(
            f"<h2>fleet {cell(figures['fleet'])}</h2><table>{rows}</table>"
            f"<p class=note>cost: {cell(figures['cost']['method'])}</p>"
        )
    for chain in report["chains"]:
        head = "".join(f"<th>{cell(c)}</th>" for c in RUN_COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in run_row(r)) + "</tr>" for r in chain["runs"])
        sections.append(
            f"<h2>chain {cell(chain['chain'])}</h2><table><tr>{head}</tr>{body}</table>"
            f"<p class=note>cost: {cell(chain['method'])}</p>"
        )
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["generated_at"]))
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>pipeline report: {cell(report['stack'])}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse;margin:.5em 0}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}.note{color:#666;font-size:12px}"
        f"</style></head><body><h1>pipeline report: {cell(report['stack'])}</h1><p class=note>{generated}</p>\n"
        + "\n".join(f"<figure>{svg}</figure>" for svg in drawn)
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
