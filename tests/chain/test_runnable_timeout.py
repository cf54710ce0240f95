"""No chain run stalls silently in RUNNABLE: the chain's own queue cancels a job stuck there (no spot capacity
after ``runnable_timeout``, no instance type to hold it after Batch's minimum), the alarms say why, and synth
refuses a step no allowed instance type can hold."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import Duration
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Template

from pipeline_constructs import BatchChain, ChainStep, PipelineAlarms
from pipeline_constructs.chain.compute import LARGEST_SIZES, usable_memory_mib
from pipeline_constructs.glue.handler import RUNNABLE_TIMEOUT_CANCEL
from pipeline_constructs.local.events import matches

IMAGE = "public.ecr.aws/docker/library/python:3.13-slim"


@pytest.fixture
def stack() -> cdk.Stack:
    return cdk.Stack(cdk.App(), "Test", env=cdk.Environment(region="us-east-1"))


def step(**changes) -> ChainStep:
    return ChainStep(**({"name": "only", "image": IMAGE} | changes))


def time_limits(stack: cdk.Stack) -> dict[str, dict]:
    (queue,) = Template.from_stack(stack).find_resources("AWS::Batch::JobQueue").values()
    return {action["Reason"]: action for action in queue["Properties"]["JobStateTimeLimitActions"]}


def test_the_chains_own_queue_cancels_a_job_stuck_in_runnable(stack):
    BatchChain(stack, "Chain", steps=[step()])
    limits = time_limits(stack)
    assert set(limits) == {
        "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
        "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
        "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
    }
    assert all(a["Action"] == "CANCEL" and a["State"] == "RUNNABLE" for a in limits.values())
    # Sized to the spot market (hours), not to minutes; a job nothing can hold is cancelled at Batch's minimum.
    assert limits["CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"]["MaxTimeSeconds"] == 4 * 3600
    assert limits["MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"]["MaxTimeSeconds"] == 600
    assert limits["MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE"]["MaxTimeSeconds"] == 600


def test_runnable_timeout_sets_how_long_a_job_waits_for_spot_capacity(stack):
    BatchChain(stack, "Chain", steps=[step()], runnable_timeout=Duration.hours(8))
    assert time_limits(stack)["CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"]["MaxTimeSeconds"] == 8 * 3600


def test_a_users_own_queue_is_left_as_it_is(stack):
    queue = batch.JobQueue.from_job_queue_arn(stack, "Q", "arn:aws:batch:us-east-1:111111111111:job-queue/theirs")
    BatchChain(stack, "Chain", steps=[step()], job_queue=queue)
    assert Template.from_stack(stack).find_resources("AWS::Batch::JobQueue") == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"runnable_timeout": Duration.minutes(5)},
            "Test/Chain: runnable_timeout='300 seconds' is invalid; allowed: 600 to 86400 seconds",
        ),
        (
            {"runnable_timeout": Duration.hours(25)},
            "Test/Chain: runnable_timeout='90000 seconds' is invalid; allowed: 600 to 86400 seconds",
        ),
        ({"runnable_timeout": 3600}, "Test/Chain: runnable_timeout=3600 is invalid; allowed: a Duration"),
    ],
)
@pytest.mark.user_mistake
def test_a_runnable_timeout_outside_batchs_range_is_one_error(stack, kwargs, message):
    with pytest.raises(ValueError) as error:
        BatchChain(stack, "Chain", steps=[step()], **kwargs)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.user_mistake
def test_a_runnable_timeout_for_a_users_own_queue_is_one_error(stack):
    queue = batch.JobQueue.from_job_queue_arn(stack, "Q", "arn:aws:batch:us-east-1:111111111111:job-queue/theirs")
    with pytest.raises(ValueError) as error:
        BatchChain(stack, "Chain", steps=[step()], job_queue=queue, runnable_timeout=Duration.hours(2))
    assert str(error.value) == (
        "Test/Chain: runnable_timeout='7200 seconds' is invalid; allowed: None with your own job_queue "
        "(give that queue job_state_time_limit_actions)"
    )


R6I_USABLE = usable_memory_mib(1024)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # 1 TiB is r6i.32xlarge's installed memory: less is left for jobs once the kernel and the agent took theirs.
        (
            {"steps": [step(memory_mib=1024 * 1024)]},
            f"Test/Chain: steps[0].memory_mib=1048576 is invalid; allowed: at most {R6I_USABLE} MiB with 1 vCPUs: "
            "what r6i.32xlarge leaves jobs after the ECS agent's share",
        ),
        (
            {"steps": [step(vcpus=96)], "architecture": "arm64", "max_vcpus": 256},
            "Test/Chain: steps[0].vcpus=96 is invalid; allowed: at most 64, the vCPUs of the largest allowed "
            "instance type (m7g.16xlarge)",
        ),
        (
            {
                "steps": [step(vcpus=100, memory_mib=300 * 1024)],
                "instance_classes": [ec2.InstanceClass.C6I, ec2.InstanceClass.R7G],
                "max_vcpus": 256,
            },
            f"Test/Chain: steps[0].memory_mib=307200 is invalid; allowed: at most {usable_memory_mib(256)} MiB "
            "with 100 vCPUs: what c6i.32xlarge leaves jobs",
        ),
    ],
)
@pytest.mark.user_mistake
def test_a_step_no_allowed_instance_type_can_hold_is_one_error_at_synth(stack, kwargs, message):
    with pytest.raises(ValueError) as error:
        BatchChain(stack, "Chain", **kwargs)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_steps_that_fit_some_allowed_instance_type_synthesize(stack):
    # r6i holds what neither m6i nor c6i could; the usable memory is an estimate and errs below the installed.
    assert 990 * 1024 < R6I_USABLE < 1000 * 1024
    BatchChain(stack, "Big", steps=[step(vcpus=128, memory_mib=990 * 1024)], max_vcpus=256)
    # Not ours to check: a shared compute environment, or a family whose sizes this library does not list.
    shared = batch.ManagedEc2EcsComputeEnvironment.from_managed_ec2_ecs_compute_environment_arn(
        stack, "Shared", "arn:aws:batch:us-east-1:111111111111:compute-environment/shared"
    )
    BatchChain(stack, "OnShared", steps=[step(memory_mib=4 * 1024 * 1024)], compute_environment=shared)
    assert "x2iedn" not in LARGEST_SIZES
    BatchChain(
        stack,
        "Unknown",
        steps=[step(memory_mib=3 * 1024 * 1024)],
        instance_classes=[ec2.InstanceClass.X2IEDN],
    )


def on_the_chains_jobs(pattern: dict, chain: BatchChain, stack: cdk.Stack) -> dict:
    """The pattern without its job queue and definitions (tokens here), once they are checked to be the chain's."""
    detail = dict(pattern["detail"])
    assert detail.pop("jobQueue") == [stack.resolve(chain.job_queue.job_queue_arn)]
    # Every revision of the chain's definitions, by name: jobs of an older one still alert after a deploy.
    assert detail.pop("jobDefinition") == stack.resolve(chain.job_definition_event_filter())
    return pattern | {"detail": detail}


