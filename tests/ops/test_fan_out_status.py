"""`pipeline status` of a chain with a fan-out step: the step's own state, and its children (failed first) in the
JSON and, those that failed, one line each under their run in the table."""

from __future__ import annotations

import json
import uuid
from typing import Any

from typer.testing import CliRunner

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.ops import cli
from pipeline_constructs.ops.operator import MANIFEST_OUTPUT
from tests.support.resources import create_status_table

CHILDREN, FAILED = 60, (4, 9, *range(40, 50))  # 12 failed: over the table's 10; 60 children: over the JSON's 50


def deploy_chain(aws) -> tuple[str, str]:
    """A stack whose manifest names a chain ``maps`` (split, work, join) and its status table; (stack, table)."""
    name = f"fan{uuid.uuid4().hex[:8]}"
    table = create_status_table(aws.dynamodb, f"{name}-status")
    definitions = {step: f"arn:aws:batch:us-east-1:123456789012:job-definition/{step}:1" for step in ("split", "work")}
    chain = {"jobQueue": "q", "steps": ["split", "work", "join"], "jobDefinitions": definitions, "table": table.name}
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {MANIFEST_OUTPUT: {"Value": json.dumps({"version": 1, "fleets": {}, "chains": {"maps": chain}})}},
    }
    aws.session.client("cloudformation").create_stack(StackName=f"pipeline-{name}", TemplateBody=json.dumps(template))
    return name, table.name


def write_run(aws, table: str, run: str) -> None:
    """The rows the glue writes for ``run`` at its fan-in: split's job, work's (array parent) and its children."""
    rows: list[dict[str, Any]] = [
        {"pk": "chain#maps", "sk": f"run#{run}#00#j-split", "chain_run": run, "step": "split", "status": "SUCCEEDED"},
        {
            "pk": "chain#maps",
            "sk": f"run#{run}#01#j-work",
            "chain_run": run,
            "step": "work",
            "status": "FAILED",
            "reason": f"{len(FAILED)} of {CHILDREN} children failed: ...",
            "children_total": CHILDREN,
            "children_succeeded": CHILDREN - len(FAILED),
            "children_failed": len(FAILED),
        },
    ]
    rows += [
        {
            "pk": "chain#maps",
            "sk": glue.child_key(run, 1, "j-work", index),
            "chain_run": run,
            "step": "work",
            "child_index": index,
            "item": f"tile-{index:02d}",
            "status": "FAILED" if index in FAILED else "SUCCEEDED",
            "reason": f"exit code {index}" if index in FAILED else "-",
        }
        for index in range(CHILDREN)
    ]
    glue.batch_write(aws.dynamodb, table, rows)


def test_status_lists_a_fan_outs_children_failed_first_and_a_line_per_failed_child(aws, monkeypatch):
    stack, table = deploy_chain(aws)
    write_run(aws, table, "maps-1")
    runner = CliRunner()
    result = runner.invoke(cli.app, ["status", "--stack", stack, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)["chains"]["maps"]["maps-1"]
    assert run["steps"] == {"split": "SUCCEEDED", "work": f"FAILED: {len(FAILED)} of {CHILDREN} children failed"}
    children = run["children"]["work"]
    assert len(children) == 50 and run["children_not_shown"] == {"work": {"SUCCEEDED": CHILDREN - 50}}
    assert [child["index"] for child in children[: len(FAILED)]] == list(FAILED)
    assert children[0] == {"index": 4, "item": "tile-04", "status": "FAILED", "reason": "exit code 4"}
    assert children[len(FAILED)] == {"index": 0, "item": "tile-00", "status": "SUCCEEDED", "reason": ""}

    monkeypatch.setattr(cli.console, "_width", 400)
    result = runner.invoke(cli.app, ["status", "--stack", stack], catch_exceptions=False)
    lines = [line.strip(" │") for line in result.output.splitlines() if "work #" in line or "work: and" in line]
    assert lines[:2] == ["work #4 tile-04: FAILED exit code 4", "work #9 tile-09: FAILED exit code 9"]
    assert len(lines) == 11 and lines[-1] == "work: and 2 more failed children"
