"""ScheduledTrigger: a cron or rate schedule that starts a chain, submits a Batch job or enqueues a task."""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from aws_cdk import Duration, TimeZone
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pipeline_constructs.building_blocks.status_store import StatusStore
from pipeline_constructs.building_blocks.task_queue import grant_send
from pipeline_constructs.building_blocks.validation import argument_error, check_range
from pipeline_constructs.chain.construct import BatchChain
from pipeline_constructs.glue.construct import GlueFunction

if TYPE_CHECKING:
    from pipeline_constructs.fleet.construct import SpotWorkerFleet

_CRON_FIELD = r"[0-9A-Za-z*?,/#\-LW]+"
CRON = re.compile(rf"^cron\(({_CRON_FIELD})( {_CRON_FIELD}){{5}}\)$")
RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")


#: The numeric range of each cron field (EventBridge): minutes, hours, day-of-month, month, day-of-week, year.
CRON_RANGES = (
    ("minutes", 0, 59),
    ("hours", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 1, 7),
    ("year", 1970, 2199),
)
_NUMERIC_PART = re.compile(r"^(\d+)(?:-(\d+))?(?:/(\d+))?$")


def _out_of_range(fields: list[str]) -> str | None:
    """The first numeric cron value outside its field's range, described; None if all fit. Names (JAN, MON)
    and the special forms (L, W, #) are left to EventBridge."""
    for value, (name, low, high) in zip(fields, CRON_RANGES, strict=True):
        for part in value.split(","):
            match = _NUMERIC_PART.match(part)
            if not match:
                continue
            start, end, step = (int(g) if g else None for g in match.groups())
            for number in (start, end):
                if number is not None and not low <= number <= high:
                    return f"{name} {number} outside {low}-{high}"
            if step is not None and step < 1:
                return f"{name} step {step} below 1"
    return None


def validate_expression(scope: Construct, expression: str) -> None:
    """A six-field cron (minutes hours day-of-month month day-of-week year) or ``rate(N unit)``."""
    cron = CRON.match(expression)
    if cron:
        fields = expression[5:-1].split(" ")
        if "?" not in (fields[2], fields[4]):
            raise argument_error(scope, "schedule", expression, "cron with '?' in day-of-month or day-of-week")
        problem = _out_of_range(fields)
        if problem:
            raise argument_error(scope, "schedule", expression, f"cron fields within their ranges ({problem})")
        return
    rate = RATE.match(expression)
    if rate:
        value, unit = int(rate.group(1)), rate.group(2)
        if value < 1 or (value == 1) != (not unit.endswith("s")):
            raise argument_error(scope, "schedule", expression, "rate(1 unit) or rate(N units), N >= 1")
        return
    raise argument_error(
        scope,
        "schedule",
        expression,
        "cron(min hour day-of-month month day-of-week year) or rate(N minutes|hours|days)",
    )


