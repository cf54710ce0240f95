"""PipelineDashboard as synthesized (its widgets read the metrics the runtimes write, rule packs clean, priced),
and the embedded metric format lines the worker and the glue function write for it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from pipeline_constructs import BatchChain, ChainStep, PipelineAlarms, PipelineDashboard, SpotWorkerFleet
from pipeline_constructs.fleet.worker import metrics
from pipeline_constructs.glue import handler
from pipeline_constructs.ops.cost import cost_report
from tests.support import ROOT

SQS_WORKER = ROOT / "worker_images" / "sqs_worker"


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory) -> Any:
    """One small stack (a fleet, a chain, alarms, the dashboard) synthesized with cdk-nag and the Control
    Tower controls, as the example app adds them."""
    import app as example_app

    app = cdk.App(outdir=str(tmp_path_factory.mktemp("dashboard")), context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "Watched", env=cdk.Environment(region="us-east-1"))
    fleet = SpotWorkerFleet(stack, "Stats", worker_directory=SQS_WORKER, task="task:csv_stats")
    chain = BatchChain(
        stack,
        "Feeds",
        chain_name="feeds",
        network=fleet.network,
        steps=[ChainStep(name="fetch", image="public.ecr.aws/docker/library/python:3.13-slim")],
    )
    alarms = PipelineAlarms(stack, "Alarms")
    alarms.watch_fleet(fleet)
    alarms.watch_chain(chain)
    dashboard = PipelineDashboard(
        stack, "Dashboard", fleets=[fleet], chains=[chain], alarms=alarms, dashboard_name="pipeline-watched"
    )
    example_app.add_rule_packs(app)
    assembly = app.synth()  # fails on any unacknowledged cdk-nag finding or Control Tower control
    template = json.loads(Path(assembly.directory, "Watched.template.json").read_text())
    return type("Synth", (), {"template": template, "stack": stack, "dashboard": dashboard, "fleet": fleet})


def _body(template: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's body with its references resolved to readable names: ``{"Ref": "X"}`` -> ``<X>``."""
    (dashboard,) = Template.from_json(template).find_resources("AWS::CloudWatch::Dashboard").values()

    def text(part: Any) -> str:
        if isinstance(part, str):
            return part
        if "Ref" in part:
            return f"<{part['Ref']}>"
        if "Fn::GetAtt" in part:
            return f"<{'.'.join(part['Fn::GetAtt'])}>"
        return "<?>"

    joined = dashboard["Properties"]["DashboardBody"]
    separator, parts = joined["Fn::Join"] if isinstance(joined, dict) else ("", [joined])
    return json.loads(separator.join(text(part) for part in parts))


def _metrics(body: dict[str, Any]) -> list[list[Any]]:
    return [metric for widget in body["widgets"] for metric in widget["properties"].get("metrics", [])]


