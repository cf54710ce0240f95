"""The local run drives the real synthesized example: the feed chain, both fleet stages, injected faults."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline_constructs.local import cli
from pipeline_constructs.local.batch import JobDefinitionSpec, LocalBatch, dockerfile_command, local_argv
from pipeline_constructs.local.events import matches, transform
from pipeline_constructs.local.progress import job_failure
from pipeline_constructs.local.resolver import Resolver, UnresolvableError
from pipeline_constructs.local.runner import LocalPipeline, sample_feed
from pipeline_constructs.ops.assembly import (
    SynthesizedStack,
    find_stack,
    load_assembly,
    producers_of,
    refuse_nested_stacks,
)
from tests.support import ROOT
from tests.support.example_app import synth_example


def run_local(outdir: Path, tmp_path: Path, *args: str) -> tuple[int, dict]:
    result_file = tmp_path / "result.json"
    code = cli.main(
        [
            "--assembly",
            str(outdir),
            "--env",
            "dev",
            "--quiet",
            "--logs",
            str(tmp_path / "logs"),
            "--json",
            str(result_file),
            *args,
        ]
    )
    return code, json.loads(result_file.read_text())


def test_demo_runs_the_feed_chain_and_both_fleet_stages(example_outdir, tmp_path, capsys):
    outdir = example_outdir
    report = tmp_path / "report"
    code, result = run_local(
        outdir, tmp_path, "--demo", "--tasks", "8", "--state-file", str(tmp_path / "s.json"), "--report", str(report)
    )
    assert code == 0, result
    # The run's performance report, as `make demo` prints and writes it: each fleet's and chain run's figures.
    printed = capsys.readouterr().out
    assert all(f"fleet pipeline-dev/{name}" in printed for name in ("Statistics", "WordCounts", "WordFrequencies"))
    assert "duration p50 / p95 / max" in printed and "cost per task" in printed and "chain partitions" in printed
    figures = json.loads(report.with_suffix(".json").read_text())
    assert {f["succeeded"] for f in figures["fleets"]} == {8}
    chart = report.with_suffix(".html").read_text()
    assert "<svg" in chart and len(chart) > 2000
    assert sorted((j["step"], j["status"]) for j in result["jobs"]) == [
        ("daily_report", "SUCCEEDED"),
        ("feed_consumer", "SUCCEEDED"),
        ("feed_watcher", "SUCCEEDED"),
        ("hourly_join", "SUCCEEDED"),
        ("hourly_partition", "SUCCEEDED"),  # the fan-out's array: its 24 children within it
        ("hourly_split", "SUCCEEDED"),
    ]
    assert {j["reason"] for j in result["jobs"]} == {""}  # AWS gives a succeeded job no status reason
    # A Python function, a command and an HTTP app, each fleet its 8 tasks.
    fleets = {name.rsplit("/", 1)[-1]: p for name, p in result["fleets"].items()}
    assert set(fleets) == {"Statistics", "WordCounts", "WordFrequencies"}
    assert {(p["expected"], p["done"], p["lost"], p["dead"]) for p in fleets.values()} == {(8, 8, 0, 0)}
    objects = {prefix.split("/", 1)[1]: count for prefix, count in result["objects"].items()}
    assert objects["partitions/hourly_partition/"] == 24 and objects["partitions/hourly_join/"] == 1
    # The join started once, on the array's end, and was handed every child's item (its DOWNLOAD_MESSAGE).
    (joined,) = [
        line for log in (tmp_path / "logs").glob("job-*hourly_join*.log") for line in log.read_text().splitlines()
    ]
    assert joined.startswith("joined 24 of 24 partitions: ")
    # Each of the fan-out's children wrote a log of its own, beside its array's name.
    assert len(list((tmp_path / "logs").glob("job-*hourly_partition*-child*-1.log"))) == 24
    # The second stage (the daily report) drained every finished task from the downstream queue.
    assert result["downstream_queues"] and set(result["downstream_queues"].values()) == {0}
    report_logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("job-reports-daily_report-*.log"))
    assert '"tasks": 8' in report_logs
    consumer_output = [prefix for prefix in result["objects"] if prefix.endswith("/feeds/feed_consumer/")]
    assert consumer_output
    # IAM checked by execution: every kind of component made calls, each allowed by its own role's policies.
    assert result["iam"]["denied"] == []
    roles = set(result["iam"]["allowed_by_role"])
    assert any(role.startswith("StatisticsInstanceRole") for role in roles)  # the fleet's workers
    assert any(role.startswith("PipelineConstructsGlueRole") for role in roles)  # the glue function
    assert {"FeedsfeedwatcherJobRole", "FeedsfeedconsumerJobRole", "ReportsdailyreportJobRole"} <= {
        role[:-8] for role in roles
    }  # each Batch step's job role
    assert "AWS::IAM::Role" not in result["not_emulated"]
    assert "AWS::EC2::Subnet" in result["not_emulated"]  # listed, not silently dropped
    assert result["failure_queues"] and set(result["failure_queues"].values()) == {0}


def test_fault_run_loses_nothing_and_dead_letters_the_poison(example_outdir, tmp_path):
    outdir = example_outdir
    code, result = run_local(
        outdir,
        tmp_path,
        "--demo",
        "--tasks",
        "8",
        "--kill-worker-every",
        "4",
        "--visibility-timeout",
        "5",  # what a killed worker held comes back in 5 s, not 15
        "--poison",
        "2",
        "--spot-notice-after",
        "3",
        "--timeout",
        "170",
        "--fire",
        "DailyReport",  # the second stage drains the finished tasks; the feed chain is not under test here
    )
    assert code == 0, result
    fleets = result["fleets"]
    assert sum(p["lost"] for p in fleets.values()) == 0
    assert sum(p["dead"] for p in fleets.values()) == 2 * len(fleets)  # each first-stage fleet's 2 poison tasks
    assert sum(p["kills"] for p in fleets.values()) >= 2
    assert sum(p["spot_notices"] for p in fleets.values()) == 1
    assert any("spot interruption notice" in event for event in result["fault_events"])
    assert all(p["done"] == p["expected"] - (2 if p["dead"] else 0) for p in fleets.values())
    # The status store agrees: a SUCCEEDED row per finished task, a FAILED row per dead letter.
    assert all((p["rows_succeeded"], p["rows_failed"]) == (p["done"], p["dead"]) for p in fleets.values())
    # The summary says why: each restart (here the injected kills) and each dead letter, with its log.
    dead = [r for r in result["reasons"] if "dead-lettered" in r["what"]]
    assert "poison-00" in " ".join(r["what"] for r in dead) and all(r["reason"] and r["log"] for r in dead)
    assert any(r["reason"] == "killed by SIGKILL" and "worker restart" in r["what"] for r in result["reasons"])


def test_a_lifecycle_termination_is_drained_and_completed_in_the_local_run(example_outdir, tmp_path):
    outdir = example_outdir
    code, result = run_local(
        outdir, tmp_path, "--demo", "--tasks", "4", "--lifecycle-terminate-after", "1", "--fire", "DailyReport"
    )
    assert code == 0, result
    (fleet,) = [p for p in result["fleets"].values() if p["lifecycle_terminations"]]
    assert (fleet["lifecycle_terminations"], fleet["lifecycle_completed"]) == (1, 1)
    assert fleet["replacements"] >= 1, "the group replaces the drained worker"
    assert fleet["lost"] == 0 and fleet["rows_succeeded"] == fleet["done"] == 4


def test_a_failed_step_makes_the_run_exit_non_zero(example_outdir, tmp_path):
    outdir = example_outdir
    code, result = run_local(
        outdir,
        tmp_path,
        "--demo",
        "--tasks",
        "0",
        "--fire",
        "DailyFeed",
        "--fail-step",
        "feed_consumer",
        "--workers",
        "0",
    )
    assert code == 1
    consumer = next(j for j in result["jobs"] if j["step"] == "feed_consumer")
    assert consumer["status"] == "FAILED"
    assert consumer["attempts"] == 1  # an application error exits at once; retrying a bug wastes money
    assert "exit code 3" in consumer["reason"]


def test_a_lost_task_makes_the_result_fail(example_outdir, tmp_path):
    outdir = example_outdir
    from pipeline_constructs.local.cli import embedded_emulator

    stack = find_stack(load_assembly(outdir), "pipeline-dev")
    with embedded_emulator(None) as endpoint:
        pipeline = LocalPipeline(
            stack, outdir, endpoint=endpoint, region="us-east-1", log_dir=tmp_path / "logs", workers_per_fleet=0
        )
        try:
            pipeline.start()
            pipeline.submit_sample_tasks(3)
            first = pipeline.first_stage_fleets()[0]
            pipeline.sqs.purge_queue(QueueUrl=first.queue_url)  # three tasks vanish without a trace
            result = pipeline.result()
        finally:
            pipeline.stop()
    assert result["ok"] is False
    assert result["fleets"][first.name]["lost"] == 3


def test_the_local_run_follows_a_changed_example_app(tmp_path):
    """Switch the feed link to a success link and point the feed at a local server, in the app's config:
    the local run takes both from the template (nothing about the example is built into the runner)."""
    feed = cli.FeedServer(sample_feed("job", 7))
    try:
        outdir = tmp_path / "cdk.out"
        dev = _dev_config() | {"feedLink": "success", "feedUrl": feed.url}
        synth_example(outdir, {"pipeline:environments": {"dev": dev}, "env": "dev"}, rule_packs=False)
        code, result = run_local(outdir, tmp_path, "--fire", "DailyFeed", "--timeout", "90", "--workers", "0")
    finally:
        feed.shutdown()
    assert code == 0, result
    assert [(j["step"], j["status"]) for j in result["jobs"]] == [
        ("feed_watcher", "SUCCEEDED"),
        ("feed_consumer", "SUCCEEDED"),
    ]
    assert "sample-feed" in next(iter(result["objects"])) or any("feed_consumer" in p for p in result["objects"])
    logs = "".join(path.read_text() for path in (tmp_path / "logs").glob("job-feeds-feed_consumer-*.log"))
    assert '"records": 7' in logs


def _dev_config() -> dict:
    from tests.support.example_app import cdk_json_context

    return cdk_json_context()["pipeline:environments"]["dev"]


# ---------------------------------------------------------------- the pieces


def test_resolver_spells_names_arns_and_intrinsics():
    template = {
        "Resources": {
            "Queue1": {"Type": "AWS::SQS::Queue", "Properties": {}},
            "Topic1": {"Type": "AWS::SNS::Topic"},
            "Bucket1": {"Type": "AWS::S3::Bucket"},
        }
    }
    resolver = Resolver(template, stack_name="s", region="eu-central-1", queue_url_base="http://127.0.0.1:1")
    assert resolver.resolve({"Ref": "Queue1"}) == "http://127.0.0.1:1/123456789012/s-Queue1"
    assert resolver.resolve({"Fn::GetAtt": ["Queue1", "Arn"]}) == "arn:aws:sqs:eu-central-1:123456789012:s-Queue1"
    assert resolver.resolve({"Fn::Sub": "${Topic1}|${AWS::Region}|${!Literal}"}) == (
        "arn:aws:sns:eu-central-1:123456789012:s-Topic1|eu-central-1|${Literal}"
    )
    assert (
        resolver.resolve({"Fn::Join": ["/", [{"Fn::GetAtt": ["Bucket1", "Arn"]}, "x/*"]]})
        == "arn:aws:s3:::s-bucket1/x/*"
    )
    assert resolver.resolve({"Fn::Select": [1, {"Fn::GetAZs": ""}]}) == "eu-central-1b"


def test_event_patterns_and_input_transformers():
    event = {"source": "aws.batch", "detail": {"status": "FAILED", "jobName": 'n"1', "jobDefinition": "arn:x:1"}}
    assert matches({"source": ["aws.batch"], "detail": {"status": ["FAILED", "SUCCEEDED"]}}, event)
    assert matches({"detail": {"jobDefinition": [{"prefix": "arn:x"}]}}, event)
    assert not matches({"detail": {"status": ["RUNNING"]}}, event)
    transformer = {
        "InputPathsMap": {"name": "$.detail.jobName"},
        "InputTemplate": '{"job": <name>, "text": "job <name>"}',
    }
    assert json.loads(transform(transformer, event)) == {"job": 'n"1', "text": 'job n"1'}


def test_each_child_of_an_array_job_logs_to_a_file_of_its_own_and_a_failed_one_is_named(tmp_path):
    """Children share their array's name and the start of its id: each child's index is in its log's name,
    so no child's log replaces another's, and the run's summary names a failed child and its log."""
    child_says = "import os, sys; i = os.environ['AWS_BATCH_JOB_ARRAY_INDEX']; print('child', i); sys.exit(i == '2')"
    spec = JobDefinitionSpec(
        arn="arn:aws:batch:eu-west-1:1:job-definition/fan:1",
        name="fan",
        environment={},
        image_dir=None,
        command=["python", "-c", child_says],
    )
    batch = LocalBatch(
        {spec.arn: spec}, {"queue"}, base_environment={}, emit=lambda event: None, log_dir=tmp_path, region="eu-west-1"
    )
    try:
        request = {"jobQueue": "queue", "jobDefinition": "fan", "jobName": "fan-1", "arrayProperties": {"size": 4}}
        array = batch.jobs[batch.submit(request)["jobId"]]
        for thread in batch._threads:
            thread.join(timeout=60)
    finally:
        batch.close()
    logs = sorted(tmp_path.glob("job-fan-1-*.log"))
    assert [path.read_text() for path in logs] == [f"child {index}\n" for index in range(4)]
    assert [child.log_path for child in array.children] == logs
    assert job_failure(array) == {
        "what": "job fan-1: 1 of 4 child jobs FAILED",
        "reason": "child 2: Essential container in task exited (exit code 1)",
        "log": str(array.children[2].log_path),
    }
    assert job_failure(array.children[2]) is None  # said once, by its array's entry


