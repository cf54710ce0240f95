"""The glue's message hand-over, line by line: what a step publishes reaches the next step byte for byte with
its link's environment and its run id, in a SubmitJob request Batch accepts (30 KiB, as the SDK sends it), or
by a claim check under its documented key; a success link hands over PREVIOUS_JOB_ID and its environment.

Written from a mutation pass over ``from_sns``, ``claim_check``, ``step_request``, ``from_success`` and
``job_name``: each test here fails on a change of one of their lines that the other tests let through."""

from __future__ import annotations

import copy
from typing import Any

import botocore.session
import pytest
from botocore.serialize import create_serializer

from pipeline_constructs.glue import handler as glue

#: Batch's documented cap on a SubmitJob request, written out so that a changed constant cannot move it.
BATCH_SUBMIT_JOB_LIMIT = 30 * 1024
TOPIC = "arn:aws:sns:us-east-1:123456789012:feeds"
QUEUE = "arn:aws:batch:us-east-1:123456789012:job-queue/feeds"
_SUBMIT_JOB = botocore.session.get_session().get_service_model("batch").operation_model("SubmitJob")


def definition(step: str) -> str:
    return f"arn:aws:batch:us-east-1:123456789012:job-definition/{step}:1"


def step(name: str, link: str | None = None, **more: Any) -> dict[str, Any]:
    environment = more.pop("environment", {})
    return {
        "name": name,
        "jobDefinition": definition(name),
        **({"link": {"kind": link, "environment": environment}} if link else {}),
        **more,
    }


CONFIG: dict[str, Any] = {
    "chains": {
        "feeds": {
            "jobQueue": QUEUE,
            "topicArn": TOPIC,
            "claims": {"bucket": "claims", "prefix": "feeds/_messages/"},
            "steps": [
                step("watcher", "message", environment={"PARALLELISM": 15}),
                step("consumer", "success", environment={"MESSAGE_KEY": "feeds/latest.json", "PARALLELISM": 15}),
                step("report", arraySize=3),
            ],
        },
        "relay": {  # two message links: a publisher must name its step
            "jobQueue": QUEUE,
            "topicArn": f"{TOPIC}-relay",
            "steps": [step("a", "message"), step("b", "message"), step("c", "success"), step("d")],
        },
    }
}


class RecordingS3:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        self.objects[(Bucket, Key)] = Body
        return {}


class RecordingGlue(glue.Glue):
    """The glue's own handling up to SubmitJob, which is recorded (guard key, request) instead of guarded."""

    def __init__(self, config: dict[str, Any] = CONFIG) -> None:
        super().__init__(config, batch=None, dynamodb=None, s3=RecordingS3())
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def submit_once(self, chain: str | None, guard: str, request: dict[str, Any]) -> dict[str, str]:
        self.requests.append((guard, request))
        return {"jobName": request["jobName"], "jobId": f"job-{len(self.requests)}"}


def sns_event(message: str, message_id: str = "m-1", topic: str = TOPIC, **attributes: str) -> dict[str, Any]:
    sns = {
        "MessageId": message_id,
        "TopicArn": topic,
        "Message": message,
        "MessageAttributes": {name: {"Type": "String", "Value": value} for name, value in attributes.items()},
    }
    return {"Records": [{"EventSource": "aws:sns", "Sns": sns}]}


def batch_event(step_name: str, job_id: str, status: str = "SUCCEEDED", run: str = "feeds-run-1") -> dict[str, Any]:
    detail = {
        "jobId": job_id,
        "jobName": f"feeds-{step_name}-x",
        "status": status,
        "jobDefinition": definition(step_name),
        "container": {"environment": [{"name": "PIPELINE_CHAIN_RUN", "value": run}]},
    }
    return {"source": "aws.batch", "detail-type": "Batch Job State Change", "detail": detail}


def env_of(request: dict[str, Any]) -> dict[str, str]:
    return {pair["name"]: pair["value"] for pair in request["containerOverrides"]["environment"]}


