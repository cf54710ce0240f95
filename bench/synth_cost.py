"""What synth costs as a pipeline grows: the example's dev stack with 1, 5 and 20 extra fleets, or extra chain
steps, synthesized as users do (cdk-nag on, aws-cdk-lib's validation on) in one process; the slope is the
milliseconds each extra fleet or step adds. And how large a pipeline fits CloudFormation's 500 resources.

python -m bench.synth_cost
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bench import resource_counts

ROOT = Path(__file__).resolve().parent.parent
STACK_RESOURCE_LIMIT = 500
SIZES = (1, 5, 20)
IMAGE = "public.ecr.aws/docker/library/python:3.13-slim"


def example_dev_app(outdir: Path):
    import app as example_app

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    app = example_app.build_app(context | {"env": "dev", "aws:cdk:version-reporting": False}, outdir=str(outdir))
    return app, app.node.find_child("pipeline-dev")


def _add_fleets(stack, count: int) -> None:
    shared = {"bucket": stack.data.bucket, "table": stack.status.table}
    resource_counts.fleets(count)(stack, stack.network, shared)


def _add_steps(stack, count: int) -> None:
    from pipeline_constructs import BatchChain, ChainLink, ChainStep

    steps = [ChainStep(name=f"s{i}", image=IMAGE, link=ChainLink.message()) for i in range(count)]
    steps.append(ChainStep(name="last", image=IMAGE))
    BatchChain(
        stack, "ExtraChain", steps=steps, network=stack.network, bucket=stack.data.bucket, table=stack.status.table
    )


#: Chains per nested stack in the fifty-chain figure: about 22 resources a chain, well within 500 a stack.
CHAINS_PER_NESTED_STACK = 10


def fifty_chains(count: int = 50) -> dict:
    """``count`` chains of three steps (a message link, a success link) in one deployed stack: ten to a nested
    stack, sharing one compute environment and job queue (Batch allows 50 of each per region), the parent's
    bucket, status store and glue function. The resources of every template, the glue function's environment,
    its largest chain parameter and its grants at deployed size, synth seconds (without the rule packs)."""
    import aws_cdk as cdk

    from pipeline_constructs import BatchChain, ChainLink, ChainStep, DataBucket, PipelineNetwork
    from pipeline_constructs.glue.construct import GlueFunction, as_deployed

    started = time.perf_counter()
    app = cdk.App(context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "pipeline-production-eu", env=cdk.Environment(region="eu-central-1"))
    network = PipelineNetwork(stack, "Network", availability_zones=["eu-central-1a", "eu-central-1b"])
    bucket = DataBucket(stack, "Data").bucket
    first = nested = None
    for i in range(count):
        if i % CHAINS_PER_NESTED_STACK == 0:
            nested = cdk.NestedStack(stack, f"Chains{i // CHAINS_PER_NESTED_STACK}")
        links = [ChainLink.message({"PARALLELISM": 4}), ChainLink.on_success(), None]
        steps = [ChainStep(name=f"step{s}", image=IMAGE, link=link) for s, link in enumerate(links)]
        shared = (
            {} if first is None else {"compute_environment": first.compute_environment, "job_queue": first.job_queue}
        )
        chain = BatchChain(
            nested, f"Chain{i}", chain_name=f"chain{i}", steps=steps, network=network, bucket=bucket, **shared
        )
        first = first or chain
    assembly = app.synth()
    seconds = time.perf_counter() - started
    template = assembly.get_stack_by_name(stack.stack_name).template
    nested_templates = [json.loads(p.read_text()) for p in Path(assembly.directory).glob("*.nested.template.json")]
    glue = GlueFunction.of(stack)
    grants = [
        len(json.dumps(as_deployed(r["Properties"]["PolicyDocument"], stack.stack_name), separators=(",", ":")))
        for lid, r in template["Resources"].items()
        if lid.startswith("PipelineConstructsGlue") and r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    ]
    return {
        "chains": count,
        "nested_stacks": len(nested_templates),
        "seconds": round(seconds, 1),
        "parent_resources": len(template["Resources"]),
        "largest_nested_resources": max(len(t["Resources"]) for t in nested_templates),
        "all_resources": len(template["Resources"]) + sum(len(t["Resources"]) for t in nested_templates),
        "glue_environment_bytes": glue.deployed_config_bytes(),
        "largest_chain_parameter_bytes": max(glue.deployed_chain_bytes().values()),
        "glue_policies": len(grants),
        "glue_managed_policies": len(glue.chain_policies),
        "largest_glue_policy_bytes": max(grants),
    }


def _synth_seconds(add, count: int, rounds: int) -> tuple[float, int]:
    """Median seconds to build and synthesize the dev stack with ``count`` extra parts, and its resources."""
    samples, resources = [], 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as outdir:
            started = time.perf_counter()
            app, stack = example_dev_app(Path(outdir))
            add(stack, count)
            assembly = app.synth()
            samples.append(time.perf_counter() - started)
            template = assembly.get_stack_by_name("pipeline-dev").template
            resources = len(template["Resources"])
    return statistics.median(samples), resources


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of seconds over count."""
    mean_x = statistics.mean(x for x, _ in points)
    mean_y = statistics.mean(y for _, y in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def measure(rounds: int = 2) -> dict:
    _synth_seconds(_add_fleets, 0, 1)  # start jsii and load the modules before timing anything
    base_seconds, base_resources = _synth_seconds(_add_fleets, 0, rounds)
    figures: dict = {"example_dev_seconds": round(base_seconds, 2), "example_dev_resources": base_resources}
    counts = resource_counts.measure()
    per_part = {"fleet": counts["per_extra_fleet"], "step": counts["per_extra_step_after_a_message_link"]}
    figures["sizes"] = {"fleet": list(SIZES), "step": list(SIZES)}
    for name, add in (("fleet", _add_fleets), ("step", _add_steps)):
        points = []  # from the sizes only: a new chain's own fixed cost is the same at every size
        for size in figures["sizes"][name]:
            seconds, resources = _synth_seconds(add, size, rounds)
            points.append((size, seconds))
            figures[f"with_{size}_extra_{name}s"] = {"seconds": round(seconds, 2), "resources": resources}
        figures[f"ms_per_extra_{name}"] = round(_slope(points) * 1000)
        figures[f"resources_per_extra_{name}"] = per_part[name]
        figures[f"extra_{name}s_that_fit_in_{STACK_RESOURCE_LIMIT}"] = (
            STACK_RESOURCE_LIMIT - base_resources
        ) // per_part[name]
    figures["fifty_chains"] = fifty_chains()
    return figures


def main() -> None:
    print(json.dumps(measure(), indent=2))


if __name__ == "__main__":
    main()
