"""Reading a synthesized cloud assembly (``cdk.out``): its stacks, their templates and who made what.

Shared by the stack summary, the local runner and the cost report, so that each reads the real templates
``cdk deploy`` would use rather than a second description of the pipeline.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CDK_PATH_METADATA = "aws:cdk:path"


@dataclass(frozen=True)
class SynthesizedStack:
    """One stack of a cloud assembly."""

    name: str
    template: dict[str, Any]
    template_path: Path
    environment: str = "aws://unknown-account/unknown-region"

    @property
    def region(self) -> str | None:
        region = self.environment.rsplit("/", 1)[-1]
        return None if region.startswith("unknown") else region

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.template.get("Resources", {})

    def resources_of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {lid: res for lid, res in self.resources.items() if res.get("Type") == resource_type}

    def resource_counts(self) -> Counter[str]:
        return Counter(res["Type"] for res in self.resources.values())

    def construct_of(self, logical_id: str, depth: int = 1) -> str:
        """The construct under the stack that made a resource (``Network``, ``FeedChain``), from its CDK path."""
        path = self.resources[logical_id].get("Metadata", {}).get(CDK_PATH_METADATA, "")
        parts = path.split("/")[1 : 1 + depth]
        return "/".join(parts) if parts else "(stack)"

    def resources_by_construct(self) -> dict[str, Counter[str]]:
        made: dict[str, Counter[str]] = {}
        for logical_id, resource in self.resources.items():
            made.setdefault(self.construct_of(logical_id), Counter())[resource["Type"]] += 1
        return made


def load_assembly(outdir: str | Path = "cdk.out") -> list[SynthesizedStack]:
    """Every CloudFormation stack in the assembly at ``outdir``, in manifest order."""
    outdir = Path(outdir)
    manifest_path = outdir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no cloud assembly at {outdir} (missing manifest.json); run `make synth` first")
    manifest = json.loads(manifest_path.read_text())
    stacks = []
    for name, artifact in manifest.get("artifacts", {}).items():
        if artifact.get("type") != "aws:cloudformation:stack":
            continue
        template_path = outdir / artifact["properties"]["templateFile"]
        environment = artifact.get("environment", "aws://unknown-account/unknown-region")
        stacks.append(SynthesizedStack(name, json.loads(template_path.read_text()), template_path, environment))
    return stacks


def find_stack(stacks: list[SynthesizedStack], name: str) -> SynthesizedStack:
    """The stack named ``name``, or ``pipeline-<name>`` (an environment name of the example app)."""
    for wanted in (name, f"pipeline-{name}"):
        for stack in stacks:
            if stack.name == wanted:
                return stack
    known = ", ".join(stack.name for stack in stacks) or "none"
    raise KeyError(f"no stack named {name!r} in the assembly; stacks: {known}")