def test_dockerfile_entrypoints_map_back_to_the_image_directory(tmp_path):
    (tmp_path / "Dockerfile").write_text(
        'FROM python:3.13-slim\nWORKDIR /app\nCOPY watcher.py /app/\nENTRYPOINT ["python", "/app/watcher.py"]\n'
    )
    (tmp_path / "watcher.py").write_text("")
    entrypoint, cmd, copies = dockerfile_command(tmp_path)
    argv = local_argv(entrypoint + cmd, copies)
    assert argv[1] == str((tmp_path / "watcher.py").resolve())


@pytest.mark.parametrize("argv", [["--env", "staging"], ["--assembly", "/nonexistent"]])
def test_bad_targets_are_one_line_errors(example_outdir, argv, capsys):
    outdir = example_outdir
    arguments = ["--assembly", str(outdir), *argv] if argv[0] == "--env" else argv
    assert cli.main(arguments) == 2
    assert "error:" in capsys.readouterr().out


def test_the_cli_operates_a_local_run(example_outdir, tmp_path):
    """`pipeline ... --local` finds the local run's resources through the same manifest output as in AWS."""
    from typer.testing import CliRunner

    from pipeline_constructs.local.cli import embedded_emulator
    from pipeline_constructs.ops.cli import app

    outdir = example_outdir
    stack = find_stack(load_assembly(outdir), "dev")
    state = tmp_path / "local-run.json"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(6):
        (inputs / f"sales-{i}.csv").write_text("id,price\n1,2.5\n2,3.5\n")
    with embedded_emulator(None) as endpoint:
        pipeline = LocalPipeline(
            stack, outdir, endpoint=endpoint, region="us-east-1", log_dir=tmp_path / "logs", workers_per_fleet=1
        )
        try:
            pipeline.start()
            pipeline.write_state(state)
            runner = CliRunner()
            local = ["--local", "--state-file", str(state)]
            submitted = runner.invoke(app, ["submit", str(inputs), "--fleet", "Statistics", *local])
            assert submitted.exit_code == 0, submitted.output
            assert "enqueued 6" in submitted.output
            # The run's own Auto Scaling answers the wake: no "could not wake the fleet (no Auto Scaling group...)".
            assert "could not wake" not in submitted.output
            assert pipeline.wait_until_idle(90)
            status = runner.invoke(app, ["status", "--json", *local])
            assert status.exit_code == 0, status.output
            fleets = json.loads(status.output)["fleets"]
        finally:
            pipeline.stop()
    statistics = next(f for name, f in fleets.items() if name.endswith("/Statistics"))
    assert statistics["tasks"] == {"SUCCEEDED": 6}
    assert (statistics["waiting"], statistics["in_flight"], statistics["dead_letters"]) == (0, 0, 0)


