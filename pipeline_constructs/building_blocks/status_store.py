"""StatusStore: one DynamoDB table recording the progress of tasks, workers and chain runs."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import default_key
from pipeline_constructs.building_blocks.nag import acknowledge_control
from pipeline_constructs.building_blocks.validation import check_duration, stack_singleton

#: Item layout shared by the runtimes (worker, glue Lambda, CLI): partition key ``pk``, sort key ``sk``,
#: and ``expires_at`` (epoch seconds) for DynamoDB's TTL.
PARTITION_KEY = "pk"
SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"
#: The id of the stack's shared store (:meth:`StatusStore.of`), under the library's namespace.
SHARED_ID = "Status"


class StatusStore(Construct):
    """An on-demand DynamoDB table with TTL and point-in-time recovery.

    On-demand billing costs nothing while idle; items expire after ``record_ttl`` so the table stays small.

    :param record_ttl: how long a status record lives; the runtimes stamp it into ``expires_at``.
        Default: 90 days. Range: 1 to 3650 days.
    :param encryption_key: customer-managed KMS key. Default: None, AWS owned key (free); the stack's key
        under the compliance profile.
    :param point_in_time_recovery: continuous backups (billed per GB, pennies for a status table).
        Default: True.
    :param removal_policy: what happens to the table when the stack is deleted. Default: RETAIN.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        record_ttl: Duration | None = None,
        encryption_key: kms.IKey | None = None,
        point_in_time_recovery: bool = True,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        self.record_ttl = record_ttl or Duration.days(90)
        check_duration(self, "record_ttl", self.record_ttl, minimum=Duration.days(1), maximum=Duration.days(3650))
        encryption_key = default_key(self, encryption_key)
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name=PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute=TTL_ATTRIBUTE,
            encryption=(
                dynamodb.TableEncryption.CUSTOMER_MANAGED if encryption_key else dynamodb.TableEncryption.DEFAULT
            ),
            encryption_key=encryption_key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=point_in_time_recovery
            ),
            removal_policy=removal_policy,
        )
        if encryption_key is None:
            acknowledge_control(
                self.table,
                "dynamodb_table_encrypted_kms_check",
                "Encrypted with the AWS owned key, free; a customer-managed key costs $1 a month plus requests. "
                "Pass encryption_key where one is required.",
                checkov="CKV_AWS_119",
            )

    @classmethod
    def of(cls, scope: Construct) -> StatusStore:
        """The stack's shared status store, created on first use: the default of every fleet, chain and
        trigger that gets no ``table``, so a stack has one table however many of them it holds."""
        return stack_singleton(scope, SHARED_ID, cls, cls)

    def grant_write_status(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` write status records and read one back by key (to skip done work); no scans or deletes."""
        return self.table.grant(
            grantee, "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem", "dynamodb:GetItem"
        )

    def grant_read_status(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` read status records (the operator CLI, dashboards)."""
        return self.table.grant_read_data(grantee)
