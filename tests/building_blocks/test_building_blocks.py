"""The shared secure building blocks: what they synthesize, and the errors bad arguments get."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template
from constructs import Construct

from pipeline_constructs import (
    BatchChain,
    ChainLink,
    ChainStep,
    DataBucket,
    PipelineNetwork,
    SpotWorkerFleet,
    StatusStore,
    TaskQueue,
    secure_topic,
)
from pipeline_constructs.building_blocks.logs import retention_from_days
from pipeline_constructs.building_blocks.validation import claim_prefix
from tests.support import ROOT

SQS_WORKER = ROOT / "worker_images" / "sqs_worker"


@pytest.fixture
def stack() -> cdk.Stack:
    return cdk.Stack(cdk.App(), "Test")


def test_data_bucket_is_private_encrypted_versioned_and_logged(dev_template: Template):
    dev_template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "VersioningConfiguration": {"Status": "Enabled"},
            "LoggingConfiguration": {"DestinationBucketName": Match.any_value(), "LogFilePrefix": "data-bucket/"},
            "LifecycleConfiguration": {
                "Rules": Match.array_with(
                    [
                        Match.object_like(
                            {"Id": "expire-noncurrent-versions", "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}
                        ),
                    ]
                )
            },
        },
    )


def test_scratch_data_expires_under_each_fleets_own_prefix(dev_template: Template):
    """The fleet writes ``<prefix>intermediate/``: a rule at the bucket's root would never match its keys."""
    (bucket,) = [
        b for b in dev_template.find_resources("AWS::S3::Bucket").values() if "LoggingConfiguration" in b["Properties"]
    ]
    rules = {rule["Id"]: rule for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-statistics/intermediate"] == {
        "Id": "expire-statistics/intermediate",
        "Prefix": "statistics/intermediate/",
        "ExpirationInDays": 7,
        "Status": "Enabled",
    }
    assert [rule for rule in rules.values() if rule.get("Prefix") == "intermediate/"] == []


def test_a_claimed_prefix_expires_in_a_data_bucket_and_nothing_is_added_to_an_imported_one(stack):
    data = DataBucket(stack, "Data", intermediate_expiration=cdk.Duration.days(3))
    claim_prefix(Construct(stack, "Fleet"), data.bucket, "fleet/")
    claim_prefix(Construct(stack, "Chain"), data.bucket, "chain/", scratch_folders=())
    imported = s3.Bucket.from_bucket_name(stack, "Imported", "someone-elses-bucket")
    claim_prefix(Construct(stack, "Other"), imported, "fleet/")  # nothing it could add to: no error
    (bucket,) = [
        b
        for b in Template.from_stack(stack).find_resources("AWS::S3::Bucket").values()
        if "LoggingConfiguration" in b["Properties"]
    ]
    prefixes = {
        rule.get("Prefix"): rule.get("ExpirationInDays")
        for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    }
    assert prefixes == {None: None, "fleet/intermediate/": 3}


def test_dev_buckets_are_emptied_of_every_version_before_deletion(dev_template: Template, prod_template: Template):
    """A versioned bucket deleted with the stack must be empty (delete markers too), or the stack is left
    DELETE_FAILED: dev's buckets (DESTROY) are emptied by the CDK's auto-delete custom resource; prod's are
    retained and never emptied."""
    buckets = dev_template.find_resources("AWS::S3::Bucket")
    assert {b["DeletionPolicy"] for b in buckets.values()} == {"Delete"}
    emptied = dev_template.find_resources("Custom::S3AutoDeleteObjects")
    assert sorted(e["Properties"]["BucketName"]["Ref"] for e in emptied.values()) == sorted(buckets)
    prod_template.resource_count_is("Custom::S3AutoDeleteObjects", 0)


def test_the_access_log_bucket_does_not_log_into_itself(dev_template: Template, prod_template: Template):
    """Into itself, every log delivery is logged again by a later one (AWS advises against it)."""
    for template in (dev_template, prod_template):
        destinations = {
            logical_id: bucket["Properties"]["LoggingConfiguration"].get("DestinationBucketName", "itself")
            for logical_id, bucket in template.find_resources("AWS::S3::Bucket").items()
            if "LoggingConfiguration" in bucket["Properties"]
        }
        ((data_bucket, log_bucket),) = destinations.items()  # the data bucket logs; the log bucket, nowhere
        assert log_bucket != "itself" and log_bucket["Ref"] != data_bucket


def test_log_groups_are_retained_with_the_data_under_the_compliance_profile(
    dev_template: Template, prod_template: Template
):
    """prod keeps its buckets and table (removalPolicy retain) and a year of logs: a destroy must not take
    the logs; dev deletes both."""
    assert {g["DeletionPolicy"] for g in prod_template.find_resources("AWS::Logs::LogGroup").values()} == {"Retain"}
    assert {g["DeletionPolicy"] for g in dev_template.find_resources("AWS::Logs::LogGroup").values()} == {"Delete"}


