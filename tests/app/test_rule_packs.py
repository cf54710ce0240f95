"""checkov (CloudFormation checks) and parliament (IAM policy lint) over every template the project synthesizes:
the example app (dev, and prod under the compliance profile) here, the guide's two-stack app in test_guide.py.

No finding may go unacknowledged, and no acknowledgment may outlive its finding. An acknowledgment is metadata on
the resource with its reason (building_blocks/nag.py): ``checkov: {skip: [...]}``, which checkov honours, and
``parliament: {skip: [...]}`` on a policy's resource, applied here. So the tools run on the templates with that
metadata taken out, and what they find is compared with what is acknowledged; checkov also runs on the templates
as synthesized, where it must find nothing (it honours what we wrote).

Both tools run in a venv of their own (``make setup`` builds it from requirements-rule-packs.txt): checkov pins
boto3, botocore, packaging and networkx below this project's, and parliament needs pkg_resources (setuptools < 81).
One process runs both over every template given, to pay their start-up (about 2 s of CPU) once.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline_constructs.local.resolver import Resolver
from pipeline_constructs.ops.assembly import SynthesizedStack
from tests.support import ROOT

RULE_PACKS_PYTHON = ROOT / ".venv" / "rule-packs" / "bin" / "python"
#: Metadata keys of the acknowledgments, per tool.
TOOLS = ("checkov", "parliament")
#: Where a template holds a policy document parliament can read: resource type -> its property. Trust policies
#: (AssumeRolePolicyDocument) are left out: parliament wants a Resource in every statement.
POLICY_DOCUMENTS = {
    "AWS::IAM::Policy": "PolicyDocument",
    "AWS::IAM::ManagedPolicy": "PolicyDocument",
    "AWS::KMS::Key": "KeyPolicy",
    "AWS::S3::BucketPolicy": "PolicyDocument",
    "AWS::SNS::TopicPolicy": "PolicyDocument",
    "AWS::SQS::QueuePolicy": "PolicyDocument",
}

#: Runs in the rule packs' venv. stdin: {"templates": {key: path}, "acknowledged": [paths], "policies":
#: {key: {logical id: [documents]}}}; stdout: the findings, each [key, logical id, rule].
TOOL_RUN = r"""
import json, sys, warnings
warnings.simplefilter("ignore")  # parliament imports pkg_resources, deprecated
import parliament
from checkov.cloudformation.runner import Runner
from checkov.runner_filter import RunnerFilter

request = json.load(sys.stdin)
keys = {path: key for key, path in request["templates"].items()}
files = [*keys, *request["acknowledged"]]
report = Runner().run(root_folder=None, files=files, runner_filter=RunnerFilter(framework=["cloudformation"]))
checkov, honoured = [], []
for failed in report.failed_checks:
    logical_id = failed.resource.split(".", 1)[1]
    if failed.file_abs_path in keys:
        checkov.append([keys[failed.file_abs_path], logical_id, failed.check_id])
    else:
        honoured.append([failed.file_abs_path, logical_id, failed.check_id])

def subject(finding):
    # What a finding is about, stable across renames: the services of the actions, or the condition key.
    detail = finding.detail
    if finding.issue in ("RESOURCE_STAR", "RESOURCE_MISMATCH"):
        actions = [item["action"] if isinstance(item, dict) else item for item in detail]
        return ",".join(sorted({action.split(":")[0] for action in actions}))
    if finding.issue == "RESOURCE_POLICY_PRIVILEGE_ESCALATION":
        return detail.rsplit(" ", 1)[-1]
    if isinstance(detail, str) and detail.startswith(("Unknown condition ", "Type mismatch: ")):
        return detail.split()[2]
    return ""

def as_strings(value):
    # parliament fails on a JSON number in a condition (it matches a regex on it): IAM reads both alike.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return [as_strings(item) for item in value]
    if isinstance(value, dict):
        return {name: as_strings(item) for name, item in value.items()}
    return value