class ScheduledTrigger(Construct):
    """Starts work on a schedule: a :class:`BatchChain`'s first step, any Batch job, or one queue message.

    Exactly one target: ``chain``; or ``job_queue`` with ``job_definition`` (the users' constant input
    ``{"jobName", "jobQueue", "jobDefinition", "containerOverrides", "parameters"}``); or ``fleet``; or
    ``queue``.

    :param schedule: ``cron(...)`` (six fields, EventBridge syntax) or ``rate(N unit)``.
    :param time_zone: IANA time zone of a cron schedule (EventBridge Scheduler honours daylight saving).
        Default: ``UTC``.
    :param use_eventbridge_rule: use a plain EventBridge rule (UTC only) instead of EventBridge Scheduler.
        Default: False.
    :param chain: start this chain. Default: None.
    :param chain_environment: extra environment for the chain's first step. Default: none.
    :param job_queue: with ``job_definition``: submit this job. Default: None.
    :param job_definition: the job definition to submit. Default: None.
    :param job_name: name of the submitted job (the schedule time is appended). Default: the construct id.
    :param container_overrides: Batch ``containerOverrides`` of the submitted job. Default: none.
    :param parameters: Batch ``parameters`` of the submitted job. Default: none.
    :param fleet: send one task to this :class:`SpotWorkerFleet` and start it from zero at once, through the
        stack's glue function (a plain ``queue`` target waits minutes for the fleet's CloudWatch-driven
        scaling). Default: None.
    :param queue: send one message to this queue, directly. Default: None.
    :param message: the body of the ``fleet`` or ``queue`` message (object -> JSON). Default:
        ``{"trigger": <construct id>}``.
    :param task_per_firing: with ``fleet``: a message's ``key`` (or ``id``) gets each firing's time
        (``nightly`` -> ``nightly/2026-11-24T03-00-00Z``), so the task runs at every firing instead of once
        ever (a task id the fleet has done is not done again); its input stays at ``input/<key>``. False:
        every firing sends the same task id. Default: True.
    :param table: status store holding the guard that makes a redelivered schedule event submit once (a job
        or ``fleet`` target; a chain uses its own table). Default: the table of the stack's first chain or guarded
        trigger, else the stack's shared :class:`StatusStore` (:meth:`StatusStore.of`).
    :param enabled: whether the schedule fires. Default: True.
    :param retry_attempts: delivery retries before the event lands in the DLQ. Default: 3. Range: 0 to 185.
    """

    #: What each firing sends: the message body (to ``queue``), else the glue function's event.
    input: str | dict[str, Any]

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        schedule: str,
        time_zone: str = "UTC",
        use_eventbridge_rule: bool = False,
        chain: BatchChain | None = None,
        chain_environment: Mapping[str, Any] | None = None,
        job_queue: batch.IJobQueue | None = None,
        job_definition: batch.IJobDefinition | None = None,
        job_name: str | None = None,
        container_overrides: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        fleet: SpotWorkerFleet | None = None,
        queue: sqs.IQueue | None = None,
        message: Mapping[str, Any] | str | None = None,
        task_per_firing: bool = True,
        table: dynamodb.ITable | None = None,
        enabled: bool = True,
        retry_attempts: int = 3,
    ) -> None:
        super().__init__(scope, construct_id)
        self.schedule_expression, self.time_zone = schedule, time_zone
        self._check_schedule(use_eventbridge_rule=use_eventbridge_rule, retry_attempts=retry_attempts)
        self._check_targets(chain=chain, job_queue=job_queue, job_definition=job_definition, fleet=fleet, queue=queue)
        self.queue, self.fleet = queue, fleet
        self.glue: GlueFunction | None = None
        #: The table of the guard that makes a redelivered event act once (a job or fleet target).
        self.table: dynamodb.ITable | None = None
        body = message if message is not None else {"trigger": construct_id}
        body_text = body if isinstance(body, str) else json.dumps(body)
        firing = _Firing(use_eventbridge_rule=use_eventbridge_rule, enabled=enabled, retry_attempts=retry_attempts)
        if queue is not None:
            self.input = body_text
            self._send_to_queue(queue, body_text, **firing)
            return
        self.glue = glue = GlueFunction.of(self)
        if fleet is not None:
            event = _enqueue_event(glue, fleet, body_text, task_per_firing=task_per_firing)
            self.table = self._guard_table(glue, table)
        elif chain is not None:
            event = {"chain": chain.chain_name, "environment": dict(chain_environment or {})}
        else:
            assert job_queue is not None and job_definition is not None  # the target left, both given (checked)
            event = self._job_event(
                glue,
                job_queue,
                job_definition,
                job_name=job_name or construct_id,
                container_overrides=container_overrides,
                parameters=parameters,
                table=table,
            )
        self.input = event
        self._invoke_glue(glue, event, **firing)

    def _guard_table(self, glue: GlueFunction, table: dynamodb.ITable | None) -> dynamodb.ITable:
        """``table``, unless the stack's glue guards in one already; the shared status store if neither."""
        return glue.use_guard_table(table or glue.guard_table or StatusStore.of(self).table)

    def _check_schedule(self, *, use_eventbridge_rule: bool, retry_attempts: int) -> None:
        validate_expression(self, self.schedule_expression)
        time_zone = self.time_zone
        if time_zone not in zoneinfo.available_timezones() and time_zone != "UTC":
            raise argument_error(self, "time_zone", time_zone, "an IANA time zone such as 'Europe/Berlin'")
        if use_eventbridge_rule and time_zone != "UTC":
            raise argument_error(self, "time_zone", time_zone, "UTC with use_eventbridge_rule=True (rules run in UTC)")
        check_range(self, "retry_attempts", retry_attempts, minimum=0, maximum=185)

    def _check_targets(
        self,
        *,
        chain: BatchChain | None,
        job_queue: batch.IJobQueue | None,
        job_definition: batch.IJobDefinition | None,
        fleet: SpotWorkerFleet | None,
        queue: sqs.IQueue | None,
    ) -> None:
        targets = [
            chain is not None,
            job_queue is not None or job_definition is not None,
            fleet is not None,
            queue is not None,
        ]
        if sum(targets) != 1:
            raise argument_error(self, "chain/job_queue/fleet/queue", sum(targets), "exactly one target")
        if fleet is not None and not hasattr(fleet, "grant_wake"):
            raise argument_error(self, "fleet", type(fleet).__name__, "a SpotWorkerFleet (a plain queue: queue=)")
        if (job_queue is None) != (job_definition is None):
            raise argument_error(self, "job_definition", job_definition, "given together with job_queue")

    def _job_event(
        self,
        glue: GlueFunction,
        job_queue: batch.IJobQueue,
        job_definition: batch.IJobDefinition,
        *,
        job_name: str,
        container_overrides: Mapping[str, Any] | None,
        parameters: Mapping[str, Any] | None,
        table: dynamodb.ITable | None,
    ) -> dict[str, Any]:
        """The glue's event submitting the job, which may submit it and guard it (submit once) in ``table``."""
        glue.grant_submit(job_queue, [job_definition])
        self.table = self._guard_table(glue, table)
        event: dict[str, Any] = {
            "jobName": job_name,
            "jobQueue": job_queue.job_queue_arn,
            "jobDefinition": job_definition.job_definition_arn,
        }
        if container_overrides:
            event["containerOverrides"] = dict(container_overrides)
        if parameters:
            event["parameters"] = dict(parameters)
        return event

    def _send_to_queue(
        self, queue: sqs.IQueue, body: str, *, use_eventbridge_rule: bool, enabled: bool, retry_attempts: int
    ) -> None:
        """Each firing sends ``body`` to ``queue`` directly."""
        if use_eventbridge_rule:
            message = events.RuleTargetInput.from_text(body)
            self.rule = self._rule(
                events_targets.SqsQueue(queue, message=message, retry_attempts=retry_attempts), enabled
            )
        else:
            text = scheduler.ScheduleTargetInput.from_text(body)
            target = scheduler_targets.SqsSendMessage(queue, input=text, retry_attempts=retry_attempts)
            self.schedule = self._schedule(target, enabled)

    def _invoke_glue(
        self,
        glue: GlueFunction,
        event: dict[str, Any],
        *,
        use_eventbridge_rule: bool,
        enabled: bool,
        retry_attempts: int,
    ) -> None:
        """Each firing invokes the glue function with ``event`` and the time it was scheduled for."""
        if use_eventbridge_rule:
            target = events_targets.LambdaFunction(
                glue.function,
                event=events.RuleTargetInput.from_object(event | {"scheduledTime": events.EventField.time}),
                dead_letter_queue=glue.failure_queue,
                retry_attempts=retry_attempts,
            )
            self.rule = self._rule(target, enabled)
        else:
            payload = event | {"scheduledTime": scheduler.ContextAttribute.scheduled_time}
            invoke, self.role = glue.scheduler_target(
                self,
                "ScheduleRole",
                payload,
                retry_attempts=retry_attempts,
                max_event_age=Duration.hours(6),
                dead_letter_queue=glue.failure_queue,
            )
            self.schedule = self._schedule(invoke, enabled)

    def _schedule(self, target: scheduler.IScheduleTarget, enabled: bool) -> scheduler.Schedule:
        expression = scheduler.ScheduleExpression.expression(self.schedule_expression, TimeZone.of(self.time_zone))
        return scheduler.Schedule(
            self, "Schedule", schedule=expression, target=target, enabled=enabled, description=f"{self.node.path}"
        )

    def _rule(self, target: events.IRuleTarget, enabled: bool) -> events.Rule:
        return events.Rule(
            self,
            "Rule",
            schedule=events.Schedule.expression(self.schedule_expression),
            targets=[target],
            enabled=enabled,
            description=f"{self.node.path}",
        )


class _Firing(TypedDict):
    """How each firing is delivered, whatever the target."""

    use_eventbridge_rule: bool
    enabled: bool
    retry_attempts: int


def _enqueue_event(glue: GlueFunction, fleet: SpotWorkerFleet, body: str, *, task_per_firing: bool) -> dict[str, Any]:
    """The glue's event sending ``body`` to the fleet's queue once per firing and starting the fleet from
    zero, which it may."""
    grant_send(fleet.queue, glue.role)
    fleet.grant_wake(glue.role)
    group = fleet.auto_scaling_group.auto_scaling_group_name
    enqueue: dict[str, Any] = {"queue": fleet.queue.queue_url, "body": body, "group": group}
    if task_per_firing:
        enqueue |= {"taskPerFiring": True, "inputPrefix": f"{fleet.prefix}input/"}
    return {"enqueue": enqueue}
