"""The `pipeline` CLI against moto: submit (resumable), status, redrive, tail, start, cost, and its errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from typer.testing import CliRunner

from pipeline_constructs.building_blocks.manifest import OUTPUT_NAME
from pipeline_constructs.local import free_port
from pipeline_constructs.ops.cli import app
from pipeline_constructs.ops.cost import cost_report
from pipeline_constructs.ops.operator import EARLIER_MANIFEST_OUTPUT, MANIFEST_OUTPUT, _run_is_gone
from tests.support.resources import create_batch_queue, create_status_table

runner = CliRunner()


@pytest.fixture
def deployed(aws, monkeypatch):
    """A 'deployed' pipeline in moto: its resources and a CloudFormation stack carrying the manifest output."""
    name = f"cli{uuid.uuid4().hex[:8]}"
    dlq = aws.sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = aws.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = aws.sqs.create_queue(
        QueueName=name,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})},
    )["QueueUrl"]
    bucket = f"{name}-data"
    aws.s3.create_bucket(Bucket=bucket)
    table = create_status_table(aws.dynamodb, f"{name}-status")
    manifest = {
        "version": 1,
        "fleets": {
            f"pipeline-{name}/Statistics": {
                "queueUrl": queue,
                "deadLetterQueueUrl": dlq,
                "bucket": bucket,
                "prefix": "statistics/",
                "table": table.name,
                "group": f"{name}-group",
            }
        },
        "chains": {},
    }
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {MANIFEST_OUTPUT: {"Value": json.dumps(manifest)}},
    }
    aws.session.client("cloudformation").create_stack(StackName=f"pipeline-{name}", TemplateBody=json.dumps(template))
    return type(
        "Deployed",
        (),
        {
            "env": name,
            "queue": queue,
            "dlq": dlq,
            "bucket": bucket,
            "table": table,
            "fleet": f"pipeline-{name}/Statistics",
            "manifest": manifest,
        },
    )


def invoke(*args: str, input: str | None = None):
    result = runner.invoke(app, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def visible(aws, url: str) -> int:
    return int(
        aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
            "ApproximateNumberOfMessages"
        ]
    )


def test_the_cli_reads_the_output_the_constructs_write():
    assert MANIFEST_OUTPUT == OUTPUT_NAME  # operator.py names it without importing the CDK


def test_submit_200_files_then_again_enqueues_nothing_twice(deployed, aws, tmp_path):
    folder = tmp_path / "batch"
    for i in range(200):
        (folder / f"day{i % 4}").mkdir(parents=True, exist_ok=True)
        (folder / f"day{i % 4}" / f"file{i:03d}.csv").write_text(f"id,value\n{i},{i * 2}\n")

    code, output = invoke("submit", str(folder), "--fleet", "Statistics", "--stack", deployed.env, "--dry-run")
    assert code == 0 and "would enqueue 200" in output
    assert visible(aws, deployed.queue) == 0

    code, output = invoke("submit", str(folder), "--fleet", "Statistics", "--stack", deployed.env)
    assert code == 0, output
    assert "enqueued 200, skipped 0" in output
    assert visible(aws, deployed.queue) == 200
    inputs = aws.s3.list_objects_v2(Bucket=deployed.bucket, Prefix="statistics/input/")["KeyCount"]
    assert inputs == 200
    body = json.loads(aws.sqs.receive_message(QueueUrl=deployed.queue, VisibilityTimeout=0)["Messages"][0]["Body"])
    assert body["key"].startswith("day") and body["key"].endswith(".csv")

    code, output = invoke("submit", str(folder), "--fleet", "Statistics", "--stack", deployed.env)
    assert code == 0
    assert "enqueued 0, skipped 200 already enqueued or done" in output
    assert visible(aws, deployed.queue) == 200


def test_submit_wakes_a_fleet_at_zero_once_and_never_lowers_it(deployed, tmp_path, monkeypatch):
    from pipeline_constructs.local.autoscaling import LocalAutoScaling, LocalGroup

    server = LocalAutoScaling()
    changes: list[int] = []
    group = LocalGroup(f"{deployed.env}-group", max_size=4, desired=0, on_desired=changes.append)
    server.register_group(group)
    monkeypatch.setenv("AWS_ENDPOINT_URL_AUTO_SCALING", server.endpoint)
    try:
        for i in range(3):
            (tmp_path / f"f{i}.csv").write_text("id\n1\n")
        code, output = invoke("submit", str(tmp_path), "--fleet", "Statistics", "--stack", deployed.env)
        assert code == 0 and "the fleet was at zero workers: started one" in output
        assert changes == [1]
        group.desired = 3  # its scaling took over
        (tmp_path / "later.csv").write_text("id\n2\n")
        code, output = invoke("submit", str(tmp_path), "--fleet", "Statistics", "--stack", deployed.env)
        assert code == 0 and "started one" not in output
        assert changes == [1], "a group above zero is never set back to one"
    finally:
        server.close()


def test_a_fleet_that_cannot_be_woken_still_gets_its_tasks(deployed, aws, tmp_path):
    (tmp_path / "a.csv").write_text("id\n1\n")
    code, output = invoke("submit", str(tmp_path), "--fleet", "Statistics", "--stack", deployed.env)
    assert code == 0 and "enqueued 1" in output
    assert "could not wake the fleet" in output and visible(aws, deployed.queue) == 1


def test_status_shows_queue_dlq_and_task_progress(deployed, aws, tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    invoke("submit", str(tmp_path / "a.csv"), "--stack", deployed.env)
    aws.sqs.send_message(QueueUrl=deployed.dlq, MessageBody='{"key": "poison"}')
    code, output = invoke("status", "--stack", deployed.env, "--json")
    assert code == 0, output
    snapshot = json.loads(output)
    fleet = snapshot["fleets"][deployed.fleet]
    assert (fleet["waiting"], fleet["dead_letters"]) == (1, 1)
    assert fleet["tasks"] == {"ENQUEUED": 1}
    code, output = invoke("status", "--stack", deployed.env)
    assert code == 0 and "Statistics" in output


def test_redrive_asks_first_and_moves_everything_when_confirmed(deployed, aws):
    for i in range(3):
        aws.sqs.send_message(QueueUrl=deployed.dlq, MessageBody=json.dumps({"key": f"dead-{i}"}))
    code, output = invoke("redrive", "--stack", deployed.env, input="n\n")
    assert code == 1 and "Move 3 message(s)" in output and "nothing moved" in output
    assert visible(aws, deployed.dlq) == 3
    code, output = invoke("redrive", "--stack", deployed.env, input="y\n")
    assert code == 0 and "moved 3 message(s)" in output
    assert (visible(aws, deployed.dlq), visible(aws, deployed.queue)) == (0, 3)
    aws.sqs.send_message(QueueUrl=deployed.dlq, MessageBody='{"key": "again"}')
    code, output = invoke("redrive", "--stack", deployed.env, "--yes")
    assert code == 0 and "moved 1 message(s)" in output


def test_tail_lists_the_latest_failures(deployed):
    deployed.table.put_item(
        Item={
            "pk": f"fleet#{deployed.fleet}",
            "sk": "task#bad.csv",
            "state": "FAILED",
            "attempts": 3,
            "error": "ValueError: no header",
            "updated_at": 5,
        }
    )
    code, output = invoke("tail", "--stack", deployed.env)
    assert code == 0 and "bad.csv" in output and "ValueError: no header" in output


def test_missing_stack_is_one_line_naming_what_to_fix(deployed):
    code, output = invoke("status", "--stack", "nosuchenv")
    assert code == 1
    assert "Traceback" not in output
    assert " ".join(output.split()) == (
        "error: stack 'pipeline-nosuchenv' or 'nosuchenv' not found in region us-east-1: check the name, or the "
        "region (--region, AWS_REGION)"
    )


def test_missing_credentials_is_one_line_naming_what_to_fix(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    code, output = invoke("status", "--stack", "dev")
    assert code == 1
    assert "Traceback" not in output
    assert output.strip().startswith("error: no AWS credentials found: set AWS_PROFILE")
    assert len(output.strip().splitlines()) <= 2  # one sentence (rich may wrap it)


def test_local_flag_without_a_local_run_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no cdk.out here: say how to make one
    code, output = invoke("status", "--local", "--state-file", str(tmp_path / "none.json"))
    assert code == 1
    assert (
        "start one with `pipeline local --stack <your stack> --serve` (run `npx cdk synth` in your app's folder "
        "first, or point --assembly at its cdk.out)" in " ".join(output.split())
    )
    assert "--env dev" not in output and "make synth" not in output


def test_local_flag_with_the_state_file_of_a_run_that_is_gone_says_so(tmp_path, monkeypatch):
    """A run killed with kill -9 leaves its state file: its endpoints answer nothing, and the CLI says why."""
    monkeypatch.chdir(tmp_path)
    ended = subprocess.Popen(["true"])  # its process id is free once it has been waited for
    ended.wait()
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    state = {"stack": "Work", "region": "eu-west-1", "endpoint": endpoint, "outputs": {}}
    state_file = Path("left.json")  # in tmp_path, named short: a long path would be wrapped mid-word
    state_file.write_text(json.dumps(state | {"pid": ended.pid}))
    code, output = invoke("status", "--local", "--state-file", str(state_file))
    assert code == 1
    said = " ".join(output.split())
    assert f"the local run that wrote {state_file} is no longer running (process {ended.pid} is gone" in said
    assert "start one with `pipeline local --stack <your stack> --serve`" in said


def test_a_run_is_gone_only_when_its_process_is_not_there_and_its_emulator_refuses():
    """A run in another PID namespace (a container) is not seen here but answers: not gone. A pid that is no
    number (a hand-edited file) is no evidence either way."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        endpoint = f"http://127.0.0.1:{listening.getsockname()[1]}"
        assert not _run_is_gone({"pid": ended.pid, "endpoint": endpoint})
    assert _run_is_gone({"pid": ended.pid, "endpoint": endpoint})
    assert not _run_is_gone({"pid": os.getpid(), "endpoint": endpoint})
    assert not _run_is_gone({"pid": str(ended.pid), "endpoint": endpoint})
    assert not _run_is_gone({"endpoint": endpoint})


