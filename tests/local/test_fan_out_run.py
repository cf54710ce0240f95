"""A chain with a fan-out of 20 children and a join, run locally to completion: the glue sizes the array from
the first step's message, each child reads its item, and the join starts once, on the array parent's end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_constructs.local import cli

CHILDREN = 20

SPLIT = f"""
import json, os, boto3
items = [f"tile-{{n:02d}}" for n in range({CHILDREN})]
attributes = {{name: {{"DataType": "String", "StringValue": os.environ[var]}}
              for name, var in (("step", "PIPELINE_STEP"), ("chainRun", "PIPELINE_CHAIN_RUN"))}}
boto3.client("sns").publish(TopicArn=os.environ["PIPELINE_TOPIC_ARN"], Message=json.dumps({{"tiles": items}}),
                            MessageAttributes=attributes)
"""

WORK = """
import os, boto3
from pipeline_constructs.chain.child import item
s3 = boto3.client("s3")
tile = item(s3)
s3.put_object(Bucket=os.environ["PIPELINE_BUCKET"], Key=os.environ["PIPELINE_PREFIX"] + tile, Body=tile.encode())
"""

JOIN = """
import json, os
message = json.loads(os.environ["DOWNLOAD_MESSAGE"])
print("joined", json.dumps({"total": message["total"], "items": len(message["items"]), "failed": message["failed"]}))
"""


def synth_app(outdir: Path) -> None:
    import aws_cdk as cdk

    from pipeline_constructs import (
        BatchChain,
        ChainLink,
        ChainStep,
        FanOut,
        PipelineNetwork,
        ScheduledTrigger,
        StepImage,
    )

    app = cdk.App(outdir=str(outdir), context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "Maps", env=cdk.Environment(region="eu-west-1"))
    network = PipelineNetwork(stack, "Network", availability_zones=["eu-west-1a", "eu-west-1b"])
    python = StepImage.from_registry("public.ecr.aws/docker/library/python:3.13-slim")
    chain = BatchChain(
        stack,
        "Tiles",
        network=network,
        max_vcpus=16,
        steps=[
            ChainStep(name="split", image=python, command=["python", "-c", SPLIT], link=ChainLink.message()),
            ChainStep(
                name="work",
                image=python,
                command=["python", "-c", WORK],
                fan_out=FanOut.over_message(field="tiles"),
                attempts=1,
                link=ChainLink.on_success(),
            ),
            ChainStep(name="join", image=python, command=["python", "-c", JOIN]),
        ],
    )
    ScheduledTrigger(stack, "Daily", schedule="cron(0 3 * * ? *)", chain=chain)
    app.synth()


@pytest.fixture(scope="module")
def fan_out_run(tmp_path_factory) -> tuple[int, dict, Path]:
    tmp_path = tmp_path_factory.mktemp("fan-out")
    outdir, logs, result_file = tmp_path / "cdk.out", tmp_path / "logs", tmp_path / "result.json"
    synth_app(outdir)
    # A ceiling, not a wait: the run ends as soon as it is idle. 22 jobs on a machine shared with CPU hogs
    # (.ci/run-busy) took over 60 s.
    target = ["--assembly", str(outdir), "--stack", "Maps", "--quiet", "--logs", str(logs), "--timeout", "240"]
    code = cli.main([*target, "--json", str(result_file), "--fire", "Daily"])
    return code, json.loads(result_file.read_text()), logs


def test_a_fan_out_of_20_children_and_its_join_run_to_completion(fan_out_run):
    code, result, logs = fan_out_run
    assert code == 0, result.get("reasons")
    steps = sorted((job["step"], job["status"]) for job in result["jobs"])
    assert steps == [("join", "SUCCEEDED"), ("split", "SUCCEEDED"), ("work", "SUCCEEDED")]
    # Each child read its own item and wrote it under the step's prefix.
    assert sum(count for prefix, count in result["objects"].items() if prefix.endswith("/work/")) == CHILDREN
    (joined,) = [line for path in logs.glob("job-*join*.log") for line in path.read_text().splitlines()]
    assert joined == f'joined {{"total": {CHILDREN}, "items": {CHILDREN}, "failed": []}}'
    assert result["iam"]["denied"] == []
