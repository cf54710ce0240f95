"""The shared secure building blocks: what they synthesize, and the errors bad arguments get."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template
from cdk_nag import AwsSolutionsChecks
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
    synth_or_exit,
)
from pipeline_constructs.building_blocks.logs import retention_from_days
from pipeline_constructs.building_blocks.validation import claim_prefix, one_line_argument_errors
from tests.app.test_guide import cdk_cli_environment
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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"cidr": "10.0.0.0/33"},
            "Test/Net: cidr='10.0.0.0/33' is invalid; allowed: an IPv4 range from /16 to /19 (room for 2 /20 subnets)",
        ),
        (
            {"cidr": "10.0.0.0/24"},
            "Test/Net: cidr='10.0.0.0/24' is invalid; allowed: an IPv4 range from /16 to /19 (room for 2 /20 subnets)",
        ),
        (
            {"availability_zones": ["us-east-1a", "us-east-1b"], "nat_gateways": 1, "cidr": "10.0.0.0/19"},
            "Test/Net: cidr='10.0.0.0/19' is invalid; allowed: an IPv4 range from /16 to /18 (room for 4 /20 subnets)",
        ),
        (
            {"availability_zones": ["us-east-1a", "us-east-1a"]},
            "Test/Net: availability_zones='us-east-1a' is invalid; allowed: unique names",
        ),
        (
            {"availability_zones": ["us-east-1"]},
            "Test/Net: availability_zones='us-east-1' is invalid; allowed: zone names of the stack's region",
        ),
    ],
)
@pytest.mark.user_mistake
def test_network_ranges_and_zones_that_would_fail_at_deploy_fail_synth(stack, kwargs, message):
    with pytest.raises(ValueError) as error:
        PipelineNetwork(stack, "Net", **kwargs)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.user_mistake
def test_zones_of_another_region_fail_synth():
    stack = cdk.Stack(cdk.App(), "Test", env=cdk.Environment(region="eu-west-1"))
    with pytest.raises(ValueError) as error:
        PipelineNetwork(stack, "Net", availability_zones=["us-east-1a", "us-east-1b"])
    assert str(error.value) == (
        "Test/Net: availability_zones='us-east-1a' is invalid; allowed: zone names of the stack's region, such as "
        "eu-west-1a"
    )


ACCOUNT_ENV = cdk.Environment(account="111111111111", region="eu-west-1")
ZONE_LOOKUP = "availability-zones:account=111111111111:region=eu-west-1"


def _missing_context(app: cdk.App) -> list[str]:
    """The context keys the CDK CLI would look up (with credentials) for this app."""
    manifest = json.loads((Path(app.synth().directory) / "manifest.json").read_text())
    return [missing["key"] for missing in manifest.get("missing", [])]


def test_a_vpc_of_your_own_needs_no_lookup_in_a_stack_with_an_account():
    """Nothing of the library's asks the stack's zones: an imported VPC synthesizes without credentials."""
    app = cdk.App()
    stack = cdk.Stack(app, "Own", env=ACCOUNT_ENV)
    vpc = ec2.Vpc.from_vpc_attributes(
        stack,
        "Vpc",
        vpc_id="vpc-1",
        availability_zones=["eu-west-1a", "eu-west-1b"],
        public_subnet_ids=["subnet-1", "subnet-2"],
    )
    network = PipelineNetwork(stack, "Net", vpc=vpc)
    BatchChain(
        stack,
        "Chain",
        network=network,
        steps=[ChainStep(name="only", image="public.ecr.aws/docker/library/python:3.13-slim")],
    )
    assert _missing_context(app) == []


def test_named_zones_whose_lookup_failed_say_how_to_synth_without_credentials():
    """The CDK's VPC checks named zones against the region's (a lookup that needs credentials, which
    Stack.availability_zones makes and the library cannot skip); where the CDK CLI could not make it, the
    network says what to put in cdk.json beside the CLI's own error."""
    failed = {"$providerError": "Need to perform AWS calls for account 111111111111", "$dontSaveContext": True}
    app = cdk.App(context={ZONE_LOOKUP: failed})
    stack = cdk.Stack(app, "Shared", env=ACCOUNT_ENV)
    PipelineNetwork(stack, "Network", availability_zones=["eu-west-1a", "eu-west-1b"])
    errors = [m.entry.data for m in app.synth().get_stack_by_name("Shared").messages if m.id == "/Shared/Network"]
    assert errors == [
        "availability_zones are checked against the zones of eu-west-1, which the CDK looks up with AWS credentials "
        "(Need to perform AWS calls for account 111111111111): to synth without them, put the zones in cdk.json's "
        f'context: {{"{ZONE_LOOKUP}": ["eu-west-1a", "eu-west-1b"]}}'
    ]