def write_assembly(folder: Path, stacks: list[str]) -> None:
    """A cloud assembly's manifest naming ``stacks`` (what the hints read of it)."""
    (folder / "cdk.out").mkdir()
    artifacts = {name: {"type": "aws:cloudformation:stack"} for name in stacks}
    (folder / "cdk.out" / "manifest.json").write_text(json.dumps({"artifacts": artifacts | {"Tree": {"type": "x"}}}))


def test_hints_name_the_stacks_of_the_users_own_assembly(tmp_path, monkeypatch):
    """Not the example's dev and prod: the stacks of the app whose cdk.out is here."""
    monkeypatch.chdir(tmp_path)
    write_assembly(tmp_path, ["Shared", "Work"])
    code, output = invoke("status", "--local", "--state-file", str(tmp_path / "none.json"))
    assert code == 1
    assert "start one with `pipeline local --stack Shared --serve` (stacks in cdk.out: Shared, Work)" in " ".join(
        output.split()
    )
    code, output = invoke("status")
    assert code == 1
    assert (
        "name the deployed stack with `--stack Shared` (stacks in cdk.out: Shared, Work), or use --local"
        in " ".join(output.split())
    )


def test_a_missing_assembly_says_to_synth_the_users_app(tmp_path):
    code, output = invoke("cost", "--assembly", str(tmp_path / "cdk.out"))
    assert code == 1
    assert "run `npx cdk synth` in your app's folder first, or point --assembly at its cdk.out" in " ".join(
        output.split()
    )
    assert "make synth" not in output


