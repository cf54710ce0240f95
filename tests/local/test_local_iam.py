"""The local run's IAM check on its own: requests turned into the authorizations AWS evaluates, and the
evaluation of a role's statements (no emulator, no CDK)."""

from __future__ import annotations

import json

import pytest

from pipeline_constructs.local.iam import AccessChecker, access_denied_response, authorizations
from pipeline_constructs.local.resolver import Resolver

REGION = "us-east-1"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:tasks"
QUEUE_URL = "http://127.0.0.1:5000/123456789012/tasks"


def signed(key: str, service: str, **headers: str) -> dict[str, str]:
    credential = f"Credential={key}/20261201/{REGION}/{service}/aws4_request"
    return {"Authorization": f"AWS4-HMAC-SHA256 {credential}, SignedHeaders=host, Signature=abc"} | headers


def checker(*statements: dict, resources: dict | None = None) -> AccessChecker:
    """The role WorkerRole with ``statements``, beside the template's other ``resources``."""
    template = {
        "Resources": {
            **(resources or {}),
            "WorkerRole": {"Type": "AWS::IAM::Role", "Properties": {}},
            "WorkerPolicy": {
                "Type": "AWS::IAM::Policy",
                "Properties": {
                    "PolicyDocument": {"Statement": list(statements)},
                    "Roles": [{"Ref": "WorkerRole"}],
                },
            },
        }
    }
    return AccessChecker(template, Resolver(template, stack_name="s", region=REGION, queue_url_base=""), REGION)


def sqs_call(operation: str, **fields: str) -> tuple[str, str, dict[str, str], bytes]:
    headers = signed("WorkerRole", "sqs", **{"X-Amz-Target": f"AmazonSQS.{operation}"})
    return "POST", "/", headers, json.dumps({"QueueUrl": QUEUE_URL, **fields}).encode()


def test_a_batch_delete_is_authorized_as_the_single_delete_on_the_queue_arn():
    allowed = checker({"Effect": "Allow", "Action": "sqs:DeleteMessage", "Resource": QUEUE_ARN})
    assert allowed.check(*sqs_call("DeleteMessageBatch")) is None
    denied = checker({"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": QUEUE_ARN})
    denial = denied.check(*sqs_call("DeleteMessageBatch"))
    assert (denial.call, denial.action, denial.resource) == ("sqs:DeleteMessageBatch", "sqs:DeleteMessage", QUEUE_ARN)
    assert "no statement allows the action" in str(denial)


def test_actions_match_wildcards_without_case_and_resources_with_case():
    access = checker({"Effect": "Allow", "Action": "SQS:Receive*", "Resource": "arn:aws:sqs:*:*:task?"})
    assert access.check(*sqs_call("ReceiveMessage")) is None
    other = checker({"Effect": "Allow", "Action": "sqs:*", "Resource": "arn:aws:sqs:*:*:TASKS"})
    assert other.check(*sqs_call("ReceiveMessage")).why == "statements for the action fail on their resource"


def test_an_explicit_deny_wins_over_an_allow():
    access = checker(
        {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "sqs:DeleteMessage", "Resource": QUEUE_ARN},
    )
    assert access.check(*sqs_call("ReceiveMessage")) is None
    assert access.check(*sqs_call("DeleteMessage")).why == "an explicit Deny"


def s3_list(prefix: str | None) -> tuple[str, str, dict[str, str], bytes]:
    query = "list-type=2" + (f"&prefix={prefix}" if prefix is not None else "")
    return "GET", f"/data?{query}", signed("WorkerRole", "s3"), b""


def test_listing_a_bucket_is_held_to_the_s3_prefix_condition():
    access = checker(
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "arn:aws:s3:::data",
            "Condition": {"StringLike": {"s3:prefix": ["reports/*"]}},
        }
    )
    assert access.check(*s3_list("reports/2026/")) is None
    assert (
        access.check(*s3_list("statistics/")).why
        == "statements for the action fail on their condition StringLike s3:prefix"
    )
    assert access.check(*s3_list(None)) is not None  # a missing key fails the condition, as in IAM


def test_a_copy_needs_read_on_its_source_as_well():
    access = checker({"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::data/out/*"})
    headers = signed("WorkerRole", "s3", **{"x-amz-copy-source": "/data/in/a.csv"})
    denial = access.check("PUT", "/data/out/a.csv", headers, b"")
    assert (denial.call, denial.action, denial.resource) == (
        "s3:CopyObject",
        "s3:GetObject",
        "arn:aws:s3:::data/in/a.csv",
    )


def test_submitting_a_job_needs_its_queue_and_its_definition():
    queue = "arn:aws:batch:us-east-1:123456789012:job-queue/q"
    access = checker({"Effect": "Allow", "Action": "batch:SubmitJob", "Resource": queue})
    body = json.dumps({"jobName": "j", "jobQueue": queue, "jobDefinition": "report"}).encode()
    denial = access.check("POST", "/v1/submitjob", signed("WorkerRole", "batch"), body)
    assert denial.resource == "arn:aws:batch:us-east-1:123456789012:job-definition/report:1"


def test_a_group_call_matches_grants_that_leave_the_group_id_a_wildcard():
    group = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/workers"
    access = checker({"Effect": "Allow", "Action": "autoscaling:CompleteLifecycleAction", "Resource": group})
    body = b"Action=CompleteLifecycleAction&AutoScalingGroupName=workers&LifecycleHookName=drain"
    assert access.check("POST", "/", signed("WorkerRole", "autoscaling"), body) is None
    body = b"Action=CompleteLifecycleAction&AutoScalingGroupName=others&LifecycleHookName=drain"
    assert access.check("POST", "/", signed("WorkerRole", "autoscaling"), body) is not None


def test_reading_parameters_by_path_is_authorized_against_the_path_not_what_it_returns():
    path = "arn:aws:ssm:us-east-1:123456789012:parameter/pipeline-constructs/s/glue"
    access = checker({"Effect": "Allow", "Action": "ssm:GetParametersByPath", "Resource": path})
    headers = signed("WorkerRole", "ssm") | {"X-Amz-Target": "AmazonSSM.GetParametersByPath"}
    body = json.dumps({"Path": "/pipeline-constructs/s/glue", "Recursive": False}).encode()
    assert access.check("POST", "/", headers, body) is None
    denial = access.check("POST", "/", headers, json.dumps({"Path": "/pipeline-constructs"}).encode())
    assert denial.resource == "arn:aws:ssm:us-east-1:123456789012:parameter/pipeline-constructs"


def test_a_transaction_is_authorized_item_by_item():
    call, needed = authorizations(
        "dynamodb",
        "POST",
        "/",
        {"X-Amz-Target": "DynamoDB_20120810.TransactWriteItems"},
        json.dumps(
            {"TransactItems": [{"Put": {"TableName": "status"}}, {"ConditionCheck": {"TableName": "guards"}}]}
        ).encode(),
        REGION,
    )
    assert call == "dynamodb:TransactWriteItems"
    assert [(a.action, a.resource.rsplit("/", 1)[-1]) for a in needed] == [
        ("dynamodb:PutItem", "status"),
        ("dynamodb:ConditionCheckItem", "guards"),
    ]


def test_calls_without_resource_types_are_authorized_on_star():
    access = checker({"Effect": "Allow", "Action": "batch:ListJobs", "Resource": "*"})
    assert access.check("POST", "/v1/listjobs", signed("WorkerRole", "batch"), b"{}") is None


def test_an_unknown_role_and_the_run_itself():
    access = checker({"Effect": "Allow", "Action": "*", "Resource": "*"})
    method, path, _headers, body = sqs_call("ReceiveMessage")
    assert access.check(method, path, signed("NoRole", "sqs", **{"X-Amz-Target": "AmazonSQS.ReceiveMessage"}), body)
    assert access.check(method, path, signed("local", "sqs"), body) is None  # the local run's own calls
    assert access.key_for("Missing") == "NoRole"


