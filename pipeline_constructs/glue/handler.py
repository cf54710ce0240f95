"""The glue Lambda of BatchChain and ScheduledTrigger (one per stack): stdlib + boto3 only.

It takes three kinds of event and submits AWS Batch jobs for them:

- the users' constant input from a schedule: ``{"jobName", "jobQueue", "jobDefinition",
  "containerOverrides"?, "parameters"?}`` (plus ``"chain"`` and ``"scheduledTime"`` when a chain starts);
- an SNS event: a step published to its chain's topic (a *message link*); the next step gets the message,
  unchanged and opaque, in ``DOWNLOAD_MESSAGE`` plus the link's static environment. A message that would
  take the SubmitJob request over Batch's 30 KiB is stored in S3 instead (a claim check, one object per
  message: ``<chain prefix>_messages/<run>/<SNS message id>/<step>.json``) and the step gets
  ``DOWNLOAD_MESSAGE_S3=s3://bucket/key``;
- an EventBridge "Batch Job State Change": recorded in the status store (run tracking), and on SUCCEEDED
  a *success link* submits the next step with ``PREVIOUS_JOB_ID``.

A *fan-out* step (``"fanOut"`` in its configuration) is submitted as ONE array job over the list its message
holds or names (a manifest in S3), stored first as the run's items object (``PIPELINE_ITEMS``); its join, the
next step, is submitted at the array parent's terminal event with the children's items in ``DOWNLOAD_MESSAGE``
(:class:`FanOutSteps`).

And two for worker fleets: ``{"enqueue": {"queue": "<url>", "body": "<text>", "group": "<name>",
"inputPrefix"?: "<fleet prefix>input/", "taskPerFiring"?: true}, "scheduledTime": "..."}`` from a
``ScheduledTrigger(fleet=...)`` sends one task per firing, once (:class:`EnqueueGuard`), and starts the fleet
from zero (a body's ``key`` gets the firing's time, so a daily task runs daily: :func:`scheduled_task_body`);
``{"wake": {"queue": "<url>", "group": "<name>"}}`` from a fleet's once-a-minute check
(``SpotWorkerFleet(wake_check=True)``) starts it when tasks wait (see :func:`wake_group`).

Every environment value is sent as a string. A missing or malformed field raises :class:`EventError`
naming it; a failed SubmitJob raises (Lambda retries, then the on-failure destination keeps the event).
Job names are derived from the trigger (scheduled time, SNS MessageId, finished job id), and a guard item
in the status store makes a redelivered trigger submit nothing twice.

Configuration: ``GLUE_CONFIG`` (JSON, written by the constructs)::

    {"chainsPath": "/pipeline-constructs/<stack>/glue", "table": "<name>"|null}

and one Parameter Store parameter per chain under ``chainsPath`` (``<chainsPath>/<chain>``), whose value is::

    {"jobQueue": "<arn>", "topicArn": "<arn>"|null, "table": "<name>"|null,
     "claims"?: {"bucket": "<name>", "prefix": "<chain prefix>_messages/"},
     "items"?: {"bucket": "<name>", "prefix": "<chain prefix>_items/"},
     "steps": [{"name", "jobDefinition", "arraySize"?, "link"?: {"kind": "message"|"success",
                "environment": {...}}, "wakes"?: "<Auto Scaling group>",
                "fanOut"?: {"source": "message"|"manifest", "field": "<key>"|null,
                            "onChildFailure": "fail_run"|"continue", "maxItems": <n>}}]}

(``GLUE_CONFIG`` may also hold ``"chains": {"<chain>": {...}}`` itself, as the tests give it.)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

log = logging.getLogger("pipeline.glue")
log.setLevel(logging.INFO)

JOB_NAME_LIMIT = 128
#: Hex digits of the whole name's SHA-256 that a shortened job name keeps.
NAME_DIGEST_LENGTH = 12
STATUS_RANK = {"SUBMITTED": 0, "PENDING": 1, "RUNNABLE": 2, "STARTING": 3, "RUNNING": 4, "SUCCEEDED": 5, "FAILED": 5}
RECORD_TTL_SECONDS = 90 * 86400
#: Batch caps a SubmitJob request at 30 KiB; above the budget (room for the SDK's own framing) a message
#: goes to S3 as a claim check.
SUBMIT_JOB_LIMIT = 30 * 1024
SUBMIT_JOB_BUDGET = SUBMIT_JOB_LIMIT - 1024
#: How a job's statusReason starts when its queue's job state time limit cancelled it in RUNNABLE
#: (``Canceled by JobStateTimeLimit action due to reason: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY``; AWS Batch
#: user guide, "Jobs stuck in a RUNNABLE status").
RUNNABLE_TIMEOUT_CANCEL = "Canceled by JobStateTimeLimit action"
#: Why a job waited: the reasons a BatchChain's own queue cancels on, in words.
STUCK_CAUSES = {
    "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY": "no spot capacity in any allowed instance type",
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE": "the compute environment's max vCPUs are fewer than the job's",
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT": "no allowed instance type has the job's vCPUs and memory",
}


class EventError(ValueError):
    """The event lacks a field or has it in the wrong shape; the message names the field."""


class ConfigMiss(EventError):
    """The event names a chain (or its topic) that the configuration read does not hold."""


# ---------------------------------------------------------------- small pure helpers


def as_env_string(value: Any) -> str:
    """Batch only takes strings: 15 -> "15", True -> "true", objects -> JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def job_name(*parts: str) -> str:
    """A valid, deterministic Batch job name: letters, digits, - and _, at most 128, alphanumeric first.

    A longer name keeps its start and its end (where the date or the message id stands) around a digest of
    the whole: names that differ anywhere stay different, as the submit-once guard and the ListJobs look
    after a lost response need them to be (cut at 128, a long name lost its date, and day 2 was day 1's).
    """
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(p for p in parts if p)).strip("-_")
    name = name or "job"
    if not name[0].isalnum():
        name = f"j{name}"
    if len(name) <= JOB_NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:NAME_DIGEST_LENGTH]
    kept = JOB_NAME_LIMIT - NAME_DIGEST_LENGTH - 2
    head, tail = name[: kept // 2], name[len(name) - (kept - kept // 2) :]
    return f"{head}-{digest}-{tail}"


def require(container: Any, field: str, kind: type | tuple[type, ...], path: str) -> Any:
    if not isinstance(container, dict) or field not in container or container[field] in (None, ""):
        raise EventError(f"{path}{field}: missing")
    value = container[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise EventError(f"{path}{field}: expected {names}, got {type(value).__name__}")
    return value


def environment_list(environment: dict[str, Any] | list[Any], path: str) -> list[dict[str, str]]:
    """Batch's ``[{"name", "value"}]`` from a mapping or a list of such pairs; every value a string."""
    if isinstance(environment, dict):
        return [{"name": str(k), "value": as_env_string(v)} for k, v in environment.items()]
    if isinstance(environment, list):
        pairs = []
        for index, item in enumerate(environment):
            name = require(item, "name", str, f"{path}[{index}].")
            pairs.append({"name": name, "value": as_env_string(item.get("value", ""))})
        return pairs
    raise EventError(f"{path}: expected an object or a list of {{name, value}}, got {type(environment).__name__}")


def merge_environment(overrides: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Container overrides with ``extra`` variables added (replacing same-named ones)."""
    merged = dict(overrides)
    current = [e for e in merged.get("environment", []) if e["name"] not in extra]
    merged["environment"] = current + environment_list(extra, "environment")
    return merged


def load_config(environ: dict[str, str] | None = None, ssm: Any = None) -> dict[str, Any]:
    """``GLUE_CONFIG``, with every chain's parameter under its ``chainsPath`` read into ``chains``."""
    raw = (environ or os.environ).get("GLUE_CONFIG", "")
    try:
        config = json.loads(raw) if raw else {}
    except ValueError as error:
        raise RuntimeError(f"GLUE_CONFIG is not valid JSON: {error}") from None
    config.setdefault("chains", {})
    path = config.get("chainsPath")
    if path:
        config["chains"].update(chain_parameters(ssm or boto3.client("ssm"), path))
    return config


def chain_parameters(ssm: Any, path: str) -> dict[str, Any]:
    """``{chain name: configuration}`` from the parameters directly under ``path``."""
    chains: dict[str, Any] = {}
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=False):
        for parameter in page["Parameters"]:
            name = parameter["Name"].rsplit("/", 1)[-1]
            try:
                chains[name] = json.loads(parameter["Value"])
            except ValueError as error:
                raise RuntimeError(f"{parameter['Name']}: not valid JSON: {error}") from None
    return chains


def stuck_reason(status_reason: str) -> str:
    """For a job its queue cancelled after it waited in RUNNABLE, why, in words (the cause's code last);
    else ""."""
    if not status_reason.startswith(RUNNABLE_TIMEOUT_CANCEL):
        return ""
    cause = next((code for code in STUCK_CAUSES if code in status_reason), "")
    words = STUCK_CAUSES.get(cause, "the job could not be placed")
    return f"cancelled after waiting in RUNNABLE past its queue's time limit: {words} ({cause or status_reason})"


def definition_name(reference: str) -> str:
    """The job definition's name in any spelling SubmitJob accepts (``arn:...:job-definition/name:3``,
    ``name:3``, ``name``): a job on any revision of the step's definition, a run in flight across a deploy
    included, is that step's. Names are unique per account and region, and events come from that one."""
    return re.sub(r":\d+$", "", reference.rsplit("job-definition/", 1)[-1])


# ---------------------------------------------------------------- event -> submission


def classify(event: Any) -> str:
    if not isinstance(event, dict):
        raise EventError(f"event: expected an object, got {type(event).__name__}")
    if "wake" in event:
        return "wake"
    if "enqueue" in event:
        return "enqueue"
    if "Records" in event:
        return "sns"
    if event.get("source") == "aws.batch" or event.get("detail-type") == "Batch Job State Change":
        return "batch"
    if {"jobName", "jobQueue", "jobDefinition", "chain"} & set(event):
        return "schedule"
    raise EventError(
        "event: neither a constant schedule input (jobName, jobQueue, jobDefinition), an SNS event "
        "(Records), a Batch job state change (detail-type), a fleet task (enqueue) nor a fleet wake check (wake)"
    )


# ---------------------------------------------------------------- waking a fleet from zero


def wake_group(autoscaling: Any, group: str) -> bool:
    """Raise an Auto Scaling group's desired capacity from 0 to 1; True if it did.

    Target tracking on the queue's CloudWatch metrics starts a fleet from zero only minutes after the first
    task: SQS metrics come per minute, and a queue idle for six hours publishes none until it is active again.
    A producer calls this right after it enqueued. It never lowers a capacity: a group above zero is left
    alone, and producers waking it at once all set 1. (Between the look and the set, target tracking could
    raise the group; the set then lowers it to 1 until the next evaluation, and busy workers are protected
    from scale-in meanwhile.)
    """
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    if not groups:
        raise EventError(f"wake.group: no Auto Scaling group named {group!r}")
    if int(groups[0]["DesiredCapacity"]) > 0 or int(groups[0]["MaxSize"]) < 1:
        return False
    autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=1, HonorCooldown=False)
    log.info("woke the fleet from zero", extra={"group": group})
    return True


def try_wake(autoscaling: Any, group: str) -> tuple[bool, str]:
    """:func:`wake_group` for producers whose work is already in: (woke, the error if it failed). A failed
    wake (a permission, a throttle, no such group) is logged, never raised; the fleet's scaling on the backlog
    starts it, only later."""
    try:
        return wake_group(autoscaling, group), ""
    except (ClientError, BotoCoreError, EventError) as error:
        log.warning("wake failed; the fleet's scaling starts it later", extra={"group": group, "error": str(error)})
        return False, str(error)


def scheduled_task_body(enqueue: dict[str, Any], scheduled: str) -> str:
    """The body a firing sends: with ``taskPerFiring``, a JSON object's ``key`` (or ``id``) gets the firing's
    time (``nightly`` -> ``nightly/2026-11-24T03-00-00Z``), so each firing is a task of its own and not one
    the fleet finished yesterday; its ``input`` stays where the plain key names it (``<inputPrefix><key>``).
    Any other body is sent as it is (the message id is then its task id)."""
    body = require(enqueue, "body", str, "enqueue.")
    if not enqueue.get("taskPerFiring") or not scheduled:
        return body
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if not isinstance(parsed, dict):
        return body
    field = next((name for name in ("key", "id") if parsed.get(name) not in (None, "")), None)
    if field is None:
        return body
    task = str(parsed[field]).strip().strip("/")
    if "input" not in parsed and enqueue.get("inputPrefix"):
        parsed["input"] = f"{enqueue['inputPrefix']}{task}"
    parsed[field] = f"{task}/{job_name(scheduled)}"
    return json.dumps(parsed)


def wake_if_waiting(sqs: Any, autoscaling: Any, event: dict[str, Any]) -> dict[str, Any]:
    """The once-a-minute check for producers we don't own: wake the group when messages wait."""
    wake = require(event, "wake", dict, "")
    queue = require(wake, "queue", str, "wake.")
    group = require(wake, "group", str, "wake.")
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
    waiting = int(attributes["Attributes"].get("ApproximateNumberOfMessages", 0))
    return {"waiting": waiting, "woke": waiting > 0 and wake_group(autoscaling, group)}


def chain_environment(chain: str, run: str, step: str) -> dict[str, str]:
    return {"PIPELINE_CHAIN": chain, "PIPELINE_CHAIN_RUN": run, "PIPELINE_STEP": step}


def step_request(chain_name: str, chain: dict[str, Any], index: int, name: str, env: dict[str, Any]) -> dict[str, Any]:
    step = chain["steps"][index]
    request: dict[str, Any] = {
        "jobName": name,
        "jobQueue": chain["jobQueue"],
        "jobDefinition": step["jobDefinition"],
        "containerOverrides": {"environment": environment_list(env, "environment")},
    }
    if step.get("arraySize"):
        request["arrayProperties"] = {"size": int(step["arraySize"])}
    return request


def from_schedule(event: dict[str, Any], config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(guard key, SubmitJob request) for the users' constant input."""
    scheduled = event.get("scheduledTime") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not isinstance(scheduled, str):
        raise EventError(f"scheduledTime: expected str, got {type(scheduled).__name__}")
    chain_name = event.get("chain")
    if chain_name is not None:
        chain = config["chains"].get(chain_name)
        if chain is None:
            raise ConfigMiss(f"chain: unknown chain {chain_name!r}; known: {', '.join(config['chains']) or 'none'}")
        first = chain["steps"][0]["name"]
        run = job_name(chain_name, scheduled)
        extra = dict(event.get("environment") or {})
        request = step_request(
            chain_name,
            chain,
            0,
            job_name(chain_name, first, scheduled),
            extra | chain_environment(chain_name, run, first),
        )
        return f"start#{run}", request

    name = require(event, "jobName", str, "")
    request = {
        "jobName": job_name(name, scheduled),
        "jobQueue": require(event, "jobQueue", str, ""),
        "jobDefinition": require(event, "jobDefinition", str, ""),
    }
    if event.get("containerOverrides") is not None:
        overrides = require(event, "containerOverrides", dict, "")
        overrides = dict(overrides)
        if "environment" in overrides:
            overrides["environment"] = environment_list(overrides["environment"], "containerOverrides.environment")
        request["containerOverrides"] = overrides
    if event.get("parameters") is not None:
        parameters = require(event, "parameters", dict, "")
        request["parameters"] = {str(k): as_env_string(v) for k, v in parameters.items()}
    return f"schedule#{request['jobName']}", request


def _chain_by_topic(config: dict[str, Any], topic_arn: str) -> tuple[str, dict[str, Any]]:
    for name, chain in config["chains"].items():
        if chain.get("topicArn") == topic_arn:
            return name, chain
    raise ConfigMiss(f"Records[0].Sns.TopicArn: no chain publishes to {topic_arn}")


def _step_index(chain: dict[str, Any], name: str, field: str) -> int:
    for index, step in enumerate(chain["steps"]):
        if step["name"] == name:
            return index
    raise EventError(f"{field}: no step named {name!r}")


def from_sns(event: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(chain, guard key, SubmitJob request) per SNS record: the step after the publisher, raw message."""
    records = require(event, "Records", list, "")
    if not records:
        raise EventError("Records: empty")
    submissions = []
    for position, record in enumerate(records):
        path = f"Records[{position}]."
        sns = require(record, "Sns", dict, path)
        topic_arn = require(sns, "TopicArn", str, f"{path}Sns.")
        message_id = require(sns, "MessageId", str, f"{path}Sns.")
        message = require(sns, "Message", str, f"{path}Sns.")  # opaque: never parsed
        chain_name, chain = _chain_by_topic(config, topic_arn)
        attributes = sns.get("MessageAttributes") or {}
        publisher = (attributes.get("step") or {}).get("Value")
        if publisher is None:
            message_links = [s["name"] for s in chain["steps"] if (s.get("link") or {}).get("kind") == "message"]
            if len(message_links) != 1:
                raise EventError(
                    f"{path}Sns.MessageAttributes.step: missing; chain {chain_name!r} has "
                    f"{len(message_links)} message links, so the publisher must name its step"
                )
            publisher = message_links[0]
        index = _step_index(chain, publisher, f"{path}Sns.MessageAttributes.step")
        link = chain["steps"][index].get("link") or {}
        if link.get("kind") != "message" or index + 1 >= len(chain["steps"]):
            raise EventError(f"{path}Sns.MessageAttributes.step: step {publisher!r} has no message link to a next step")
        following = chain["steps"][index + 1]["name"]
        run = (attributes.get("chainRun") or {}).get("Value") or ""
        if not run:
            run = job_name(chain_name, message_id)
            log.warning(
                "message without a chainRun attribute: the next step starts a run of its own",
                extra={
                    "chain": chain_name,
                    "step": publisher,
                    "run": run,
                    "fix": "publish with MessageAttributes chainRun = the step's PIPELINE_CHAIN_RUN",
                },
            )
        env = (
            {"DOWNLOAD_MESSAGE": message}
            | dict(link.get("environment") or {})
            | chain_environment(chain_name, run, following)
        )
        request = step_request(chain_name, chain, index + 1, job_name(chain_name, following, message_id), env)
        submissions.append((chain_name, f"sns#{message_id}", request))
    return submissions


def job_facts(event: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """Chain, step, run and status of a Batch state-change event; None if no chain of ours ran the job."""
    detail = require(event, "detail", dict, "")
    job_id = require(detail, "jobId", str, "detail.")
    status = require(detail, "status", str, "detail.")
    definition = require(detail, "jobDefinition", str, "detail.")
    environment = {
        item.get("name"): item.get("value")
        for item in (detail.get("container") or {}).get("environment") or []
        if isinstance(item, dict)
    }
    for chain_name, chain in config["chains"].items():
        for index, step in enumerate(chain["steps"]):
            if definition_name(step["jobDefinition"]) == definition_name(definition):
                return {
                    "chain": chain_name,
                    "chain_config": chain,
                    "index": index,
                    "step": step["name"],
                    "job_id": job_id,
                    "job_name": detail.get("jobName", ""),
                    "status": status,
                    "reason": detail.get("statusReason", ""),
                    "stuck": stuck_reason(str(detail.get("statusReason") or "")),
                    "run": environment.get("PIPELINE_CHAIN_RUN") or job_id,
                    "array_child": ":" in job_id,
                    "array_size": int((detail.get("arrayProperties") or {}).get("size") or 0),
                    "environment": environment,
                    "timestamps": {k: detail[k] for k in ("createdAt", "startedAt", "stoppedAt") if k in detail},
                    "attempts": len(detail.get("attempts") or []),
                }
    return None


def from_success(facts: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The next step's submission when a step with a success link SUCCEEDED."""
    chain, index = facts["chain_config"], facts["index"]
    link = chain["steps"][index].get("link") or {}
    if facts["status"] != "SUCCEEDED" or facts["array_child"] or link.get("kind") != "success":
        return None
    if chain["steps"][index].get("fanOut"):
        return None  # its join starts from the fan-in (FanOutSteps.fan_in), with the children's items
    if index + 1 >= len(chain["steps"]):
        return None
    following = chain["steps"][index + 1]["name"]
    env = (
        {"PREVIOUS_JOB_ID": facts["job_id"]}
        | dict(link.get("environment") or {})
        | chain_environment(facts["chain"], facts["run"], following)
    )
    request = step_request(facts["chain"], chain, index + 1, job_name(facts["chain"], following, facts["job_id"]), env)
    return f"success#{facts['job_id']}", request


def request_size(request: dict[str, Any]) -> int:
    """The SubmitJob request body's size as the SDK sends it: JSON with botocore's separators (``", "`` and
    ``": "``, not the compact ones, which undercount by 4 bytes an environment entry), non-ASCII escaped."""
    return len(json.dumps(request).encode())


def claim_check(
    request: dict[str, Any], claims: dict[str, str] | None, message_id: str
) -> tuple[str, str, bytes, dict[str, Any]] | None:
    """None when ``request`` fits SubmitJob; else (bucket, key, message, request without the message).

    The key names the message (``message_id``, the SNS message's): two messages for one step in one run (an
    array step, a step that publishes per file, a retried publisher) are two objects, and a redelivery of
    one message rewrites its own. A chain without ``claims`` cannot store the message: :class:`EventError`
    says how big it was, so the event lands in the on-failure queue with the reason instead of failing in
    Batch."""
    size = request_size(request)
    if size <= SUBMIT_JOB_BUDGET:
        return None
    environment = request["containerOverrides"]["environment"]
    message = next((e["value"] for e in environment if e["name"] == "DOWNLOAD_MESSAGE"), None)
    if message is None or not claims:
        raise EventError(
            f"SubmitJob request of {size} bytes is over Batch's {SUBMIT_JOB_LIMIT} (the DOWNLOAD_MESSAGE "
            f"of {len((message or '').encode())} bytes); this chain has no bucket for a claim check"
        )
    step = next(e["value"] for e in environment if e["name"] == "PIPELINE_STEP")
    run = next(e["value"] for e in environment if e["name"] == "PIPELINE_CHAIN_RUN")
    # <step>.json last: the step's role may read ``_messages/*/<step>.json`` and nothing else there.
    key = f"{claims['prefix']}{run}/{message_id}/{step}.json"
    kept = [e for e in environment if e["name"] != "DOWNLOAD_MESSAGE"]
    kept.append({"name": "DOWNLOAD_MESSAGE_S3", "value": f"s3://{claims['bucket']}/{key}"})
    smaller = request | {"containerOverrides": request["containerOverrides"] | {"environment": kept}}
    return claims["bucket"], key, message.encode(), smaller


# ---------------------------------------------------------------- side effects


class Glue:
    """Submits jobs once per trigger and records job states; clients are injected for tests."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        batch: Any,
        dynamodb: Any | None,
        sqs: Any | None = None,
        autoscaling: Any | None = None,
        s3: Any | None = None,
    ) -> None:
        self.config = config
        self.s3 = s3
        self.batch = batch
        self.dynamodb = dynamodb
        self.sqs = sqs
        self.autoscaling = autoscaling
        self.fan_outs = FanOutSteps(self)

    def _table(self, chain: str | None) -> Any | None:
        name = (self.config["chains"].get(chain) or {}).get("table") if chain else None
        name = name or self.config.get("table")
        return self.dynamodb.Table(name) if (name and self.dynamodb is not None) else None

    def handle(self, event: Any) -> dict[str, Any]:
        kind = classify(event)
        if kind == "wake":
            return {"kind": kind, **wake_if_waiting(self.sqs, self.autoscaling, event)}
        if kind == "enqueue":
            return {"kind": kind, **self.enqueue_once(event)}
        if kind == "schedule":
            guard, request = from_schedule(event, self.config)
            return {"kind": kind, "submitted": [self.submit_once(event.get("chain"), guard, request)]}
        if kind == "sns":
            submitted = [
                self.fan_outs.submit(chain, guard, request)
                if self.fan_outs.starts_fan_out(chain, request)
                else self.submit_once(chain, guard, self.claim_check(chain, request, guard.removeprefix("sns#")))
                for chain, guard, request in from_sns(event, self.config)
            ]
            return {"kind": kind, "submitted": submitted}
        facts = job_facts(event, self.config)
        if facts is None:
            log.info("job of no chain here", extra={"jobId": event.get("detail", {}).get("jobId")})
            return {"kind": kind, "submitted": [], "unknown": True}
        fan_in = self.fan_outs.fan_in(facts)
        if self.record(facts, fan_in.summary if fan_in else None):
            log_job_metrics(facts)
        self._wake_fed_fleet(facts)
        successor = fan_in.join if fan_in else from_success(facts)
        submitted = [self.submit_once(facts["chain"], *successor)] if successor else []
        if fan_in:
            # After the join, which they never hold back; a failure raises, so Lambda retries the delivery:
            # the join's guard submits nothing twice, and the rows' keys are the same.
            self.fan_outs.write_children(facts, fan_in)
        return {"kind": kind, "status": facts["status"], "submitted": submitted}

    def claim_check(self, chain: str, request: dict[str, Any], message_id: str) -> dict[str, Any]:
        """The request itself when it fits SubmitJob; else the same with its message stored in S3."""
        claimed = claim_check(request, (self.config["chains"].get(chain) or {}).get("claims"), message_id)
        if claimed is None:
            return request
        bucket, key, body, smaller = claimed
        if self.s3 is None:
            raise RuntimeError(f"chain {chain} stores large messages in S3, and this Glue has no S3 client")
        # The same key for a redelivered message: rewriting it is harmless, and the job reads one object.
        self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/octet-stream")
        log.info("message stored as a claim check", extra={"bucket": bucket, "key": key, "bytes": len(body)})
        return smaller

    def submit_once(self, chain: str | None, guard: str, request: dict[str, Any]) -> dict[str, str]:
        """SubmitJob, unless this trigger already submitted its job (redelivered event, Lambda retry)."""
        table = self._guard_table(chain, chain or "constant-input schedules")
        return SubmitGuard(table, self.batch).submit_once(f"trigger#{chain or 'schedule'}", guard, request)

    def enqueue_once(self, event: dict[str, Any]) -> dict[str, Any]:
        """A scheduled fleet task: sent once per firing (a redelivered invocation sends nothing more), then
        the fleet started if it is at zero. The wake never raises (:func:`try_wake`): the task is in."""
        enqueue = require(event, "enqueue", dict, "")
        queue = require(enqueue, "queue", str, "enqueue.")
        group = require(enqueue, "group", str, "enqueue.")
        scheduled = event.get("scheduledTime") or ""
        if not isinstance(scheduled, str):
            raise EventError(f"scheduledTime: expected str, got {type(scheduled).__name__}")
        request = {"QueueUrl": queue, "MessageBody": scheduled_task_body(enqueue, scheduled)}
        firing = hashlib.sha256(json.dumps([queue, request["MessageBody"], scheduled]).encode()).hexdigest()[:32]
        guard = EnqueueGuard(self._guard_table(None, "scheduled fleet tasks"), self.sqs)
        sent = guard.submit_once("trigger#fleet", f"enqueue#{firing}", request)
        woke, error = try_wake(self.autoscaling, group)
        return sent | {"woke": woke} | ({"wakeError": error} if error else {})

    def _guard_table(self, chain: str | None, what: str) -> Any:
        table = self._table(chain)
        if table is None:
            raise RuntimeError(f"GLUE_CONFIG names no status table for {what}: a redelivered trigger could act twice")
        return table

    def _wake_fed_fleet(self, facts: dict[str, Any]) -> None:
        """A step that feeds a fleet started or succeeded: start the fleet from zero."""
        group = facts["chain_config"]["steps"][facts["index"]].get("wakes")
        if group and facts["status"] in ("RUNNING", "SUCCEEDED") and not facts["array_child"]:
            try_wake(self.autoscaling, group)

    def record(self, facts: dict[str, Any], extra: dict[str, Any] | None = None) -> bool:
        """The job's latest state under its chain run; an older event never overwrites a newer state.
        ``extra``: more attributes of the row (a fan-out's children).

        True if the state is news (the row held an older one, or none), so that metrics count it once: the old
        row comes back with the write (no read); the SDK's resend of this write is news, a Lambda retry after
        every answer was lost is not (that state then goes uncounted). An array child has no row: its events
        are news (at least once: telling a redelivery would cost a request per child event)."""
        table = self._table(facts["chain"])
        if table is None or facts["array_child"]:
            return True
        values = {
            ":status": facts["status"],
            ":rank": STATUS_RANK.get(facts["status"], 0),
            ":reason": facts["reason"] or "-",
            ":step": facts["step"],
            ":job": facts["job_id"],
            ":name": facts["job_name"],
            ":run": facts["run"],
            ":attempts": facts["attempts"],
            ":updated": int(time.time()),
            ":expires": _expiry(),
            ":writer": uuid.uuid4().hex,  # this write's mark: an SDK resend gets back its own row, still news
        }
        assignments = (
            "#status = :status, status_rank = :rank, reason = :reason, step = :step, jobId = :job, "
            "jobName = :name, chain_run = :run, attempts = :attempts, updated_at = :updated, expires_at = :expires, "
            "written_by = :writer"
        )
        for name, value in facts["timestamps"].items():
            values[f":{name}"] = value
            assignments += f", {name} = :{name}"
        if facts.get("stuck"):  # the run failed for want of capacity or an instance to hold the step
            values[":stuck"] = facts["stuck"]
            assignments += ", stuck = :stuck"
        for name, value in (extra or {}).items():
            values[f":{name}"] = value
            assignments += f", {name} = :{name}"
        try:
            old = table.update_item(
                Key={
                    "pk": f"chain#{facts['chain']}",
                    "sk": f"run#{facts['run']}#{facts['index']:02d}#{facts['job_id']}",
                },
                UpdateExpression=f"SET {assignments}",
                ConditionExpression="attribute_not_exists(status_rank) OR status_rank <= :rank",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
                # The whole old row, not UPDATED_OLD: that may leave out an attribute set to the value it had,
                # the very case of a redelivery. No read capacity is spent on it.
                ReturnValues="ALL_OLD",
            ).get("Attributes", {})
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            log.info("stale job state ignored", extra={"jobId": facts["job_id"], "status": facts["status"]})
            return False
        return bool(old.get("status") != facts["status"] or old.get("written_by") == values[":writer"])


# ---------------------------------------------------------------- fan-out / fan-in

#: AWS Batch runs at most this many children per array job (and at least 2: one item is a plain job).
MAX_ARRAY_SIZE = 10000
#: How many failed children a fan-out's status row and its run's reason name (the count is always whole).
FAILED_CHILDREN_SHOWN = 20
#: A child row holds this much of its item (a long item, an object, is for the items object to hold whole).
CHILD_ITEM_CHARS = 200
#: BatchWriteItem takes at most 25 items; an unprocessed rest is tried again this many times in all.
BATCH_WRITE_LIMIT = 25
BATCH_WRITE_ATTEMPTS = 5
#: S3's answers to a manifest's GET that no retry changes: the run fails at once, naming it. Any other error (a
#: throttle, a 5xx, RequestTimeout, an expired token) passes, and Lambda retries the delivery.
MANIFEST_UNREADABLE = frozenset({"NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidObjectState", "404", "403"})


class FanOutRefused(EventError):
    """The list a fan-out step maps over cannot be run (not a list, too long): its run fails with this reason."""


def items_of(text: str, what: str) -> list[Any]:
    """A JSON list, or (a manifest) one item per non-empty line."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, list):
        return parsed
    if what == "manifest" and not text.lstrip().startswith(("[", "{")):
        return [line.strip() for line in text.splitlines() if line.strip()]
    raise FanOutRefused(f"the {what} is not a JSON list{' nor one item per line' if what == 'manifest' else ''}")


def fan_out_source(message: str, fan_out: dict[str, Any]) -> Any:
    """What the message gives a fan-out: the list itself (``message``) or the manifest's ``s3://`` URI."""
    field = fan_out.get("field")
    if fan_out["source"] == "manifest" and message.strip().startswith("s3://"):
        return message.strip()
    if not field:
        return items_of(message, "message")
    try:
        parsed = json.loads(message)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or field not in parsed:
        raise FanOutRefused(f"the message is not a JSON object with a {field!r} field")
    if fan_out["source"] == "manifest":
        return str(parsed[field])
    if not isinstance(parsed[field], list):
        raise FanOutRefused(f"the message's {field!r} is not a JSON list")
    return parsed[field]


def s3_location(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise FanOutRefused(f"the manifest {uri!r} is not an s3://bucket/key URI")
    return bucket, key


def failed_children_reason(failed: list[dict[str, Any]], total: int) -> str:
    """``3 of 25 children failed: #4 (reason), ...`` naming the first :data:`FAILED_CHILDREN_SHOWN`."""
    named = ", ".join(
        f"#{child['index']} ({child['reason'] or 'no reason'})" for child in failed[:FAILED_CHILDREN_SHOWN]
    )
    more = f" and {len(failed) - FAILED_CHILDREN_SHOWN} more" if len(failed) > FAILED_CHILDREN_SHOWN else ""
    return f"{len(failed)} of {total} children failed: {named}{more}"


def child_key(run: str, step_index: int, parent_job_id: str, child_index: int) -> str:
    """The sort key of a fan-out child's row: the run's children together, in step and index order, apart
    from its job rows (``run#...``: what reads jobs never meets a child); the same for a redelivered end."""
    return f"child#{run}#{step_index:02d}#{parent_job_id}#{child_index:05d}"


def batch_write(dynamodb: Any, table_name: str, rows: list[dict[str, Any]]) -> None:
    """PutRequests of ``rows``, :data:`BATCH_WRITE_LIMIT` a BatchWriteItem, each request's unprocessed items
    sent again after a short back-off; RuntimeError if some are still unprocessed after the last try."""
    for start in range(0, len(rows), BATCH_WRITE_LIMIT):
        pending = [{"PutRequest": {"Item": row}} for row in rows[start : start + BATCH_WRITE_LIMIT]]
        for attempt in range(BATCH_WRITE_ATTEMPTS):
            if attempt:
                # Jitter between tries, not a secret: a pseudo-random generator is right here.
                time.sleep(min(0.05 * 2**attempt, 1.0) * random.uniform(0.5, 1.0))  # nosec B311
            answer = dynamodb.batch_write_item(RequestItems={table_name: pending})
            pending = answer.get("UnprocessedItems", {}).get(table_name, [])
            if not pending:
                break
        else:
            raise RuntimeError(f"{len(pending)} rows unprocessed after {BATCH_WRITE_ATTEMPTS} BatchWriteItem tries")


class FanIn:
    """What the end of a fan-out step gives: the attributes of its status row, the join to submit (or None)
    and its children's rows."""

    def __init__(
        self, summary: dict[str, Any], join: tuple[str, dict[str, Any]] | None, rows: list[dict[str, Any]]
    ) -> None:
        self.summary, self.join, self.rows = summary, join, rows


class FanOutSteps:
    """A :class:`Glue`'s fan-out steps: one array job over the run's list, and the join once all children ended.

    A fan-out's status row (its array parent's) holds the children's outcome in a few attributes
    (``children_total``, ``children_succeeded``, ``children_failed``, ``failed_children``), written once, at the
    parent's terminal event; so are the children's own rows (``child#<run>#...``: final state only, 25 a
    BatchWriteItem): tracking each child's every state change would cost five writes a child (50,000 for a
    10,000-item run) for what ListJobs answers at the end anyway.
    """

    def __init__(self, glue: Glue) -> None:
        self.glue = glue

    @property
    def s3(self) -> Any:
        if self.glue.s3 is None:
            raise RuntimeError("a chain with a fan-out step stores its items in S3, and this Glue has no S3 client")
        return self.glue.s3

    def starts_fan_out(self, chain_name: str, request: dict[str, Any]) -> bool:
        chain = self.glue.config["chains"][chain_name]
        step = _env_value(request, "PIPELINE_STEP")
        return any(s["name"] == step and s.get("fanOut") for s in chain["steps"])

    def submit(self, chain_name: str, guard: str, request: dict[str, Any]) -> dict[str, Any]:
        """The array job over the message's list, once per trigger; a list that cannot run fails the run (its
        row says why); an empty one skips the step and submits the join with no items."""
        chain = self.glue.config["chains"][chain_name]
        step, run = _env_value(request, "PIPELINE_STEP"), _env_value(request, "PIPELINE_CHAIN_RUN")
        index = _step_index(chain, step, "PIPELINE_STEP")
        fan_out, message_id = chain["steps"][index]["fanOut"], guard.removeprefix("sns#")
        uri = f"s3://{chain['items']['bucket']}/{chain['items']['prefix']}{run}/{message_id}/{step}.json"
        try:
            items = self._items(fan_out, _env_value(request, "DOWNLOAD_MESSAGE"), uri)
        except FanOutRefused as refused:
            self._record_unsubmitted(chain_name, index, run, message_id, "FAILED", f"fan-out refused: {refused}")
            return {"jobName": request["jobName"], "refused": str(refused)}
        if not items:
            self._record_unsubmitted(chain_name, index, run, message_id, "SUCCEEDED", "fan-out over 0 items: skipped")
            join = self._join(chain_name, index, run, message_id, {"items": [], "failed": [], "total": 0})
            return self.glue.submit_once(chain_name, *join) if join else {"jobName": request["jobName"], "items": "0"}
        environment = [e for e in request["containerOverrides"]["environment"] if e["name"] != "DOWNLOAD_MESSAGE"]
        environment += [
            {"name": "PIPELINE_ITEMS", "value": uri},
            {"name": "PIPELINE_ITEM_COUNT", "value": str(len(items))},
        ]
        array = {"arrayProperties": {"size": len(items)}} if len(items) > 1 else {}
        submitted = request | {"containerOverrides": {"environment": environment}} | array
        return self.glue.submit_once(chain_name, guard, submitted) | {"items": str(len(items))}

    def _items(self, fan_out: dict[str, Any], message: str, uri: str) -> list[Any]:
        """The list, stored at ``uri`` by the first delivery of its trigger; a later one (a redelivery, which
        may read a manifest rewritten meanwhile) gets what the first stored, so one array maps one list."""
        source = fan_out_source(message, fan_out)
        if isinstance(source, str):
            stored = self._stored_items(uri)
            if stored is not None:  # a redelivery: the first delivery's list stands, whatever the manifest is now
                return stored
            bucket, key = s3_location(source)
            try:
                body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") not in MANIFEST_UNREADABLE:
                    raise  # a throttle, a 5xx, a timed-out request or token: it passes; Lambda retries
                raise FanOutRefused(f"the manifest {source} cannot be read: {error}") from None
            source = items_of(body, "manifest")
        limit = min(int(fan_out.get("maxItems") or MAX_ARRAY_SIZE), MAX_ARRAY_SIZE)
        if len(source) > limit:
            raise FanOutRefused(f"{len(source)} items, over the step's limit of {limit} children")
        bucket, key = s3_location(uri)
        try:
            body = json.dumps(source).encode()
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
            return source
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise
        stored = self._stored_items(uri)
        if stored is None:
            raise RuntimeError(f"the items object {uri} was stored by another delivery and cannot be read yet")
        return stored

    def _stored_items(self, uri: str) -> list[Any] | None:
        """The list a delivery of this trigger stored at ``uri``, or None if none is there yet."""
        bucket, key = s3_location(uri)
        try:
            return list(json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        except ClientError as error:
            # Not there: without s3:ListBucket (the glue has none) S3 answers a missing key with 403.
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "AccessDenied", "403"):
                raise
            return None

    def fan_in(self, facts: dict[str, Any]) -> FanIn | None:
        """At the terminal event of a fan-out step's job (the array parent's, sent after every child ended):
        its children's outcome, and the join unless a child failed under ``fail_run``."""
        step = facts["chain_config"]["steps"][facts["index"]]
        if not step.get("fanOut") or facts["array_child"] or facts["status"] not in ("SUCCEEDED", "FAILED"):
            return None
        uri = facts["environment"].get("PIPELINE_ITEMS") or ""
        bucket, key = s3_location(uri)
        items = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        failed = self._failed_children(facts, len(items))
        for child in failed:
            child["item"] = items[child["index"]]
        rows = self._child_rows(facts, items, failed)
        failed_indexes = {child["index"] for child in failed}
        summary = {
            "children_total": len(items),
            "children_succeeded": len(items) - len(failed),
            "children_failed": len(failed),
            "failed_children": [{"index": c["index"], "reason": c["reason"]} for c in failed[:FAILED_CHILDREN_SHOWN]],
        }
        if failed:
            facts["reason"] = failed_children_reason(failed, len(items))
            if step["fanOut"].get("onChildFailure") != "continue":
                return FanIn(summary, None, rows)
            summary["continued"] = facts["continued"] = True  # the run goes on: its join was started
        message = {
            "items": [item for position, item in enumerate(items) if position not in failed_indexes],
            "failed": failed,
            "total": len(items),
            "itemsObject": uri,
        }
        join = self._join(facts["chain"], facts["index"], facts["run"], facts["job_id"], message)
        return FanIn(summary, join, rows)

    def _failed_children(self, facts: dict[str, Any], count: int) -> list[dict[str, Any]]:
        """``[{"index", "reason"}]`` of the children that did not succeed: listed by ListJobs for an array
        (a child never listed as SUCCEEDED did not succeed), the job itself for a list of one."""
        if not facts["array_size"]:
            ok = facts["status"] == "SUCCEEDED"
            return [] if ok else [{"index": 0, "reason": facts["reason"] or "failed"}]
        succeeded, reasons = set(), {}
        for status in ("SUCCEEDED", "FAILED"):
            pages = self.glue.batch.get_paginator("list_jobs").paginate(arrayJobId=facts["job_id"], jobStatus=status)
            for page in pages:
                for child in page.get("jobSummaryList", []):
                    index = int((child.get("arrayProperties") or {}).get("index", child["jobId"].rsplit(":", 1)[-1]))
                    if status == "SUCCEEDED":
                        succeeded.add(index)
                    else:
                        reasons[index] = str(child.get("statusReason") or "")
        unlisted = count - len(succeeded) - len(reasons.keys() - succeeded)
        if unlisted and facts["status"] == "SUCCEEDED":  # Batch's word: a parent succeeds only if every child did
            return []
        if unlisted:  # ListJobs is eventually consistent: not listed yet is not failed; Lambda retries
            raise RuntimeError(f"{unlisted} of {count} children of {facts['job_id']} are not listed yet")
        return [{"index": index, "reason": reasons[index]} for index in range(count) if index not in succeeded]

    def write_children(self, facts: dict[str, Any], fan_in: FanIn) -> None:
        """The children's rows (:meth:`_child_rows`), 25 a BatchWriteItem; raises if some could not be written."""
        table = self.glue._table(facts["chain"])
        if table is not None and fan_in.rows:
            batch_write(self.glue.dynamodb, table.name, fan_in.rows)

    def _child_rows(
        self, facts: dict[str, Any], items: list[Any], failed: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One row per child, its final state, under the run (:func:`child_key`: a redelivered end rewrites
        the same rows)."""
        reasons = {child["index"]: child["reason"] for child in failed}
        expires, now = _expiry(), int(time.time())
        return [
            {
                "pk": f"chain#{facts['chain']}",
                "sk": child_key(facts["run"], facts["index"], facts["job_id"], position),
                "chain_run": facts["run"],
                "step": facts["step"],
                "child_index": position,
                "item": (item if isinstance(item, str) else json.dumps(item))[:CHILD_ITEM_CHARS],
                "status": "FAILED" if position in reasons else "SUCCEEDED",
                "reason": reasons.get(position) or "-",
                # A plain job ran a list of one: the job is its child.
                "jobId": f"{facts['job_id']}:{position}" if facts["array_size"] else facts["job_id"],
                "parentJobId": facts["job_id"],
                "updated_at": now,
                "expires_at": expires,
            }
            for position, item in enumerate(items)
        ]

    def _join(
        self, chain_name: str, index: int, run: str, trigger: str, message: dict[str, Any]
    ) -> tuple[str, dict[str, Any]] | None:
        """(guard, request) of the step after the fan-out at ``index``, given ``message``; None if it is last.
        ``trigger``: the array parent's job id (or the SNS message's id, when no array ran)."""
        chain = self.glue.config["chains"][chain_name]
        link = chain["steps"][index].get("link") or {}
        if index + 1 >= len(chain["steps"]) or link.get("kind") != "success":
            return None
        following = chain["steps"][index + 1]["name"]
        env = (
            {"DOWNLOAD_MESSAGE": json.dumps(message, separators=(",", ":")), "PREVIOUS_JOB_ID": trigger}
            | dict(link.get("environment") or {})
            | chain_environment(chain_name, run, following)
        )
        request = step_request(chain_name, chain, index + 1, job_name(chain_name, following, trigger), env)
        return f"fanin#{trigger}", self.glue.claim_check(chain_name, request, trigger)

    def _record_unsubmitted(
        self, chain_name: str, index: int, run: str, trigger: str, status: str, reason: str
    ) -> None:
        """The status row of a fan-out that submitted no array (its list refused, or empty)."""
        chain = self.glue.config["chains"][chain_name]
        facts = {
            "chain": chain_name,
            "index": index,
            "step": chain["steps"][index]["name"],
            "job_id": f"no-job-{trigger}",
            "job_name": "",
            "status": status,
            "reason": reason,
            "run": run,
            "attempts": 0,
            "timestamps": {},
            "array_child": False,
            "chain_config": chain,
        }
        if self.glue.record(facts, {"children_total": 0, "children_succeeded": 0, "children_failed": 0}):
            log_job_metrics(facts)


def _env_value(request: dict[str, Any], name: str) -> str:
    """The value of ``name`` in a SubmitJob request's environment overrides ("" if absent)."""
    return next((e["value"] for e in request["containerOverrides"]["environment"] if e["name"] == name), "")


# ---------------------------------------------------------------- submit once, under concurrency

#: A guard's lease outlives its holder: the glue function times out after 60 s, so after 90 s the holder
#: is certainly gone and another delivery may take over (after looking for the job the holder submitted).
LEASE_SECONDS = 90.0
#: How long a duplicate delivery waits for the holder to finish before handing over to a later retry.
WAIT_SECONDS = 20.0
POLL_SECONDS = 0.25
#: SubmitJob takes no idempotency token, so a call whose answer was lost (a timeout, a cut connection, a
#: 5xx) may have made its job, and the same call again makes a second one. After such a call the guard looks
#: for the job by its name first; ListJobs is eventually consistent (a job accepted a moment ago may not be
#: listed yet), so the look is repeated for this long before the job is taken as never made.
SETTLE_SECONDS = 10.0
LOOK_POLL_SECONDS = 1.0
#: How long a holder keeps trying SubmitJob (throttled, not sent, or its answer lost and the job not found)
#: before it hands the trigger over to a retry: well inside the function's 60 s.
SUBMIT_SECONDS = 20.0
THROTTLES = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling"})
#: The Batch client a :class:`SubmitGuard` needs: one that never retries by itself (botocore would send a
#: SubmitJob whose answer it lost again, and Batch would make a second job); the guard retries, looking first.
#: Waits between tries of recording a submitted job on its guard (DynamoDB failing past the SDK's retries).
RECORD_RETRY_SECONDS = (0.5, 1.0, 2.0)
BATCH_CLIENT_CONFIG = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=15)


def submit_failure(error: BaseException) -> str:
    """What a failed SubmitJob means: ``not sent`` (throttled, or no connection: no job, try again),
    ``refused`` (Batch said no: no job, and trying again changes nothing) or ``unknown`` (no answer, or a
    5xx: the job may exist)."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in THROTTLES or status == 429:
            return "not sent"
        return "unknown" if status >= 500 else "refused"
    # No connection made (ConnectTimeoutError is one too): the request never left.
    return "not sent" if isinstance(error, EndpointConnectionError) else "unknown"


class InFlight(RuntimeError):
    """Another delivery of this trigger holds its guard; raised so that Lambda retries this one later."""


class SubmitGuard:
    """Exactly one SubmitJob per trigger, however many deliveries of it arrive at the same moment.

    A guard item ``{pk, sk}`` in the status store is claimed with a conditional put (one winner); the
    winner holds a lease, submits, then records the job id. A delivery that finds the guard SUBMITTED
    returns that job; one that finds it held waits for the holder (up to ``wait_seconds``), then raises
    :class:`InFlight` so that a retry comes back later. Only after the lease expired (the holder died or
    its submit failed) does another delivery take over, and it first looks for a job the holder may have
    submitted under the same deterministic name before submitting one itself.

    The holder retries SubmitJob itself, and its ``batch`` client must not (:data:`BATCH_CLIENT_CONFIG`):
    after a call whose answer was lost it looks for the job by name, for up to ``settle_seconds``, and
    submits again only if it is not listed; a holder that gives up records until when a takeover should
    keep looking (``unsure_until``).
    """

    def __init__(
        self,
        table: Any,
        batch: Any,
        *,
        lease_seconds: float = LEASE_SECONDS,
        wait_seconds: float = WAIT_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
        submit_seconds: float = SUBMIT_SECONDS,
        clock: Any = time.time,
        sleep: Any = time.sleep,
    ) -> None:
        self.table, self.batch = table, batch
        self.lease_seconds, self.wait_seconds = lease_seconds, wait_seconds
        self.settle_seconds, self.submit_seconds = settle_seconds, submit_seconds
        self.clock, self.sleep = clock, sleep

    def submit_once(self, partition: str, guard: str, request: dict[str, Any]) -> dict[str, str]:
        key = {"pk": partition, "sk": guard}
        owner = uuid.uuid4().hex
        give_up = self.clock() + self.wait_seconds
        while True:
            existing = self._claim(key, owner, self._label(request))
            if existing is None:
                return self._submit(key, owner, request, look_until=None)
            if existing.get("state") == "SUBMITTED":
                log.info("trigger already handled", extra={"guard": guard, "jobId": existing.get("jobId")})
                return self._result(request, existing.get("jobId", "")) | {"duplicate": "true"}
            if float(existing.get("lease_until", 0)) <= self.clock() and self._take_over(key, owner, existing):
                log.warning("guard taken over", extra={"guard": guard, "previous": existing.get("owner")})
                return self._submit(key, owner, request, look_until=float(existing.get("unsure_until", 0)))
            if self.clock() >= give_up:
                raise InFlight(f"trigger {guard} is being submitted by another delivery; retry later")
            # Jitter between polls, not a secret: a pseudo-random generator is right here.
            self.sleep(POLL_SECONDS * (1 + random.random()))  # nosec B311

    def _claim(self, key: dict[str, str], owner: str, name: str) -> dict[str, Any] | None:
        """None if this delivery now holds the guard, else the guard item as it stands."""
        try:
            self.table.put_item(
                Item=key
                | {
                    "state": "SUBMITTING",
                    "owner": owner,
                    "lease_until": _decimal(self.clock() + self.lease_seconds),
                    "jobName": name,
                    "expires_at": _expiry(),
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
            return None
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        item = self.table.get_item(Key=key, ConsistentRead=True).get("Item")
        return item if item is not None else {"state": "RELEASED", "lease_until": 0}

    def _take_over(self, key: dict[str, str], owner: str, existing: dict[str, Any]) -> bool:
        if existing.get("state") == "RELEASED":  # deleted between our put and our read: claim again
            return False
        try:
            self.table.update_item(
                Key=key,
                UpdateExpression="SET #owner = :me, lease_until = :lease",
                ConditionExpression="#state = :submitting AND #owner = :previous AND lease_until = :seen",
                ExpressionAttributeNames={"#owner": "owner", "#state": "state"},
                ExpressionAttributeValues={
                    ":me": owner,
                    ":lease": _decimal(self.clock() + self.lease_seconds),
                    ":submitting": "SUBMITTING",
                    ":previous": existing.get("owner", ""),
                    ":seen": existing.get("lease_until", 0),
                },
            )
            return True
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False  # another delivery took over first

    def _submit(
        self, key: dict[str, str], owner: str, request: dict[str, Any], *, look_until: float | None
    ) -> dict[str, str]:
        """Submit, or (``look_until``: a takeover) first look for the job a previous holder may have made."""
        unsure = {"until": look_until or 0.0}
        try:
            job_id = self._find(request, look_until) if look_until is not None else None
            if job_id is not None:
                log.warning("job found after takeover", extra={"jobName": self._label(request), "jobId": job_id})
            else:
                job_id = self._submit_with_retries(request, unsure)  # a failure raises: never swallowed
                log.info("job submitted", extra={"jobName": self._label(request), "jobId": job_id, "guard": key["sk"]})
        except Exception:
            # The job may or may not exist: expire the lease so a retry takes over at once, and tell it until
            # when a job made by a lost call may still be missing from ListJobs.
            expression = "SET lease_until = :zero, unsure_until = :unsure"
            self._update(key, owner, expression, {":zero": 0, ":unsure": _decimal(unsure["until"])})
            raise
        self._record_done(key, owner, job_id)
        return self._result(request, job_id)

    def _record_done(self, key: dict[str, str], owner: str, job_id: str) -> None:
        """Record the job on the guard, tried again while DynamoDB fails. Never raised: the job exists, and a
        failed delivery would be retried and dead-lettered for it; the unrecorded guard's lease expires, and a
        later delivery takes over, finds the job by its name and records it."""
        values = {":submitted": "SUBMITTED", ":job": job_id}
        for delay in (*RECORD_RETRY_SECONDS, None):
            try:
                self._update(key, owner, "SET #state = :submitted, jobId = :job", values)
                return
            except (ClientError, BotoCoreError) as error:
                if delay is None:
                    log.error(
                        "job submitted, not recorded", extra={"guard": key["sk"], "jobId": job_id, "error": str(error)}
                    )
                    return
                self.sleep(delay)

    def _submit_with_retries(self, request: dict[str, Any], unsure: dict[str, float]) -> str:
        """SubmitJob, tried again for up to ``submit_seconds``: after a throttle or no connection at once
        (with backoff); after a lost answer only if the job is not listed ``settle_seconds`` later."""
        give_up, delay = self.clock() + self.submit_seconds, POLL_SECONDS
        while True:
            try:
                return self._perform(request)
            except Exception as error:
                failure = submit_failure(error)
                if failure == "unknown":
                    unsure["until"] = self.clock() + self.settle_seconds
                    found = self._find(request, unsure["until"])
                    if found is not None:
                        log.warning("job found after its submit's answer was lost", extra={"jobId": found})
                        return found
                if failure == "refused" or self.clock() >= give_up:
                    raise
                log.warning("submit failed; trying again", extra={"failure": failure, "error": str(error)})
            # Jitter between tries, not a secret: a pseudo-random generator is right here.
            self.sleep(delay * (1 + random.random()))  # nosec B311
            delay = min(delay * 2, 4.0)

    def _find(self, request: dict[str, Any], until: float) -> str | None:
        """The job made under the request's name, looked for once and again until ``until``; a look that
        fails is repeated, and if the last one failed its error is raised (whether the job exists is unknown)."""
        while True:
            error: Exception | None = None
            try:
                found = self._submitted_job(request)
            except (ClientError, BotoCoreError) as failed:
                found, error = None, failed
            if found is not None:
                return found
            if self.clock() >= until:
                if error is not None:
                    raise error
                return None
            self.sleep(LOOK_POLL_SECONDS)

    # What is guarded: a Batch job here, a message in :class:`EnqueueGuard`.
    def _label(self, request: dict[str, Any]) -> str:
        return request["jobName"]

    def _perform(self, request: dict[str, Any]) -> str:
        return self.batch.submit_job(**request)["jobId"]

    def _result(self, request: dict[str, Any], done: str) -> dict[str, str]:
        return {"jobName": request["jobName"], "jobId": done}

    def _submitted_job(self, request: dict[str, Any]) -> str | None:
        """The job submitted under this deterministic name, if any: a JOB_NAME filter lists every status,
        and may answer a page with no jobs and a next token, so every page is read."""
        pages = self.batch.get_paginator("list_jobs").paginate(
            jobQueue=request["jobQueue"], filters=[{"name": "JOB_NAME", "values": [request["jobName"]]}]
        )
        for page in pages:
            for job in page.get("jobSummaryList", []):
                if job.get("jobName") == request["jobName"]:  # the filter ignores case; the name does not
                    return str(job["jobId"])
        return None

    def _update(self, key: dict[str, str], owner: str, expression: str, values: dict[str, Any]) -> None:
        try:
            self.table.update_item(
                Key=key,
                UpdateExpression=expression,
                ConditionExpression="#owner = :me",
                ExpressionAttributeNames={"#owner": "owner", **({"#state": "state"} if "#state" in expression else {})},
                ExpressionAttributeValues=values | {":me": owner},
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            log.warning("guard changed hands meanwhile", extra={"guard": key["sk"]})


class EnqueueGuard(SubmitGuard):
    """One SendMessage per firing of a scheduled fleet task, guarded as :class:`SubmitGuard` guards a job.

    SQS cannot be asked whether a message was sent: a delivery that takes over an expired lease (its holder
    died between the send and the record, or the send's response was lost) sends again. The task then
    arrives twice with one task id, and the worker finds it done the second time.
    """

    def __init__(self, table: Any, sqs: Any, **options: Any) -> None:
        super().__init__(table, None, **options)
        self.sqs = sqs

    def _label(self, request: dict[str, Any]) -> str:
        return f"task for {request['QueueUrl']}"

    def _perform(self, request: dict[str, Any]) -> str:
        return self.sqs.send_message(**request)["MessageId"]

    def _submit_with_retries(self, request: dict[str, Any], unsure: dict[str, float]) -> str:
        return self._perform(request)  # no way to look for a message: its client's retries are all there is

    def _result(self, request: dict[str, Any], done: str) -> dict[str, str]:
        return {"messageId": done}

    def _submitted_job(self, request: dict[str, Any]) -> str | None:
        return None


def _decimal(value: float) -> Decimal:
    return Decimal(str(round(value, 3)))


def _expiry() -> int:
    return int(time.time()) + RECORD_TTL_SECONDS


# ---------------------------------------------------------------- chain metrics (embedded metric format)

#: The namespace of the chains' metrics, as the fleets' (pipeline_constructs.fleet.worker.metrics).
METRICS_NAMESPACE_VARIABLE = "PIPELINE_METRICS_NAMESPACE"


def job_metrics(facts: dict[str, Any], namespace: str = "PipelineConstructs") -> dict[str, Any]:
    """An EMF document for a job state change: ``ChainJobs`` by chain and state, and by chain the runs that
    ended (``ChainRunsSucceeded``: the last step succeeded; ``ChainRunsFailed``: a job failed) and the job's
    run time on a final state. The run and job ids are properties, never dimensions."""
    status, whole_job = facts["status"], not facts["array_child"]
    last = facts["index"] == len(facts["chain_config"]["steps"]) - 1
    by_chain = {
        "ChainRunsSucceeded": int(whole_job and last and status == "SUCCEEDED"),
        # A fan-out whose failed children were set aside (ChildFailure.CONTINUE) failed no run: its join runs.
        "ChainRunsFailed": int(whole_job and status == "FAILED" and not facts.get("continued")),
    }
    times = facts["timestamps"]
    if status in ("SUCCEEDED", "FAILED") and "startedAt" in times and "stoppedAt" in times:
        by_chain["ChainJobDuration"] = round((times["stoppedAt"] - times["startedAt"]) / 1000, 3)
    units = {name: "Seconds" if name.endswith("Duration") else "Count" for name in by_chain}
    directives = [
        {
            "Namespace": namespace,
            "Dimensions": [["Chain", "State"]],
            "Metrics": [{"Name": "ChainJobs", "Unit": "Count"}],
        },
        {
            "Namespace": namespace,
            "Dimensions": [["Chain"]],
            "Metrics": [{"Name": n, "Unit": u} for n, u in units.items()],
        },
    ]
    return {
        "_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": directives},
        "Chain": facts["chain"],
        "State": status,
        "ChainJobs": 1,
        **by_chain,
        "run": facts["run"],
        "step": facts["step"],
        "jobId": facts["job_id"],
    }


def log_job_metrics(facts: dict[str, Any]) -> None:
    """Print the job's EMF document: Lambda sends stdout lines to the function's log as they are, and
    CloudWatch extracts the metrics from it (no PutMetricData request per job)."""
    namespace = os.environ.get(METRICS_NAMESPACE_VARIABLE, "").strip() or "PipelineConstructs"
    print(json.dumps(job_metrics(facts, namespace)), flush=True)


# ---------------------------------------------------------------- Lambda entry point

#: An execution environment reads the chains' parameters again after this long: a chain whose job definition
#: was replaced (its ARN names a new revision) is not submitted at the old ARN for longer than this.
CONFIG_MAX_AGE_SECONDS = 60.0
#: An event naming a chain or job the configuration read does not know reads it again at once, at most this
#: often: a chain a deploy added may have its parameter written after the function.
CONFIG_MISS_RELOAD_SECONDS = 5.0


class ExecutionEnvironment:
    """What one execution environment keeps between invocations: its clients, and the glue built on the
    configuration it read, with when it read it."""

    def __init__(
        self,
        make_glue: Callable[[dict[str, Any]], Glue],
        read_config: Callable[[], dict[str, Any]] = load_config,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make_glue, self._read_config, self._clock = make_glue, read_config, clock
        self._glue: Glue | None = None
        self._read_at = 0.0

    def _glue_read_within(self, seconds: float) -> Glue:
        if self._glue is None or self._clock() - self._read_at >= seconds:
            self._glue, self._read_at = self._make_glue(self._read_config()), self._clock()
        return self._glue

    def handle(self, event: Any) -> dict[str, Any]:
        glue = self._glue_read_within(CONFIG_MAX_AGE_SECONDS)
        try:
            result = glue.handle(event)
            missed = result.pop("unknown", False)
        except ConfigMiss:
            if self._clock() - self._read_at < CONFIG_MISS_RELOAD_SECONDS:
                raise
            missed = True
        if missed and self._clock() - self._read_at >= CONFIG_MISS_RELOAD_SECONDS:
            result = self._glue_read_within(0).handle(event)  # read again: a chain a deploy just added
            result.pop("unknown", None)
        return result


def _glue_with_clients(config: dict[str, Any]) -> Glue:
    return Glue(config, **_clients())


@functools.cache
def _clients() -> dict[str, Any]:
    return {
        "batch": boto3.client("batch", config=BATCH_CLIENT_CONFIG),
        "dynamodb": boto3.resource("dynamodb"),
        "sqs": boto3.client("sqs"),
        "autoscaling": boto3.client("autoscaling"),
        "s3": boto3.client("s3"),
    }


_environment = ExecutionEnvironment(_glue_with_clients)


def handler(event: Any, _context: Any = None) -> dict[str, Any]:
    result = _environment.handle(event)
    log.info("handled", extra={"result": result})
    return result