def test_the_dashboard_is_named_and_nag_and_control_tower_clean(synthesized):
    (dashboard,) = Template.from_json(synthesized.template).find_resources("AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == "pipeline-watched"


def test_fleet_widgets_read_the_queue_the_group_and_the_workers_task_metrics(synthesized):
    body = _body(synthesized.template)
    lines = [json.dumps(m) for m in _metrics(body)]
    queue = next(m for m in lines if "ApproximateNumberOfMessagesNotVisible" in m)
    assert "StatsTasks" in queue  # the fleet's own queue (in flight)
    assert any("GroupInServiceInstances" in m and "StatsGroup" in m for m in lines)
    assert any("ApproximateNumberOfMessagesVisible" in m and "DeadLetter" in m for m in lines)
    durations = [m for m in _metrics(body) if "TaskDuration" in m]
    # p50 and p95 of the workers' EMF metric, under the dimension value the worker writes (its fleet's path)
    assert {m[-1]["stat"] for m in durations} >= {"p50", "p95"}
    assert all(m[:4] == ["PipelineConstructs", "TaskDuration", "Fleet", "Watched/Stats"] for m in durations)
    failures = {m[1] for m in _metrics(body) if m[0] == "PipelineConstructs" and m[1] != "TaskDuration"}
    assert {"TasksFailed", "AttemptsFailed", "AttemptsInterrupted", "TasksSucceeded"} <= failures
    assert body["widgets"][0]["type"] == "alarm"  # the alarms' states first


def test_chain_widgets_read_runs_by_state_from_the_glues_metrics(synthesized):
    body = _body(synthesized.template)
    chain = [m for m in _metrics(body) if m[0] == "PipelineConstructs" and m[1].startswith("Chain")]
    assert chain[1][:4] == ["PipelineConstructs", "ChainRunsFailed", "Chain", "feeds"]
    states = {m[5] for m in chain if m[1] == "ChainJobs"}
    assert states == {"RUNNABLE", "RUNNING", "SUCCEEDED", "FAILED"}
    lines = [json.dumps(m) for m in _metrics(body)]
    assert any("Errors" in m and "AWS/Lambda" in m for m in lines)


def test_the_dashboard_is_priced_by_pipeline_cost(synthesized):
    lines = [line for line in cost_report(synthesized.template)["lines"] if line.kind == "dashboard"]
    assert [line.monthly for line in lines] == [3.0]
    assert "3 free" in lines[0].detail  # beyond the free ones, which the account may use already


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dashboard_name": "has spaces"}, "dashboard_name='has spaces' is invalid; allowed: 1-255 letters"),
        ({"period": cdk.Duration.seconds(10)}, "period='10 s' is invalid; allowed: 60 to 86400 s"),
        ({"fleets": ["Stats"]}, "fleets[0]='str' is invalid; allowed: a SpotWorkerFleet"),
    ],
)
def test_bad_arguments_raise_one_value_error(synthesized, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PipelineDashboard(synthesized.stack, f"Bad{len(message)}", **kwargs)


# ---------------------------------------------------------------- the embedded metric format lines


def _check_emf(document: dict[str, Any]) -> None:
    """Valid per the EMF specification: ``_aws`` with a Timestamp (ms) and CloudWatchMetrics directives, each
    with a Namespace, Dimensions (lists of at most 30 names, each a root member of string value) and Metrics
    (at most 100, each a name with a root member of numeric value, and a unit CloudWatch knows)."""
    aws = document["_aws"]
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_600_000_000_000
    assert aws["CloudWatchMetrics"]
    for directive in aws["CloudWatchMetrics"]:
        assert isinstance(directive["Namespace"], str) and directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            assert 0 < len(dimension_set) <= 30
            assert all(isinstance(document[name], str) for name in dimension_set)
        assert 0 < len(directive["Metrics"]) <= 100
        for metric in directive["Metrics"]:
            assert isinstance(document[metric["Name"]], int | float)
            assert metric["Unit"] in ("Seconds", "Count")


def test_a_worker_attempt_logs_one_emf_line_with_the_fleet_as_its_only_dimension(caplog):
    from pipeline_constructs.fleet.worker.__main__ import JsonLines

    with caplog.at_level(logging.INFO, logger="pipeline.worker.metrics"):
        metrics.attempt_ended("pipeline-dev/Statistics", "a.csv", "failed", duration_s=2.5, attempts=3)
    (record,) = caplog.records
    document = json.loads(JsonLines().format(record))  # the line the worker's log holds
    _check_emf(document)
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "PipelineConstructs" and directive["Dimensions"] == [["Fleet"]]
    assert document["Fleet"] == "pipeline-dev/Statistics" and document["task"] == "a.csv"  # a property
    assert (document["TaskDuration"], document["TaskAttempts"]) == (2.5, 3)
    assert (document["TasksFailed"], document["AttemptsFailed"], document["TasksSucceeded"]) == (1, 1, 0)


def test_each_attempt_the_worker_runs_logs_its_outcome_for_the_dashboard(caplog):
    from pipeline_constructs.fleet.worker.isolation import TaskOutcome
    from pipeline_constructs.fleet.worker.limits import DeliveryLimits
    from tests.fleet.test_worker_mutants import Markers, Stub, Worker, delivery, runner

    worker = Worker()
    attempts = runner(worker, DeliveryLimits(30, 4, 3), Markers(), [])
    done, failing = delivery(1, 1), delivery(2, 1)
    worker.hold(done, failing)
    with caplog.at_level(logging.INFO, logger="pipeline.worker.metrics"):
        attempts._process(done, {})
        attempts.tasks = Stub(run=lambda call, record: TaskOutcome("error", error="boom"))
        attempts._process(failing, {})
    attempts.shutdown()
    lines = {record.task: record for record in caplog.records if record.name == "pipeline.worker.metrics"}
    assert (lines["t1"].Fleet, lines["t1"].TasksSucceeded, lines["t1"].TaskAttempts) == ("fleet", 1, 1)
    assert (lines["t2"].AttemptsFailed, lines["t2"].TasksFailed) == (1, 0), "retried: attempts are left"


def test_the_namespace_is_configurable(monkeypatch):
    monkeypatch.setenv(metrics.NAMESPACE_VARIABLE, "Team/Pipelines")
    document = metrics.attempt_fields("fleet", "interrupted", duration_s=1.0)
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Team/Pipelines"
    assert document["AttemptsInterrupted"] == 1 and "TaskAttempts" not in document


def _facts(status: str, index: int, **changes: Any) -> dict[str, Any]:
    facts = {
        "chain": "feeds",
        "chain_config": {"steps": [{"name": "fetch"}, {"name": "load"}]},
        "index": index,
        "step": ["fetch", "load"][index],
        "job_id": "job-1",
        "status": status,
        "run": "feeds-20261205",
        "array_child": False,
        "timestamps": {"startedAt": 1_000, "stoppedAt": 61_500},
    }
    return facts | changes


def test_the_glue_prints_a_job_state_as_an_emf_line_by_chain_and_state(capsys, monkeypatch):
    monkeypatch.setenv(handler.METRICS_NAMESPACE_VARIABLE, "Team/Pipelines")
    handler.log_job_metrics(_facts("SUCCEEDED", 1))
    document = json.loads(capsys.readouterr().out)
    _check_emf(document)
    directives = document["_aws"]["CloudWatchMetrics"]
    assert [d["Dimensions"] for d in directives] == [[["Chain", "State"]], [["Chain"]]]
    assert {d["Namespace"] for d in directives} == {"Team/Pipelines"}
    assert (document["Chain"], document["State"], document["ChainJobs"]) == ("feeds", "SUCCEEDED", 1)
    assert (document["ChainRunsSucceeded"], document["ChainRunsFailed"], document["ChainJobDuration"]) == (1, 0, 60.5)
    assert document["run"] == "feeds-20261205"  # a property, not a dimension


def test_the_glue_prints_the_metrics_of_every_job_state_change_it_handles(capsys):
    config = {
        "chains": {"feeds": {"steps": [{"name": "fetch", "jobDefinition": "arn:aws:batch:x:1:job-definition/fetch:3"}]}}
    }
    event = {
        "source": "aws.batch",
        "detail-type": "Batch Job State Change",
        "detail": {"jobId": "j1", "status": "RUNNING", "jobDefinition": "arn:aws:batch:x:1:job-definition/fetch:4"},
    }
    handler.Glue(config, batch=None, dynamodb=None).handle(event)
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines() if '"_aws"' in text]
    _check_emf(line)
    assert (line["Chain"], line["State"], line["ChainJobs"], line["ChainRunsSucceeded"]) == ("feeds", "RUNNING", 1, 0)


def test_only_a_whole_last_step_ends_a_run_and_a_running_job_has_no_duration():
    assert handler.job_metrics(_facts("SUCCEEDED", 0))["ChainRunsSucceeded"] == 0
    assert handler.job_metrics(_facts("SUCCEEDED", 1, array_child=True))["ChainRunsSucceeded"] == 0
    assert handler.job_metrics(_facts("FAILED", 0))["ChainRunsFailed"] == 1
    running = handler.job_metrics(_facts("RUNNING", 1))
    _check_emf(running)
    assert "ChainJobDuration" not in running
