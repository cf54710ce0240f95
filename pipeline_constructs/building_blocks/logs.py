"""Log groups with a retention setting: CloudWatch keeps logs forever (and bills for them) otherwise."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import compliance_profile, default_key
from pipeline_constructs.building_blocks.nag import acknowledge_control
from pipeline_constructs.building_blocks.validation import argument_error

DEFAULT_RETENTION = logs.RetentionDays.ONE_MONTH
#: The shortest retention the Control Tower control CT.CLOUDWATCH.PR.2 accepts.
YEAR_IN_DAYS = 365


_RETENTION_BY_DAYS = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def retention_from_days(scope: Construct | str, argument: str, days: int) -> logs.RetentionDays:
    """Map a day count from configuration to CloudWatch's retention setting (only its exact values)."""
    if days not in _RETENTION_BY_DAYS:
        raise argument_error(scope, argument, days, ", ".join(map(str, _RETENTION_BY_DAYS)) + " days")
    return _RETENTION_BY_DAYS[days]


def pipeline_log_group(
    scope: Construct,
    construct_id: str,
    *,
    retention: logs.RetentionDays | None = None,
    encryption_key: kms.IKey | None = None,
    removal_policy: RemovalPolicy | None = None,
    log_group_name: str | None = None,
) -> logs.LogGroup:
    """A log group that expires its events.

    :param retention: how long events are kept. Default: one month (a year under the compliance profile).
    :param encryption_key: customer-managed KMS key. Default: None, CloudWatch's own encryption (the stack's
        key under the compliance profile, which also asks for a retention of a year or more).
    :param removal_policy: what happens to the log group when the stack is deleted. Default: DESTROY (RETAIN
        under the compliance profile: its year of logs outlives a ``cdk destroy``, as the data does).
    :param log_group_name: physical name (e.g. ``/aws/lambda/<function>``). Default: generated.
    """
    encryption_key = default_key(scope, encryption_key)
    if removal_policy is None:
        removal_policy = RemovalPolicy.RETAIN if compliance_profile(scope) else RemovalPolicy.DESTROY
    if retention is None:
        retention = logs.RetentionDays.ONE_YEAR if compliance_profile(scope) else DEFAULT_RETENTION
    days = retention_days(retention)
    if compliance_profile(scope) and days is not None and days < YEAR_IN_DAYS:
        raise argument_error(
            scope, "log_retention", f"{days} days", f"{YEAR_IN_DAYS} days or more under the compliance profile"
        )
    log_group = logs.LogGroup(
        scope,
        construct_id,
        retention=retention,
        encryption_key=encryption_key,
        removal_policy=removal_policy,
        log_group_name=log_group_name,
    )
    if encryption_key is None:
        acknowledge_control(
            log_group,
            "cloudwatch_log_group_encrypted_check",
            "CloudWatch Logs encrypts every log group with its own key; a customer-managed key costs $1 a month "
            "and needs the logs service in its key policy. Pass encryption_key where one is required.",
            checkov="CKV_AWS_158",
        )
    if days is not None and days < YEAR_IN_DAYS:
        acknowledge_control(
            log_group,
            "cloudwatch_log_group_retention_period_check",
            f"Retention of {days} days was asked for (log_retention / logRetentionDays): this environment's logs "
            "are not kept a year, to save storage.",
        )
    return log_group


def retention_days(retention: logs.RetentionDays) -> int | None:
    """The day count of a retention setting; None for INFINITE (kept forever)."""
    for days, setting in _RETENTION_BY_DAYS.items():
        if setting == retention:
            return days
    return None