def test_start_submits_the_first_step_of_a_chain(deployed, aws, monkeypatch):
    batch = aws.session.client("batch")
    queue, definitions = create_batch_queue(aws.session, deployed.env, ["watch"])
    manifest = deployed.manifest | {
        "chains": {
            "feeds": {
                "jobQueue": queue,
                "steps": ["watch"],
                "jobDefinitions": definitions,
                "table": deployed.table.name,
            }
        }
    }
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        # A stack deployed before the library kept its ids under one namespace: still found.
        "Outputs": {EARLIER_MANIFEST_OUTPUT: {"Value": json.dumps(manifest)}},
    }
    aws.session.client("cloudformation").create_stack(
        StackName=f"pipeline-{deployed.env}b", TemplateBody=json.dumps(template)
    )
    code, output = invoke("start", "feeds", "--env", "PARALLELISM=4", "--stack", f"{deployed.env}b")
    assert code == 0, output
    assert "started run feeds-manual-" in output
    (job,) = (
        batch.list_jobs(jobQueue=queue, jobStatus="FAILED")["jobSummaryList"]
        or batch.list_jobs(jobQueue=queue)["jobSummaryList"]
    )
    described = batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]
    env = {e["name"]: e["value"] for e in described["container"]["environment"]}
    assert env["PARALLELISM"] == "4" and env["PIPELINE_STEP"] == "watch"


def test_cost_reports_a_nat_gateway_with_its_price():
    stack = cdk.Stack(cdk.App(), "Costly", env=cdk.Environment(region="us-east-1"))
    ec2.Vpc(stack, "Vpc", nat_gateways=1, availability_zones=["us-east-1a"])
    template = cdk.assertions.Template.from_stack(stack).to_json()
    report = cost_report(template)
    (nat,) = [line for line in report["lines"] if line.kind == "NAT gateway"]
    assert nat.monthly == pytest.approx(0.045 * 730)
    assert report["idle_monthly"] >= 32.85