@pytest.mark.parametrize(
    ("expression", "zone", "utc", "expected"),
    [
        ("cron(0 3 * * ? *)", "Europe/Berlin", "2026-11-23T02:00", True),  # 03:00 in Berlin (CET)
        ("cron(0 3 * * ? *)", "Europe/Berlin", "2026-07-01T01:00", True),  # 03:00 in Berlin (CEST)
        ("cron(0 3 * * ? *)", "Europe/Berlin", "2026-11-23T03:00", False),
        ("cron(*/15 8-17 ? * MON-FRI *)", "UTC", "2026-11-23T08:45", True),  # a Monday
        ("cron(*/15 8-17 ? * MON-FRI *)", "UTC", "2026-11-22T08:45", False),  # a Sunday
        ("cron(0 12 1 JAN,JUL ? 2026)", "UTC", "2026-07-01T12:00", True),
    ],
)
def test_cron_schedules_fire_at_their_local_time(expression, zone, utc, expected):
    import datetime as dt

    from pipeline_constructs.local.cron import due

    moment = dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC)
    assert due(expression, zone, moment, moment) is expected


def test_rate_schedules_count_from_the_start():
    import datetime as dt

    from pipeline_constructs.local.cron import due

    start = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
    fired = [m for m in range(0, 31) if due("rate(10 minutes)", "UTC", start + dt.timedelta(minutes=m), start)]
    assert fired == [10, 20, 30]


def test_a_lost_task_makes_the_demo_exit_non_zero(example_outdir, tmp_path, monkeypatch):
    """Tasks that vanish from the queue (no output, not in a DLQ) fail the run's exit code."""
    outdir = example_outdir
    submit = LocalPipeline.submit_sample_tasks

    def submit_then_lose(self, count):
        submit(self, count)
        for fleet in self.first_stage_fleets():
            self.sqs.purge_queue(QueueUrl=fleet.queue_url)

    monkeypatch.setattr(LocalPipeline, "submit_sample_tasks", submit_then_lose)
    code, result = run_local(
        outdir, tmp_path, "--demo", "--tasks", "4", "--no-schedules", "--timeout", "60", "--workers", "0"
    )
    assert code == 1
    assert {p["lost"] for p in result["fleets"].values()} == {4}


def test_schedules_fire_on_their_own_while_the_run_serves(example_outdir, tmp_path, monkeypatch):
    from pipeline_constructs.local import triggers
    from pipeline_constructs.local.cli import embedded_emulator

    outdir = example_outdir
    stack = find_stack(load_assembly(outdir), "dev")
    # Every minute is "due" for the feed schedule only: the loop, not the calendar, is under test here.
    monkeypatch.setattr(triggers, "due", lambda expression, zone, now, started: zone == "Europe/Berlin")
    with embedded_emulator(None) as endpoint:
        pipeline = LocalPipeline(
            stack, outdir, endpoint=endpoint, region="us-east-1", log_dir=tmp_path / "logs", workers_per_fleet=0
        )
        try:
            pipeline.start()
            assert pipeline.batch is not None
            threading.Thread(target=pipeline.run_schedules, daemon=True).start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not pipeline.batch.jobs:
                time.sleep(0.5)
            jobs = [job.name for job in pipeline.batch.jobs.values()]
            fired = {schedule.path: schedule.fired for schedule in pipeline.schedules}
        finally:
            pipeline.stop()
    assert jobs and all(name.startswith(("feeds-", "reports-", "partitions-")) for name in jobs)
    assert sum(fired.values()) >= 3  # the three schedules share the zone; each fired once in the minute
    assert any("fired on its schedule" in event for event in pipeline.faults.events)


def test_without_the_local_extra_the_local_run_says_how_to_get_it(example_outdir, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "moto" else real(name, *a))
    code = cli.main(["--assembly", str(example_outdir), "--env", "dev"])
    assert code == 2
    assert "pip install 'pipeline-constructs[local]'" in capsys.readouterr().out


def _assembly_without(outdir: Path, target: Path, policy_prefix: str, action: str) -> tuple[Path, set[str]]:
    """A copy of the dev assembly whose policies ``policy_prefix*`` no longer grant ``action``, and the roles
    they belonged to."""
    target.mkdir()
    for entry in outdir.iterdir():
        if entry.is_dir():
            (target / entry.name).symlink_to(entry)  # assets: read only
        else:
            (target / entry.name).write_bytes(entry.read_bytes())
    template_path = target / "pipeline-dev.template.json"
    template = json.loads(template_path.read_text())
    removed, roles = 0, set()
    for logical_id, resource in template["Resources"].items():
        kind = resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        if kind and logical_id.startswith(policy_prefix):
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                if action in actions:
                    statement["Action"] = [a for a in actions if a != action] or ["none:Nothing"]
                    removed += 1
                    roles |= {role["Ref"] for role in resource["Properties"]["Roles"]}
    assert removed, f"{policy_prefix} grants no {action}"
    template_path.write_text(json.dumps(template))
    return target, roles


@pytest.mark.parametrize(
    ("policy_prefix", "action", "call", "resource", "run"),
    [
        (
            "StatisticsInstanceRoleDefaultPolicy",
            "sqs:DeleteMessage",
            "sqs:DeleteMessageBatch",
            "StatisticsTasksQueue",
            ("--demo", "--tasks", "4", "--no-schedules"),
        ),
        (
            "PipelineConstructsGlueChainGrants",
            "batch:SubmitJob",
            "batch:SubmitJob",
            ":job-queue/",
            ("--fire", "DailyFeed", "--workers", "0"),  # the chain alone: no fleet is under test
        ),
        (
            "FeedsfeedwatcherJobRoleDefaultPolicy",
            "s3:PutObject",
            "s3:PutObject",
            "/feeds/feed_watcher/",
            # The demo serves the feed the watcher fetches; the chain alone is under test.
            ("--demo", "--tasks", "0", "--fire", "DailyFeed", "--workers", "0"),
        ),
    ],
    ids=["fleet worker", "glue function", "batch job"],
)
def test_a_permission_missing_from_a_role_fails_the_local_run_naming_it(
    example_outdir, tmp_path, policy_prefix, action, call, resource, run
):
    """IAM checked by execution: the call gets AccessDenied, as on AWS, and the run fails naming the role,
    the call, the missing action and the resource."""
    assembly, roles = _assembly_without(example_outdir, tmp_path / "assembly", policy_prefix, action)
    code, result = run_local(assembly, tmp_path, *run, "--timeout", "60")
    assert code == 1
    assert not result["timed_out"]  # a denial ends the run at once
    denied = result["iam"]["denied"]
    assert denied
    for denial in denied:
        assert denial.startswith(tuple(roles)), denial
        assert f"{call} denied: {action} on " in denial and resource in denial, denial


def _stack(name: str, *, imports: tuple[str, ...] = (), exports: tuple[str, ...] = ()) -> SynthesizedStack:
    resources = {
        f"Uses{i}": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Fn::ImportValue": n}}}
        for i, n in enumerate(imports)
    }
    outputs = {f"Out{i}": {"Value": f"value-of-{n}", "Export": {"Name": n}} for i, n in enumerate(exports)}
    return SynthesizedStack(name, {"Resources": resources, "Outputs": outputs}, Path(f"{name}.template.json"))


def test_a_stack_with_nested_stacks_is_refused_in_one_line():
    nested = {"ChainsNested": {"Type": "AWS::CloudFormation::Stack", "Properties": {}}}
    parent = SynthesizedStack("Parent", {"Resources": nested}, Path("Parent.template.json"))
    with pytest.raises(
        KeyError, match=r"^'Parent has nested stacks \(ChainsNested\), which the local run does not run"
    ):
        refuse_nested_stacks(parent)
    refuse_nested_stacks(_stack("Flat"))  # nothing to refuse


def test_a_stack_runs_with_the_stacks_it_imports_from_each_after_its_own_producers():
    base, shared = _stack("Base", exports=("vpc",)), _stack("Shared", imports=("vpc",), exports=("bucket",))
    work, other = _stack("Work", imports=("bucket", "vpc")), _stack("Other", exports=("unused",))
    assert [s.name for s in producers_of(work, [work, other, shared, base])] == ["Base", "Shared"]
    with pytest.raises(KeyError, match="Work imports 'gone', which no stack in the assembly exports"):
        producers_of(_stack("Work", imports=("gone",)), [base])
    loop_a, loop_b = _stack("A", imports=("b",), exports=("a",)), _stack("B", imports=("a",), exports=("b",))
    with pytest.raises(KeyError, match="stacks import from each other: A -> B -> A"):
        producers_of(loop_a, [loop_a, loop_b])


def test_an_import_no_stack_of_the_run_exports_is_named():
    template = {"Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}
    resolver = Resolver(template, stack_name="s", region="eu-central-1", queue_url_base="", imports={"a": "1"})
    assert resolver.resolve({"Fn::ImportValue": "a"}) == "1"
    with pytest.raises(UnresolvableError, match="Fn::ImportValue 'b': no stack in the run exports it"):
        resolver.resolve({"Fn::ImportValue": "b"})


def test_the_embedded_emulator_makes_dynamodb_item_operations_atomic():
    """moto checks a conditional write's condition and then writes, unlocked; DynamoDB does both atomically, and
    the glue's submit-once guard relies on it. The local run's emulator holds one lock over them (a fresh
    interpreter: the tests' own emulator holds it too)."""
    probe = (
        "from moto.dynamodb.models import DynamoDBBackend\n"
        "from pipeline_constructs.local import ITEM_OPERATIONS\n"
        "from pipeline_constructs.local.cli import embedded_emulator\n"
        "with embedded_emulator(None):\n"
        "    assert all(hasattr(getattr(DynamoDBBackend, name), '__wrapped__') for name in ITEM_OPERATIONS)\n"
    )
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, timeout=60).returncode == 0


def test_the_emulators_memoized_service_lookup_answers_as_moto_does(moto_endpoint):
    """Every host a request can name gets moto's own answer from the memo (the session's emulator has it on)."""
    from moto.backend_index import backend_url_patterns
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    router = DomainDispatcherApplication(create_backend_app)
    memoized = DomainDispatcherApplication.get_backend_for_host
    original = memoized.__wrapped__
    hosts = [None, "moto_api", "sqs", "dynamodb", "s3", "batch", "sqs.us-east-1.amazonaws.com", "b.s3.amazonaws.com"]
    hosts += [f"{service}.eu-west-1.amazonaws.com" for service, _ in backend_url_patterns[:40]]
    for _ in range(2):  # the second time from the memo
        assert [memoized(router, host) for host in hosts] == [original(router, host) for host in hosts]
