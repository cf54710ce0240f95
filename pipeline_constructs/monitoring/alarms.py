"""PipelineAlarms: one SNS topic for everything that needs a person, and the alarms that feed it."""

from __future__ import annotations

import jsii
from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk.interfaces import aws_events as events_refs
from constructs import Construct

from pipeline_constructs.building_blocks.nag import acknowledge
from pipeline_constructs.building_blocks.topic import secure_topic
from pipeline_constructs.chain.construct import BatchChain
from pipeline_constructs.fleet.construct import SpotWorkerFleet
from pipeline_constructs.glue.handler import RUNNABLE_TIMEOUT_CANCEL


class PipelineAlarms(Construct):
    """Alarms on what should never pile up: dead letters, failed jobs, glue errors.

    Cheap by design: one single-metric alarm per queue or function (alarms are billed per metric), and
    failed Batch jobs are an EventBridge rule straight to the topic, which costs nothing while idle.

    The topic's policy replaces SNS's default one: it allows CloudWatch to publish for this construct's alarms
    and EventBridge for its rules (each by ``aws:SourceArn``, and ``aws:SourceAccount``), nothing else. An
    alarm made elsewhere cannot notify this topic.

    :param email: address subscribed to the alarm topic (it must confirm the subscription). Default: None.
    :param encryption_key: customer-managed KMS key for the topic. Default: None (CloudWatch cannot publish
        to a topic encrypted with the AWS managed SNS key).
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, email: str | None = None, encryption_key: kms.IKey | None = None
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = secure_topic(
            self, "Topic", encryption_key=encryption_key, service_publishers=True, display_name="Pipeline alarms"
        )
        if email:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))
            acknowledge(
                self.topic,
                "Serverless-SNSRedrivePolicy",
                "The only subscription is the alarm e-mail, which SNS retries for days; a DLQ behind an alarm "
                "e-mail would itself need an alarm that no one receives.",
            )
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self._watched: set[str] = set()
        # The topic policy replaces SNS's default one: each service that publishes is allowed here, bound to
        # this stack's own alarms and rules (a statement per service, its sources filled in as they are made).
        self._alarm_arns: list[str] = []
        self._rule_arns: list[str] = []
        self._cloudwatch_publishes = self._service_publish_statement("CloudWatchAlarmsOfThisStack", "cloudwatch")
        self._events_publishes = self._service_publish_statement("EventBridgeRulesOfThisStack", "events")
        # The rule targets publish through an imported reference: the CDK's own grant on it (events.amazonaws.com
        # from any rule of any account's region) is not added to this topic's policy; the statement above is.
        self._topic_for_rules = sns.Topic.from_topic_arn(self, "TopicForRules", self.topic.topic_arn)

    def _service_publish_statement(self, sid: str, service: str) -> iam.PolicyStatement:
        statement = iam.PolicyStatement(
            sid=sid,
            principals=[iam.ServicePrincipal(f"{service}.amazonaws.com")],
            actions=["sns:Publish"],
            resources=[self.topic.topic_arn],
            conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
        )
        return statement

    def _allow_source(self, statement: iam.PolicyStatement, arns: list[str], arn: str) -> None:
        """Allow ``arn`` (an alarm's, a rule's) in ``statement``, added to the topic's policy with its first."""
        if not arns:
            self.topic.add_to_resource_policy(statement)
        arns.append(arn)
        # The same operator and key again replaces the value: the statement names every source so far.
        statement.add_condition("ArnEquals", {"aws:SourceArn": list(arns)})

    def _once(self, key: str) -> bool:
        if key in self._watched:
            return False
        self._watched.add(key)
        return True

    def _alarm(self, alarm_id: str, metric: cloudwatch.IMetric, description: str) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self,
            alarm_id,
            metric=metric,
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.topic))
        self._allow_source(self._cloudwatch_publishes, self._alarm_arns, alarm.alarm_arn)
        self.alarms[alarm_id] = alarm
        return alarm

    def watch_queue(self, alarm_id: str, queue: sqs.IQueue, what: str) -> None:
        """Alarm as soon as ``queue`` (a DLQ, an on-failure queue) holds a message."""
        if self._once(queue.node.path):
            self._alarm(
                alarm_id,
                queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(5), statistic="Maximum"),
                f"{what} is not empty: something failed for good and waits for a person (see the messages).",
            )

    def watch_function(self, alarm_id: str, function: lambda_.IFunction, what: str) -> None:
        if self._once(function.node.path):
            self._alarm(
                alarm_id,
                function.metric_errors(period=Duration.minutes(5), statistic="Sum"),
                f"{what} raised errors (it retries; see its log group).",
            )

    def watch_fleet(self, fleet: SpotWorkerFleet) -> None:
        if fleet.dead_letter_queue is not None:
            self.watch_queue(f"{fleet.node.id}DeadLetters", fleet.dead_letter_queue, f"{fleet.node.path} DLQ")

    def watch_chain(self, chain: BatchChain) -> None:
        """Failed jobs of the chain (notified per job), jobs its queue cancelled after waiting in RUNNABLE
        (notified again, saying why), and its glue Lambda's errors and failure queue."""
        self.watch_function("GlueErrors", chain.glue.function, "The glue Lambda")
        self.watch_queue("GlueFailures", chain.glue.failure_queue, "The glue on-failure queue")
        detail = events.EventField.from_path
        self._failed_jobs_rule(
            chain,
            "FailedJobs",
            f"Failed Batch jobs of chain {chain.chain_name}",
            f"Batch job {detail('$.detail.jobName')} ({detail('$.detail.jobId')}) of chain "
            f"{chain.chain_name} FAILED: {detail('$.detail.statusReason')}",
        )
        # A job the chain's queue cancelled after it waited in RUNNABLE (no spot capacity for the chain's
        # runnable_timeout, or no allowed instance type holds it): its run failed for the chain's compute, not
        # its code. Also notified as a failed job above; this message says what to change.
        self._failed_jobs_rule(
            chain,
            "StuckJobs",
            f"Batch jobs of chain {chain.chain_name} cancelled after waiting in RUNNABLE",
            f"Batch job {detail('$.detail.jobName')} of chain {chain.chain_name} waited in RUNNABLE "
            f"until its job queue cancelled it ({detail('$.detail.statusReason')}), so its run "
            "failed. CAPACITY: no spot capacity in any allowed instance type for the chain's "
            "runnable_timeout (allow more instance classes, or wait longer). MISCONFIGURATION: no "
            "allowed instance type, or not the compute environment's max vCPUs, holds the step "
            f"(make it smaller or the instances larger). A new run: pipeline start {chain.chain_name}.",
            statusReason=[{"prefix": RUNNABLE_TIMEOUT_CANCEL}],
        )

    def _failed_jobs_rule(
        self, chain: BatchChain, kind: str, description: str, message: str, **detail: list[object]
    ) -> None:
        """An EventBridge rule straight to the topic (free while idle) on the chain's FAILED jobs whose
        ``detail`` also matches the given fields."""
        rule = events.Rule(
            self,
            f"{chain.node.id}{kind}",
            description=description,
            event_pattern=events.EventPattern(
                source=["aws.batch"],
                detail_type=["Batch Job State Change"],
                detail={
                    "status": ["FAILED"],
                    **detail,
                    "jobQueue": [chain.job_queue.job_queue_arn],
                    "jobDefinition": chain.job_definition_event_filter(),  # every revision: jobs outlive deploys
                },
            ),
            targets=[
                _TopicTarget(
                    events_targets.SnsTopic(
                        self._topic_for_rules,
                        message=events.RuleTargetInput.from_text(message),
                        dead_letter_queue=chain.glue.failure_queue,
                    )
                )
            ],
        )
        self._allow_source(self._events_publishes, self._rule_arns, rule.rule_arn)


@jsii.implements(events.IRuleTarget)
class _TopicTarget:
    """An SNS target's configuration without its imported topic as the target resource: the topic is this
    stack's own (the rule needs no cross-environment set-up), only its policy is kept out of the CDK's hands."""

    def __init__(self, target: events_targets.SnsTopic) -> None:
        self._target = target

    def bind(self, rule: events_refs.IRuleRef, id: str | None = None) -> events.RuleTargetConfig:
        config = self._target.bind(rule, id)
        return events.RuleTargetConfig(
            arn=config.arn,
            input=config.input,
            dead_letter_config=config.dead_letter_config,
            retry_policy=config.retry_policy,
        )
