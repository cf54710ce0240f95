#!/usr/bin/env python3
"""The example app: one pipeline stack per environment, configured in cdk.json (``pipeline:environments``).

    cdk synth                 # every environment
    cdk synth -c env=prod     # one environment

Account and region come from the environment's config, else from CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION.
Synth needs no AWS credentials: availability zones are named in the config, so nothing is looked up.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_logs as logs
from cdk_nag import AwsSolutionsChecks, ServerlessChecks
from cdklabs.cdk_validator_cfnguard import CfnGuardValidator
from constructs import Construct

from pipeline_constructs import (
    BatchChain,
    ChainLink,
    ChainStep,
    DataBucket,
    FanOut,
    PipelineAlarms,
    PipelineDashboard,
    PipelineNetwork,
    ScheduledTrigger,
    SpotWorkerFleet,
    StatusStore,
    TaskQueue,
    WorkerTask,
    synth_or_exit,
)
from pipeline_constructs.building_blocks.compliance import COMPLIANCE_CONTEXT
from pipeline_constructs.building_blocks.logs import retention_from_days

ENVIRONMENTS_CONTEXT_KEY = "pipeline:environments"
CONTROL_TOWER_CONTEXT_KEY = "controlTower"
WORKER_IMAGES = Path(__file__).resolve().parent / "worker_images"
FEED_LATEST_MESSAGE = "feeds/feed_watcher/latest-message.json"  # written by feed_watcher on every change


class ConfigError(Exception):
    """A problem with cdk.json's environment config or the ``env`` context value: one line for the user."""


@dataclass(frozen=True)
class EnvironmentConfig:
    """One environment's knobs, as written in cdk.json (camelCase there)."""

    name: str
    availability_zones: list[str]
    removal_policy: str
    log_retention_days: int
    batch_max_vcpus: int
    feed_schedule: str
    feed_time_zone: str
    feed_url: str
    report_schedule: str
    fleet_max_size: int
    tasks_per_worker: int
    # Optional: the CDK CLI drops null context values, so these may be absent.
    region: str | None = None
    account: str | None = None
    alarm_email: str | None = None
    # "message": the consumer runs only when the watcher announces a change (the users' way);
    # "success": it runs after every successful watch, reading the watcher's latest message from S3.
    feed_link: str | None = None
    # True: the compliance profile (customer-managed keys, private subnets behind a NAT gateway, detailed
    # monitoring, object lock...): every Control Tower proactive control passes, nothing acknowledged.
    compliance: bool | None = None

    @classmethod
    def from_context(cls, name: str, raw: dict[str, Any]) -> EnvironmentConfig:
        def camel(snake: str) -> str:
            head, *rest = snake.split("_")
            return head + "".join(part.title() for part in rest)

        known = {camel(f.name): f.name for f in fields(cls) if f.name != "name"}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"environment '{name}': unknown key(s) {', '.join(unknown)}")
        optional = {camel(f.name) for f in fields(cls) if f.default is None}
        missing = sorted(key for key in known if key not in raw and key not in optional)
        if missing:
            raise ConfigError(f"environment '{name}': missing key(s) {', '.join(missing)}")
        config = cls(name=name, **{known[key]: value for key, value in raw.items()})
        if config.removal_policy not in ("retain", "destroy"):
            raise ConfigError(
                f"environment '{name}': removalPolicy={config.removal_policy!r}; allowed: retain, destroy"
            )
        if config.compliance not in (None, True, False):
            raise ConfigError(f"environment '{name}': compliance={config.compliance!r}; allowed: true, false")
        if config.feed_link not in (None, "message", "success"):
            raise ConfigError(f"environment '{name}': feedLink={config.feed_link!r}; allowed: message, success")
        try:
            config.log_retention()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return config

    @property
    def stack_name(self) -> str:
        return f"pipeline-{self.name}"

    @property
    def cdk_removal_policy(self) -> cdk.RemovalPolicy:
        return cdk.RemovalPolicy.DESTROY if self.removal_policy == "destroy" else cdk.RemovalPolicy.RETAIN

    def log_retention(self) -> logs.RetentionDays:
        return retention_from_days(f"environment '{self.name}'", "logRetentionDays", self.log_retention_days)


def load_environments(app: cdk.App) -> dict[str, EnvironmentConfig]:
    raw = app.node.try_get_context(ENVIRONMENTS_CONTEXT_KEY)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"cdk.json has no '{ENVIRONMENTS_CONTEXT_KEY}' context with at least one environment")
    return {name: EnvironmentConfig.from_context(name, values) for name, values in raw.items()}


