"""The glue Lambda's code against moto: one SubmitJob per trigger, string environments, named errors."""

from __future__ import annotations

import copy
import json
import re
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.local.autoscaling import LocalAutoScaling, LocalGroup
from tests.support.resources import create_batch_queue, create_status_table

SNS_MESSAGE = '{"type":"lovelive","jobXmlTag":"job","gzipped":true,"emptyCDATA":false}}'  # not valid JSON


@pytest.fixture
def batch_world(aws):
    """A job queue with two job definitions in moto, a status table, and the glue config naming them."""
    name = uuid.uuid4().hex[:8]
    batch = aws.session.client("batch")
    queue, definitions = create_batch_queue(aws.session, name, ["watcher", "consumer", "report"])
    table = create_status_table(aws.dynamodb, f"status{name}")
    topic = f"arn:aws:sns:us-east-1:123456789012:start_feed_consumer{name}"
    config = {
        "table": table.name,
        "chains": {
            "feeds": {
                "jobQueue": queue,
                "topicArn": topic,
                "table": table.name,
                "steps": [
                    {
                        "name": "watcher",
                        "jobDefinition": definitions["watcher"],
                        "link": {"kind": "message", "environment": {"PARALLELISM": "15"}},
                    },
                    {
                        "name": "consumer",
                        "jobDefinition": definitions["consumer"],
                        "link": {"kind": "success", "environment": {}},
                    },
                    {"name": "report", "jobDefinition": definitions["report"], "arraySize": 3},
                ],
            }
        },
    }
    requests: list[dict] = []
    session = boto3.session.Session()
    session.events.register(
        "before-parameter-build.batch.SubmitJob", lambda params, **_: requests.append(copy.deepcopy(params))
    )
    world = type("World", (), {})()
    world.batch, world.queue, world.definitions, world.table, world.topic = batch, queue, definitions, table, topic
    world.config, world.submitted = config, requests
    world.glue = glue.Glue(config, batch=session.client("batch"), dynamodb=session.resource("dynamodb"))
    return world


def sns_event(topic: str, message: str = SNS_MESSAGE, message_id: str = "95df01b4-ee98-5cb9-9903-4c221d41eb5e") -> dict:
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "Sns": {
                    "Type": "Notification",
                    "MessageId": message_id,
                    "TopicArn": topic,
                    "Subject": None,
                    "Message": message,
                    "Timestamp": "2018-01-20T04:06:35.010Z",
                    "MessageAttributes": {},
                },
            }
        ]
    }


def batch_event(definition: str, status: str, job_id: str = "job-1", run: str = "feeds-run-1") -> dict:
    return {
        "version": "0",
        "detail-type": "Batch Job State Change",
        "source": "aws.batch",
        "detail": {
            "jobName": "feeds-consumer-x",
            "jobId": job_id,
            "jobQueue": "arn:aws:batch:us-east-1:123456789012:job-queue/feeds",
            "status": status,
            "statusReason": "Essential container in task exited" if status == "FAILED" else "",
            "jobDefinition": definition,
            "createdAt": 1700000000000,
            "container": {"environment": [{"name": "PIPELINE_CHAIN_RUN", "value": run}]},
        },
    }


def env_of(request: dict) -> dict[str, str]:
    return {pair["name"]: pair["value"] for pair in request["containerOverrides"]["environment"]}


def test_sns_event_submits_the_next_step_with_the_raw_message(batch_world):
    result = batch_world.glue.handle(sns_event(batch_world.topic))
    (request,) = batch_world.submitted
    assert request["jobQueue"] == batch_world.queue
    assert request["jobDefinition"] == batch_world.definitions["consumer"]
    assert request["jobName"] == "feeds-consumer-95df01b4-ee98-5cb9-9903-4c221d41eb5e"
    env = env_of(request)
    assert env["DOWNLOAD_MESSAGE"] == SNS_MESSAGE  # byte for byte, invalid JSON and all
    assert env["PARALLELISM"] == "15"
    assert all(isinstance(value, str) for value in env.values())
    (job,) = batch_world.batch.describe_jobs(jobs=[result["submitted"][0]["jobId"]])["jobs"]
    assert job["jobName"] == request["jobName"]


