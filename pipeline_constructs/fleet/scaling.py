"""How a SpotWorkerFleet scales and replaces its instances.

- Target tracking on the backlog per in-service instance, plus one step policy that leaves zero when tasks
  wait with no worker and returns to zero when none wait (busy workers are protected from scale-in).
- A termination lifecycle hook: every instance the group terminates (scale-in, capacity rebalance,
  instance refresh) waits while its worker releases its tasks and completes the action.
- An instance refresh whenever the launch template changes (new worker code, a new image): instances are
  replaced gradually, each drained through the same hook.
- Optionally, a once-a-minute wake check: the stack's glue function looks at the queue and raises the group
  from zero when tasks wait, for producers that do not wake the fleet themselves (``pipeline submit`` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Duration
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_scheduler as scheduler

from pipeline_constructs.glue.construct import GlueFunction

if TYPE_CHECKING:
    from pipeline_constructs.fleet.construct import SpotWorkerFleet

#: The hook's name, known to the worker (``PIPELINE_LIFECYCLE_HOOK``); names are unique per group.
DRAIN_HOOK_NAME = "pipeline-drain"
#: How long a terminating instance waits for its worker: it polls every 5 s and releases at once.
DRAIN_TIMEOUT = Duration.minutes(2)


def instance_refresh() -> autoscaling.UpdatePolicy:
    """Replace instances when the launch template changes, half at a time, busy ones too (they drain)."""
    return autoscaling.UpdatePolicy.instance_refresh(
        strategy=autoscaling.InstanceRefreshStrategy.ROLLING,
        min_healthy_percentage=50,
        max_healthy_percentage=100,
        skip_matching=True,
        # A worker is protected from scale-in only while busy; its drain releases the tasks to the others.
        scale_in_protected_instances=autoscaling.ScaleInProtectedInstances.REFRESH,
    )


def add_drain_hook(fleet: SpotWorkerFleet) -> autoscaling.LifecycleHook:
    """The termination hook every instance waits on while its worker releases its tasks."""
    return fleet.auto_scaling_group.add_lifecycle_hook(
        "Drain",
        lifecycle_hook_name=DRAIN_HOOK_NAME,
        lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_TERMINATING,
        heartbeat_timeout=DRAIN_TIMEOUT,
        # A worker that never answers (it crashed) must not keep the instance: carry on after the timeout.
        default_result=autoscaling.DefaultResult.CONTINUE,
    )


def add_backlog_scaling(fleet: SpotWorkerFleet) -> cloudwatch.Alarm:
    """Target tracking on the backlog per in-service instance, and the alarm that leaves and returns to zero
    (returned), both on the queue's visible messages and the group's in-service instances."""
    visible = fleet.queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(1), statistic="Maximum")
    in_service = cloudwatch.Metric(
        namespace="AWS/AutoScaling",
        metric_name="GroupInServiceInstances",
        dimensions_map={"AutoScalingGroupName": fleet.auto_scaling_group.auto_scaling_group_name},
        period=Duration.minutes(1),
        statistic="Average",
    )
    _add_backlog_target_tracking(fleet, visible, in_service)
    return _add_zero_steps(fleet, visible, in_service)


def _add_backlog_target_tracking(
    fleet: SpotWorkerFleet, visible: cloudwatch.Metric, in_service: cloudwatch.Metric
) -> None:
    # Target tracking on backlog per instance (visible messages / in-service instances).
    autoscaling.CfnScalingPolicy(
        fleet,
        "BacklogPerInstance",
        auto_scaling_group_name=fleet.auto_scaling_group.auto_scaling_group_name,
        policy_type="TargetTrackingScaling",
        target_tracking_configuration=autoscaling.CfnScalingPolicy.TargetTrackingConfigurationProperty(
            target_value=fleet.tasks_per_worker,
            customized_metric_specification=autoscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                metrics=[
                    _metric_query("visible", visible, "Maximum"),
                    _metric_query("inservice", in_service, "Average"),
                    autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
                        id="backlog",
                        expression="visible / IF(inservice > 0, inservice, 1)",
                        label="Backlog per in-service instance",
                        return_data=True,
                    ),
                ]
            ),
        ),
    )


def _add_zero_steps(
    fleet: SpotWorkerFleet, visible: cloudwatch.Metric, in_service: cloudwatch.Metric
) -> cloudwatch.Alarm:
    # One step policy, one alarm (alarms bill per metric): the expression is 2 when tasks wait and no
    # worker is in service (target tracking has no ratio then), 1 when nothing waits, else 0.
    #   2 -> +1 instance: leave zero (a change, so it never cuts a scale-out still launching);
    #   1 -> -max_size: back to zero; busy workers are protected from scale-in until their task is done.
    zero_steps = autoscaling.StepScalingAction(
        fleet,
        "ZeroSteps",
        auto_scaling_group=fleet.auto_scaling_group,
        adjustment_type=autoscaling.AdjustmentType.CHANGE_IN_CAPACITY,
    )
    zero_steps.add_adjustment(adjustment=-fleet.max_size, lower_bound=0, upper_bound=1)
    zero_steps.add_adjustment(adjustment=1, lower_bound=1)
    alarm = cloudwatch.Alarm(
        fleet,
        "LeaveOrReturnToZero",
        metric=cloudwatch.MathExpression(
            expression="IF(visible > 0, IF(FILL(inservice, 0) == 0, 2, 0), 1)",
            using_metrics={"visible": visible, "inservice": in_service},
            period=Duration.minutes(1),
            label="2: tasks wait with no worker, 1: nothing waits",
        ),
        threshold=0.5,
        evaluation_periods=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        # An idle queue may publish no datapoint: that means nothing waits.
        treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        alarm_description="Leave zero when tasks wait with no worker in service; return to zero when none wait.",
    )
    alarm.add_alarm_action(cloudwatch_actions.AutoScalingAction(zero_steps))
    return alarm


def _metric_query(
    query_id: str, metric: cloudwatch.Metric, statistic: str
) -> autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
    config = metric.to_metric_config().metric_stat
    if config is None:  # a plain Metric always renders as a metric stat, never as a math expression
        raise TypeError(f"{metric} is not a metric stat")
    return autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
        id=query_id,
        return_data=False,
        metric_stat=autoscaling.CfnScalingPolicy.TargetTrackingMetricStatProperty(
            metric=autoscaling.CfnScalingPolicy.MetricProperty(
                namespace=config.namespace,
                metric_name=config.metric_name,
                dimensions=[
                    autoscaling.CfnScalingPolicy.MetricDimensionProperty(name=d.name, value=d.value)
                    for d in config.dimensions or []
                ],
            ),
            stat=statistic,
        ),
    )


#: How often the wake check looks at the queue: EventBridge Scheduler's finest rate.
WAKE_CHECK_RATE = Duration.minutes(1)


def add_wake_check(fleet: SpotWorkerFleet) -> scheduler.Schedule:
    """A schedule invoking the stack's glue function with ``{"wake": {queue, group}}`` every minute."""
    glue = GlueFunction.of(fleet, network=fleet.network)
    fleet.queue.grant(glue.role, "sqs:GetQueueAttributes")
    fleet.grant_wake(glue.role)
    check = {"wake": {"queue": fleet.queue.queue_url, "group": fleet.auto_scaling_group.auto_scaling_group_name}}
    # No retries: the next minute's check is the retry.
    target, _ = glue.scheduler_target(fleet, "WakeCheckRole", check, retry_attempts=0, max_event_age=WAKE_CHECK_RATE)
    return scheduler.Schedule(
        fleet,
        "WakeCheck",
        schedule=scheduler.ScheduleExpression.rate(WAKE_CHECK_RATE),
        target=target,
        description=f"{fleet.node.path}: start the fleet from zero when tasks wait",
    )