def selected_environments(app: cdk.App) -> list[EnvironmentConfig]:
    """The environment named by ``-c env=<name>``, or every environment when none is named."""
    environments = load_environments(app)
    wanted = app.node.try_get_context("env")
    if wanted is None:
        return list(environments.values())
    if wanted not in environments:
        raise ConfigError(f"unknown environment '{wanted}'; known: {', '.join(environments)}")
    return [environments[wanted]]


class PipelineStack(cdk.Stack):
    """The example pipeline of one environment."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        # Before any construct is added: they read the profile when they are built.
        self.node.set_context(COMPLIANCE_CONTEXT, bool(config.compliance))
        retention = config.log_retention()
        removal = config.cdk_removal_policy

        self.network = PipelineNetwork(
            self, "Network", availability_zones=config.availability_zones, flow_log_retention=retention
        )
        self.data = DataBucket(self, "Data", removal_policy=removal)
        self.status = StatusStore(self, "Status", removal_policy=removal)

        # Stage one: CSV statistics per uploaded file on spot workers; finished tasks go to a queue that
        # stage two, a daily Batch report, drains (no second fleet: no idle alarms for it).
        self.finished = TaskQueue(self, "Finished", max_receive_count=3, retention_period=cdk.Duration.days(14))
        # What every fleet of the stack shares: its network, data, status table, ceiling and log retention.
        shared = {
            "network": self.network,
            "bucket": self.data.bucket,
            "table": self.status.table,
            "max_size": config.fleet_max_size,
            "log_retention": retention,
        }
        self.statistics = SpotWorkerFleet(
            self,
            "Statistics",
            task="task:csv_stats",
            worker_directory=WORKER_IMAGES / "sqs_worker",
            tasks_per_worker=config.tasks_per_worker,
            downstream_queue=self.finished.queue,
            **shared,
        )
        # Workers in any language, beside the Python one: a command run per task (input file in, output folder
        # out) and a local HTTP app in the manner of Beanstalk's worker tier (each task POSTed to it).
        self.word_counts = SpotWorkerFleet(
            self,
            "WordCounts",
            task=WorkerTask.command(["./count_words", "{input}"]),
            worker_directory=WORKER_IMAGES / "command_worker",
            **shared,
        )
        self.word_frequencies = SpotWorkerFleet(
            self,
            "WordFrequencies",
            task=WorkerTask.http(port=8080, start=["python3", "app.py"]),
            concurrency=1,  # one request at a time: a timed-out one's work is stopped with a restart of the app
            worker_directory=WORKER_IMAGES / "http_worker",
            **shared,
        )
        # The daily feed: watch the XML feed, and only when it changed, convert it (message link).
        self.feeds = BatchChain(
            self,
            "Feeds",
            chain_name="feeds",
            network=self.network,
            bucket=self.data.bucket,
            table=self.status.table,
            max_vcpus=config.batch_max_vcpus,
            log_retention=retention,
            steps=[
                ChainStep(
                    name="feed_watcher",
                    image=WORKER_IMAGES / "feed_watcher",
                    memory_mib=1024,
                    timeout=cdk.Duration.minutes(15),
                    environment={"FEED_URL": config.feed_url, "FEED_TYPE": "lovelive", "FEED_RECORD_TAG": "job"},
                    link=(
                        ChainLink.on_success({"PARALLELISM": 15, "MESSAGE_KEY": FEED_LATEST_MESSAGE})
                        if config.feed_link == "success"
                        else ChainLink.message({"PARALLELISM": 15})
                    ),
                ),
                ChainStep(
                    name="feed_consumer",
                    image=WORKER_IMAGES / "feed_consumer",
                    vcpus=4,
                    memory_mib=8192,
                    timeout=cdk.Duration.hours(2),
                ),
            ],
        )
        self.daily_feed = ScheduledTrigger(
            self, "DailyFeed", schedule=config.feed_schedule, time_zone=config.feed_time_zone, chain=self.feeds
        )

        # The later chains share the feed chain's bucket, table, and its one spot environment and queue.
        sharing_the_feeds = {
            "bucket": self.data.bucket,
            "table": self.status.table,
            "compute_environment": self.feeds.compute_environment,
            "job_queue": self.feeds.job_queue,
            "log_retention": retention,
        }
        self.reports = BatchChain(
            self,
            "Reports",
            chain_name="reports",
            **sharing_the_feeds,
            steps=[
                ChainStep(
                    name="daily_report",
                    image=WORKER_IMAGES / "daily_report",
                    memory_mib=1024,
                    timeout=cdk.Duration.minutes(30),
                    consumes=self.finished.queue,
                )
            ],
        )
        self.statistics.grant_read_outputs(self.reports.job_roles["daily_report"])
        self.daily_report = ScheduledTrigger(
            self, "DailyReport", schedule=config.report_schedule, time_zone=config.feed_time_zone, chain=self.reports
        )

        # Fan-out / fan-in: the day's 24 hourly partitions, one Batch array child each, then one join.
        self.partitions = BatchChain(
            self,
            "Partitions",
            chain_name="partitions",
            **sharing_the_feeds,
            steps=[
                ChainStep(
                    name="hourly_split",
                    image=WORKER_IMAGES / "hourly_split",
                    memory_mib=512,
                    timeout=cdk.Duration.minutes(10),
                    link=ChainLink.message(),
                ),
                ChainStep(
                    name="hourly_partition",
                    image=WORKER_IMAGES / "hourly_partition",
                    memory_mib=1024,
                    timeout=cdk.Duration.minutes(15),
                    attempts=2,
                    fan_out=FanOut.over_message(field="partitions"),
                    link=ChainLink.on_success(),
                ),
                ChainStep(
                    name="hourly_join",
                    image=WORKER_IMAGES / "hourly_join",
                    memory_mib=512,
                    timeout=cdk.Duration.minutes(10),
                    environment={"PARTITIONS_STEP": "hourly_partition"},
                    reads_from=["hourly_partition"],
                ),
            ],
        )
        self.daily_partitions = ScheduledTrigger(
            self,
            "DailyPartitions",
            schedule=config.report_schedule,
            time_zone=config.feed_time_zone,
            chain=self.partitions,
        )

        self.alarms = PipelineAlarms(self, "Alarms", email=config.alarm_email)
        self.alarms.watch_chain(self.feeds)
        self.alarms.watch_chain(self.reports)
        self.alarms.watch_fleet(self.statistics)
        self.alarms.watch_queue("FinishedDeadLetters", self.finished.dead_letter_queue, "The finished-task DLQ")
        self.alarms.watch_chain(self.partitions)
        self.alarms.watch_fleet(self.word_counts)
        self.alarms.watch_fleet(self.word_frequencies)
        # What the figures of `pipeline report` look like live: queues, fleet sizes, task durations, chain runs.
        self.dashboard = PipelineDashboard(
            self,
            "Dashboard",
            fleets=[self.statistics, self.word_counts, self.word_frequencies],
            chains=[self.feeds, self.reports, self.partitions],
            alarms=self.alarms,
            dashboard_name=f"pipeline-{config.name}",
        )

        # For people; the operator CLI reads the PipelineConstructsManifest output the constructs write.
        for name, value in {
            "DataBucketName": self.data.bucket.bucket_name,
            "StatusTableName": self.status.table.table_name,
            "GlueFunctionName": self.feeds.glue.function.function_name,
            "AlarmTopicArn": self.alarms.topic.topic_arn,
        }.items():
            cdk.CfnOutput(self, name, value=value)


def build_app(context: dict[str, Any] | None = None, *, outdir: str | None = None, rule_packs: bool = True) -> cdk.App:
    """Build the example app with cdk-nag's checks and the Control Tower proactive controls attached
    (``rule_packs=False``: without them, seconds faster, for a run that is not about findings);
    ``context`` adds to (or replaces) cdk.json's."""
    app = cdk.App(context=context, outdir=outdir)
    for config in selected_environments(app):
        PipelineStack(
            app,
            config.stack_name,
            config=config,
            env=cdk.Environment(
                account=config.account or os.environ.get("CDK_DEFAULT_ACCOUNT"),
                region=config.region or os.environ.get("CDK_DEFAULT_REGION"),
            ),
            description=f"Batch data pipeline example ({config.name}) built with pipeline_constructs",
        )
    if rule_packs:
        add_rule_packs(app)
    return app


def add_rule_packs(app: cdk.App) -> None:
    """Unacknowledged findings fail synth; acknowledgments sit next to the resource they concern."""
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    cdk.Validations.of(app).add_plugins(ServerlessChecks(app))
    # The rules AWS Control Tower enforces as CloudFormation hooks in governed accounts. They cost synth about
    # 2.4 s plus 0.75 s per fleet (cfn-guard checks every rule on every resource): `-c controlTower=false`
    # leaves them out of a quick iteration; make synth and the tests keep them.
    if str(app.node.try_get_context(CONTROL_TOWER_CONTEXT_KEY)).lower() != "false":
        cdk.Validations.of(app).add_plugins(CfnGuardValidator())


def main() -> None:
    try:
        app = build_app()
    except ConfigError as error:
        sys.exit(f"error: {error}")
    synth_or_exit(app)  # `python app.py` fails on findings as `cdk synth` does


if __name__ == "__main__":
    main()
