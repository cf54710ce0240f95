"""The local run uses the account a stack names as it is: its ARNs, queue URLs, events and policy checks carry
it, and the emulator holds the run's resources in that account (moto serves one account per request)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from pipeline_constructs.local.provisioning import run_account, stack_account
from pipeline_constructs.local.runner import MOTO_ACCOUNT_HEADER, LocalPipeline
from pipeline_constructs.ops.assembly import SynthesizedStack

ACCOUNT = "111111111111"
DEFAULT = "123456789012"

TEMPLATE = {
    "Resources": {
        "Tasks": {"Type": "AWS::SQS::Queue"},
        "Glue": {"Type": "AWS::SSM::Parameter", "Properties": {"Name": "/mine/glue", "Type": "String", "Value": "{}"}},
    },
    "Outputs": {
        "TasksArn": {"Value": {"Fn::GetAtt": ["Tasks", "Arn"]}},
        "Account": {"Value": {"Ref": "AWS::AccountId"}},
    },
}


def _stack(name: str, account: str | None, template: dict | None = None) -> SynthesizedStack:
    environment = f"aws://{account}/eu-west-1" if account else "aws://unknown-account/unknown-region"
    return SynthesizedStack(name, template or TEMPLATE, Path(f"{name}.template.json"), environment)


def _client(service: str, endpoint: str, account: str | None = None):
    client = boto3.client(
        service, endpoint_url=endpoint, region_name="eu-west-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    if account is not None:

        def name_account(request, **_):
            request.headers[MOTO_ACCOUNT_HEADER] = account

        client.meta.events.register("before-send", name_account)
    return client


def test_a_stack_names_the_account_of_its_run():
    assert stack_account(_stack("Mine", ACCOUNT)) == ACCOUNT
    assert stack_account(_stack("Agnostic", None)) == DEFAULT  # environment-agnostic: the emulator's default
    assert run_account(_stack("Work", ACCOUNT), [_stack("Shared", ACCOUNT)]) == ACCOUNT
    with pytest.raises(ValueError, match=r"Work \(account 111111111111\) imports from Shared \(account 222222222222\)"):
        run_account(_stack("Work", ACCOUNT), [_stack("Shared", "222222222222")])


@pytest.fixture
def account_run(moto_endpoint, tmp_path):
    pipeline = LocalPipeline(
        _stack("Mine", ACCOUNT), tmp_path, endpoint=moto_endpoint, region="eu-west-1", log_dir=tmp_path / "logs"
    )
    pipeline.start()
    yield pipeline
    pipeline.stop()


def test_the_run_uses_the_stacks_account_as_it_is(account_run, moto_endpoint):
    outputs = account_run.outputs()
    assert outputs["Account"] == ACCOUNT
    assert outputs["TasksArn"].startswith(f"arn:aws:sqs:eu-west-1:{ACCOUNT}:Mine-")
    queue_url = account_run.resolver.ref("Tasks")
    assert f"/{ACCOUNT}/Mine-" in queue_url
    # What the run made is in the stack's account in the emulator, not in its default one.
    name = queue_url.rsplit("/", 1)[-1]
    in_account = _client("sqs", moto_endpoint, ACCOUNT).list_queues(QueueNamePrefix=name).get("QueueUrls", [])
    in_default = _client("sqs", moto_endpoint).list_queues(QueueNamePrefix=name).get("QueueUrls", [])
    assert [url.rsplit("/", 2)[-2] for url in in_account] == [ACCOUNT] and in_default == []
    assert _client("ssm", moto_endpoint, ACCOUNT).get_parameter(Name="/mine/glue")["Parameter"]["Value"] == "{}"
    # The run's processes and `--local` CLI calls reach it through the same account (the state's endpoint).
    front = account_run.clients.endpoint
    assert front != moto_endpoint
    assert _client("sqs", front).get_queue_url(QueueName=name)["QueueUrl"].endswith(f"/{ACCOUNT}/{name}")


def test_an_environment_agnostic_stack_runs_in_the_emulators_default_account(moto_endpoint, tmp_path):
    pipeline = LocalPipeline(
        _stack("Agnostic", None), tmp_path, endpoint=moto_endpoint, region="eu-west-1", log_dir=tmp_path / "logs"
    )
    try:
        assert pipeline.front is None and pipeline.clients.endpoint == moto_endpoint  # no extra hop
        assert pipeline.outputs()["Account"] == DEFAULT
    finally:
        pipeline.stop()
