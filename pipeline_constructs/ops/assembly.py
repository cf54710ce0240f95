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
#: How a user makes the assembly the commands read: their own app's synth, wherever it lives.
SYNTH_HINT = "run `npx cdk synth` in your app's folder first, or point --assembly at its cdk.out"


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
        raise FileNotFoundError(f"no cloud assembly at {outdir} (missing manifest.json): {SYNTH_HINT}")
    manifest = json.loads(manifest_path.read_text())
    stacks = []
    for name, artifact in manifest.get("artifacts", {}).items():
        if artifact.get("type") != "aws:cloudformation:stack":
            continue
        template_path = outdir / artifact["properties"]["templateFile"]
        environment = artifact.get("environment", "aws://unknown-account/unknown-region")
        stacks.append(SynthesizedStack(name, json.loads(template_path.read_text()), template_path, environment))
    return stacks


def stack_names(outdir: str | Path = "cdk.out") -> list[str]:
    """The CloudFormation stacks of the assembly at ``outdir`` (none when there is no assembly there)."""
    manifest_path = Path(outdir) / "manifest.json"
    if not manifest_path.is_file():
        return []
    artifacts = json.loads(manifest_path.read_text()).get("artifacts", {})
    return [name for name, artifact in artifacts.items() if artifact.get("type") == "aws:cloudformation:stack"]


def stack_option_hint(outdir: str | Path = "cdk.out") -> tuple[str, str]:
    """``--stack <name>`` for the user's own app, and a note: the stacks its assembly holds, or how to make one."""
    names = stack_names(outdir)
    if not names:
        return "--stack <your stack>", f" ({SYNTH_HINT})"
    return f"--stack {names[0]}", f" (stacks in {outdir}: {', '.join(names)})" if len(names) > 1 else ""


def imported_names(value: Any) -> set[str]:
    """The export names a template fragment imports (``Fn::ImportValue`` of a literal name)."""
    if isinstance(value, dict):
        if set(value) == {"Fn::ImportValue"} and isinstance(value["Fn::ImportValue"], str):
            return {value["Fn::ImportValue"]}
        return set().union(*(imported_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(imported_names(v) for v in value)) if value else set()
    return set()


def producers_of(stack: SynthesizedStack, stacks: list[SynthesizedStack]) -> list[SynthesizedStack]:
    """The stacks ``stack`` imports from, directly or through each other, each after those it imports from."""
    exporters = {
        output["Export"]["Name"]: other
        for other in stacks
        for output in other.template.get("Outputs", {}).values()
        if isinstance(output.get("Export", {}).get("Name"), str)
    }
    ordered: list[SynthesizedStack] = []

    def visit(current: SynthesizedStack, path: tuple[str, ...]) -> None:
        for name in sorted(imported_names(current.template.get("Resources", {}))):
            if name not in exporters:
                raise KeyError(f"{current.name} imports {name!r}, which no stack in the assembly exports")
            producer = exporters[name]
            if producer.name in path:
                raise KeyError(f"stacks import from each other: {' -> '.join((*path, producer.name))}")
            if producer not in ordered:
                visit(producer, (*path, producer.name))
                ordered.append(producer)

    visit(stack, (stack.name,))
    return ordered


def refuse_nested_stacks(stack: SynthesizedStack) -> None:
    """The local run runs one stack's own template: one with nested stacks is named in one line, not half run."""
    nested = sorted(
        i for i, r in stack.template.get("Resources", {}).items() if r["Type"] == "AWS::CloudFormation::Stack"
    )
    if nested:
        raise KeyError(
            f"{stack.name} has nested stacks ({', '.join(nested)}), which the local run does not run: "
            "synthesize its chains without NestedStack to run them locally"
        )


def find_stack(stacks: list[SynthesizedStack], name: str) -> SynthesizedStack:
    """The stack named ``name``, or ``pipeline-<name>`` (an environment name of the example app)."""
    for wanted in (name, f"pipeline-{name}"):
        for stack in stacks:
            if stack.name == wanted:
                return stack
    known = ", ".join(stack.name for stack in stacks) or "none"
    raise KeyError(f"no stack named {name!r} in the assembly; stacks: {known}")