def test_the_chain_run_travels_with_the_message_and_its_absence_is_warned_of(batch_world, caplog):
    """The publisher's ``chainRun`` attribute keeps the next step in its run; without it the next step starts a
    run of its own (the first one would show RUNNING for ever), and the glue says what to fix."""
    event = sns_event(batch_world.topic)
    event["Records"][0]["Sns"]["MessageAttributes"] = {"chainRun": {"Type": "String", "Value": "feeds-run-7"}}
    batch_world.glue.handle(event)
    assert env_of(batch_world.submitted[-1])["PIPELINE_CHAIN_RUN"] == "feeds-run-7"
    assert "chainRun" not in caplog.text
    batch_world.glue.handle(sns_event(batch_world.topic, message_id="m-2"))
    assert env_of(batch_world.submitted[-1])["PIPELINE_CHAIN_RUN"] == "feeds-m-2"
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "without a chainRun attribute" in warning.getMessage() and "PIPELINE_CHAIN_RUN" in warning.fix


def test_a_message_too_large_for_submit_job_goes_to_s3_as_a_claim_check(batch_world, aws):
    """SubmitJob takes 30 KiB: a 100 KB message travels as DOWNLOAD_MESSAGE_S3, byte for byte, stored once
    under a key that a redelivery of the same message rewrites, never duplicates."""
    bucket = f"claims-{uuid.uuid4().hex[:8]}"
    aws.s3.create_bucket(Bucket=bucket)
    batch_world.config["chains"]["feeds"]["claims"] = {"bucket": bucket, "prefix": "feeds/_messages/"}
    batch_world.glue.s3 = aws.s3
    message = '{"keys": ["' + "k" * 100_000 + '"]}}'
    batch_world.glue.handle(sns_event(batch_world.topic, message))
    batch_world.glue.handle(sns_event(batch_world.topic, message))  # redelivered
    (request,) = batch_world.submitted
    assert glue.request_size(request) <= glue.SUBMIT_JOB_BUDGET
    env = env_of(request)
    assert "DOWNLOAD_MESSAGE" not in env
    claim = env["DOWNLOAD_MESSAGE_S3"]
    assert claim.startswith(f"s3://{bucket}/feeds/_messages/")
    assert claim.endswith("/95df01b4-ee98-5cb9-9903-4c221d41eb5e/consumer.json")
    key = claim.removeprefix(f"s3://{bucket}/")
    assert aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode() == message
    assert aws.s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_two_large_messages_of_one_run_for_one_step_are_two_claim_checks(batch_world, aws):
    """A step that publishes per file (or an array step, or a retried publisher): two messages in one run
    for the same next step must each reach their own job, not both the last one stored."""
    bucket = f"claims-{uuid.uuid4().hex[:8]}"
    aws.s3.create_bucket(Bucket=bucket)
    batch_world.config["chains"]["feeds"]["claims"] = {"bucket": bucket, "prefix": "feeds/_messages/"}
    batch_world.glue.s3 = aws.s3
    messages = {"m-first": "a" * 40_000, "m-second": "b" * 40_000}
    for message_id, message in messages.items():
        event = sns_event(batch_world.topic, message, message_id=message_id)
        event["Records"][0]["Sns"]["MessageAttributes"] = {"chainRun": {"Type": "String", "Value": "feeds-run-7"}}
        batch_world.glue.handle(event)
    claims = [
        env_of(request)["DOWNLOAD_MESSAGE_S3"].removeprefix(f"s3://{bucket}/") for request in batch_world.submitted
    ]
    assert len(set(claims)) == 2
    bodies = [aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode() for key in claims]
    assert bodies == list(messages.values()), "each job reads the message that started it, byte for byte"


def test_a_message_too_large_without_a_claims_bucket_is_refused_naming_its_size(batch_world):
    with pytest.raises(glue.EventError, match=r"SubmitJob request of \d+ bytes is over Batch's 30720"):
        batch_world.glue.handle(sns_event(batch_world.topic, "x" * 40_000))
    assert batch_world.submitted == []


def test_a_message_that_fits_stays_in_the_environment(batch_world):
    message = "m" * 20_000
    batch_world.glue.handle(sns_event(batch_world.topic, message))
    (request,) = batch_world.submitted
    assert env_of(request)["DOWNLOAD_MESSAGE"] == message


