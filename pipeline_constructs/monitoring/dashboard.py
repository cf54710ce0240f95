"""PipelineDashboard: one CloudWatch dashboard with what an operator of the stack's fleets and chains looks at."""

from __future__ import annotations

import re
from collections.abc import Sequence

from aws_cdk import Duration, Token
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from pipeline_constructs.building_blocks.validation import (
    argument_error,
    check_is_duration,
    check_is_instance,
    check_range,
)
from pipeline_constructs.chain.construct import BatchChain
from pipeline_constructs.fleet.construct import SpotWorkerFleet
from pipeline_constructs.fleet.worker.metrics import DEFAULT_NAMESPACE, FLEET_DIMENSION
from pipeline_constructs.glue.construct import GlueFunction
from pipeline_constructs.monitoring.alarms import PipelineAlarms

#: CloudWatch's rule for dashboard names.
DASHBOARD_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
#: The job states a chain's runs pass through that are worth a line (SUBMITTED to STARTING are brief).
CHAIN_JOB_STATES = ("RUNNABLE", "RUNNING", "SUCCEEDED", "FAILED")
WIDE, NARROW, HEIGHT = 12, 6, 6


class PipelineDashboard(Construct):
    """A CloudWatch dashboard of fleets and chains: for each fleet its queue (waiting, in flight), dead
    letters, size (instances in service), task durations (p50, p95) and outcomes; for each chain its runs
    that succeeded and failed, its jobs by state, job durations and the glue function's errors and failure
    queue; and the alarms' states.

    The task and chain figures come from the embedded metric format lines the worker and the glue function
    log (``pipeline_constructs.fleet.worker.metrics``), so they cost no request per task. A dashboard costs
    $3 a month beyond the three an account gets free (``pipeline cost`` lists it).

    :param fleets: the fleets to show. Default: none.
    :param chains: the chains to show. Default: none.
    :param alarms: alarms whose states head the dashboard (those made before it). Default: None, no alarm row.
    :param dashboard_name: the dashboard's name (letters, digits, ``-`` and ``_``). Default: None, a name
        CloudFormation makes unique.
    :param namespace: the metric namespace the workers and the glue function write to (their
        ``PIPELINE_METRICS_NAMESPACE``, ``PipelineConstructs`` unless set): the same, or the task and chain
        graphs stay empty. Default: ``PipelineConstructs``.
    :param period: the period of every graph's points. Default: 5 minutes. Range: 1 minute to 1 day.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        fleets: Sequence[SpotWorkerFleet] = (),
        chains: Sequence[BatchChain] = (),
        alarms: PipelineAlarms | None = None,
        dashboard_name: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        period: Duration | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        for index, fleet in enumerate(fleets):
            check_is_instance(self, f"fleets[{index}]", fleet, SpotWorkerFleet)
        for index, chain in enumerate(chains):
            check_is_instance(self, f"chains[{index}]", chain, BatchChain)
        check_is_instance(self, "alarms", alarms, PipelineAlarms)
        named = dashboard_name is not None and not Token.is_unresolved(dashboard_name)
        if named and not DASHBOARD_NAME.fullmatch(str(dashboard_name)):
            raise argument_error(self, "dashboard_name", dashboard_name, "1-255 letters, digits, - or _")
        if not namespace or len(namespace) > 255:
            raise argument_error(self, "namespace", namespace, "1-255 characters")
        check_is_duration(self, "period", period)
        self.period = period or Duration.minutes(5)
        check_range(self, "period", self.period.to_seconds(), minimum=60, maximum=86400, unit=" s")
        self.namespace = namespace
        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=dashboard_name, default_interval=Duration.hours(12)
        )
        if alarms is not None and alarms.alarms:
            self.dashboard.add_widgets(
                cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(alarms.alarms.values()), width=24)
            )
        for fleet in fleets:
            self.dashboard.add_widgets(*self._fleet_widgets(fleet))
        for chain in chains:
            self.dashboard.add_widgets(*self._chain_widgets(chain))
        glues = {chain.glue.node.path: chain.glue for chain in chains}  # one per stack, shared by its chains
        for glue in glues.values():
            self.dashboard.add_widgets(self._glue_widget(glue))

    def _metric(self, name: str, dimensions: dict[str, str], statistic: str, label: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace=self.namespace,
            metric_name=name,
            dimensions_map=dimensions,
            statistic=statistic,
            label=label,
            period=self.period,
        )

    def _graph(
        self, title: str, metrics: Sequence[cloudwatch.IMetric], *, width: int = NARROW, unit: str = ""
    ) -> cloudwatch.GraphWidget:
        axis = cloudwatch.YAxisProps(label=unit, show_units=False, min=0) if unit else None
        return cloudwatch.GraphWidget(title=title, left=list(metrics), width=width, height=HEIGHT, left_y_axis=axis)

    def _fleet_widgets(self, fleet: SpotWorkerFleet) -> list[cloudwatch.IWidget]:
        """Queue, fleet size and dead letters, then task durations and outcomes (from the workers' lines)."""
        name, period = fleet.node.path, self.period
        queue = [
            fleet.queue.metric_approximate_number_of_messages_visible(label="waiting", period=period),
            fleet.queue.metric_approximate_number_of_messages_not_visible(label="in flight", period=period),
        ]
        in_service = cloudwatch.Metric(
            namespace="AWS/AutoScaling",
            metric_name="GroupInServiceInstances",
            dimensions_map={"AutoScalingGroupName": fleet.auto_scaling_group.auto_scaling_group_name},
            statistic="Maximum",
            label="instances in service",
            period=period,
        )
        dead = [
            dlq.metric_approximate_number_of_messages_visible(label="dead letters", statistic="Maximum", period=period)
            for dlq in [fleet.dead_letter_queue]
            if dlq is not None
        ]
        dimensions = {FLEET_DIMENSION: name}
        durations = [self._metric("TaskDuration", dimensions, p, p) for p in ("p50", "p95", "Maximum")]
        outcomes = [
            self._metric(metric, dimensions, "Sum", label)
            for metric, label in (
                ("TasksSucceeded", "tasks succeeded"),
                ("TasksFailed", "tasks failed (to the DLQ)"),
                ("AttemptsFailed", "attempts failed"),
                ("AttemptsInterrupted", "attempts interrupted"),
            )
        ]
        return [
            cloudwatch.TextWidget(markdown=f"### Fleet {name}", width=24, height=1),
            self._graph("Tasks waiting and in flight", queue),
            self._graph("Fleet size", [in_service], unit="instances"),
            self._graph("Dead letters", dead, unit="messages"),
            self._graph("Task duration", durations, unit="seconds"),
            self._graph("Task outcomes", outcomes, width=24),
        ]

    def _chain_widgets(self, chain: BatchChain) -> list[cloudwatch.IWidget]:
        """Runs by outcome, job state changes and job durations (from the glue's lines)."""
        dimensions = {"Chain": chain.chain_name}
        runs = [
            self._metric("ChainRunsSucceeded", dimensions, "Sum", "runs succeeded"),
            self._metric("ChainRunsFailed", dimensions, "Sum", "runs failed"),
        ]
        jobs = [
            self._metric("ChainJobs", dimensions | {"State": state}, "Sum", state.lower()) for state in CHAIN_JOB_STATES
        ]
        durations = [self._metric("ChainJobDuration", dimensions, p, p) for p in ("p50", "p95", "Maximum")]
        return [
            cloudwatch.TextWidget(markdown=f"### Chain {chain.chain_name}", width=24, height=1),
            self._graph("Chain runs", runs, width=WIDE // 2),
            self._graph("Job state changes", jobs, width=WIDE // 2),
            self._graph("Job duration", durations, width=WIDE, unit="seconds"),
        ]

    def _glue_widget(self, glue: GlueFunction) -> cloudwatch.GraphWidget:
        """The glue function's errors and its on-failure queue (triggers it gave up on)."""
        metrics = [
            glue.function.metric_errors(label="glue errors", period=self.period),
            glue.failure_queue.metric_approximate_number_of_messages_visible(
                label="glue failure queue", statistic="Maximum", period=self.period
            ),
        ]
        return self._graph(f"Glue function {glue.node.path}: errors and failures", metrics, width=24)
