"""`pipeline report`: figures from status rows (percentiles, buckets, spot interruptions, cost), its chart
and JSON files, the worker row fields it reads, and the command on rows the worker and the glue wrote."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ElementTree
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline_constructs.fleet.worker.instance import LIFECYCLE_TERMINATION, SPOT_NOTICE
from pipeline_constructs.fleet.worker.status import StatusRecorder
from pipeline_constructs.glue.handler import Glue
from pipeline_constructs.ops import cli, report
from pipeline_constructs.ops.cli import app
from pipeline_constructs.ops.operator import MANIFEST_OUTPUT
from pipeline_constructs.ops.report import Pricing
from tests.support.resources import create_status_table

T0 = 1_780_000_000.0  # a start time, epoch seconds
PRICING = Pricing.from_table(["m6i.large"], slots=2)  # $0.096 an instance-hour in the price table


def task(number: int, state: str, *, end: float, duration: float, attempts: int = 1, **more: Any) -> dict[str, Any]:
    return {
        "pk": "fleet#f",
        "sk": f"task#t{number}",
        "state": state,
        "attempts": Decimal(attempts),
        "duration_s": Decimal(str(duration)),
        "updated_at": Decimal(str(T0 + end)),
        **more,
    }


def worker(name: str, state: str, *, since: float, last: float, **more: Any) -> dict[str, Any]:
    return {
        "pk": "fleet#f",
        "sk": f"worker#{name}",
        "state": state,
        "since": Decimal(str(T0 + since)),
        "updated_at": Decimal(str(T0 + last)),
        **more,
    }


def test_percentiles_interpolate_between_ranks_as_numpy_does():
    values = [float(v) for v in range(1, 11)]
    assert report.percentile(values, 0.5) == 5.5
    assert report.percentile(values, 0.95) == pytest.approx(9.55)
    assert report.percentile([7.0], 0.95) == 7.0
    assert report.spread([3.0, 1.0, 2.0]) == {"count": 3, "p50": 2.0, "p95": 2.9, "max": 3.0}
    assert report.spread([]) is None


def test_finished_tasks_fall_in_minute_buckets_from_the_first_start():
    assert report.buckets([0, 59.9, 60, 150], start=0, end=150, width=60) == [2, 1, 1]
    assert report.buckets([10], start=10, end=10, width=60) == [1]
    assert report.bucket_width(45) == 5 and report.bucket_width(3600) == 60 and report.bucket_width(7200) == 300


def test_fleet_figures_count_attempts_retries_dead_letters_and_durations():
    rows = [
        task(1, "SUCCEEDED", end=30, duration=30),
        task(2, "SUCCEEDED", end=50, duration=20, attempts=2),
        task(3, "SUCCEEDED", end=70, duration=10, redelivered=True),
        task(4, "FAILED", end=110, duration=5, attempts=3, error="boom"),
        {"pk": "fleet#f", "sk": "task#t5", "state": "RUNNING", "started": Decimal(1)},
    ]
    figures = report.fleet_figures("f", rows, PRICING, dead_letters_waiting=1, now=T0 + 120)
    assert figures["tasks"] == 5 and figures["succeeded"] == 3 and figures["dead_lettered"] == 1
    assert figures["states"] == {"FAILED": 1, "RUNNING": 1, "SUCCEEDED": 3}
    assert figures["attempts"] == 1 + 2 + 1 + 3 + 1 and figures["retries"] == 3 and figures["tasks_retried"] == 2
    assert figures["redelivered_done"] == 1 and figures["dead_letters_waiting"] == 1
    assert figures["duration_s"] == {"count": 3, "p50": 20.0, "p95": 29.0, "max": 30.0}
    line = figures["timeline"]
    assert line["start"] == T0 and line["span_s"] == 110 and line["bucket_s"] == 5
    assert line["per_minute"] == [2, 2] and line["peak_per_minute"] == 2
    assert sum(line["finished"]) == 4 and line["remaining"][-1] == 1, "the RUNNING task is still to finish"
    at_25s = line["running"][4]  # at the end of the fifth 5 s bucket: t1 (0-30) and t2 (30-50) not yet
    assert at_25s == 1


def test_workers_stopped_by_a_spot_notice_or_a_drain_and_lost_ones_are_counted_with_their_given_back_attempts():
    rows = [
        worker("a", "STOPPED", since=0, last=600, reason=SPOT_NOTICE, attempts_given_back=Decimal(2)),
        worker("b", "STOPPED", since=0, last=1200, reason=LIFECYCLE_TERMINATION, attempts_given_back=Decimal(1)),
        worker("c", "RUNNING", since=100, last=200),  # no heartbeat for 1000 s: killed
        worker("d", "RUNNING", since=0, last=1190),
    ]
    figures = report.worker_figures(rows, now=T0 + 1200)
    assert (figures["spot_interruptions"], figures["lifecycle_drains"], figures["lost"]) == (1, 1, 1)
    assert figures["attempts_given_back"] == 3
    assert figures["attempts_given_back_by"] == {LIFECYCLE_TERMINATION: 1, SPOT_NOTICE: 2}
    assert figures["worker_hours"] == pytest.approx((600 + 1200 + 100 + 1190) / 3600, abs=1e-6)


def test_cost_is_attempt_time_over_the_tasks_an_instance_runs_at_once_at_the_price_tables_rate():
    rows = [task(n, "SUCCEEDED", end=360 + n, duration=360) for n in range(9)]
    rows.append(task(9, "FAILED", end=1000, duration=180, attempts=2))  # two attempts of 180 s
    cost = report.fleet_figures("f", rows, PRICING, now=T0)["cost"]
    assert PRICING.instance_hour == 0.096
    assert cost["instance_hours"] == pytest.approx(0.5)  # 3600 s of attempts / 2 slots
    assert cost["run"] == {"on_demand": 0.048, "spot_estimate": pytest.approx(0.048 * 0.35)}
    assert cost["per_task"]["on_demand"] == pytest.approx(0.0048)
    assert "/ 2 tasks an instance runs at once" in cost["method"] and "m6i.large" in cost["method"]
    assert Pricing.from_table(["no.such"]).instance_note.startswith("the mean of the price table's large types")


def job(run: str, index: int, status: str, created: float, started: float | None, stopped: float | None, **more):
    times = {"createdAt": created, "startedAt": started, "stoppedAt": stopped}
    return {
        "pk": "chain#feeds",
        "sk": f"run#{run}#{index:02d}#job-{run}-{index}",
        "chain_run": run,
        "step": ["fetch", "load"][index],
        "status": status,
        "reason": "-",
        "attempts": Decimal(more.pop("attempts", 1)),
        **{k: Decimal(int((T0 + v) * 1000)) for k, v in times.items() if v is not None},
        **more,
    }


def test_chain_runs_report_state_jobs_waits_durations_retries_and_vcpu_cost():
    rows = [
        job("r1", 0, "SUCCEEDED", 0, 60, 120),
        job("r1", 1, "SUCCEEDED", 120, 150, 330, attempts=2),
        job("r2", 0, "FAILED", 1000, 1010, 1020, reason="Essential container exited"),
        job("r3", 0, "RUNNING", 2000, 2030, None),
    ]
    figures = report.chain_figures("feeds", rows, ["fetch", "load"], Pricing.from_table(job_vcpus=2))
    first, failed, running = figures["runs"]
    assert (first["run"], first["status"], first["jobs"]) == ("r1", "SUCCEEDED", 2)
    assert (first["attempts"], first["retries"]) == (3, 1)
    assert first["job_duration_s"]["max"] == 180 and first["waited_s"]["max"] == 60 and first["wall_s"] == 330
    assert first["cost"]["vcpu_hours"] == pytest.approx(240 * 2 / 3600, abs=1e-6)
    assert first["cost"]["run"]["on_demand"] == pytest.approx(240 * 2 / 3600 * 0.048, abs=1e-6)
    assert (failed["status"], failed["reason"]) == ("FAILED", "Essential container exited")
    assert running["status"] == "RUNNING" and running["job_duration_s"] is None and running["wall_s"] is None


def test_a_fan_out_steps_children_are_counted_and_priced_for_the_whole_step():
    rows = [
        job("r1", 0, "SUCCEEDED", 0, 10, 40),
        job("r1", 1, "SUCCEEDED", 40, 50, 150, children_total=Decimal(20), children_failed=Decimal(2)),
    ]
    (run,) = report.chain_figures("feeds", rows, ["fetch", "load"], PRICING)["runs"]
    assert (run["children"], run["children_failed"]) == (20, 2)
    assert run["cost"]["vcpu_hours"] == pytest.approx((30 + 20 * 100) / 3600, abs=1e-6)
    assert "20 children, 2 failed" in report.run_row(run)[2]


def small_report() -> dict[str, Any]:
    rows = [task(n, "SUCCEEDED", end=20 * n + 15, duration=15) for n in range(12)]
    chain = report.chain_figures("feeds", [job("r1", 0, "SUCCEEDED", 0, 30, 90)], ["fetch"], PRICING)
    fleet = report.fleet_figures("pipeline-dev/Statistics", rows, PRICING, now=T0 + 300)
    return {"stack": "pipeline-dev", "generated_at": T0 + 300, "fleets": [fleet], "chains": [chain]}


def test_the_chart_is_a_self_contained_html_page_with_an_inline_svg_or_an_svg_file(tmp_path):
    figures = small_report()
    page, picture = tmp_path / "report.html", tmp_path / "report.svg"
    report.write_chart(figures, page)
    report.write_chart(figures, picture)
    text = page.read_text()
    assert page.stat().st_size > 2000 and text.count("<svg") == 2  # the fleet's and the chain run's
    assert "<script" not in text and "http" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert "pipeline-dev/Statistics" in text and "cost per task" in text and "instance-hours =" in text
    svg = ElementTree.parse(picture).getroot()  # well-formed
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) >= 12


def test_the_worker_row_says_since_when_it_works_and_how_many_attempts_it_gave_back():
    stored: dict[str, dict] = {}

    class Table:
        def put_item(self, Item):
            stored[Item["sk"]] = Item

        def update_item(self, **kwargs):
            return {}

    recorder = StatusRecorder(Table(), "f", ttl_days=1)
    recorder.worker_heartbeat("w1", state="RUNNING")
    assert stored["worker#w1"]["attempts_given_back"] == 0 and stored["worker#w1"]["since"] > T0 - 1e8
    recorder.attempt_given_back("t1")
    recorder.attempt_given_back("t2")
    recorder.worker_heartbeat("w1", state="STOPPED", reason=SPOT_NOTICE)
    assert stored["worker#w1"]["attempts_given_back"] == 2 and stored["worker#w1"]["reason"] == SPOT_NOTICE


def test_pipeline_report_reads_the_rows_the_worker_and_the_glue_wrote(aws, tmp_path, monkeypatch):
    """Against the emulator: rows written by the worker's StatusRecorder and the glue's record, read by the
    command through the stack's manifest; table, JSON and chart."""
    name = f"rep{uuid.uuid4().hex[:8]}"
    table = create_status_table(aws.dynamodb, f"{name}-status")
    dlq = aws.sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    fleet = f"pipeline-{name}/Statistics"
    recorder = StatusRecorder(table, fleet, ttl_days=1)
    recorder.store_finished([(f"t{n}", {"state": "SUCCEEDED", "attempts": 1, "duration_s": 1.5 + n}) for n in range(5)])
    recorder.task_failed("bad", state="FAILED", attempts=3, duration_s=0.5, error="ValueError: no")
    recorder.worker_heartbeat("w1", state="STOPPED", reason=SPOT_NOTICE)
    aws.sqs.send_message(QueueUrl=dlq, MessageBody="{}")
    glue = Glue(
        {"chains": {"feeds": {"steps": [{"name": "fetch"}], "table": table.name}}}, batch=None, dynamodb=aws.dynamodb
    )
    times = {"createdAt": 1_780_000_000_000, "startedAt": 1_780_000_030_000, "stoppedAt": 1_780_000_090_000}
    facts = {"chain": "feeds", "index": 0, "step": "fetch", "job_id": "j1", "job_name": "feeds-fetch"}
    facts |= {"status": "SUCCEEDED", "reason": "", "run": "nightly", "attempts": 1, "timestamps": times}
    glue.record(facts | {"array_child": False})
    manifest = {
        "version": 1,
        "fleets": {
            fleet: {"queueUrl": dlq, "deadLetterQueueUrl": dlq, "table": table.name, "group": "g"}
            | {"instanceTypes": ["c6i.large", "no.such"], "concurrency": 4}  # priced as the stack names them
        },
        "chains": {"feeds": {"table": table.name, "steps": ["fetch"]}},
    }
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {MANIFEST_OUTPUT: {"Value": json.dumps(manifest)}},
    }
    aws.session.client("cloudformation").create_stack(StackName=f"pipeline-{name}", TemplateBody=json.dumps(template))
    figures, chart = tmp_path / "figures.json", tmp_path / "chart.html"
    monkeypatch.setattr(cli.console, "width", 200)  # a terminal's, not the 80 columns of no terminal
    result = CliRunner().invoke(
        app, ["report", "--stack", name, "--json", str(figures), "--chart", str(chart)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "SUCCEEDED 5" in result.output and "spot interruptions" in result.output and "nightly" in result.output
    written = json.loads(figures.read_text())
    (stats,) = written["fleets"]
    assert (stats["succeeded"], stats["dead_lettered"], stats["dead_letters_waiting"]) == (5, 1, 1)
    assert stats["spot_interruptions"] == 1 and stats["duration_s"]["max"] == 5.5
    assert "/ 4 tasks an instance runs at once; priced at c6i.large: $0.0850/h" in stats["cost"]["method"]
    (run,) = written["chains"][0]["runs"]
    assert (run["run"], run["status"], run["job_duration_s"]["max"], run["waited_s"]["max"]) == (
        "nightly",
        "SUCCEEDED",
        60,
        30,
    )
    assert chart.stat().st_size > 0 and "<svg" in chart.read_text()


def test_each_fleet_of_the_example_names_its_instance_types_for_the_report(example_stacks):
    """The manifest entry the report prices a fleet by: the fleet's own instance types, not the table's guess."""
    from pipeline_constructs.fleet.options import DEFAULT_X86_INSTANCE_TYPES

    value = example_stacks["pipeline-dev"].template["Outputs"][MANIFEST_OUTPUT]["Value"]
    text = "".join(part for part in value["Fn::Join"][1] if isinstance(part, str))
    assert f'"instanceTypes":{json.dumps(list(DEFAULT_X86_INSTANCE_TYPES), separators=(",", ":"))}' in text


def test_every_default_instance_type_of_a_fleet_has_a_price():
    """A fleet's defaults are what most fleets run: one left out of the table would be averaged away unseen."""
    from pipeline_constructs.fleet.options import DEFAULT_ARM_INSTANCE_TYPES, DEFAULT_X86_INSTANCE_TYPES

    prices = json.loads((Path(report.__file__).parent / "pricing" / "us-east-1.json").read_text())
    unpriced = set(DEFAULT_X86_INSTANCE_TYPES + DEFAULT_ARM_INSTANCE_TYPES) - set(prices["instance_hour_on_demand"])
    assert unpriced == set()