def test_constant_input_submits_exactly_one_job_with_string_values(batch_world):
    event = {
        "jobName": "feed-check",
        "jobQueue": batch_world.queue,
        "jobDefinition": batch_world.definitions["watcher"],
        "containerOverrides": {"environment": [{"name": "PARALLELISM", "value": 15}], "vcpus": 2},
        "parameters": {"limit": 100, "dry": True},
        "scheduledTime": "2026-11-23T02:00:00Z",
    }
    batch_world.glue.handle(event)
    (request,) = batch_world.submitted
    assert request["jobName"] == "feed-check-2026-11-23T02-00-00Z"
    assert request["jobQueue"] == batch_world.queue and request["jobDefinition"] == batch_world.definitions["watcher"]
    assert request["containerOverrides"]["environment"] == [{"name": "PARALLELISM", "value": "15"}]
    assert request["parameters"] == {"limit": "100", "dry": "true"}
    listed = batch_world.batch.list_jobs(
        jobQueue=batch_world.queue, filters=[{"name": "JOB_NAME", "values": [request["jobName"]]}]
    )
    assert len(listed["jobSummaryList"]) == 1


def test_chain_start_submits_the_first_step_with_the_run_id(batch_world):
    batch_world.glue.handle({"chain": "feeds", "scheduledTime": "2026-11-23T02:00:00Z"})
    (request,) = batch_world.submitted
    assert request["jobDefinition"] == batch_world.definitions["watcher"]
    assert env_of(request)["PIPELINE_CHAIN_RUN"] == "feeds-2026-11-23T02-00-00Z"


def test_redelivered_triggers_submit_nothing_twice(batch_world):
    event = sns_event(batch_world.topic)
    first = batch_world.glue.handle(event)
    second = batch_world.glue.handle(event)
    assert len(batch_world.submitted) == 1
    assert second["submitted"][0]["duplicate"] == "true"
    assert second["submitted"][0]["jobId"] == first["submitted"][0]["jobId"]


def test_success_link_submits_the_next_step_with_the_finished_job_id(batch_world):
    result = batch_world.glue.handle(batch_event(batch_world.definitions["consumer"], "SUCCEEDED", job_id="abc-123"))
    (request,) = batch_world.submitted
    assert request["jobDefinition"] == batch_world.definitions["report"]
    assert request["jobName"] == "feeds-report-abc-123"
    assert request["arrayProperties"] == {"size": 3}
    assert env_of(request)["PREVIOUS_JOB_ID"] == "abc-123"
    assert env_of(request)["PIPELINE_CHAIN_RUN"] == "feeds-run-1"
    assert result["status"] == "SUCCEEDED"


def test_job_states_are_tracked_and_never_regress(batch_world):
    definition = batch_world.definitions["consumer"]
    batch_world.glue.handle(batch_event(definition, "RUNNING", job_id="j-9"))
    batch_world.glue.handle(batch_event(definition, "FAILED", job_id="j-9"))
    batch_world.glue.handle(batch_event(definition, "RUNNABLE", job_id="j-9"))  # late, out of order
    (row,) = batch_world.table.query(
        KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": "chain#feeds"}
    )["Items"]
    assert row["sk"] == "run#feeds-run-1#01#j-9"
    assert row["status"] == "FAILED" and row["reason"] == "Essential container in task exited"
    assert row["step"] == "consumer"
    assert batch_world.submitted == []  # a failed step starts nothing


def test_a_redelivered_job_state_is_counted_once_in_the_metrics(batch_world, capsys):
    """EventBridge delivers at least once: the row's old state (from the write itself) tells a redelivery,
    and a state older than the row's, from a new one."""
    definition = batch_world.definitions["consumer"]
    capsys.readouterr()
    for status in ("RUNNING", "RUNNING", "SUCCEEDED", "SUCCEEDED", "RUNNING"):
        batch_world.glue.handle(batch_event(definition, status, job_id="j-7"))
    printed = capsys.readouterr().out
    assert [json.loads(line)["State"] for line in printed.splitlines() if '"_aws"' in line] == ["RUNNING", "SUCCEEDED"]