found = []
for key, documents in request["policies"].items():
    for logical_id, policies in documents.items():
        for policy in policies:
            for finding in parliament.analyze_policy_string(json.dumps(as_strings(policy))).findings:
                rule = f"{finding.issue}[{subject(finding)}]" if subject(finding) else finding.issue
                found.append([key, logical_id, rule])
print(json.dumps({"checkov": checkov, "parliament": found, "honoured": honoured}))
"""


@dataclass
class RulePackScan:
    """Per template key, each tool's findings and acknowledgments as ``"<logical id> <rule>"``."""

    found: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    acknowledged: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    #: What checkov still reports on the templates as synthesized (acknowledgments in place).
    not_honoured: list[str] = field(default_factory=list)

    def unacknowledged(self) -> dict[str, list[str]]:
        return {key: self._difference(key, self.found, self.acknowledged) for key in self.found}

    def stale(self) -> dict[str, list[str]]:
        """Acknowledgments of findings that no longer occur."""
        return {key: self._difference(key, self.acknowledged, self.found) for key in self.found}

    @staticmethod
    def _difference(key: str, left: dict[str, dict[str, set[str]]], right: dict[str, dict[str, set[str]]]) -> list[str]:
        return sorted(f"{tool}: {entry}" for tool in TOOLS for entry in left[key][tool] - right[key][tool])


def scan_rule_packs(
    templates: dict[str, dict[str, Any]], workdir: Path, *, exports: Sequence[str] = (), as_synthesized: bool = True
) -> RulePackScan:
    """Run checkov and parliament over ``templates`` (key -> template); ``exports``: the keys, in order, whose
    exports the others import (``Fn::ImportValue`` in a policy); ``as_synthesized``: run checkov on the templates
    with their acknowledgments as well (``not_honoured``), a second pass over every resource."""
    if not RULE_PACKS_PYTHON.exists():
        raise AssertionError(f"{RULE_PACKS_PYTHON} is missing: `make setup` builds the rule packs' venv")
    scan, request = RulePackScan(), {"templates": {}, "acknowledged": [], "policies": {}}
    imports: dict[str, Any] = {}
    for key in [*exports, *(key for key in templates if key not in exports)]:
        template = templates[key]
        resolver = Resolver(template, stack_name=key, region="us-east-1", queue_url_base="", imports=imports)
        if key in exports:
            imports |= resolver.exports()
        request["templates"][key] = _write(workdir / f"{key}.bare.template.json", _without_acknowledgments(template))
        if as_synthesized:
            request["acknowledged"].append(_write(workdir / f"{key}.template.json", template))
        request["policies"][key] = _policy_documents(template, resolver)
        scan.acknowledged[key] = _acknowledgments(template)
        scan.found[key] = {tool: set() for tool in TOOLS}
    run = subprocess.run(
        [str(RULE_PACKS_PYTHON), "-c", TOOL_RUN],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    for tool in TOOLS:
        for key, logical_id, rule in report[tool]:
            scan.found[key][tool].add(f"{logical_id} {rule}")
    scan.not_honoured = [" ".join(finding) for finding in report["honoured"]]
    return scan


def _write(path: Path, template: dict[str, Any]) -> str:
    path.write_text(json.dumps(template))
    return str(path.resolve())


def _without_acknowledgments(template: dict[str, Any]) -> dict[str, Any]:
    bare = json.loads(json.dumps(template))
    for resource in bare["Resources"].values():
        for tool in TOOLS:
            resource.get("Metadata", {}).pop(tool, None)
    return bare


def _acknowledgments(template: dict[str, Any]) -> dict[str, set[str]]:
    acknowledged: dict[str, set[str]] = {tool: set() for tool in TOOLS}
    for logical_id, resource in template["Resources"].items():
        for tool in TOOLS:
            for skip in resource.get("Metadata", {}).get(tool, {}).get("skip", []):
                assert skip.get("comment"), f"{logical_id}: {tool} acknowledgment {skip['id']} without a reason"
                acknowledged[tool].add(f"{logical_id} {skip['id']}")
    return acknowledged


def _policy_documents(template: dict[str, Any], resolver: Resolver) -> dict[str, list[Any]]:
    """Every policy document parliament can read, by the logical id of the resource holding it, with its
    references resolved to the names and ARNs the local run gives them."""
    documents: dict[str, list[Any]] = {}
    for logical_id, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        held = [properties[POLICY_DOCUMENTS[resource["Type"]]]] if resource["Type"] in POLICY_DOCUMENTS else []
        if resource["Type"] == "AWS::IAM::Role":
            held = [policy["PolicyDocument"] for policy in properties.get("Policies", [])]
        if held:
            documents[logical_id] = [resolver.resolve(document) for document in held]
    return documents


def stacks_by_name(stacks: Sequence[SynthesizedStack]) -> dict[str, dict[str, Any]]:
    return {stack.name: stack.template for stack in stacks}


# ---------------------------------------------------------------- the example app, and the scan's own checks

#: A template with one finding of each tool left unacknowledged and one acknowledgment of each gone stale.
CANARY = {
    "Resources": {
        "Plain": {"Type": "AWS::SQS::Queue", "Properties": {}},
        "Encrypted": {
            "Type": "AWS::SQS::Queue",
            "Properties": {"KmsMasterKeyId": "alias/aws/sqs"},
            "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_27", "comment": "no longer true"}]}},
        },
        "Skipped": {
            "Type": "AWS::SQS::Queue",
            "Properties": {},
            "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_27", "comment": "accepted"}]}},
        },
        "Wide": {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "sqs:GetQueueAttributes", "Resource": "*"}],
                }
            },
        },
        "Narrow": {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "sqs:GetQueueAttributes",
                            "Resource": {"Fn::GetAtt": ["Plain", "Arn"]},
                        }
                    ],
                }
            },
            "Metadata": {"parliament": {"skip": [{"id": "RESOURCE_STAR[sqs]", "comment": "no longer true"}]}},
        },
    }
}