def test_a_condition_on_a_key_the_local_run_does_not_know_is_a_denial_that_names_it():
    access = checker(
        {
            "Effect": "Allow",
            "Action": "sqs:*",
            "Resource": "*",
            "Condition": {"DateGreaterThan": {"aws:CurrentTime": "x"}},
        }
    )
    method, path, headers, body = sqs_call("ReceiveMessage")
    denial = access.check(method, path, headers, body)
    assert denial.why == "statements for the action fail on their condition DateGreaterThan aws:CurrentTime"


@pytest.mark.parametrize(
    ("service", "headers", "marker"),
    [
        ("sqs", {"X-Amz-Target": "AmazonSQS.DeleteMessage"}, b'"__type": "AccessDeniedException"'),
        ("s3", {}, b"<Code>AccessDenied</Code>"),
        ("autoscaling", {}, b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"),
        ("batch", {}, b'"__type": "AccessDeniedException"'),
    ],
)
def test_access_denied_is_answered_in_the_protocol_of_the_call(service, headers, marker):
    access = checker()
    denial = access.check(
        "POST", "/", signed("WorkerRole", "sqs", **{"X-Amz-Target": "AmazonSQS.DeleteMessage"}), b"{}"
    )
    status, _, body = access_denied_response(service, headers, denial)
    assert status == 403
    assert marker in body


KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/s-Key"
#: How the CDK writes the AWS managed SNS key into a template (Alias.from_alias_name): as an ARN.
SNS_MANAGED_KEY = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":kms:us-east-1:123456789012:alias/aws/sns"]]}


def _encrypted_world(*statements: dict) -> AccessChecker:
    """A bucket and a queue under a customer-managed key, a topic under the AWS managed SNS key."""
    key = {"Fn::GetAtt": ["Key", "Arn"]}
    resources = {
        "Key": {"Type": "AWS::KMS::Key", "Properties": {}},
        "Data": {
            "Type": "AWS::S3::Bucket",
            "Properties": {
                "BucketName": "data",
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}}
                    ]
                },
            },
        },
        "Tasks": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "tasks", "KmsMasterKeyId": key}},
        "Topic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "t", "KmsMasterKeyId": SNS_MANAGED_KEY}},
    }
    return checker(*statements, resources=resources)


def test_data_under_a_customer_managed_key_also_needs_the_callers_right_to_use_the_key():
    """As on AWS: S3 and SQS use the key with the caller's rights (the compliance profile's grants)."""
    data = {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"], "Resource": "arn:aws:s3:::data/*"}
    queue = {"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": QUEUE_ARN}
    without_key = _encrypted_world(data, queue)
    denial = without_key.check("PUT", "/data/out/a.json", signed("WorkerRole", "s3"), b"{}")
    assert (denial.call, denial.action, denial.resource) == ("s3:PutObject", "kms:GenerateDataKey", KEY_ARN)
    assert without_key.check(*sqs_call("ReceiveMessage")).action == "kms:Decrypt"
    key_use = {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": KEY_ARN}
    with_key = _encrypted_world(data, queue, key_use)
    assert with_key.check("PUT", "/data/out/a.json", signed("WorkerRole", "s3"), b"{}") is None
    assert with_key.check(*sqs_call("ReceiveMessage")) is None


def test_a_topic_under_the_aws_managed_key_needs_no_key_grant():
    access = _encrypted_world({"Effect": "Allow", "Action": "sns:Publish", "Resource": "*"})
    body = b"Action=Publish&TopicArn=arn%3Aaws%3Asns%3Aus-east-1%3A123456789012%3At&Message=hi"
    assert access.check("POST", "/", signed("WorkerRole", "sns"), body) is None
