"""CloudFormation resources added per extra chain step, per link kind and per extra fleet (from synth).

python -m bench.resource_counts
"""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk

from pipeline_constructs import (
    BatchChain,
    ChainLink,
    ChainStep,
    DataBucket,
    PipelineNetwork,
    SpotWorkerFleet,
    StatusStore,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "public.ecr.aws/docker/library/python:3.13-slim"


def _count(build) -> int:
    app = cdk.App(context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "Bench", env=cdk.Environment(region="us-east-1"))
    network = PipelineNetwork(stack, "Network", availability_zones=["us-east-1a", "us-east-1b"])
    shared = {"bucket": DataBucket(stack, "Data").bucket, "table": StatusStore(stack, "Status").table}
    build(stack, network, shared)
    return len(cdk.assertions.Template.from_stack(stack).to_json()["Resources"])


def _chain(links: list[ChainLink | None]):
    def build(stack, network, shared):
        steps = [ChainStep(name=f"s{i}", image=IMAGE, link=link) for i, link in enumerate(links)]
        BatchChain(stack, "Chain", steps=steps, network=network, **shared)

    return build


def fleets(count: int):
    """A builder adding ``count`` fleets of the example's worker to a stack, sharing its network and stores."""

    def build(stack, network, shared):
        for i in range(count):
            SpotWorkerFleet(
                stack,
                f"Fleet{i}",
                worker_directory=ROOT / "worker_images" / "sqs_worker",
                task="task:csv_stats",
                network=network,
                **shared,
            )

    return build


def measure() -> dict[str, int]:
    one = _count(_chain([None]))
    message_two = _count(_chain([ChainLink.message(), None]))
    message_three = _count(_chain([ChainLink.message(), ChainLink.message(), None]))
    success_two = _count(_chain([ChainLink.on_success(), None]))
    success_three = _count(_chain([ChainLink.on_success(), ChainLink.on_success(), None]))
    mixed_three = _count(_chain([ChainLink.message(), ChainLink.on_success(), None]))
    no_fleet, one_fleet, two_fleets = _count(lambda *_: None), _count(fleets(1)), _count(fleets(2))
    return {
        "chain_of_one_step": one,
        "per_extra_step_after_a_message_link": message_three - message_two,
        "per_extra_step_after_a_success_link": success_three - success_two,
        "first_message_link_over_first_success_link": message_two - success_two,
        "second_link_kind_in_a_chain": mixed_three - success_three,
        "first_fleet": one_fleet - no_fleet,
        "per_extra_fleet": two_fleets - one_fleet,
    }


def main() -> None:
    print(json.dumps(measure(), indent=2))


if __name__ == "__main__":
    main()