def test_zones_given_in_context_synthesize_with_no_lookup():
    """What that error says to do works."""
    app = cdk.App(context={ZONE_LOOKUP: ["eu-west-1a", "eu-west-1b"]})
    stack = cdk.Stack(app, "Shared", env=ACCOUNT_ENV)
    PipelineNetwork(stack, "Network", availability_zones=["eu-west-1a", "eu-west-1b"])
    assert _missing_context(app) == []


def test_synth_or_exit_fails_on_an_error_annotation_that_app_synth_lets_pass(tmp_path, capsys):
    """cdk-nag added as an Aspect, a failed lookup or a construct's own error: annotations that `cdk synth`
    fails on and `python app.py`'s app.synth() does not."""
    app = cdk.App(outdir=str(tmp_path / "out"))
    stack = cdk.Stack(app, "Findings")
    cdk.Annotations.of(stack).add_error("a finding nobody acknowledged")
    with pytest.raises(SystemExit) as exit_:
        synth_or_exit(app)
    assert exit_.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert lines == ["error: /Findings: a finding nobody acknowledged"]


def test_synth_or_exit_lists_each_violation_of_a_validation_plugin_in_one_line(tmp_path, capsys):
    app = cdk.App(outdir=str(tmp_path / "out"))
    stack = cdk.Stack(app, "Findings")
    s3.CfnBucket(stack, "Plain")
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(SystemExit) as exit_:
        synth_or_exit(app)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 1
    assert (
        "error: Findings/Plain: AwsSolutions-S1: The S3 Bucket has server access logs disabled. (AwsSolutions)" in lines
    )


def test_synth_or_exit_fails_on_violations_the_cdk_only_reports(tmp_path, capsys):
    """A plugin may conclude "success" with errors in its report, and app.synth() then returns: the Control Tower
    validator did so for the guide's app, which exited 0 with two violations. Warnings are no findings."""
    from types import SimpleNamespace

    violation = {"ruleName": "subnet_auto_assign_public_ip_disabled_check", "description": "[CT.EC2.PR.11] public IPs"}
    report = {
        "pluginReports": [
            {
                "pluginName": "cdk-validator-cfnguard",
                "conclusion": "success",
                "violations": [violation | {"severity": "error", "violatingConstructs": [{"constructPath": "S/Sub"}]}],
            },
            {
                "pluginName": "CloudFormation Validate",
                "conclusion": "success",
                "violations": [
                    {
                        "ruleName": "F0001",
                        "description": "x",
                        "severity": "warning",
                        "violatingConstructs": [{"constructPath": "S"}],
                    }
                ],
            },
        ]
    }

    class OnlyReports:
        outdir = str(tmp_path)

        def synth(self):
            (tmp_path / "validation-report.json").write_text(json.dumps(report))
            return SimpleNamespace(stacks_recursively=[])

    with pytest.raises(SystemExit) as exit_:
        synth_or_exit(OnlyReports())  # type: ignore[arg-type]
    assert exit_.value.code == 1
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")] == [
        "error: S/Sub: subnet_auto_assign_public_ip_disabled_check: [CT.EC2.PR.11] public IPs (cdk-validator-cfnguard)"
    ]


def test_synth_or_exit_returns_the_assembly_of_a_clean_app(tmp_path):
    app = cdk.App(outdir=str(tmp_path / "out"))
    cdk.Annotations.of(cdk.Stack(app, "Clean")).add_warning("a warning is no finding")
    assert synth_or_exit(app).get_stack_by_name("Clean").stack_name == "Clean"


def test_an_argument_error_under_the_cdk_cli_is_one_line_naming_the_users_line(tmp_path):
    """What `cdk synth` shows for a wrong argument: the error and where the app made the construct, then the
    CLI's own line; no traceback through jsii (the hook is installed only when the CDK CLI runs the app)."""
    (tmp_path / "app.py").write_text(
        "import aws_cdk as cdk\n"
        "from pipeline_constructs import PipelineNetwork\n"
        "app = cdk.App()\n"
        "PipelineNetwork(cdk.Stack(app, 'Tiny'), 'Network', max_azs=9)\n"
        "app.synth()\n"
    )
    (tmp_path / "cdk.json").write_text(json.dumps({"app": f"{sys.executable} app.py"}))
    result = subprocess.run(
        [str(ROOT / "node_modules" / ".bin" / "cdk"), "synth", "--quiet"],
        cwd=tmp_path,
        env=cdk_cli_environment(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == ("error: Tiny/Network: max_azs=9 is invalid; allowed: 1 to 6 (app.py:4)"), (
        result.stderr
    )
    assert len(result.stderr.splitlines()) == 2, result.stderr  # and the CLI's "Subprocess exited with error 1"


def test_other_errors_keep_their_traceback_under_the_cdk_cli(capsys):
    shown: list[type[BaseException]] = []
    hook = one_line_argument_errors(lambda kind, error, trace: shown.append(kind))
    hook(KeyError, KeyError("x"), None)
    assert shown == [KeyError] and capsys.readouterr().err == ""
