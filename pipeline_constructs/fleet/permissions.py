"""What a SpotWorkerFleet's instance role may do: exactly what the worker runtime calls, on this fleet's own
resources (``tests/fleet/test_spot_worker_fleet.py`` holds the list of calls the runtime makes against it); and
what the fleet's ``grant_*`` methods give producers, consumers and wakers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import grant_data_key_use
from pipeline_constructs.building_blocks.nag import acknowledge_wildcard_resources
from pipeline_constructs.building_blocks.task_queue import grant_send

if TYPE_CHECKING:
    from pipeline_constructs.fleet.construct import SpotWorkerFleet

#: What the worker calls on its own Auto Scaling group.
GROUP_ACTIONS = ["autoscaling:SetInstanceProtection", "autoscaling:CompleteLifecycleAction"]
#: What the worker calls on the status store: batched final rows, failures and heartbeats, and one
#: consistent read of a task's row on the spare delivery that dead-letters it.
STATUS_ACTIONS = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem", "dynamodb:GetItem"]


GROUP_ARN_REASON = (
    "The group's ARN holds a UUID that CloudFormation does not return; the ARN is pinned to this "
    "group by name, the wildcard stands only for that UUID."
)


def group_arn_of(fleet: SpotWorkerFleet) -> str:
    """The fleet's Auto Scaling group ARN, its UUID part a wildcard (CloudFormation does not return it)."""
    # arn:aws:autoscaling:<region>:<account>:autoScalingGroup:<uuid>:autoScalingGroupName/<name>: a colon
    # after "autoScalingGroup" (with a slash, as format_arn writes by default, the ARN matches no group).
    return Stack.of(fleet).format_arn(
        service="autoscaling",
        resource="autoScalingGroup",
        resource_name=f"*:autoScalingGroupName/{fleet.auto_scaling_group.auto_scaling_group_name}",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


def grant_wake(fleet: SpotWorkerFleet, grantee: iam.IGrantable) -> iam.Grant:
    """SetDesiredCapacity on the fleet's group only, and DescribeAutoScalingGroups, which IAM cannot scope
    to a resource (the waker must see the group at zero before raising it)."""
    group_arn = group_arn_of(fleet)
    grant = iam.Grant.add_to_principal(
        grantee=grantee, actions=["autoscaling:SetDesiredCapacity"], resource_arns=[group_arn]
    )
    iam.Grant.add_to_principal(grantee=grantee, actions=["autoscaling:DescribeAutoScalingGroups"], resource_arns=["*"])
    if isinstance(grantee.grant_principal, Construct):
        acknowledge_wildcard_resources(grantee.grant_principal, [group_arn], GROUP_ARN_REASON)
        acknowledge_wildcard_resources(
            grantee.grant_principal,
            ["*"],
            "autoscaling:DescribeAutoScalingGroups supports no resource-level permissions; it only reads.",
        )
    return grant


def grant_submit(fleet: SpotWorkerFleet, grantee: iam.IGrantable) -> iam.Grant:
    """SendMessage on the fleet's queue, and uploads under its ``<prefix>input/``."""
    grant = grant_send(fleet.queue, grantee)
    _grant_objects(
        fleet,
        grantee,
        ["s3:PutObject", "s3:AbortMultipartUpload"],
        fleet.bucket.arn_for_objects(f"{fleet.prefix}input/*"),
        f"Uploads of task inputs to {fleet.node.path} only (its '{fleet.prefix}input/' prefix); their keys "
        "are the producer's files, known at run time.",
    )
    return grant


def grant_read_outputs(fleet: SpotWorkerFleet, grantee: iam.IGrantable) -> iam.Grant:
    """GetObject under the fleet's ``<prefix>output/``."""
    return _grant_objects(
        fleet,
        grantee,
        ["s3:GetObject"],
        fleet.bucket.arn_for_objects(f"{fleet.prefix}output/*"),
        f"Read access to {fleet.node.path}'s outputs only (its '{fleet.prefix}output/' prefix); "
        "their keys are task ids known at run time.",
    )


def _grant_objects(
    fleet: SpotWorkerFleet, grantee: iam.IGrantable, actions: list[str], objects: str, reason: str
) -> iam.Grant:
    """``actions`` on ``objects`` (a key pattern in the fleet's bucket) and the use of the bucket's key; the
    key wildcard acknowledged with ``reason``."""
    grant = iam.Grant.add_to_principal(grantee=grantee, actions=actions, resource_arns=[objects])
    if fleet.bucket.encryption_key is not None:
        grant_data_key_use(fleet.bucket.encryption_key, grantee)
    if isinstance(grantee.grant_principal, Construct):
        acknowledge_wildcard_resources(grantee.grant_principal, [objects], reason)
    return grant


def _list_own_prefix(bucket_arn: str, prefix: str) -> iam.PolicyStatement:
    """ListBucket only under the fleet's prefix: without ListBucket a missing completion marker answers 403
    instead of 404, and S3 answers that GetObject as a listing of the object's key, so the condition holds for
    the fleet's own keys. A listing without a prefix (the whole bucket: other fleets' and chains' keys, the
    claim checks) is denied; any delimiter is allowed, as it only groups keys under that prefix."""
    if not prefix:  # the fleet owns the whole bucket (claim_prefix lets no one else in)
        return iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket_arn])
    return iam.PolicyStatement(
        actions=["s3:ListBucket"], resources=[bucket_arn], conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}}
    )


def grant_worker_permissions(fleet: SpotWorkerFleet) -> iam.Policy:
    """What the worker runtime calls: its queue (and the downstream one), its prefixes, the status table, the
    data keys and its log group; and, in the policy returned, scale-in protection and the drain hook's
    completion on its group."""
    role, bucket, prefix = fleet.role, fleet.bucket, fleet.prefix
    input_objects = bucket.arn_for_objects(f"{prefix}input/*")
    written_objects = [
        bucket.arn_for_objects(f"{prefix}output/*"),
        bucket.arn_for_objects(f"{prefix}intermediate/*"),
    ]
    fleet.queue.grant_consume_messages(role)
    if fleet.downstream_queue is not None:
        grant_send(fleet.downstream_queue, role)
    statements = [
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[input_objects]),
        # Get as well as Put: the worker checks a task's completion marker before redoing it.
        iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=written_objects),
        _list_own_prefix(bucket.bucket_arn, prefix),
        iam.PolicyStatement(actions=STATUS_ACTIONS, resources=[fleet.table.table_arn]),
    ]
    for statement in statements:
        role.add_to_principal_policy(statement)
    acknowledge_wildcard_resources(
        role,
        [input_objects, *written_objects],
        "Object access is scoped to this fleet's own prefixes (input/, output/, intermediate/ under "
        f"'{prefix}'); task keys are only known at run time, so a key wildcard is the narrowest grant.",
    )
    # A policy of its own: the launch template depends on the role's default policy, so a statement
    # naming the group there would make group -> template -> policy -> group a cycle.
    group_arn = group_arn_of(fleet)
    group_policy = iam.Policy(
        fleet,
        "ScaleInProtectionPolicy",
        roles=[role],
        statements=[iam.PolicyStatement(actions=GROUP_ACTIONS, resources=[group_arn])],
    )
    acknowledge_wildcard_resources(group_policy, [group_arn], GROUP_ARN_REASON)
    if bucket.encryption_key is not None:
        grant_data_key_use(bucket.encryption_key, role)
    if fleet.table.encryption_key is not None:
        grant_data_key_use(fleet.table.encryption_key, role)
    fleet.log_group.grant_write(role)
    return group_policy
