"""Alarm notifications in a local run: every alarm of the dev stack set to ALARM once, its notification delivered
by CloudWatch to the alarm topic (its policy decides, as on AWS) and on to the topic's subscribers; without the
topic's CloudWatch statement the same firing is denied, with the alarm history's reason, and the run fails."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from pipeline_constructs.local import cli
from pipeline_constructs.local.alarms import topic_subscribers
from pipeline_constructs.local.cli import embedded_emulator
from pipeline_constructs.local.display import print_summary
from pipeline_constructs.local.provisioning import cdk_path
from pipeline_constructs.local.resolver import Resolver
from pipeline_constructs.local.resource_policies import alarm_sender
from pipeline_constructs.local.runner import LocalPipeline
from pipeline_constructs.ops.assembly import SynthesizedStack, find_stack, load_assembly

#: The example's dev fleets (a function's, a command's, an HTTP app's), and its alarms that notify the topic:
#: each fleet's dead letters, the glue's errors and failures, and the finished-task DLQ.
FLEETS = 3
TOPIC_ALARMS = FLEETS + 3


def _alarm_topic(stack: SynthesizedStack) -> str:
    (topic,) = [lid for lid in stack.resources_of_type("AWS::SNS::Topic") if lid.startswith("AlarmsTopic")]
    return topic


def _topic_alarms(stack: SynthesizedStack, topic: str) -> set[str]:
    """The alarms whose ALARM action is the topic ``topic`` (a logical id)."""
    return {
        lid
        for lid, alarm in stack.resources_of_type("AWS::CloudWatch::Alarm").items()
        if {"Ref": topic} in alarm["Properties"].get("AlarmActions", [])
    }


@pytest.fixture(scope="module")
def fired_dev_run(example_outdir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The dev stack brought up (no workers, no work: only the alarms are under test), an SQS queue subscribed
    to its alarm topic as on-call's tooling would be, every alarm fired once; the run's result and what the
    subscriber received."""
    stack = find_stack(load_assembly(example_outdir), "pipeline-dev")
    logs = tmp_path_factory.mktemp("alarm-run") / "logs"
    with embedded_emulator(None) as endpoint:
        pipeline = LocalPipeline(
            stack, example_outdir, endpoint=endpoint, region="us-east-1", log_dir=logs, workers_per_fleet=0
        )
        try:
            pipeline.start()
            sqs, sns = pipeline.clients.sqs, pipeline.clients.sns
            topic = pipeline.resolver.ref(_alarm_topic(stack))
            queue_url = sqs.create_queue(QueueName="on-call-tooling")["QueueUrl"]
            queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
            sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn["QueueArn"])
            fired = pipeline.fire_alarms()
            result = pipeline.result()
            received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
            names = {pipeline.resolver.physical_name(lid) for lid in _topic_alarms(stack, _alarm_topic(stack))}
        finally:
            pipeline.stop()
    return SimpleNamespace(
        stack=stack,
        topic=topic,
        queue=queue_arn["QueueArn"],
        fired=fired,
        result=result,
        received=received,
        topic_alarm_names=names,
    )


def test_every_alarm_fires_once_and_each_notification_is_delivered_to_the_alarm_topic(fired_dev_run):
    run, stack = fired_dev_run, fired_dev_run.stack
    alarms = stack.resources_of_type("AWS::CloudWatch::Alarm")
    assert sorted(fired.alarm for fired in run.fired) == sorted(cdk_path(stack, lid) for lid in alarms)
    to_topic = {cdk_path(stack, lid) for lid in _topic_alarms(stack, _alarm_topic(stack))}
    assert len(to_topic) == TOPIC_ALARMS  # each fleet's scale-from-zero alarm acts on a scaling policy
    reported = {entry["alarm"]: entry["notifications"] for entry in run.result["alarms"]}
    for alarm, notifications in reported.items():
        if alarm in to_topic:
            ((notification),) = notifications
            assert (notification["topic"], notification["denied"]) == (run.topic, "")
            assert f"sqs {run.queue}" in notification["sent_to"]
        else:
            assert not notifications
    # The result lists each delivery by CloudWatch, as allowed by the topic's policy, and the run passes.
    delivered = run.result["deliveries"]["delivered"]
    assert {alarm: delivered.get(f"CloudWatch alarm {alarm} -> {run.topic}") for alarm in to_topic} == dict.fromkeys(
        to_topic, 1
    )
    assert run.result["deliveries"]["denied"] == []
    assert run.result["ok"] is True


def test_each_notification_reaches_the_topics_subscriber(fired_dev_run):
    notifications = [json.loads(json.loads(message["Body"])["Message"]) for message in fired_dev_run.received]
    assert sorted(n["AlarmName"] for n in notifications) == sorted(fired_dev_run.topic_alarm_names)
    assert {n["NewStateValue"] for n in notifications} == {"ALARM"}
    assert all(n["AlarmArn"].startswith("arn:aws:cloudwatch:us-east-1:") for n in notifications)