def test_a_job_its_queue_cancelled_in_runnable_fails_its_run_with_the_reason_on_the_row(batch_world):
    definition = batch_world.definitions["consumer"]
    batch_world.glue.handle(batch_event(definition, "RUNNABLE", job_id="j-stuck"))
    cancelled = batch_event(definition, "FAILED", job_id="j-stuck")
    reason = "Canceled by JobStateTimeLimit action due to reason: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"
    cancelled["detail"]["statusReason"] = reason
    result = batch_world.glue.handle(cancelled)
    (row,) = batch_world.table.query(
        KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": "chain#feeds"}
    )["Items"]
    assert row["sk"] == "run#feeds-run-1#01#j-stuck" and row["chain_run"] == "feeds-run-1"
    assert row["status"] == "FAILED" and row["reason"] == reason
    assert row["stuck"] == (
        "cancelled after waiting in RUNNABLE past its queue's time limit: no spot capacity in any allowed "
        "instance type (CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY)"
    )
    assert result["status"] == "FAILED" and batch_world.submitted == []  # the run stops here


def test_message_link_step_success_does_not_also_submit(batch_world):
    batch_world.glue.handle(batch_event(batch_world.definitions["watcher"], "SUCCEEDED"))
    assert batch_world.submitted == []


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e["Records"][0]["Sns"].pop("Message"), "Records[0].Sns.Message: missing"),
        (lambda e: e["Records"][0]["Sns"].pop("MessageId"), "Records[0].Sns.MessageId: missing"),
        (lambda e: e["Records"][0]["Sns"].update(TopicArn="arn:aws:sns:us-east-1:1:other"), "Records[0].Sns.TopicArn"),
        (lambda e: e["Records"][0]["Sns"].update(Message={"not": "a string"}), "Records[0].Sns.Message: expected str"),
        (lambda e: e.update(Records=[]), "Records: empty"),
    ],
)
def test_malformed_sns_events_name_the_field(batch_world, mutate, field):
    event = sns_event(batch_world.topic)
    mutate(event)
    with pytest.raises(glue.EventError, match=field.replace("[", r"\[").replace("]", r"\]")):
        batch_world.glue.handle(event)
    assert batch_world.submitted == []


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"jobQueue": "q", "jobDefinition": "d"}, "jobName: missing"),
        ({"jobName": "n", "jobDefinition": "d"}, "jobQueue: missing"),
        ({"jobName": "n", "jobQueue": "q"}, "jobDefinition: missing"),
        ({"jobName": "n", "jobQueue": "q", "jobDefinition": "d", "parameters": [1]}, "parameters: expected dict"),
        (
            {
                "jobName": "n",
                "jobQueue": "q",
                "jobDefinition": "d",
                "containerOverrides": {"environment": [{"value": 1}]},
            },
            r"containerOverrides.environment\[0\].name: missing",
        ),
        ({"chain": "nope"}, "chain: unknown chain 'nope'; known: feeds"),
        ({"hello": "world"}, "event: neither"),
        ({"detail-type": "Batch Job State Change", "detail": {"jobId": "x"}}, "detail.status: missing"),
    ],
)
def test_malformed_constant_inputs_name_the_field(batch_world, event, field):
    with pytest.raises(glue.EventError, match=field):
        batch_world.glue.handle(event)


def test_failed_submit_job_raises(batch_world):
    event = {
        "jobName": "n",
        "jobQueue": "arn:aws:batch:us-east-1:123456789012:job-queue/missing",
        "jobDefinition": "nope",
    }
    with pytest.raises(ClientError):
        batch_world.glue.handle(event)


def fresh_execution_environment(monkeypatch) -> None:
    """A cold start: the next invocation reads the configuration and makes its clients (this test's endpoint)."""
    glue._clients.cache_clear()
    monkeypatch.setattr(glue, "_environment", glue.ExecutionEnvironment(glue._glue_with_clients))