def cancelled_event(reason: str) -> dict:
    return {
        "source": "aws.batch",
        "detail-type": "Batch Job State Change",
        "detail": {"status": "FAILED", "statusReason": f"{RUNNABLE_TIMEOUT_CANCEL} due to reason: {reason}"},
    }


def test_the_alarms_say_why_a_job_was_cancelled_in_runnable(stack):
    chain = BatchChain(stack, "Chain", chain_name="feeds", steps=[step()])
    alarms = PipelineAlarms(stack, "Alarms")
    alarms.watch_chain(chain)
    rules = Template.from_stack(stack).find_resources("AWS::Events::Rule")
    (stuck,) = [r["Properties"] for lid, r in rules.items() if lid.startswith("AlarmsChainStuckJobs")]
    (failed,) = [r["Properties"] for lid, r in rules.items() if lid.startswith("AlarmsChainFailedJobs")]
    stuck_pattern = on_the_chains_jobs(stuck["EventPattern"], chain, stack)
    cancelled = cancelled_event("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY")
    assert matches(stuck_pattern, cancelled)
    assert matches(on_the_chains_jobs(failed["EventPattern"], chain, stack), cancelled), (
        "still a failed job too: never less notified than before"
    )
    exited = cancelled | {"detail": cancelled["detail"] | {"statusReason": "Essential container in task exited"}}
    assert not matches(stuck_pattern, exited)
    (target,) = stuck["Targets"]
    text = json.dumps(target["InputTransformer"])
    assert "no spot capacity in any allowed instance type" in text and "runnable_timeout" in text
    assert "$.detail.statusReason" in text and "chain feeds" in text