def test_buckets_deny_plain_http_and_old_tls(dev_template: Template):
    policies = dev_template.find_resources("AWS::S3::BucketPolicy")
    assert len(policies) == 2
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        conditions = [s["Condition"] for s in statements if s["Effect"] == "Deny"]
        assert {"Bool": {"aws:SecureTransport": "false"}} in conditions
        assert {"NumericLessThan": {"s3:TlsVersion": 1.2}} in conditions


def test_task_queue_and_dlq_are_encrypted_tls_only_with_redrive(dev_template: Template):
    dev_template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "SqsManagedSseEnabled": True,
            "MessageRetentionPeriod": 14 * 24 * 3600,
        },
    )
    dev_template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "SqsManagedSseEnabled": True,
            "RedrivePolicy": {"deadLetterTargetArn": Match.any_value(), "maxReceiveCount": 3},
        },
    )
    for policy in dev_template.find_resources("AWS::SQS::QueuePolicy").values():
        statement = policy["Properties"]["PolicyDocument"]["Statement"][0]
        assert statement["Effect"] == "Deny"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_status_store_is_on_demand_with_ttl_and_pitr(dev_template: Template):
    dev_template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "BillingMode": "PAY_PER_REQUEST",
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        },
    )


def test_network_has_no_nat_public_subnets_and_free_gateway_endpoints(dev_template: Template):
    dev_template.resource_count_is("AWS::EC2::NatGateway", 0)
    dev_template.resource_count_is("AWS::EC2::Subnet", 2)
    dev_template.all_resources_properties("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Gateway"})
    dev_template.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "REJECT"})


def test_log_groups_have_retention(dev_template: Template, prod_template: Template):
    dev_template.all_resources_properties("AWS::Logs::LogGroup", {"RetentionInDays": 14})
    prod_template.all_resources_properties("AWS::Logs::LogGroup", {"RetentionInDays": 365})


def test_security_group_has_no_inbound_rules(stack):
    network = PipelineNetwork(stack, "Net", availability_zones=["us-east-1a"])
    network.security_group(stack, "Sg", description="workers")
    template = Template.from_stack(stack)
    template.has_resource_properties("AWS::EC2::SecurityGroup", {"SecurityGroupIngress": Match.absent()})


def test_topic_is_tls_only_and_uses_the_free_aws_managed_key(stack):
    secure_topic(stack, "Topic")
    secure_topic(stack, "Alarms", service_publishers=True)
    template = Template.from_stack(stack)
    topics = template.find_resources("AWS::SNS::Topic")
    key_ids = {
        lid.rstrip("0123456789ABCDEF"): topic.get("Properties", {}).get("KmsMasterKeyId")
        for lid, topic in topics.items()
    }
    assert "alias/aws/sns" in json.dumps(key_ids["Topic"])
    assert key_ids["Alarms"] is None
    template.resource_count_is("AWS::KMS::Key", 0)
    for policy in template.find_resources("AWS::SNS::TopicPolicy").values():
        statement = policy["Properties"]["PolicyDocument"]["Statement"][0]
        assert statement["Effect"] == "Deny"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_customer_managed_key_is_brought_not_made(stack):
    key = kms.Key.from_key_arn(stack, "Key", "arn:aws:kms:us-east-1:111111111111:key/abc")
    DataBucket(stack, "Data", encryption_key=key)
    TaskQueue(stack, "Tasks", encryption_key=key)
    StatusStore(stack, "Status", encryption_key=key)
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::KMS::Key", 0)
    template.has_resource_properties(
        "AWS::SQS::Queue", {"KmsMasterKeyId": "arn:aws:kms:us-east-1:111111111111:key/abc"}
    )
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {"BucketEncryption": {"ServerSideEncryptionConfiguration": [Match.object_like({"BucketKeyEnabled": True})]}},
    )