def handed_over(event: dict[str, Any], config: dict[str, Any] = CONFIG) -> tuple[RecordingGlue, list[dict[str, Any]]]:
    gluer = RecordingGlue(config)
    gluer.handle(event)
    return gluer, [request for _, request in gluer.requests]


def sent_bytes(request: dict[str, Any]) -> int:
    """The SubmitJob body as botocore serializes (and validates) it: what Batch measures."""
    return len(
        create_serializer("rest-json", include_validation=True).serialize_to_request(request, _SUBMIT_JOB)["body"]
    )


AWKWARD = '  {"städte": ["Köln", "東京"], "emoji": "\U0001f680"}\r\n\t'  # whitespace, CRLF, non-ASCII, astral


def test_the_message_reaches_the_next_step_byte_for_byte_with_the_links_environment_and_run():
    _, (request,) = handed_over(sns_event(AWKWARD, chainRun="feeds-run-7"))
    assert env_of(request) == {
        "DOWNLOAD_MESSAGE": AWKWARD,
        "PARALLELISM": "15",
        "PIPELINE_CHAIN": "feeds",
        "PIPELINE_CHAIN_RUN": "feeds-run-7",
        "PIPELINE_STEP": "consumer",
    }
    assert request["jobName"] == "feeds-consumer-m-1" and request["jobDefinition"] == definition("consumer")
    assert sent_bytes(request) < BATCH_SUBMIT_JOB_LIMIT


def test_a_message_without_a_run_starts_one_named_by_its_chain_and_message():
    _, (request,) = handed_over(sns_event("m"))
    assert env_of(request)["PIPELINE_CHAIN_RUN"] == "feeds-m-1"


def test_a_links_environment_cannot_replace_the_variables_the_glue_sets():
    config = copy.deepcopy(CONFIG)
    config["chains"]["feeds"]["steps"][0]["link"]["environment"] |= {"PIPELINE_CHAIN_RUN": "x", "PIPELINE_STEP": "y"}
    _, (request,) = handed_over(sns_event("m", chainRun="feeds-run-7"), config)
    assert env_of(request)["PIPELINE_CHAIN_RUN"] == "feeds-run-7" and env_of(request)["PIPELINE_STEP"] == "consumer"


def test_the_publisher_named_in_the_message_picks_the_next_step_and_only_a_message_link_hands_over():
    relay = f"{TOPIC}-relay"
    _, (request,) = handed_over(sns_event("m", topic=relay, step="b"))
    assert request["jobDefinition"] == definition("c") and env_of(request)["PIPELINE_STEP"] == "c"
    with pytest.raises(glue.EventError, match="has 2 message links, so the publisher must name its step"):
        handed_over(sns_event("m", topic=relay))
    with pytest.raises(glue.EventError, match="step 'c' has no message link to a next step"):
        handed_over(sns_event("m", topic=relay, step="c"))


def test_every_record_of_an_event_is_handed_over_with_its_own_message():
    event = sns_event("first", message_id="m-1")
    event["Records"] += sns_event("second", message_id="m-2")["Records"]
    gluer, requests = handed_over(event)
    assert [env_of(r)["DOWNLOAD_MESSAGE"] for r in requests] == ["first", "second"]
    assert [guard for guard, _ in gluer.requests] == ["sns#m-1", "sns#m-2"]


@pytest.mark.parametrize(
    ("unit", "counts"),
    [("k", range(27_500, 33_000, 125)), ("é", range(4_500, 5_600, 25)), ("\U0001f680", range(2_300, 2_800, 12))],
    ids=["ascii", "two-byte", "astral"],
)
def test_every_request_the_glue_sends_fits_submit_job_as_the_sdk_sends_it(unit, counts):
    """Around Batch's 30 KiB, as botocore writes the body (JSON with escapes): an over-size message goes by
    claim check; one that fits stays inline. Both kinds must occur in the sweep."""
    inline = claimed = 0
    for count in counts:
        message = unit * count
        gluer, (request,) = handed_over(sns_event(message, chainRun="feeds-run-7"))
        assert sent_bytes(request) <= BATCH_SUBMIT_JOB_LIMIT, (unit, count, sent_bytes(request))
        if "DOWNLOAD_MESSAGE" in env_of(request):
            assert env_of(request)["DOWNLOAD_MESSAGE"] == message
            inline += 1
        else:
            assert list(gluer.s3.objects.values()) == [message.encode()]
            claimed += 1
    assert inline and claimed