class FakeGlue:
    def __init__(self, config: dict) -> None:
        self.config = config

    def handle(self, event: dict) -> dict:
        if event["chain"] not in self.config["chains"]:
            raise glue.ConfigMiss(f"chain: unknown chain {event['chain']!r}")
        return {"version": self.config["version"]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_execution_environment_reads_the_parameters_again_after_a_minute_or_for_a_chain_it_does_not_know():
    versions = iter(
        [
            {"version": 1, "chains": {"a": {}}},
            {"version": 2, "chains": {"a": {}, "b": {}}},
            {"version": 3, "chains": {"a": {}, "b": {}}},
        ]
    )
    reads = []

    def read_config() -> dict:
        reads.append(clock.now)
        return next(versions)

    clock = Clock()
    environment = glue.ExecutionEnvironment(FakeGlue, read_config, clock)
    assert environment.handle({"chain": "a"}) == {"version": 1}
    clock.now += 30
    assert environment.handle({"chain": "a"}) == {"version": 1}, "read once per minute, not per invocation"
    # A chain a deploy added after this environment read its configuration: read again at once.
    assert environment.handle({"chain": "b"}) == {"version": 2}
    clock.now += 2
    with pytest.raises(glue.ConfigMiss):  # unknown again within 5 s: no read storm, Lambda's retry comes later
        environment.handle({"chain": "c"})
    clock.now += glue.CONFIG_MAX_AGE_SECONDS
    assert environment.handle({"chain": "a"}) == {"version": 3}, "a replaced job definition is seen within a minute"
    assert reads == [1000.0, 1030.0, 1092.0]


def test_lambda_entry_point_reads_its_config_from_the_environment(batch_world, monkeypatch):
    monkeypatch.setenv("GLUE_CONFIG", json.dumps(batch_world.config))
    fresh_execution_environment(monkeypatch)
    result = glue.handler(sns_event(batch_world.topic, message_id="m-2"))
    assert result["submitted"][0]["jobName"] == "feeds-consumer-m-2"


def test_each_chains_configuration_is_read_from_its_parameter_under_the_path(batch_world, aws, monkeypatch):
    """As deployed: GLUE_CONFIG names the path; every chain is a parameter under it (twelve here, more than
    one page of GetParametersByPath); a parameter under a deeper path is another stack's, not read."""
    ssm = aws.session.client("ssm")
    path = f"/pipeline-constructs/stack-{uuid.uuid4().hex[:6]}/glue"
    feeds = batch_world.config["chains"]["feeds"]
    for i in range(11):
        ssm.put_parameter(
            Name=f"{path}/chain{i}", Value=json.dumps({**feeds, "topicArn": f"{feeds['topicArn']}{i}"}), Type="String"
        )
    ssm.put_parameter(Name=f"{path}/feeds", Value=json.dumps(feeds), Type="String")
    ssm.put_parameter(Name=f"{path}/deeper/other", Value="{}", Type="String")
    monkeypatch.setenv("GLUE_CONFIG", json.dumps({"table": batch_world.config["table"], "chainsPath": path}))
    config = glue.load_config(ssm=ssm)
    assert sorted(config["chains"]) == sorted(["feeds", *(f"chain{i}" for i in range(11))])
    assert config["chains"]["chain3"]["topicArn"].endswith("3")
    fresh_execution_environment(monkeypatch)
    result = glue.handler(sns_event(batch_world.topic, message_id="m-3"))
    assert result["submitted"][0]["jobName"] == "feeds-consumer-m-3"


def test_a_chain_parameter_that_is_not_json_is_named(aws):
    ssm = aws.session.client("ssm")
    path = f"/pipeline-constructs/stack-{uuid.uuid4().hex[:6]}/glue"
    ssm.put_parameter(Name=f"{path}/broken", Value="{not json", Type="String")
    with pytest.raises(RuntimeError, match=f"{path}/broken: not valid JSON"):
        glue.load_config({"GLUE_CONFIG": json.dumps({"chainsPath": path})}, ssm=ssm)


@pytest.fixture
def local_group():
    """A local Auto Scaling endpoint with one group at zero; its desired-capacity changes are recorded."""
    server = LocalAutoScaling()
    changes: list[int] = []
    server.register_group(LocalGroup("workers", max_size=4, desired=0, on_desired=changes.append))
    client = boto3.client(
        "autoscaling",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    yield client, changes
    server.close()


def test_a_wake_check_starts_a_fleet_at_zero_only_when_tasks_wait(aws, local_group):
    autoscaling, changes = local_group
    queue = aws.sqs.create_queue(QueueName=f"wake{uuid.uuid4().hex[:8]}")["QueueUrl"]
    check = {"wake": {"queue": queue, "group": "workers"}}
    gluer = glue.Glue({"chains": {}}, batch=None, dynamodb=None, sqs=aws.sqs, autoscaling=autoscaling)
    assert gluer.handle(check) == {"kind": "wake", "waiting": 0, "woke": False}
    aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"key": "a"}))
    assert gluer.handle(check) == {"kind": "wake", "waiting": 1, "woke": True}
    assert gluer.handle(check) == {"kind": "wake", "waiting": 1, "woke": False}, "a group above zero is left alone"
    assert changes == [1]
    with pytest.raises(glue.EventError, match=r"^wake\.group: no Auto Scaling group named 'elsewhere'$"):
        glue.wake_group(autoscaling, "elsewhere")
    with pytest.raises(glue.EventError, match=r"^wake\.queue: missing$"):
        gluer.handle({"wake": {"group": "workers"}})