def test_visibility_defaults_above_the_consumer_timeout(stack):
    tasks = TaskQueue(stack, "Tasks", consumer_timeout=cdk.Duration.minutes(10))
    assert tasks.visibility_timeout.to_seconds() == 630


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda s: TaskQueue(
                s, "Tasks", visibility_timeout=cdk.Duration.seconds(30), consumer_timeout=cdk.Duration.minutes(2)
            ),
            "Test/Tasks: visibility_timeout='30 seconds' is invalid; allowed: at least consumer_timeout (120 seconds)",
        ),
        (
            lambda s: TaskQueue(s, "Tasks", max_receive_count=0),
            "Test/Tasks: max_receive_count=0 is invalid; allowed: 1 to 1000",
        ),
        (
            lambda s: TaskQueue(s, "Tasks", visibility_timeout=cdk.Duration.hours(13)),
            "Test/Tasks: visibility_timeout='46800 seconds' is invalid; allowed: at most 43200 seconds",
        ),
        (
            lambda s: DataBucket(s, "Data", intermediate_expiration=cdk.Duration.hours(2)),
            "Test/Data: intermediate_expiration='7200 seconds' is invalid; allowed: at least 86400 seconds",
        ),
        (lambda s: PipelineNetwork(s, "Net", max_azs=0), "Test/Net: max_azs=0 is invalid; allowed: 1 to 6"),
        (lambda s: PipelineNetwork(s, "Net", availability_zones=[]), "Test/Net: availability_zones=[] is invalid"),
        (
            lambda s: retention_from_days(s, "retention_days", 10),
            "Test: retention_days=10 is invalid; allowed: 1, 3, 5",
        ),
        (
            lambda s: PipelineNetwork(s, "Net", availability_zones=["us-east-1a"], nat_gateways=2),
            "Test/Net: nat_gateways=2 is invalid; allowed: 0 to 1",
        ),
        (
            lambda s: PipelineNetwork(s, "Net", vpc=_isolated_vpc(s)),
            "Test/Net: vpc='Test/Isolated' is invalid; allowed: a VPC with private subnets with egress or public "
            "subnets",
        ),
        (
            lambda s: SpotWorkerFleet(s, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats", network=_vpc(s)),
            "Test/Fleet: network='Vpc' is invalid; allowed: a PipelineNetwork (a VPC of your own: "
            "PipelineNetwork(scope, 'Network', vpc=vpc))",
        ),
        (
            lambda s: BatchChain(s, "Chain", steps=[ChainStep(name="a", image="x/y:1")], network=_vpc(s)),
            "Test/Chain: network='Vpc' is invalid; allowed: a PipelineNetwork",
        ),
        (
            lambda s: (
                Construct(s, "PipelineConstructs"),
                BatchChain(s, "Chain", steps=[ChainStep(name="a", image="x/y:1")]),
            ),
            "Test/PipelineConstructs: id='PipelineConstructs' is invalid; allowed: left to pipeline_constructs, "
            "which keeps a stack's shared constructs under it (this stack's is a Construct: rename it)",
        ),
    ],
)
@pytest.mark.user_mistake
def test_bad_arguments_raise_one_value_error_naming_everything(stack, make, message):
    with pytest.raises(ValueError) as error:
        make(stack)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_library_takes_one_id_at_a_stacks_root_and_the_users_keep_the_rest(stack):
    # The ids and the output name the library took at the root before it kept them under one namespace.
    for taken in ("PipelineManifest", "PipelineStatus", "PipelineGlue", "PipelineKey"):
        cdk.CfnOutput(stack, taken, value="mine")
    SpotWorkerFleet(stack, "Fleet", worker_directory=SQS_WORKER, task="task:csv_stats")
    steps = [ChainStep(name="a", image="x/y:1", link=ChainLink.on_success()), ChainStep(name="b", image="x/y:1")]
    BatchChain(stack, "Chain", steps=steps)
    outputs = Template.from_stack(stack).to_json()["Outputs"]
    assert {"PipelineManifest", "PipelineStatus", "PipelineGlue", "PipelineKey"} <= set(outputs)
    manifest = json.dumps(outputs["PipelineConstructsManifest"]["Value"])
    assert '\\"fleets\\":{\\"Test/Fleet\\"' in manifest and '\\"chains\\":{\\"Chain\\"' in manifest
    library = [child.node.id for child in stack.node.children if child.node.id.startswith("PipelineConstructs")]
    assert library == ["PipelineConstructs"]
    shared = {child.node.id for child in stack.node.find_child("PipelineConstructs").node.children}
    assert shared == {"Manifest", "Status", "Glue"}


def _vpc(scope: cdk.Stack) -> ec2.Vpc:
    return ec2.Vpc(scope, "Vpc", availability_zones=["us-east-1a"], nat_gateways=0)


def _isolated_vpc(scope: cdk.Stack) -> ec2.Vpc:
    isolated = ec2.SubnetConfiguration(name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
    return ec2.Vpc(scope, "Isolated", availability_zones=["us-east-1a"], subnet_configuration=[isolated])


def test_a_vpc_of_your_own_puts_compute_where_there_is_a_route_out(stack):
    """Public and isolated subnets: the CDK's default choice would be the isolated ones (no route out)."""
    public = ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)
    isolated = ec2.SubnetConfiguration(name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
    vpc = ec2.Vpc(stack, "Own", availability_zones=["us-east-1a"], subnet_configuration=[public, isolated])
    network = PipelineNetwork(stack, "Net", vpc=vpc)
    assert network.selected_subnets().subnet_ids == [s.subnet_id for s in vpc.public_subnets]


def test_unresolved_tokens_are_not_checked(stack):
    receives = cdk.Token.as_number(cdk.CfnParameter(stack, "Receives", type="Number").value_as_number)
    TaskQueue(stack, "Tasks", max_receive_count=receives)