def test_cost_of_the_example_app_lists_its_alarms_and_no_idle_compute(example_stacks):
    report = cost_report(example_stacks["pipeline-dev"].template)
    kinds = {line.kind for line in report["lines"]}
    assert kinds == {"CloudWatch alarm", "dashboard"}
    assert report["idle_monthly"] == pytest.approx(sum(line.monthly for line in report["lines"]), abs=0.01)
    # Three fleets' scaling alarms, the glue's and dead-letter alarms, and the dashboard ($3, or one of the
    # account's 3 free ones): no idle compute.
    assert report["idle_monthly"] <= 5.40
    assert "SQS" in report["pay_per_use"]


def test_cost_prints_the_compliance_profiles_idle_cost_next_to_the_defaults(example_outdir):
    code, output = invoke("cost", "--assembly", str(example_outdir), "--stack", "pipeline-prod")
    assert code == 0, output
    assert "(compliance profile)" in output
    assert "42.90" in output  # total idle: NAT gateway, its address, the key, the alarms, the dashboard
    default_row = next(line for line in output.splitlines() if "default profile" in line)
    assert "5.40" in default_row  # the same stack without the profile: its alarms and dashboard only


def test_moto_prints_nothing_into_a_later_cli_output(moto_endpoint, capsys):
    # A Batch job thread in moto once printed a Docker warning into a CLI test's captured output (CI, 2026-12-01).
    from moto import settings

    settings.moto_server_host()
    assert capsys.readouterr().out == ""


def test_status_shows_a_run_whose_job_was_cancelled_in_runnable_as_failed_with_why(deployed, aws, monkeypatch):
    from pipeline_constructs.glue import handler as glue
    from pipeline_constructs.ops import cli

    definitions = {step: f"arn:aws:batch:us-east-1:123456789012:job-definition/{step}{deployed.env}:1" for step in "ab"}
    manifest = deployed.manifest | {
        "chains": {
            "feeds": {"jobQueue": "q", "steps": ["a", "b"], "jobDefinitions": definitions, "table": deployed.table.name}
        }
    }
    aws.session.client("cloudformation").create_stack(
        StackName=f"pipeline-{deployed.env}c",
        TemplateBody=json.dumps(
            {
                "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {MANIFEST_OUTPUT: {"Value": json.dumps(manifest)}},
            }
        ),
    )
    steps = [{"name": step, "jobDefinition": arn} for step, arn in definitions.items()]
    config = {"chains": {"feeds": {"jobQueue": "q", "table": deployed.table.name, "steps": steps}}}
    recorder = glue.Glue(config, batch=None, dynamodb=aws.dynamodb)

    def job(step: str, run: str, status: str, reason: str = "") -> None:
        detail = {
            "jobId": f"{run}-{step}",
            "status": status,
            "statusReason": reason,
            "jobDefinition": definitions[step],
        }
        detail["container"] = {"environment": [{"name": "PIPELINE_CHAIN_RUN", "value": run}]}
        recorder.handle({"source": "aws.batch", "detail-type": "Batch Job State Change", "detail": detail})

    job("a", "run-1", "SUCCEEDED")
    job("b", "run-1", "SUCCEEDED")
    job("a", "run-2", "SUCCEEDED")
    job("b", "run-2", "RUNNABLE")
    job(
        "b",
        "run-2",
        "FAILED",
        "Canceled by JobStateTimeLimit action due to reason: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
    )
    job("a", "run-3", "RUNNING")

    code, output = invoke("status", "--stack", f"{deployed.env}c", "--json")
    assert code == 0, output
    runs = json.loads(output)["chains"]["feeds"]
    assert runs["run-1"] == {"status": "SUCCEEDED", "reason": "", "steps": {"a": "SUCCEEDED", "b": "SUCCEEDED"}}
    assert runs["run-2"]["status"] == "FAILED" and runs["run-2"]["steps"] == {"a": "SUCCEEDED", "b": "FAILED"}
    assert runs["run-2"]["reason"].endswith(
        "no spot capacity in any allowed instance type (CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY)"
    )
    assert runs["run-3"]["status"] == "RUNNING"
    monkeypatch.setattr(cli.console, "_width", 400)  # one line per run, however long its reason
    code, output = invoke("status", "--stack", f"{deployed.env}c")
    (line,) = [line for line in output.splitlines() if "run-2" in line]
    assert "FAILED: cancelled after waiting in RUNNABLE" in line and "no spot capacity" in line