def test_the_summary_shows_each_alarms_notification_delivered(fired_dev_run):
    console = Console(record=True, width=400)
    print_summary(console, fired_dev_run.result | {"timed_out": False})
    text = console.export_text()
    lines = [line for line in text.splitlines() if line.startswith("alarm ")]
    topic = fired_dev_run.topic.rsplit(":", 1)[-1]
    delivered = [line for line in lines if f"notification delivered to {topic}, sent on to sqs " in line]
    assert len(delivered) == TOPIC_ALARMS and len(lines) == TOPIC_ALARMS + FLEETS, lines
    assert "Result: everything completed" in text


def test_prods_email_subscriber_is_listed_as_where_a_notification_goes(example_stacks):
    """prod's alarm topic e-mails on-call: the local run cannot send the mail, and says so where it lists the
    subscriptions a delivered notification went on to."""
    stack = example_stacks["pipeline-prod"]
    resolver = Resolver(stack.template, stack_name=stack.name, region="us-east-1", queue_url_base="")
    emulator = SimpleNamespace(list_subscriptions_by_topic=lambda TopicArn: {"Subscriptions": []})
    triggers: Any = SimpleNamespace(stack=stack, resolver=resolver, sns_taps=[], clients=SimpleNamespace(sns=emulator))
    subscribers = topic_subscribers(triggers, resolver.ref(_alarm_topic(stack)))
    assert subscribers == ("email data-platform-oncall@example.com (not sent locally)",)


def _assembly_without_cloudwatch_statement(example_stacks: dict[str, SynthesizedStack], target: Path) -> Path:
    """A copy of the assembly (links to its files) whose dev template's alarm topic policy no longer allows
    CloudWatch to publish."""
    stack = example_stacks["pipeline-dev"]
    target.mkdir()
    for entry in stack.template_path.parent.iterdir():
        (target / entry.name).symlink_to(entry)
    template = copy.deepcopy(stack.template)
    policies = template["Resources"].values()
    topic = {"Ref": _alarm_topic(stack)}
    (policy,) = [
        p["Properties"]["PolicyDocument"] for p in policies if topic in p.get("Properties", {}).get("Topics", [])
    ]
    kept = [s for s in policy["Statement"] if s.get("Principal") != {"Service": "cloudwatch.amazonaws.com"}]
    assert len(kept) == len(policy["Statement"]) - 1
    policy["Statement"] = kept
    (target / stack.template_path.name).unlink()  # this copy's own template, not the shared one's
    (target / stack.template_path.name).write_text(json.dumps(template))
    return target


def test_without_the_topics_cloudwatch_statement_every_notification_is_denied_and_the_run_fails(
    example_stacks, tmp_path, capsys
):
    """The demo's firing (no tasks, no schedules: only the alarms) on the dev stack without the statement:
    each notification refused with the alarm history's reason, listed, and the run exits non-zero."""
    assembly = _assembly_without_cloudwatch_statement(example_stacks, tmp_path / "assembly")
    result_file = tmp_path / "result.json"
    code = cli.main(
        [
            *("--assembly", str(assembly), "--env", "dev", "--demo", "--tasks", "0", "--no-schedules"),
            *("--workers", "0", "--quiet", "--timeout", "60"),
            *("--logs", str(tmp_path / "logs"), "--json", str(result_file), "--state-file", str(tmp_path / "s.json")),
        ]
    )
    result = json.loads(result_file.read_text())
    output = capsys.readouterr().out
    assert code == 1
    notifications = [n for fired in result["alarms"] for n in fired["notifications"]]
    assert len(notifications) == TOPIC_ALARMS
    for notification in notifications:
        topic = notification["topic"]
        assert notification["denied"].startswith(f'Failed to execute action {topic}. Received error: "Resource: ')
        assert f'is not authorized to perform: SNS:Publish on resource: {topic}"' in notification["denied"]
        assert "no statement allows the action for cloudwatch.amazonaws.com" in notification["denied"]
        assert notification["sent_to"] == []
    denied = result["deliveries"]["denied"]
    assert len(denied) == TOPIC_ALARMS and all("not authorized to perform: sns:Publish" in d for d in denied)
    # Nothing else failed: the denials alone fail the run.
    assert (result["jobs"], result["iam"]["denied"], result["timed_out"]) == ([], [], False)
    assert output.count("notification to ") == TOPIC_ALARMS and "NOT everything completed" in output


def test_an_alarm_is_named_by_its_constructs_path():
    """As `make demo` shows it (the CDK CLI's synth records paths): the construct, not its ``/Resource``."""
    alarm = {"Type": "AWS::CloudWatch::Alarm", "Metadata": {"aws:cdk:path": "s/Alarms/Errors/Resource"}}
    template = {"Resources": {"AlarmsErrors1234ABCD": alarm}}
    stack = SynthesizedStack("s", template, Path("s.template.json"))
    resolver = Resolver(template, stack_name="s", region="us-east-1", queue_url_base="")
    assert alarm_sender(stack, resolver, "AlarmsErrors1234ABCD").what == "CloudWatch alarm s/Alarms/Errors"