def drain_bodies(aws, queue: str) -> list[dict]:
    bodies = []
    while batch := aws.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        bodies += [json.loads(m["Body"]) for m in batch]
        aws.sqs.delete_message_batch(
            QueueUrl=queue, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        )
    return bodies


@pytest.fixture
def fleet_trigger(aws, local_group):
    """A glue with a guard table and a fleet's queue, and the event of a daily ScheduledTrigger(fleet=...)."""
    autoscaling, changes = local_group
    name = uuid.uuid4().hex[:8]
    queue = aws.sqs.create_queue(QueueName=f"enqueue{name}")["QueueUrl"]
    table = create_status_table(aws.dynamodb, f"guard{name}")
    gluer = glue.Glue(
        {"chains": {}, "table": table.name}, batch=None, dynamodb=aws.dynamodb, sqs=aws.sqs, autoscaling=autoscaling
    )
    enqueue = {
        "queue": queue,
        "body": '{"key": "nightly"}',
        "group": "workers",
        "taskPerFiring": True,
        "inputPrefix": "stats/input/",
    }
    event = {"enqueue": enqueue, "scheduledTime": "2026-11-24T03:00:00Z"}
    return type("FleetTrigger", (), {"glue": gluer, "queue": queue, "event": event, "changes": changes})


def test_a_scheduled_fleet_task_is_sent_once_per_firing_and_wakes_the_fleet(aws, fleet_trigger):
    first = fleet_trigger.glue.handle(fleet_trigger.event)
    assert first["kind"] == "enqueue" and first["woke"] is True and fleet_trigger.changes == [1]
    again = fleet_trigger.glue.handle(copy.deepcopy(fleet_trigger.event))  # a redelivered invocation
    assert again["duplicate"] == "true" and again["messageId"] == first["messageId"]
    assert drain_bodies(aws, fleet_trigger.queue) == [
        {"key": "nightly/2026-11-24T03-00-00Z", "input": "stats/input/nightly"}
    ], "sent once; the key names the firing, the input stays the plain key's"


def test_every_firing_of_a_scheduled_fleet_task_is_a_task_of_its_own(aws, fleet_trigger):
    """With one task id for every firing, the fleet would find the task done after the first day."""
    for day in ("2026-11-24T03:00:00Z", "2026-11-25T03:00:00Z"):
        fleet_trigger.glue.handle(fleet_trigger.event | {"scheduledTime": day})
    keys = [body["key"] for body in drain_bodies(aws, fleet_trigger.queue)]
    assert sorted(keys) == ["nightly/2026-11-24T03-00-00Z", "nightly/2026-11-25T03-00-00Z"]


def test_a_scheduled_fleet_task_may_keep_one_task_id_for_every_firing(aws, fleet_trigger):
    event = fleet_trigger.event | {"enqueue": fleet_trigger.event["enqueue"] | {"taskPerFiring": False}}
    fleet_trigger.glue.handle(event)
    fleet_trigger.glue.handle(event | {"scheduledTime": "2026-11-25T03:00:00Z"})
    assert drain_bodies(aws, fleet_trigger.queue) == [{"key": "nightly"}] * 2


def test_a_failed_wake_is_reported_and_sends_nothing_twice(aws, fleet_trigger):
    lost_group = fleet_trigger.event | {"enqueue": fleet_trigger.event["enqueue"] | {"group": "elsewhere"}}
    result = fleet_trigger.glue.handle(lost_group)  # the task is in; the wake's failure is reported, not raised
    assert result["woke"] is False and "no Auto Scaling group named 'elsewhere'" in result["wakeError"]
    assert len(drain_bodies(aws, fleet_trigger.queue)) == 1
    with pytest.raises(glue.EventError, match=r"^enqueue\.body: missing$"):
        fleet_trigger.glue.handle({"enqueue": {"queue": fleet_trigger.queue, "group": "workers"}})


