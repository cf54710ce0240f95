"""Resources shaped like the constructs' own, made in the emulator for one test."""

from __future__ import annotations

from typing import Any

from pipeline_constructs.fleet.worker.status import TABLE_KEYS


def create_batch_queue(session: Any, name: str, steps: list[str]) -> tuple[str, dict[str, str]]:
    """A Batch job queue and one job definition per step in the emulator: (queue ARN, step -> definition ARN)."""
    batch = session.client("batch")
    role = session.client("iam").create_role(RoleName=f"r{name}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName=f"ce{name}", type="UNMANAGED", serviceRole=role
    )["computeEnvironmentArn"]
    queue = batch.create_job_queue(
        jobQueueName=f"q{name}",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
    )["jobQueueArn"]
    definitions = {
        step: batch.register_job_definition(
            jobDefinitionName=f"{step}{name}",
            type="container",
            containerProperties={"image": "busybox", "vcpus": 1, "memory": 128},
        )["jobDefinitionArn"]
        for step in steps
    }
    return queue, definitions


def create_status_table(dynamodb: Any, name: str) -> Any:
    """A table shaped like the StatusStore's (pk, sk), in the emulator."""
    return dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **TABLE_KEYS)
