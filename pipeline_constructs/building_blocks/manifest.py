"""PipelineManifest: one stack output that tells the operator CLI where every fleet and chain lives."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from pipeline_constructs.building_blocks.validation import stack_singleton

#: The output's name: the library's namespace, like every shared construct of the stack.
OUTPUT_NAME = "PipelineConstructsManifest"
SINGLETON_ID = "Manifest"


class PipelineManifest(Construct):
    """Collects the fleets and chains of a stack into the ``PipelineConstructsManifest`` output (JSON).

    ``pipeline status``/``submit``/``redrive``/``start`` read it from the deployed stack (or from a local run),
    so they need only a stack or environment name. Constructs register themselves; use :meth:`of`.
    """

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.content: dict[str, Any] = {"version": 1, "fleets": {}, "chains": {}}
        self.output = CfnOutput(
            self, "Output", value=self._json(), description="pipeline_constructs: fleets and chains"
        )
        self.output.override_logical_id(OUTPUT_NAME)  # a stable name for the CLI to look up

    @classmethod
    def of(cls, scope: Construct) -> PipelineManifest:
        return stack_singleton(scope, SINGLETON_ID, cls, cls)

    def _json(self) -> str:
        return Stack.of(self).to_json_string(self.content)

    def register(self, kind: str, name: str, entry: dict[str, Any]) -> None:
        self.content[kind][name] = entry
        self.output.value = self._json()