def test_a_request_of_exactly_the_budget_stays_inline_and_one_byte_more_goes_by_claim_check():
    base = glue.request_size(handed_over(sns_event("m"))[1][0]) - 1
    _, (fits,) = handed_over(sns_event("m" * (glue.SUBMIT_JOB_BUDGET - base)))
    assert glue.request_size(fits) == glue.SUBMIT_JOB_BUDGET and "DOWNLOAD_MESSAGE" in env_of(fits)
    _, (over,) = handed_over(sns_event("m" * (glue.SUBMIT_JOB_BUDGET - base + 1)))
    assert "DOWNLOAD_MESSAGE_S3" in env_of(over) and "DOWNLOAD_MESSAGE" not in env_of(over)


def test_a_claim_check_is_stored_byte_for_byte_under_its_documented_key_and_named_in_the_environment():
    message = AWKWARD + "x" * 40_000
    gluer, (request,) = handed_over(sns_event(message, message_id="95df01b4-ee98", chainRun="feeds-run-7"))
    key = "feeds/_messages/feeds-run-7/95df01b4-ee98/consumer.json"
    assert gluer.s3.objects == {("claims", key): message.encode()}
    assert env_of(request) == {
        "DOWNLOAD_MESSAGE_S3": f"s3://claims/{key}",
        "PARALLELISM": "15",
        "PIPELINE_CHAIN": "feeds",
        "PIPELINE_CHAIN_RUN": "feeds-run-7",
        "PIPELINE_STEP": "consumer",
    }


def test_a_success_link_hands_over_the_job_id_its_environment_and_the_run():
    _, (request,) = handed_over(batch_event("consumer", "abc-123", run="feeds-run-7"))
    assert env_of(request) == {
        "PREVIOUS_JOB_ID": "abc-123",
        "MESSAGE_KEY": "feeds/latest.json",
        "PARALLELISM": "15",
        "PIPELINE_CHAIN": "feeds",
        "PIPELINE_CHAIN_RUN": "feeds-run-7",
        "PIPELINE_STEP": "report",
    }
    assert request["arrayProperties"] == {"size": 3}
    assert sent_bytes(request) < BATCH_SUBMIT_JOB_LIMIT


def test_a_success_hands_over_once_per_finished_job_and_never_for_an_array_child():
    gluer = RecordingGlue()
    for event in (
        batch_event("consumer", "abc-123:0"),  # an array child: its parent's event follows
        batch_event("consumer", "abc-123"),
        batch_event("consumer", "abc-123"),  # redelivered: the same guard
        batch_event("consumer", "abc-456"),  # the step run again in the same run: a trigger of its own
    ):
        gluer.handle(event)
    guards = [guard for guard, _ in gluer.requests]
    assert guards[0] == guards[1] != guards[2] and len(guards) == 3


@pytest.mark.parametrize("part", ["feed.v2", "2026-11-23T02:00:00.000Z", "a b", "städte", "x/y"])
def test_job_names_keep_only_what_batch_accepts(part):
    assert glue.job_name("feeds", part, "m-1") and all(
        c.isascii() and (c.isalnum() or c in "-_") for c in glue.job_name("feeds", part, "m-1")
    )


def test_long_job_names_that_differ_only_in_the_middle_stay_different():
    first, second = (glue.job_name("a" * 100 + middle + "a" * 100, "run-1") for middle in ("x", "y"))
    assert first != second and len(first) == len(second) == glue.JOB_NAME_LIMIT