def test_a_step_that_feeds_a_fleet_wakes_it_when_it_runs_and_when_it_succeeds(local_group):
    autoscaling, changes = local_group
    definition = "arn:aws:batch:us-east-1:123456789012:job-definition/produce:1"
    config = {
        "chains": {
            "c": {"jobQueue": "q", "steps": [{"name": "produce", "jobDefinition": definition, "wakes": "workers"}]}
        }
    }
    gluer = glue.Glue(config, batch=None, dynamodb=None, autoscaling=autoscaling)

    def state(status: str) -> dict:
        detail = {"jobId": f"j-{status}", "status": status, "jobDefinition": definition, "jobName": "c-produce"}
        return {"source": "aws.batch", "detail-type": "Batch Job State Change", "detail": detail}

    for status in ("SUBMITTED", "RUNNABLE", "FAILED"):
        gluer.handle(state(status))
    assert changes == [], "only a running or finished producer wakes its fleet"
    gluer.handle(state("RUNNING"))
    assert changes == [1]
    autoscaling.set_desired_capacity(AutoScalingGroupName="workers", DesiredCapacity=0)  # it went back to zero
    gluer.handle(state("SUCCEEDED"))
    assert changes == [1, 0, 1]


def test_a_long_job_name_keeps_its_date_so_every_day_submits_its_own_job(batch_world):
    """Cut at Batch's 128 characters, a long jobName lost the scheduled time: day 2 found day 1's guard."""
    long_name = "nightly-" + "x" * 140
    names = []
    for day in ("2026-11-23T02:00:00Z", "2026-11-24T02:00:00Z"):
        event = {
            "jobName": long_name,
            "jobQueue": batch_world.queue,
            "jobDefinition": batch_world.definitions["watcher"],
            "scheduledTime": day,
        }
        (submitted,) = batch_world.glue.handle(event)["submitted"]
        assert "duplicate" not in submitted, day
        names.append(submitted["jobName"])
    assert len(batch_world.submitted) == 2
    assert all(len(name) <= 128 and name.startswith("nightly-xxx") for name in names)
    assert names[0].endswith("2026-11-23T02-00-00Z") and names[1].endswith("2026-11-24T02-00-00Z")


@pytest.mark.parametrize("length", [127, 128, 129, 400])
def test_job_names_are_valid_and_differ_where_their_parts_differ(length):
    first, second = glue.job_name("a" * length, "run-1"), glue.job_name("a" * length, "run-2")
    assert first != second
    for name in (first, second):
        assert len(name) <= glue.JOB_NAME_LIMIT and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name)
    assert glue.job_name("a" * length, "run-1") == first, "deterministic"


def test_a_job_of_an_older_revision_still_links_and_tracks_its_run(batch_world):
    """A deploy revised the definitions while the job ran: its event names the old revision, the configuration
    the new one (here in SubmitJob's other spellings, name:revision and name): it is still its step's job."""
    old_revision = batch_world.definitions["consumer"]  # arn:...:job-definition/<name>:1
    consumer = glue.definition_name(old_revision)
    config = copy.deepcopy(batch_world.config)
    steps = config["chains"]["feeds"]["steps"]
    steps[1]["jobDefinition"] = f"{consumer}:2"
    steps[2]["jobDefinition"] = glue.definition_name(batch_world.definitions["report"])
    gluer = glue.Glue(config, batch=batch_world.glue.batch, dynamodb=batch_world.glue.dynamodb)
    result = gluer.handle(batch_event(old_revision, "SUCCEEDED", job_id="before-deploy"))
    assert result["status"] == "SUCCEEDED"
    (request,) = batch_world.submitted
    assert request["jobName"] == "feeds-report-before-deploy"
    assert env_of(request)["PIPELINE_CHAIN_RUN"] == "feeds-run-1"
    assert consumer == old_revision.rsplit("/", 1)[-1].removesuffix(":1") and ":" not in consumer
