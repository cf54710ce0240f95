"""AWS's and the tools' own rules where nothing can run on AWS: the boot scripts the launch templates carry
(shellcheck), the worker images' Dockerfiles (hadolint), the runtime code (bandit). Zero findings; each
accepted one is excluded next to its line with the reason (``# nosec``, ``# hadolint ignore``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BIN = Path(sys.executable).parent
RUNTIME_CODE = ["pipeline_constructs/worker", "pipeline_constructs/glue", "worker_images"]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is not installed (requirements-dev.txt)"
    return path


def user_data_scripts(template: dict) -> dict[str, str]:
    """Every launch template's user data as the instance gets it, references filled with a placeholder."""
    scripts = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::EC2::LaunchTemplate":
            continue
        user_data = resource["Properties"]["LaunchTemplateData"].get("UserData")
        if user_data is None:
            continue
        inner = user_data["Fn::Base64"]
        parts = inner["Fn::Join"][1] if isinstance(inner, dict) else [inner]
        scripts[logical_id] = "".join(part if isinstance(part, str) else "PLACEHOLDER" for part in parts)
    return scripts


def shellcheck(script: str) -> str:
    result = subprocess.run(
        [_tool("shellcheck"), "--shell=bash", "--severity=style", "--format=gcc", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout


def test_every_boot_script_of_the_example_passes_shellcheck(example_stacks):
    scripts = {
        f"{name}/{logical_id}": script
        for name, stack in example_stacks.items()
        for logical_id, script in user_data_scripts(stack.template).items()
    }
    assert len(scripts) == 2, "one fleet per environment"
    findings = {name: shellcheck(script) for name, script in scripts.items()}
    assert findings == dict.fromkeys(scripts, "")


def test_shellcheck_finds_what_it_should():
    assert "SC2046" in shellcheck("#!/bin/bash\nmkdir -p $(dirname '/tmp/x')\n")


@pytest.mark.parametrize("dockerfile", sorted(ROOT.glob("worker_images/*/Dockerfile")), ids=lambda p: p.parent.name)
def test_every_dockerfile_passes_hadolint(dockerfile: Path):
    result = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "style", "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


def test_the_runtime_code_passes_bandit():
    result = subprocess.run(
        [_tool("bandit"), "-q", "-r", *RUNTIME_CODE, "-f", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert findings == []
    assert report["metrics"]["_totals"]["loc"] > 1000, "the runtime code was scanned"