@pytest.fixture(scope="module")
def example_scan(example_stacks, tmp_path_factory) -> RulePackScan:
    templates = {name: example_stacks[name].template for name in ("pipeline-dev", "pipeline-prod")}
    return scan_rule_packs(templates | {"canary": CANARY}, tmp_path_factory.mktemp("rule-packs"))


def test_the_example_has_no_unacknowledged_rule_pack_finding(example_scan):
    unacknowledged = example_scan.unacknowledged()
    assert {stack: unacknowledged[stack] for stack in ("pipeline-dev", "pipeline-prod")} == {
        "pipeline-dev": [],
        "pipeline-prod": [],
    }


def test_the_examples_rule_pack_acknowledgments_all_hold(example_scan):
    """An acknowledgment whose finding went away (a fix, a changed default) is removed with it."""
    stale = example_scan.stale()
    assert {stack: stale[stack] for stack in ("pipeline-dev", "pipeline-prod")} == {
        "pipeline-dev": [],
        "pipeline-prod": [],
    }


def test_checkov_honours_the_acknowledgments_as_written(example_scan):
    """Users running checkov on their own templates see the same: nothing but the canary's open finding."""
    assert [finding.split("/")[-1] for finding in example_scan.not_honoured] == [
        "canary.template.json Plain CKV_AWS_27"
    ]


def test_the_scan_reports_an_open_finding_and_a_stale_acknowledgment_of_each_tool(example_scan):
    assert example_scan.unacknowledged()["canary"] == [
        "checkov: Plain CKV_AWS_27",
        "parliament: Wide RESOURCE_STAR[sqs]",
    ]
    assert example_scan.stale()["canary"] == [
        "checkov: Encrypted CKV_AWS_27",
        "parliament: Narrow RESOURCE_STAR[sqs]",
    ]
