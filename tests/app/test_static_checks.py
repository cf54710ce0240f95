"""AWS's and the tools' own rules where nothing can run on AWS: the boot scripts the launch templates carry
(shellcheck), the worker images' Dockerfiles (hadolint), the runtime code (bandit). Zero findings; each
accepted one is excluded next to its line with the reason (``# nosec``, ``# hadolint ignore``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.static_checks import shellcheck, tool, user_data_scripts

RUNTIME_CODE = ["pipeline_constructs/fleet/worker", "pipeline_constructs/glue/handler.py", "worker_images"]


def test_every_boot_script_of_the_example_passes_shellcheck(example_stacks):
    scripts = {
        f"{name}/{logical_id}": script
        for name, stack in example_stacks.items()
        for logical_id, script in user_data_scripts(stack.template).items()
    }
    assert len(scripts) == 6, "three fleets per environment (a function's, a command's, an HTTP app's)"
    findings = {name: shellcheck(script) for name, script in scripts.items()}
    assert findings == dict.fromkeys(scripts, "")


def test_shellcheck_finds_what_it_should():
    assert "SC2046" in shellcheck("#!/bin/bash\nmkdir -p $(dirname '/tmp/x')\n")


@pytest.mark.parametrize("dockerfile", sorted(ROOT.glob("worker_images/*/Dockerfile")), ids=lambda p: p.parent.name)
def test_every_dockerfile_passes_hadolint(dockerfile: Path):
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "style", "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


def test_the_runtime_code_passes_bandit():
    result = subprocess.run(
        [tool("bandit"), "-q", "-r", *RUNTIME_CODE, "-f", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert findings == []
    assert report["metrics"]["_totals"]["loc"] > 1000, "the runtime code was scanned"
