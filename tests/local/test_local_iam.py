"""The local run's IAM check on its own: requests turned into the authorizations AWS evaluates, and the
evaluation of a role's statements (no emulator, no CDK)."""

from __future__ import annotations

import json

import pytest

from pipeline_constructs.local.iam import (
    AccessChecker,
    Authorization,
    Statement,
    access_denied_response,
    authorizations,
)
from pipeline_constructs.local.resolver import Resolver, UnresolvableError

REGION = "us-east-1"
ACCOUNT = "123456789012"
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


def sqs_call(
    operation: str, *, queue: str = "tasks", key: str = "WorkerRole", **fields: str
) -> tuple[str, str, dict[str, str], bytes]:
    headers = signed(key, "sqs", **{"X-Amz-Target": f"AmazonSQS.{operation}"})
    url = QUEUE_URL.rsplit("/", 1)[0] + f"/{queue}"
    return "POST", "/", headers, json.dumps({"QueueUrl": url, **fields}).encode()


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
        ACCOUNT,
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
    return checker(*statements, resources=_encrypted_resources())


def _encrypted_resources() -> dict:
    key = {"Fn::GetAtt": ["Key", "Arn"]}
    return {
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


# ---------------------------------------------------------------- what the mutation pass found unchecked


def test_not_action_grants_every_other_action_and_not_the_ones_it_names():
    access = checker({"Effect": "Allow", "NotAction": "sqs:DeleteMessage", "Resource": QUEUE_ARN})
    assert access.check(*sqs_call("ReceiveMessage")) is None
    assert access.check(*sqs_call("DeleteMessage")).why == "no statement allows the action"
    fenced = checker(
        {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"},
        {"Effect": "Deny", "NotAction": "sqs:ReceiveMessage", "Resource": "*"},
    )
    assert fenced.check(*sqs_call("ReceiveMessage")) is None
    assert fenced.check(*sqs_call("DeleteMessage")).why == "an explicit Deny"


def test_not_resource_grants_every_other_resource_and_not_the_ones_it_names():
    access = checker({"Effect": "Allow", "Action": "sqs:ReceiveMessage", "NotResource": QUEUE_ARN})
    assert access.check(*sqs_call("ReceiveMessage", queue="other")) is None
    denial = access.check(*sqs_call("ReceiveMessage"))
    assert denial.why == "statements for the action fail on their resource"


def test_a_pattern_matches_the_whole_arn_and_only_its_wildcards_are_special():
    exact = checker({"Effect": "Allow", "Action": "sqs:*", "Resource": QUEUE_ARN})
    assert exact.check(*sqs_call("ReceiveMessage", queue="tasks-dlq")) is not None, "not a prefix match"
    one = checker({"Effect": "Allow", "Action": "sqs:*", "Resource": "arn:aws:sqs:*:*:task?"})
    assert one.check(*sqs_call("ReceiveMessage", queue="tasks")) is None
    assert one.check(*sqs_call("ReceiveMessage", queue="task")) is not None, "? is one character, not none"
    assert one.check(*sqs_call("ReceiveMessage", queue="taskss")) is not None, "? is one character, not two"
    dotted = checker({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::my.data/*"})
    assert dotted.check("GET", "/my.data/a.csv", signed("WorkerRole", "s3"), b"") is None
    assert dotted.check("GET", "/myxdata/a.csv", signed("WorkerRole", "s3"), b"") is not None, "a dot is a dot"


def listing(operator: str, prefix: str) -> dict:
    condition = {operator: {"s3:prefix": prefix}}
    return {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::data", "Condition": condition}


@pytest.mark.parametrize(
    ("operator", "value", "allowed", "denied"),
    [
        ("StringEquals", "reports/*", ["reports/*"], ["reports/2026/", None]),  # * is a character here
        ("StringEqualsIgnoreCase", "Reports/", ["reports/", "REPORTS/"], ["reports/2026/"]),
        ("StringLike", "reports/*", ["reports/2026/"], ["Reports/2026/", None]),  # with case
        ("StringLikeIfExists", "reports/*", ["reports/2026/", None], ["statistics/"]),  # absent: holds
        ("StringNotEquals", "secret/", ["reports/", None], ["secret/"]),  # negated, absent: holds
        ("StringNotLike", "secret/*", ["reports/", None], ["secret/a/"]),
    ],
)
def test_condition_operators_hold_as_in_iam(operator, value, allowed, denied):
    access = checker(listing(operator, value))
    for prefix in allowed:
        assert access.check(*s3_list(prefix)) is None, (operator, prefix)
    for prefix in denied:
        assert access.check(*s3_list(prefix)) is not None, (operator, prefix)


def test_bool_conditions_and_operators_not_modelled_decide_nothing_silently():
    secure = Statement.parse(
        {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Bool": {"aws:SecureTransport": "true"}}}
    )
    over_tls = Authorization("sqs:ReceiveMessage", QUEUE_ARN, (("aws:SecureTransport", "True"),))
    plain = Authorization("sqs:ReceiveMessage", QUEUE_ARN, (("aws:SecureTransport", "false"),))
    assert secure.applies(over_tls) == (True, "")
    assert secure.applies(plain) == (False, "condition Bool aws:SecureTransport")
    dated = checker(
        {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"DateGreaterThan": {"aws:CurrentTime": "x"}}}
    )
    now = Authorization("sqs:ReceiveMessage", QUEUE_ARN, (("aws:CurrentTime", "2026-12-01T00:00:00Z"),))
    assert dated.policies.evaluate("WorkerRole", now) == "condition operator DateGreaterThan is not evaluated locally"


def test_each_role_has_its_inline_attached_and_managed_policies_and_no_other_roles():
    def allow(action: str) -> dict:
        return {"Statement": [{"Effect": "Allow", "Action": action, "Resource": QUEUE_ARN}]}

    template = {
        "Resources": {
            "WorkerRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {"Policies": [{"PolicyName": "inline", "PolicyDocument": allow("sqs:ReceiveMessage")}]},
            },
            "OtherRole": {"Type": "AWS::IAM::Role", "Properties": {}},
            "OtherPolicy": {
                "Type": "AWS::IAM::Policy",
                "Properties": {"PolicyDocument": allow("sqs:DeleteMessage"), "Roles": [{"Ref": "OtherRole"}]},
            },
            "Managed": {
                "Type": "AWS::IAM::ManagedPolicy",
                "Properties": {"PolicyDocument": allow("sqs:SendMessage"), "Roles": [{"Ref": "WorkerRole"}]},
            },
        }
    }
    access = AccessChecker(template, Resolver(template, stack_name="s", region=REGION, queue_url_base=""), REGION)
    assert access.check(*sqs_call("ReceiveMessage")) is None
    assert access.check(*sqs_call("SendMessage")) is None
    assert access.check(*sqs_call("DeleteMessage")) is not None, "OtherRole's policy is not WorkerRole's"
    assert access.check(*sqs_call("DeleteMessage", key="OtherRole")) is None
    assert access.check(*sqs_call("ReceiveMessage", key="OtherRole")) is not None


@pytest.mark.parametrize(
    ("operation", "action"),
    [
        ("SendMessageBatch", "sqs:SendMessage"),
        ("DeleteMessageBatch", "sqs:DeleteMessage"),
        ("ChangeMessageVisibilityBatch", "sqs:ChangeMessageVisibility"),
    ],
)
def test_every_batch_form_is_authorized_as_its_single_call(operation, action):
    assert checker({"Effect": "Allow", "Action": action, "Resource": QUEUE_ARN}).check(*sqs_call(operation)) is None
    receive_only = checker({"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": QUEUE_ARN})
    assert receive_only.check(*sqs_call(operation)).action == action


TABLE_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table"


def dynamodb_call(operation: str, fields: dict) -> tuple[str, str, dict[str, str], bytes]:
    headers = signed("WorkerRole", "dynamodb", **{"X-Amz-Target": f"DynamoDB_20120810.{operation}"})
    return "POST", "/", headers, json.dumps(fields).encode()


def test_a_query_on_an_index_needs_the_index_and_a_batch_write_every_table_it_writes():
    table_only = checker({"Effect": "Allow", "Action": "dynamodb:*", "Resource": f"{TABLE_ARN}/status"})
    query = dynamodb_call("Query", {"TableName": "status", "IndexName": "by-run"})
    assert table_only.check(*query).resource == f"{TABLE_ARN}/status/index/by-run"
    indexes = checker({"Effect": "Allow", "Action": "dynamodb:Query", "Resource": f"{TABLE_ARN}/status/index/*"})
    assert indexes.check(*query) is None
    write = dynamodb_call("BatchWriteItem", {"RequestItems": {"status": [], "guards": []}})
    assert table_only.check(*write).resource == f"{TABLE_ARN}/guards"


def test_a_transaction_needs_the_action_of_each_kind_of_item():
    def actions(operation: str, kinds: tuple[str, ...]) -> list[str]:
        fields = {"TransactItems": [{kind: {"TableName": "t"}} for kind in kinds]}
        target = {"X-Amz-Target": f"DynamoDB_20120810.{operation}"}
        return [
            a.action
            for a in authorizations("dynamodb", "POST", "/", target, json.dumps(fields).encode(), REGION, ACCOUNT)[1]
        ]

    assert actions("TransactWriteItems", ("Put", "Update", "Delete", "ConditionCheck")) == [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
    ]
    assert actions("TransactGetItems", ("Get",)) == ["dynamodb:GetItem"]


def test_listing_tables_needs_a_grant_on_star_not_on_tables():
    tables = checker({"Effect": "Allow", "Action": "dynamodb:ListTables", "Resource": f"{TABLE_ARN}/*"})
    assert tables.check(*dynamodb_call("ListTables", {})).resource == "*"
    anything = checker({"Effect": "Allow", "Action": "dynamodb:ListTables", "Resource": "*"})
    assert anything.check(*dynamodb_call("ListTables", {})) is None


def test_s3_calls_whose_action_is_not_their_name():
    out = "arn:aws:s3:::data/out/*"
    access = checker(
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": out}
    )
    key = signed("WorkerRole", "s3")
    assert access.check("GET", "/data/out/a.csv?versionId=3", key, b"").action == "s3:GetObjectVersion"
    assert access.check("PUT", "/data/out/a.csv?tagging", key, b"").action == "s3:PutObjectTagging"
    assert access.check("DELETE", "/data/out/a.csv?uploadId=u1", key, b"").action == "s3:AbortMultipartUpload"
    body = b"<Delete><Object><Key>out/a.csv</Key></Object><Object><Key>in/b.csv</Key></Object></Delete>"
    denial = access.check("POST", "/data?delete", key, body)
    assert (denial.call, denial.action) == ("s3:DeleteObjects", "s3:DeleteObject")
    assert denial.resource == "arn:aws:s3:::data/in/b.csv", "every key of the batch, not the first"


def test_publishing_is_authorized_on_the_topic_published_to():
    topic = "arn:aws:sns:us-east-1:123456789012:t"
    access = checker({"Effect": "Allow", "Action": "sns:Publish", "Resource": topic})
    assert access.check("POST", "/", signed("WorkerRole", "sns"), b"Action=Publish&TopicArn=" + topic.encode()) is None
    other = b"Action=Publish&TopicArn=" + topic.encode() + b"-other"
    assert access.check("POST", "/", signed("WorkerRole", "sns"), other).resource == f"{topic}-other"


def test_each_use_of_a_customer_managed_key_is_needed_and_only_on_the_data_under_it():
    data = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::data/*"}
    send = {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:us-east-1:123456789012:*"}
    decrypt = {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY_ARN}
    generate = {"Effect": "Allow", "Action": "kms:GenerateDataKey", "Resource": KEY_ARN}
    assert _encrypted_world(data).check("GET", "/data/a.json", signed("WorkerRole", "s3"), b"").action == "kms:Decrypt"
    assert _encrypted_world(data, decrypt).check("GET", "/data/a.json", signed("WorkerRole", "s3"), b"") is None
    assert _encrypted_world(send, decrypt).check(*sqs_call("SendMessage")).action == "kms:GenerateDataKey"
    assert _encrypted_world(send, generate).check(*sqs_call("SendMessage")).action == "kms:Decrypt"
    assert _encrypted_world(send, generate, decrypt).check(*sqs_call("SendMessage")) is None
    # A queue whose name starts with the encrypted queue's is not under its key.
    plain = {"Dlq": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "tasks-dlq"}}}
    access = checker(send, resources=_encrypted_resources() | plain)
    assert access.check(*sqs_call("SendMessage", queue="tasks-dlq")) is None
    assert access.check(*sqs_call("SendMessage")) is not None


def test_policies_resolve_sub_variables_exact_table_arns_and_refuse_what_they_cannot_resolve():
    resources = {"Status": {"Type": "AWS::DynamoDB::Table", "Properties": {"TableName": "status"}}}
    sub = {"Fn::Sub": ["arn:aws:sqs:${AWS::Region}:${AWS::AccountId}:${Name}", {"Name": "tasks"}]}
    access = checker(
        {"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": sub},
        {"Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": {"Fn::GetAtt": ["Status", "Arn"]}},
        resources=resources,
    )
    assert access.check(*sqs_call("ReceiveMessage")) is None
    assert access.check(*dynamodb_call("PutItem", {"TableName": "status"})) is None
    assert access.check(*dynamodb_call("PutItem", {"TableName": "status-archive"})) is not None
    conditional = {"Fn::If": ["IsProd", "*", {"Ref": "AWS::NoValue"}]}
    with pytest.raises(UnresolvableError, match="Fn::If is not supported by the local run"):
        checker({"Effect": "Allow", "Action": "sqs:*", "Resource": conditional})
