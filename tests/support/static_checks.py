"""The static checkers the suite runs (installed in the venv by requirements-dev.txt), and what they read."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
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
        [tool("shellcheck"), "--shell=bash", "--severity=style", "--format=gcc", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout
